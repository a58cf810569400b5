import socket

import pytest

from insignia.daemon.config.addresses import HOST_PORT_EXPECTED, parse_host_port


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("127.0.0.1:0", (socket.AF_INET, "127.0.0.1", 0)),
        ("localhost:8080", (socket.AF_INET, "127.0.0.1", 8080)),
        ("[::1]:443", (socket.AF_INET6, "::1", 443)),
        ("0.0.0.0:65535", (socket.AF_INET, "0.0.0.0", 65535)),
    ],
)
def test_addresses_a_listener_can_bind(text: str, parsed: tuple[object, ...]) -> None:
    assert parse_host_port(text) == parsed


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("127.0.0.1", HOST_PORT_EXPECTED),
        ("127.0.0.1:65536", HOST_PORT_EXPECTED),
        ("127.0.0.1:http", HOST_PORT_EXPECTED),
        ("127.0.0.1:\u0661", HOST_PORT_EXPECTED),  # a digit, but not an ASCII one
        ("example.org:80", "expected an IP address or localhost"),
        (":80", "expected an IP address or localhost"),
    ],
)
def test_addresses_that_need_dns_or_lack_a_port_are_refused(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_host_port(text)
