"""The servers an agent may attach to, and the order it tries them in.

`[server] addresses` lists every server's agent API ("host:port"); a DNS name that resolves to
several addresses counts as several servers, so a round-robin name works like a list. The
agent holds one server at a time and moves to the next one in the list when its stream breaks
(agent/cache/sync.py); names are resolved again at every pass over the list, so a changed DNS
record is followed without a restart.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

DEFAULT_SERVER_PORT: Final = 8081

Resolver = Callable[[str, int], Sequence[str]]
"""host, port -> the IP addresses the host resolves to (blocking)."""


@dataclass(frozen=True, slots=True)
class ServerTarget:
    host: str  # a DNS name, an IPv4 address or an IPv6 address without brackets
    port: int

    @classmethod
    def parse(cls, text: str) -> ServerTarget:
        """ "host:port" or "[v6]:port"; ValueError names the text and what is wrong."""
        host, sep, port = text.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if not sep or not host or (":" in host and not text.startswith("[")):
            raise ValueError(f"{text!r}: expected host:port, e.g. server1.example.org:8081")
        if not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
            raise ValueError(f"{text!r}: the port must be a number from 1 to 65535")
        return cls(host, int(port))

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def with_port(self, port: int) -> ServerTarget:
        """The same host on another port (the attestation port)."""
        return ServerTarget(self.host, port)


def system_resolver(host: str, port: int) -> Sequence[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def expand(
    targets: Sequence[ServerTarget], resolve: Resolver = system_resolver
) -> tuple[tuple[ServerTarget, ...], list[str]]:
    """Each target replaced by one per address its host resolves to, duplicates dropped, in
    order; plus a warning per name that did not resolve (kept as is: grpc retries it)."""
    expanded: dict[ServerTarget, None] = {}
    problems: list[str] = []
    for target in targets:
        try:
            addresses = list(dict.fromkeys(resolve(target.host, target.port)))
        except (OSError, UnicodeError) as exc:
            problems.append(f"{target}: {exc}")
            addresses = [target.host]
        for address in addresses or [target.host]:
            expanded[ServerTarget(address, target.port)] = None
    return tuple(expanded), problems
