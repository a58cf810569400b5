"""`x509 mint` and `jwt mint` apply the rules entries do, with messages naming the cause
(issue 12, item 5)."""

from __future__ import annotations

import pytest

from devtools.harness.server_process import ServerProcess

pytestmark = pytest.mark.integration


def test_mint_refuses_an_id_without_a_path_and_a_too_short_ttl(
    running_server: ServerProcess,
) -> None:
    server = running_server
    for mint in (["x509", "mint"], ["jwt", "mint", "--audience", "a"]):
        refused = server.cli(*mint, "--spiffe-id", "spiffe://example.org", check=False)
        assert refused.returncode == 1, refused.stdout
        assert refused.stderr == (
            "error: INVALID_ARGUMENT: spiffe://example.org: expected a path after the trust "
            "domain (an SVID's ID names a workload)\n"
        )
    entry = server.cli(
        "entry", "create", "--spiffe-id", "spiffe://example.org", "--parent-id",
        "spiffe://example.org/insignia/server", "--selector", "unix:uid:1", check=False,
    )  # fmt: skip
    assert "expected a path after the trust domain" in entry.stderr  # the same rule

    short = server.cli(
        "jwt", "mint", "--spiffe-id", "spiffe://example.org/w", "--audience", "a", "--ttl", "1",
        check=False,
    )  # fmt: skip
    assert short.returncode == 1
    assert short.stderr == (
        "error: INVALID_ARGUMENT: ttl 1 s is too short for a JWT-SVID; expected at least 2 s\n"
    )
    token = server.cli(
        "jwt", "mint", "--spiffe-id", "spiffe://example.org/w", "--audience", "a", "--ttl", "2"
    )
    assert token.stdout.count(".") == 2
