"""Federation with go-spiffe v2.9.0 on the other side (issue 16, test 6): its
`federation.FetchBundle` reads our bundle endpoint over both profiles, and our server
federates with a trust domain that go-spiffe alone serves (`federation.NewHandler` over
https_spiffe), whose spiffetls workloads and ours (our SDK, and spiffe-tls through our
agent) then do mTLS, each side verifying the other against the other domain's bundle.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from devtools.harness.agent_clients import UID_A, pyspiffe, register, spiffetls_client
from devtools.harness.agent_process import AgentProcess
from devtools.harness.federated_pair import (
    Profile,
    endpoint_port,
    endpoint_url,
    knows_bundles,
    relationship,
)
from devtools.harness.server_process import ServerProcess
from devtools.harness.waiting import wait_for
from devtools.harness.web_pki import write_web_pki
from insignia.authorize import any_member_of, one_of
from insignia.bundle import Bundle
from insignia.spiffeid import TrustDomain
from insignia.spiffetls import TlsStream, client_context, server_context
from insignia.workloadapi import open_x509_source
from tests.integration.conftest import AgentFactory, ServerFactory
from tests.integration.go_interop import GoClient, GoFailed, next_json

pytestmark = [pytest.mark.integration, pytest.mark.root]

A = TrustDomain.parse("a.test")
NO_AGENT = "unix:///nonexistent"  # the Go commands here use no Workload API


def fetch_args(
    profile: Profile, server: ServerProcess, web_ca: Path, endpoint_id: str
) -> tuple[str, ...]:
    url = endpoint_url(profile, endpoint_port(server))
    if profile == "https_web":
        return ("fetch-bundle", "a.test", url, "web", str(web_ca))
    return ("fetch-bundle", "a.test", url, "spiffe", str(server.write_bundle()), endpoint_id)


@pytest.mark.parametrize("profile", ["https_spiffe", "https_web"])
def test_go_spiffe_fetches_our_bundle_endpoint(
    go: GoClient, server_factory: ServerFactory, tmp_path: Path, profile: Profile
) -> None:
    pki = write_web_pki(tmp_path / "web", ("localhost",))
    endpoint: dict[str, Any] = {"address": "127.0.0.1:0", "profile": profile, "refresh_hint": "45s"}
    if profile == "https_web":
        endpoint |= {"cert_file": str(pki.cert_file), "key_file": str(pki.key_file)}
    server = server_factory(trust_domain="a.test", federation={"bundle_endpoint": endpoint})
    ours = Bundle.parse_spiffe(A, server.cli("bundle", "show", "--format", "spiffe").stdout)

    got = go.run(
        NO_AGENT, *fetch_args(profile, server, pki.ca_file, "spiffe://a.test/insignia/server")
    )
    assert got["trust_domain"] == "a.test"
    assert "".join(got["x509_authorities_pem"]).encode() == ours.x509_pem()
    assert got["jwt_authority_key_ids"] == sorted(ours.jwt_authorities)
    assert got["sequence"] == ours.sequence
    assert got["refresh_hint_seconds"] == 45


def test_go_spiffe_refuses_our_endpoint_under_another_spiffe_id(
    go: GoClient, server_factory: ServerFactory, tmp_path: Path
) -> None:
    endpoint = {"address": "127.0.0.1:0"}
    server = server_factory(trust_domain="a.test", federation={"bundle_endpoint": endpoint})
    args = fetch_args("https_spiffe", server, tmp_path, "spiffe://a.test/elsewhere")
    with pytest.raises(GoFailed, match="unexpected ID"):
        go.run(NO_AGENT, *args)


@dataclass
class GoDomain:
    """go.test, served by go-spiffe alone, and a.test (a real server and agent) federated
    with it; a.test's workloads uid 0 (`/sdk`) and uid A (`/py`) federate with go.test."""

    proc: subprocess.Popen[bytes]
    ports: dict[str, int]
    directory: Path
    agent: AgentProcess
    a_bundle: Path

    def report(self) -> Any:
        """The Go server's line about the connection it served last."""
        return next_json(self.proc, 30, "the Go server's report")


