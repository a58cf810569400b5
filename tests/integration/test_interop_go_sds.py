"""SDS from a client we did not write: go-control-plane's generated Envoy v1.40.0 types and
grpc-go (tests/interop/go, `sds-*` commands) against the agent's Workload API socket.

FetchSecrets is compared with go-spiffe's Workload API view of the same caller; StreamSecrets
and DeltaSecrets are driven as Envoy drives them (subscribe, ACK, NACK) through a name the
caller has no secret for, a NACK that must not loop, and rotations, entry changes and bundle
changes that must each reach a stream that stays open.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from devtools.harness.agent_clients import UID_A, register
from devtools.harness.agent_process import AgentProcess
from devtools.harness.server_process import ServerProcess
from devtools.harness.waiting import wait_for
from tests.integration.conftest import AgentFactory, ServerFactory
from tests.integration.go_interop import GoClient, next_json
from tests.integration.test_federation_servers import relationship, serving_a

pytestmark = [pytest.mark.integration, pytest.mark.root]

DAY = ("--x509-svid-ttl", "86400")  # only what a test does rotates them
VALIDATOR = "envoy.tls.cert_validator.spiffe"
VALIDATOR_TYPE = (
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.SPIFFECertValidatorConfig"
)
NACK_DETAIL = "interop: secret rejected on purpose"  # what the Go client sends
QUIET_SECONDS = "1.5"  # how long the Go client listens for a re-push after an ACK or a NACK


@pytest.fixture
def go_id(running_server: ServerProcess, running_agent: AgentProcess) -> str:
    """The Go client's SPIFFE ID (uid A)."""
    register(running_server, running_agent, "/go-sds", f"unix:uid:{UID_A}", extra=DAY)
    return f"spiffe://{running_server.trust_domain}/go-sds"


