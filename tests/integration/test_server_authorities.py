"""CA and JWT key rotation, taint and revoke, as agents see them on the Sync stream."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from insignia_proto import agent_pb2

from devtools.harness.agent_api_client import attest_join_token
from devtools.harness.server_process import ServerProcess
from devtools.harness.waiting import wait_for
from insignia.bundle import Bundle
from insignia.server.ca.state import x509_authority_id
from insignia.spiffeid import TrustDomain
from tests.integration.conftest import ServerFactory

pytestmark = pytest.mark.integration
TD = TrustDomain.parse("example.org")


def authorities(state: agent_pb2.BundleState) -> tuple[set[str], set[str]]:
    bundle = Bundle.parse_spiffe(TD, state.spiffe_bundle)
    return {x509_authority_id(c) for c in bundle.x509_authorities}, set(bundle.jwt_authorities)


def bundle_updates(stream: Iterator[agent_pb2.SyncUpdate]) -> Iterator[agent_pb2.BundleState]:
    for update in stream:
        if update.HasField("bundle"):
            yield update.bundle


def show(server: ServerProcess, kind: str) -> list[dict[str, object]]:
    return list(server.cli_json("authority", kind, "show").get("authorities", []))


def test_manual_prepare_activate_taint_revoke(running_server: ServerProcess) -> None:
    server = running_server
    agent = attest_join_token(server, server.join_token())
    with agent.channel() as channel:
        stream = agent.stub(channel).Sync(agent_pb2.SyncRequest(), timeout=120)
        updates = bundle_updates(stream)
        x509_ids, jwt_ids = authorities(next(updates))
        assert len(x509_ids) == 1 and len(jwt_ids) == 1
        (old_x509,), (old_jwt,) = x509_ids, jwt_ids
        for kind, old in (("x509", old_x509), ("jwt", old_jwt)):
            index = 0 if kind == "x509" else 1
            refused = server.cli("authority", kind, "taint", old, check=False)
            assert refused.returncode == 1
            assert "only an old authority can be tainted" in refused.stderr
            prepared = server.cli_json("authority", kind, "prepare")
            assert prepared["state"] == "prepared"
            # published before it is used
            assert authorities(next(updates))[index] == {old, prepared["authority_id"]}
            server.cli("authority", kind, "activate")
            states = {a["authority_id"]: a["state"] for a in show(server, kind)}
            assert states == {old: "old", prepared["authority_id"]: "active"}
            server.cli("authority", kind, "taint", old)
            state = next(updates)
            tainted = (
                state.tainted_x509_authorities if kind == "x509" else state.tainted_jwt_authorities
            )
            assert list(tainted) == [old]
            server.cli("authority", kind, "revoke", old)
            state = next(updates)
            assert authorities(state)[index] == {prepared["authority_id"]}
        stream.cancel()


def test_rotation_through_all_slots(server_factory: ServerFactory) -> None:
    """On a ca_ttl of seconds: prepared -> active -> old -> dropped, for X.509 and JWT."""
    server = server_factory(
        ca={"ttl": "12s"},
        default_x509_svid_ttl="1s",
        default_jwt_svid_ttl="1s",
        agent_svid_ttl="2s",
    )

    def steps() -> list[str]:
        return [r["step"] for r in server.log_lines() if r.get("event") == "ca rotation"]

    def seen(prefix: str, count: int) -> bool:
        return sum(1 for s in steps() if s.startswith(prefix)) >= count

    def rotated_through() -> bool:
        return (
            seen("x509 dropped", 1)
            and seen("jwt dropped", 1)
            and seen("x509 activated", 3)
            and seen("jwt activated", 3)
        )

    try:
        wait_for(rotated_through, 90, "every slot of both CAs to be used and dropped")
    except TimeoutError as exc:
        raise AssertionError(f"rotation stalled: {exc}: {steps()}\n{server.log_tail()}") from None
    for kind in ("x509", "jwt"):
        mine = [s.split()[1:] for s in steps() if s.startswith(kind)]
        order = {(what, ident): i for i, (what, *rest) in enumerate(mine) for ident in rest[-1:]}
        activated = [ident for what, *rest in mine if what == "activated" for ident in rest]
        dropped = [rest[-1] for what, *rest in mine if what == "dropped"]
        assert len(activated) >= 2 and dropped, mine
        # each authority is prepared (so published) before it is activated, and leaves the
        # bundle only after a successor took over and it expired
        for ident in activated:
            assert order[("prepared", ident)] < order[("activated", ident)], mine
        for ident in dropped:
            assert ident in activated, mine
            assert (
                order[("dropped", ident)]
                > order[("activated", activated[activated.index(ident) + 1])]
            )
    warnings = [r for r in server.log_lines() if r.get("event") == "svid ttl exceeds ca guarantee"]
    assert warnings == []  # 1 s TTLs fit a 12 s CA (12/6 = 2 s)
    assert json.loads(server.cli("bundle", "show", "--format", "spiffe").stdout)["keys"]
