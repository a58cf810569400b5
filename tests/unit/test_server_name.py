"""The server's TLS name: what counts as carrying it, so nobody else's SVID may."""

from __future__ import annotations

import pytest

from insignia.daemon.server_name import SERVER_TLS_NAME, is_reserved_dns_name


@pytest.mark.parametrize("name", [SERVER_TLS_NAME, "INSIGNIA-Server", "insignia-server.", "*"])
def test_names_a_tls_client_would_accept_as_the_server_are_reserved(name: str) -> None:
    assert is_reserved_dns_name(name)


@pytest.mark.parametrize(
    "name", ["insignia-server.example.org", "my-insignia-server", "*.insignia-server", "web"]
)
def test_other_names_are_not(name: str) -> None:
    assert not is_reserved_dns_name(name)