def by_name(secrets: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {secret["name"]: secret for secret in secrets}


def test_fetch_secrets_serves_the_workload_apis_svid_key_and_bundle(
    go: GoClient, running_server: ServerProcess, running_agent: AgentProcess, go_id: str
) -> None:
    td = running_server.trust_domain
    names = ["default", go_id, "ROOTCA", f"spiffe://{td}", "ALL", f"spiffe://{td}/not-mine"]
    got = go.run(running_agent.endpoint, "sds-fetch", *names, uid=UID_A)
    assert [s["name"] for s in got["secrets"]] == names[:-1]  # the unknown one left out
    secrets = by_name(got["secrets"])
    for name in ("default", go_id):
        assert secrets[name]["kind"] == "tls_certificate"
        assert secrets[name]["spiffe_id"] == go_id
        assert secrets[name]["key_matches_leaf"] is True
    # Byte for byte the leaf and key go-spiffe's Workload API client got, and its bundle.
    assert got["same_as_workload_api"] == {
        "default": go_id,
        go_id: go_id,
        "ROOTCA": f"spiffe://{td}",
        f"spiffe://{td}": f"spiffe://{td}",
    }
    everything = secrets["ALL"]
    assert everything["kind"] == "validation_context"
    assert (everything["validator"], everything["validator_type"]) == (VALIDATOR, VALIDATOR_TYPE)
    assert list(everything["validator_domains"]) == [td]
    assert everything["validator_domains"][td] == secrets["ROOTCA"]["ca_count"] >= 1
    assert got["type_url"].endswith("tls.v3.Secret") and got["version_info"] and got["nonce"]


@pytest.mark.parametrize("mode", ["sotw", "delta"])
def test_unknown_name_ack_nack_and_a_later_name_on_one_stream(
    go: GoClient, running_server: ServerProcess, running_agent: AgentProcess, go_id: str, mode: str
) -> None:
    unknown = f"spiffe://{running_server.trust_domain}/not-mine"
    got = go.run(running_agent.endpoint, "sds-protocol", mode, unknown, QUIET_SECONDS, uid=UID_A)
    # A name with no secret: an empty answer, and the stream goes on.
    assert got["unknown"]["secrets"] == [] and got["unknown"]["nonce"]
    assert sorted(s["name"] for s in got["defaults"]["secrets"]) == ["ALL", "default"]
    # Neither the ACK nor the NACK of those secrets makes the agent send them again.
    assert (got["after_ack"], got["after_nack"]) == (0, 0)
    # State of the world resends all it holds; incremental only the new name.
    assert got["later_names"] == (["ALL", "ROOTCA", "default"] if mode == "sotw" else ["ROOTCA"])
    nonces = [got[step]["nonce"] for step in ("unknown", "defaults", "later")]
    versions = [got[step]["version"] for step in ("unknown", "defaults", "later")]
    assert len(set(nonces)) == 3 and len(set(versions)) == 3 and all(versions)
    if mode == "delta":
        assert all(s["version"] for s in got["later"]["secrets"])
    nacks = [e for e in running_agent.log_events() if e.get("event") == "sds.nack"]
    assert [(e["error"], e["method"]) for e in nacks] == [
        (NACK_DETAIL, "StreamSecrets" if mode == "sotw" else "DeltaSecrets")
    ]


@contextmanager
def following(go: GoClient, agent: AgentProcess, mode: str, *names: str) -> Iterator[Any]:
    """`sds-follow`: one stream, one JSON line per response; yields a reader of the next."""
    with go.start(agent.endpoint, "sds-follow", mode, "85", *names, uid=UID_A) as proc:
        yield lambda what: next_json(proc, 60, what)


def taint_active(server: ServerProcess) -> None:
    shown = server.cli_json("authority", "x509", "show")
    active = next(a for a in shown["authorities"] if a["state"] == "active")
    server.cli("authority", "x509", "prepare")
    server.cli("authority", "x509", "activate")
    server.cli("authority", "x509", "taint", active["authority_id"])


@pytest.mark.parametrize("mode", ["sotw", "delta"])
def test_an_open_stream_receives_the_certificate_a_taint_re_signs(
    go: GoClient, running_server: ServerProcess, running_agent: AgentProcess, go_id: str, mode: str
) -> None:
    with following(go, running_agent, mode, "default") as read:
        first = by_name(read("the first response")["update"]["secrets"])["default"]
        assert first["spiffe_id"] == go_id
        taint_active(running_server)
        while True:  # the re-signed bundle may come first on its own
            update = read("the re-signed certificate")["update"]
            secrets = by_name(update["secrets"])
            if "default" in secrets and secrets["default"]["serial"] != first["serial"]:
                break
    rotated = secrets["default"]
    assert rotated["spiffe_id"] == go_id and rotated["key_matches_leaf"] is True
    assert rotated["issuer_key_id"] != first["issuer_key_id"]


@pytest.mark.parametrize("mode", ["sotw", "delta"])
def test_entry_changes_reach_an_open_stream_both_ways(
    go: GoClient, running_server: ServerProcess, running_agent: AgentProcess, go_id: str, mode: str
) -> None:
    later = f"spiffe://{running_server.trust_domain}/go-later"
    with following(go, running_agent, mode, later) as read:
        assert read("the empty first answer")["names"] == []
        entry = register(running_server, running_agent, "/go-later", f"unix:uid:{UID_A}")
        added = read("the new entry's SVID")["update"]
        assert [s["spiffe_id"] for s in added["secrets"]] == [later]
        running_server.cli("entry", "delete", entry)
        gone = read("the deleted entry's SVID to go")["update"]
    assert gone["secrets"] == []
    assert gone.get("removed", []) == ([later] if mode == "delta" else [])


@pytest.mark.parametrize("mode", ["sotw", "delta"])
def test_a_bundle_change_reaches_an_open_stream(
    go: GoClient, running_server: ServerProcess, running_agent: AgentProcess, go_id: str, mode: str
) -> None:
    with following(go, running_agent, mode, "ROOTCA", "ALL") as read:
        first = by_name(read("the first response")["update"]["secrets"])
        td = running_server.trust_domain
        assert first["ALL"]["validator_domains"][td] == first["ROOTCA"]["ca_count"]
        running_server.cli("authority", "x509", "prepare")  # publishes the next CA
        changed = by_name(read("the grown bundle")["update"]["secrets"])
    assert changed["ROOTCA"]["ca_count"] == first["ROOTCA"]["ca_count"] + 1
    assert changed["ALL"]["validator_domains"][td] == changed["ROOTCA"]["ca_count"]


def test_sds_section_names_and_plain_cas_for_all(
    go: GoClient, running_server: ServerProcess, agent_factory: AgentFactory
) -> None:
    agent = agent_factory(
        sds={
            "default_svid_name": "svid",
            "default_bundle_name": "roots",
            "default_all_bundles_name": "everything",
            "disable_spiffe_cert_validation": True,
        }
    )
    register(running_server, agent, "/go-named", f"unix:uid:{UID_A}")
    names = ["svid", "roots", "everything", "default", "ROOTCA", "ALL"]
    got = go.run(agent.endpoint, "sds-fetch", *names, uid=UID_A)
    secrets = by_name(got["secrets"])
    assert list(secrets) == ["svid", "roots", "everything"]  # SPIRE's defaults are gone
    assert secrets["svid"]["spiffe_id"] == f"spiffe://{running_server.trust_domain}/go-named"
    everything = secrets["everything"]
    assert "validator" not in everything  # plain trusted CAs, no SPIFFE validator
    assert everything["ca_count"] == secrets["roots"]["ca_count"] >= 1


def test_a_federated_domain_by_its_id_and_inside_all(
    go: GoClient, server_factory: ServerFactory, agent_factory: AgentFactory
) -> None:
    a = serving_a(server_factory)
    b = server_factory(
        name="b",
        trust_domain="b.test",
        federation={"federates_with": [relationship(a, a.write_bundle())]},
    )
    agent = agent_factory(server=b)
    register(b, agent, "/fed", f"unix:uid:{UID_A}", extra=("--federates-with", "a.test"))

    def fetched() -> dict[str, dict[str, Any]]:
        got = go.run(agent.endpoint, "sds-fetch", "spiffe://a.test", "ALL", uid=UID_A)
        return by_name(got["secrets"]) | {"": got["same_as_workload_api"]}

    wait_for(lambda: "spiffe://a.test" in fetched(), 60, "a.test's bundle over SDS")
    secrets = fetched()
    assert secrets[""] == {"spiffe://a.test": "spiffe://a.test"}  # the Workload API's copy
    domains = secrets["ALL"]["validator_domains"]
    assert sorted(domains) == ["a.test", "b.test"]
    assert domains["a.test"] == secrets["spiffe://a.test"]["ca_count"] >= 1
