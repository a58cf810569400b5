"""Which servers the agent tries, in which order: names expanded to every address."""

from __future__ import annotations

from collections.abc import Sequence

from insignia.agent.identity.server_client import ServerClient
from insignia.agent.identity.targets import ServerTarget, expand

NAMES = {"servers.example.org": ["10.0.0.1", "10.0.0.2", "10.0.0.1"], "one": ["10.0.0.9"]}


def fake_dns(host: str, port: int) -> Sequence[str]:
    """A resolver with fixed answers (DNS itself is the system's; this is the decision)."""
    if host not in NAMES:
        raise OSError(f"[Errno -2] Name or service not known: {host}")
    return NAMES[host]


def test_a_name_with_several_addresses_counts_as_several_servers():
    targets, problems = expand(
        [ServerTarget("servers.example.org", 8081), ServerTarget("one", 9)], fake_dns
    )
    assert targets == (
        ServerTarget("10.0.0.1", 8081),
        ServerTarget("10.0.0.2", 8081),
        ServerTarget("10.0.0.9", 9),
    )
    assert problems == []


def test_an_unresolvable_name_is_kept_and_reported():
    targets, problems = expand([ServerTarget("gone", 1), ServerTarget("one", 2)], fake_dns)
    assert targets == (ServerTarget("gone", 1), ServerTarget("10.0.0.9", 2))
    assert len(problems) == 1 and problems[0].startswith("gone:1: ")


def test_fail_over_walks_the_list_and_reports_the_wrap():
    client = ServerClient(
        [ServerTarget("servers.example.org", 8081), ServerTarget("one", 8081)],
        8082,
        b"",
        1.0,
        resolve=fake_dns,
    )
    client.resolve_targets()
    seen = [str(client.target)]
    wraps = []
    for _ in range(3):
        wraps.append(client.fail_over())
        seen.append(str(client.target))
    assert seen == ["10.0.0.1:8081", "10.0.0.2:8081", "10.0.0.9:8081", "10.0.0.1:8081"]
    assert wraps == [False, False, True]
    assert str(client.attestation_target) == "10.0.0.1:8082"