@pytest.fixture
def running_server(server_factory: ServerFactory) -> ServerProcess:
    """a.test (agent_factory attests its agents to `running_server`)."""
    return server_factory(trust_domain="a.test")


@pytest.fixture
def go_domain(
    go: GoClient, running_server: ServerProcess, agent_factory: AgentFactory, tmp_path: Path
) -> Iterator[GoDomain]:
    a = running_server
    directory = tmp_path / "go.test"
    directory.mkdir()
    args = ("serve-domain", "go.test", str(directory), "a.test", str(a.bundle_path))
    with go.start(NO_AGENT, *args) as proc:
        ports = next_json(proc, 60, "the go-spiffe domain")
        table = relationship(
            "https_spiffe", "go.test", ports["bundle_port"], directory / "bundle.pem"
        )
        table["endpoint_spiffe_id"] = "spiffe://go.test/bundle-endpoint"
        a.restart_with({"federation": {"federates_with": [table]}})
        wait_for(lambda: knows_bundles(a, 2), 30, "go.test's bundle in a.test")
        agent = agent_factory(server=a)
        for path, uid in (("/sdk", 0), ("/py", UID_A)):
            register(a, agent, path, f"unix:uid:{uid}", extra=("--federates-with", "go.test"))
        wait_for(
            lambda: "go.test" in pyspiffe(agent, "bundles", uid=UID_A)["x509"], 30, "go.test at a"
        )
        yield GoDomain(proc, ports, directory, agent, a.bundle_path)


async def test_our_sdk_and_a_go_spiffe_workload_of_the_go_served_domain_do_mtls_both_ways(
    go: GoClient, go_domain: GoDomain
) -> None:
    # a.test's workloads hold the whole bundle go-spiffe served: its CA and its JWT key.
    got = pyspiffe(go_domain.agent, "bundles", uid=UID_A)
    assert got["x509"]["go.test"] == [(go_domain.directory / "bundle.pem").read_text()]
    assert got["jwt"]["go.test"] == ["go-jwt-1"]

    async with open_x509_source(go_domain.agent.endpoint, ready_timeout=30) as source:
        # our client, go-spiffe's server
        tls = client_context(source, authorize=one_of("spiffe://go.test/workload"))
        with trio.fail_after(30):
            async with await tls.connect_tcp("127.0.0.1", go_domain.ports["mtls_port"]) as stream:
                assert str(stream.peer_id) == "spiffe://go.test/workload"
                await stream.send_all(b"ping\n")
                assert await stream.receive_some() == b"hello ping\n"
        # the Go side verified us against a.test's bundle and admitted a member of a.test
        report = await trio.to_thread.run_sync(go_domain.report)
        assert report == {"peer_id": "spiffe://a.test/sdk", "received": "ping\n"}

        # go-spiffe's client, our server
        seen: list[str] = []

        async def echo(stream: TlsStream) -> None:
            seen.append(str(stream.peer_id))
            await stream.send_all(b"hello " + await stream.receive_some())

        server_tls = server_context(source, authorize=any_member_of("go.test"))
        async with trio.open_nursery() as nursery:
            serve = partial(trio.serve_tcp, server_tls.serve(echo), 0, host="127.0.0.1")
            port = (await nursery.start(serve))[0].socket.getsockname()[1]
            dial = ("dial-domain", f"127.0.0.1:{port}", "go.test", str(go_domain.directory))
            dialed = await trio.to_thread.run_sync(
                partial(go.run, NO_AGENT, *dial, "a.test", str(go_domain.a_bundle))
            )
            nursery.cancel_scope.cancel()
    assert dialed == {"peer_id": "spiffe://a.test/sdk", "reply": "hello ping\n"}
    assert seen == ["spiffe://go.test/client"]


def test_a_spiffe_tls_workload_and_a_go_spiffe_one_do_mtls_across_the_federation(
    go_domain: GoDomain,
) -> None:
    address = f"127.0.0.1:{go_domain.ports['mtls_port']}"
    client = spiffetls_client(UID_A, go_domain.agent, "spiffe://go.test/workload", address)
    assert client.returncode == 0, client.stderr
    assert client.stdout == "hello ping\n"
    assert go_domain.report() == {"peer_id": "spiffe://a.test/py", "received": "ping\n"}
