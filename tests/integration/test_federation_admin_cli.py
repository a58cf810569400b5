"""`federation create|list|show|update|delete|refresh` through the real CLI between two real
servers (b.test federating with a.test's https_spiffe endpoint), and the bundle leaving a
workload of b.test (py-spiffe, FetchX509Bundles) when the relationship is deleted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from devtools.harness.agent_clients import UID_A, pyspiffe, register
from devtools.harness.postgres import require_postgres, temporary_schema
from devtools.harness.server_process import ServerProcess
from devtools.harness.waiting import wait_for
from tests.integration.conftest import AgentFactory, ServerFactory

pytestmark = pytest.mark.integration
SERVER_ID = "spiffe://a.test/insignia/server"
FAILURES = "insignia_server_federation_refresh_failures_total"
LAST_SUCCESS = "insignia_server_federation_last_success_timestamp_seconds"


def endpoint_url(a: ServerProcess) -> str:
    return f"https://127.0.0.1:{a.addresses['bundle_endpoint'].rsplit(':', 1)[1]}/"


def serving_a(server_factory: ServerFactory) -> ServerProcess:
    return server_factory(
        name="a", trust_domain="a.test", federation={"bundle_endpoint": {"address": "127.0.0.1:0"}}
    )


def create_args(a: ServerProcess, bootstrap: Path, *extra: str) -> list[str]:
    return [
        "federation", "create", "--trust-domain", "a.test",
        "--bundle-endpoint-url", endpoint_url(a), "--endpoint-spiffe-id", SERVER_ID,
        "--trust-domain-bundle", str(bootstrap), "--trust-domain-bundle-format", "pem", *extra,
    ]  # fmt: skip


def refused(server: ServerProcess, *args: str) -> str:
    result = server.cli(*args, check=False)
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_create_list_show_update_refresh_delete(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    a = serving_a(server_factory)
    b = server_factory(name="b", trust_domain="b.test")
    bootstrap = a.write_bundle()

    out = b.cli(*create_args(a, bootstrap)).stdout
    assert "Trust domain        : a.test\n" in out
    assert f"Endpoint SPIFFE ID  : {SERVER_ID}\n" in out
    assert "Declared in         : datastore" in out
    wait_for(lambda: b.cli("bundle", "count").stdout.startswith("2 "), 30, "a.test's bundle in b")
    assert b.cli("bundle", "list", "--id", "a.test").stdout.split("\n", 1)[1] == (
        bootstrap.read_text()
    )

    [listed] = b.cli_json("federation", "list")
    assert listed["trust_domain"] == "a.test" and listed["profile"] == "https_spiffe"
    assert listed["bundle_endpoint_url"] == endpoint_url(a) and listed["from_config"] is False
    shown = b.cli_json("federation", "show", "--trust-domain", "a.test")
    assert shown == listed

    refreshed = b.cli("federation", "refresh", "--trust-domain", "a.test").stdout
    assert refreshed.startswith("a.test: bundle unchanged (sequence ")
    assert "1 X.509 authority, 1 JWT authority); next refresh in 300 s" in refreshed

    # Pointed at nothing, a refresh fails with the cause; the bundle held stays.
    b.cli(
        "federation", "update", "--trust-domain", "a.test",
        "--bundle-endpoint-url", "https://127.0.0.1:1/",
    )  # fmt: skip
    line = refused(b, "federation", "refresh", "--trust-domain", "a.test")
    assert "refresh of a.test failed: cannot connect to 127.0.0.1:1" in line
    assert b.cli("bundle", "count").stdout.startswith("2 ")
    updated = b.cli_json("federation", "show", "--trust-domain", "a.test")
    assert updated["bundle_endpoint_url"] == "https://127.0.0.1:1/"
    assert updated["endpoint_spiffe_id"] == SERVER_ID  # fields not given are kept
    assert updated["trust_domain_bundle"] == shown["trust_domain_bundle"]
    b.cli(
        "federation", "update", "--trust-domain", "a.test", "--bundle-endpoint-url", endpoint_url(a)
    )
    b.cli("federation", "refresh", "--trust-domain", "a.test")

    out = b.cli("federation", "delete", "--trust-domain", "a.test").stdout
    assert out.strip() == "deleted the federation relationship with a.test"
    assert b.cli("bundle", "count").stdout.strip() == "1 bundle"
    assert b.cli("federation", "list").stdout.strip() == "Found 0 federation relationships"
    assert "NOT_FOUND" in refused(b, "federation", "show", "--trust-domain", "a.test")
    assert "NOT_FOUND" in refused(b, "federation", "delete", "--trust-domain", "a.test")
    assert "NOT_FOUND" in refused(b, "federation", "refresh", "--trust-domain", "a.test")


def test_bad_relationships_are_refused_with_one_line(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    a = serving_a(server_factory)
    b = server_factory(name="b", trust_domain="b.test")
    bootstrap = a.write_bundle()
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    url = endpoint_url(a)

    def create(*args: str) -> str:
        return refused(b, "federation", "create", *args)

    base = ("--bundle-endpoint-url", url, "--endpoint-spiffe-id", SERVER_ID)
    with_bundle = (*base, "--trust-domain-bundle", str(bootstrap))
    cases: dict[tuple[str, ...], str] = {
        ("--trust-domain", "A.test", *base): "INVALID_ARGUMENT",
        ("--trust-domain", "spiffe://a.test/path", *base): "has no path",
        ("--trust-domain", "b.test", "--bundle-endpoint-url", url, "--profile", "https_web"): (
            "this server's own"
        ),
        ("--trust-domain", "a.test", "--bundle-endpoint-url", "http://127.0.0.1/", "--profile",
         "https_web"): "expected https://host[:port]/path",
        ("--trust-domain", "a.test", "--bundle-endpoint-url", "not a url", "--profile",
         "https_web"): "expected https://host[:port]/path",
        ("--trust-domain", "a.test", "--bundle-endpoint-url", "https://h:99999/", "--profile",
         "https_web"): "bundle endpoint URL",
        ("--trust-domain", "a.test", "--bundle-endpoint-url", url): (
            "https_spiffe needs the endpoint's SPIFFE ID"
        ),
        ("--trust-domain", "a.test", *base): "https_spiffe needs the bundle of a.test",
        ("--trust-domain", "a.test", "--bundle-endpoint-url", url, "--endpoint-spiffe-id",
         "not-an-id"): "endpoint SPIFFE ID",
        ("--trust-domain", "a.test", *base, "--trust-domain-bundle", str(tmp_path / "none")): (
            "No such file"
        ),
        ("--trust-domain", "a.test", *base, "--trust-domain-bundle", str(garbage),
         "--trust-domain-bundle-format", "pem"): "trust domain bundle:",
        ("--trust-domain", "a.test", *with_bundle): "trust domain bundle:",  # PEM read as JSON
        ("--trust-domain", "a.test", "--bundle-endpoint-url", url, "--profile", "https_web",
         "--endpoint-spiffe-id", SERVER_ID): "for https_spiffe only",
    }  # fmt: skip
    for args, expected in cases.items():
        line = create(*args)
        assert expected in line, (args, line)
    assert b.cli("federation", "list").stdout.strip() == "Found 0 federation relationships"

    # A bundle stored beforehand (`bundle set`) authenticates the endpoint instead.
    b.cli("bundle", "set", "--id", "spiffe://a.test", "--path", str(bootstrap))
    b.cli("federation", "create", "--trust-domain", "a.test", *base)
    b.cli("federation", "refresh", "--trust-domain", "a.test")
    b.cli("federation", "delete", "--trust-domain", "a.test")

    b.cli(*create_args(a, bootstrap))
    assert "ALREADY_EXISTS" in refused(b, *create_args(a, bootstrap))
    line = refused(
        b, "federation", "update", "--trust-domain", "a.test", "--bundle-endpoint-url", "ftp://x/"
    )
    assert "expected https://host[:port]/path" in line
    assert b.cli_json("federation", "show", "--trust-domain", "a.test")["bundle_endpoint_url"] == (
        url
    )


def test_deleting_the_relationship_takes_the_bundle_from_the_workloads(
    server_factory: ServerFactory, agent_factory: AgentFactory
) -> None:
    a = serving_a(server_factory)
    b = server_factory(name="b", trust_domain="b.test")
    b.cli(*create_args(a, a.write_bundle()))
    agent = agent_factory(server=b)
    register(b, agent, "/fed", f"unix:uid:{UID_A}", extra=("--federates-with", "a.test"))

    def received() -> dict[str, Any]:
        got: dict[str, Any] = pyspiffe(agent, "bundles", uid=UID_A)
        return got

    wait_for(lambda: "a.test" in received().get("x509", {}), 60, "a.test in FetchX509Bundles")
    got = received()
    assert "a.test" in got["jwt"] and "a.test" in got["svid_bundles"]

    b.cli("federation", "delete", "--trust-domain", "a.test")
    wait_for(lambda: "a.test" not in received().get("x509", {}), 60, "a.test gone from the agent")
    got = received()
    assert set(got["x509"]) == {"b.test"} and set(got["jwt"]) == {"b.test"}
    assert "a.test" not in got["svid_bundles"]
    # The entry keeps the name and can still be updated (its relationship is gone).
    [entry] = b.cli_json("entry", "show", "--spiffe-id", "spiffe://b.test/fed")["entries"]
    assert entry["federates_with"] == ["a.test"]
    b.cli("entry", "update", entry["id"], "--hint", "still federating")

    # A static bundle reaches the workload the same way, and leaves it with `bundle delete`.
    b.cli("bundle", "set", "--id", "spiffe://a.test", "--path", str(a.write_bundle()))
    wait_for(lambda: "a.test" in received().get("x509", {}), 60, "the static a.test bundle")
    b.cli("bundle", "delete", "--id", "spiffe://a.test", "--mode", "dissociate")
    wait_for(lambda: "a.test" not in received().get("jwt", {"a.test": 1}), 60, "a.test gone")
    assert set(received()["x509"]) == {"b.test"}


@pytest.mark.postgres
def test_every_server_on_the_database_follows_the_relationships(
    server_factory: ServerFactory,
) -> None:
    """Created through one server, changed and deleted through the other: both servers'
    refreshers follow each step (the change log)."""
    a = serving_a(server_factory)
    with temporary_schema(require_postgres()) as url:
        s1, s2 = (
            server_factory(name=n, trust_domain="b.test", database={"url": url})
            for n in ("s1", "s2")
        )
        s1.cli(*create_args(a, a.write_bundle()))
        td = {"trust_domain": "a.test"}
        for server in (s1, s2):
            wait_for(lambda s=server: (s.metric(LAST_SUCCESS, td) or 0) > 0, 30, "a fetch")

        s2.cli(
            "federation", "update", "--trust-domain", "a.test",
            "--bundle-endpoint-url", "https://127.0.0.1:1/",
        )  # fmt: skip
        for server in (s1, s2):
            wait_for(lambda s=server: (s.metric(FAILURES, td) or 0) >= 1, 30, "a failed fetch")

        s2.cli("federation", "delete", "--trust-domain", "a.test")

        def stopped(server: ServerProcess) -> bool:
            return any(
                r.get("event") == "federation.refresher_stopped"
                and r.get("trust_domain") == "a.test"
                for r in server.log_lines()
            )

        wait_for(lambda: stopped(s1) and stopped(s2), 30, "both refreshers to stop")
        for server in (s1, s2):  # no series left behind for a peer that is gone
            assert server.metric(FAILURES, td) is None and server.metric(LAST_SUCCESS, td) is None
        assert s1.cli("federation", "list").stdout.strip() == "Found 0 federation relationships"
        assert s1.cli("bundle", "count").stdout.strip() == "1 bundle"
