"""Two real servers of different trust domains federating: b.test fetches a.test's bundle
from its https_spiffe endpoint, and a workload of b.test receives it through py-spiffe."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from devtools.harness.agent_clients import UID_A, pyspiffe, register
from devtools.harness.server_process import ServerProcess
from devtools.harness.waiting import wait_for
from insignia.bundle import Bundle
from insignia.spiffeid import TrustDomain
from tests.integration.conftest import AgentFactory, ServerFactory

pytestmark = pytest.mark.integration
A = TrustDomain.parse("a.test")
FAILURES = "insignia_server_federation_refresh_failures_total"


def serving_a(server_factory: ServerFactory) -> ServerProcess:
    return server_factory(
        name="a", trust_domain="a.test", federation={"bundle_endpoint": {"address": "127.0.0.1:0"}}
    )


def relationship(a: ServerProcess, bootstrap: Path, **overrides: str) -> dict[str, Any]:
    return {
        "trust_domain": "a.test",
        "bundle_endpoint_url": f"https://127.0.0.1:{a.addresses['bundle_endpoint'].rsplit(':')[1]}/",
        "endpoint_spiffe_id": "spiffe://a.test/insignia/server",
        "trust_domain_bundle": str(bootstrap),
        "trust_domain_bundle_format": "pem",
        **overrides,
    }


def a_bundle(server: ServerProcess) -> Bundle:
    return Bundle.parse_spiffe(A, server.cli("bundle", "show", "--format", "spiffe").stdout)


def test_a_workload_of_b_receives_the_bundle_of_a(
    server_factory: ServerFactory, agent_factory: AgentFactory
) -> None:
    a = serving_a(server_factory)
    b = server_factory(
        name="b",
        trust_domain="b.test",
        federation={"federates_with": [relationship(a, a.write_bundle())]},
    )
    wait_for(lambda: b.cli("bundle", "count").stdout.startswith("2 "), 30, "a.test's bundle in b")
    agent = agent_factory(server=b)
    register(b, agent, "/fed", f"unix:uid:{UID_A}", extra=("--federates-with", "a.test"))
    expected = a_bundle(a)

    def received() -> dict[str, Any]:
        got: dict[str, Any] = pyspiffe(agent, "bundles", uid=UID_A)
        return got

    wait_for(lambda: "a.test" in received().get("x509", {}), 30, "a.test in FetchX509Bundles")
    got = received()
    a_pem = [c.decode() for c in _pems(expected)]
    assert got["x509"]["a.test"] == a_pem
    assert got["svid_bundles"]["a.test"] == a_pem  # FetchX509SVID's federated_bundles
    assert got["jwt"]["a.test"] == sorted(expected.jwt_authorities)
    assert b.metric(FAILURES, {"trust_domain": "a.test"}) in (None, 0.0)


def test_an_endpoint_with_the_wrong_spiffe_id_is_refused(server_factory: ServerFactory) -> None:
    a = serving_a(server_factory)
    wrong = relationship(a, a.write_bundle(), endpoint_spiffe_id="spiffe://a.test/elsewhere")
    b = server_factory(name="b", trust_domain="b.test", federation={"federates_with": [wrong]})
    wait_for(lambda: (b.metric(FAILURES, {"trust_domain": "a.test"}) or 0) >= 1, 30, "a failure")
    assert b.cli("bundle", "count").stdout.startswith("1 ")
    errors = [r for r in b.log_lines() if r.get("event") == "federation.refresh_failed"]
    assert (
        "presented spiffe://a.test/insignia/server, expected spiffe://a.test/elsewhere"
        in (errors[0]["error"])
    )


def _pems(bundle: Bundle) -> list[bytes]:
    pem = bundle.x509_pem()
    return [b"-----BEGIN" + part for part in pem.split(b"-----BEGIN")[1:]]
