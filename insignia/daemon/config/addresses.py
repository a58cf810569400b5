"""Addresses a daemon listens on: "host:port" with an IP address or localhost, never a name.

Config validation and the listeners read them with the same code, so an address the config
accepts is exactly one the listener can bind (no DNS at start-up, no second parser).
"""

from __future__ import annotations

import ipaddress
import socket

HOST_PORT_EXPECTED = "expected host:port, e.g. 127.0.0.1:8080"


def parse_host(host: str) -> tuple[socket.AddressFamily, str]:
    """(family, IP address) for an IP address (v4, v6 without brackets) or "localhost"."""
    if host == "localhost":
        return socket.AF_INET, "127.0.0.1"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError("expected an IP address or localhost") from None
    return (socket.AF_INET6 if ip.version == 6 else socket.AF_INET), str(ip)


def parse_host_port(text: str) -> tuple[socket.AddressFamily, str, int]:
    """("host:port" | "[v6]:port" | "localhost:port") -> (family, IP address, port).

    Port 0 (pick a free one) is allowed. ValueError says what is wrong, not with which text.
    """
    host, sep, port = text.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise ValueError(HOST_PORT_EXPECTED)
    family, ip = parse_host(host.strip("[]"))
    return family, ip, int(port)
