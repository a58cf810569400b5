"""What an OIDC discovery setup must satisfy, as pure checks the config runs at load.

OpenID Connect Discovery 1.0 §3 makes the issuer an https URL without query or fragment, and
relying parties fetch `<issuer>/.well-known/openid-configuration` and the `jwks_uri` it names
over HTTPS. So the issuer is taken from the config, never from a request's Host header, and a
listener speaks plain HTTP only where no network sits between it and its TLS-terminating
proxy: the loopback or a Unix socket.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from urllib.parse import urlsplit

from insignia._dns import is_dns_name
from insignia.daemon.config.addresses import parse_host_port

UNIX_PREFIX = "unix:"


def is_loopback_host(host: str) -> bool:
    """ "localhost" or a loopback IP address (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_address(address: str) -> None:
    """ValueError unless `address` is "host:port" (an IP address or localhost) or unix:/path."""
    if address.startswith(UNIX_PREFIX):
        if not address.removeprefix(UNIX_PREFIX).startswith("/"):
            raise ValueError("expected unix:/absolute/path")
        return
    parse_host_port(address)


def plain_http_allowed(address: str) -> bool:
    """Plain HTTP is for a proxy on the same host only: a Unix socket or the loopback."""
    if address.startswith(UNIX_PREFIX):
        return True
    _family, ip, _port = parse_host_port(address)
    return is_loopback_host(ip)


def check_listener(address: str, has_certificate: bool) -> None:
    """ValueError for a plain-HTTP listener that other hosts could reach."""
    if address and not has_certificate and not plain_http_allowed(address):
        raise ValueError(
            f"address {address} would serve plain HTTP beyond this host; "
            "set cert_file and key_file, or listen on a loopback address or unix:/path "
            "behind a TLS proxy"
        )


def normalized_host(host: str) -> str:
    """A host name as compared: lower case, without a trailing dot or IPv6 brackets."""
    return host.strip("[]").rstrip(".").lower()


def check_domain(name: str) -> None:
    """ValueError unless `name` is a DNS name or an IP address (a Host header's value)."""
    try:
        ipaddress.ip_address(name.strip("[]"))
        return
    except ValueError:
        pass
    if name.startswith("*.") or not is_dns_name(name.rstrip(".")):
        raise ValueError("expected a DNS name or an IP address")


def check_issuer(issuer: str, domains: Sequence[str]) -> None:
    """ValueError unless `issuer` is an https URL (http for a loopback host) with a host, no
    credentials, query or fragment, and a host among `domains` when domains are given."""
    what = f"jwt_issuer {issuer!r}"
    try:
        parts = urlsplit(issuer)
        host = parts.hostname or ""
        _ = parts.port  # ValueError for a port that is not a number in range
    except ValueError as exc:
        raise ValueError(f"{what} is not a URL: {exc}") from None
    if parts.scheme not in ("https", "http") or not host:
        raise ValueError(f"{what} must be an https:// URL with a host (OIDC Discovery §3)")
    if parts.scheme == "http" and not is_loopback_host(host):
        raise ValueError(f"{what}: http is allowed for a loopback host only; use https")
    if parts.username is not None or "?" in issuer or "#" in issuer:
        raise ValueError(f"{what} must have no user, query or fragment")
    if domains and normalized_host(host) not in {normalized_host(d) for d in domains}:
        raise ValueError(
            f"{what}: its host {host} is not among oidc_discovery.domains "
            f"({', '.join(domains)}), so relying parties could not reach it"
        )


def issuer_path(issuer: str) -> str:
    """The issuer's path without a trailing slash: the listener's routes hang below it."""
    return urlsplit(issuer).path.rstrip("/")
