"""The agent's Workload API end to end: a real server, a real agent, py-spiffe as the client."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time
from pathlib import Path

import grpc
import pytest
from insignia_proto import workload_pb2 as pb
from joserfc import jwt
from joserfc.jwk import KeySet

from devtools.harness.agent_clients import (
    UID_A,
    UID_B,
    agent_cli,
    pyspiffe,
    register,
)
from devtools.harness.agent_process import AgentProcess
from devtools.harness.server_process import ServerProcess
from devtools.harness.waiting import wait_for
from insignia.spiffeid import TrustDomain
from insignia.workload_wire import SECURITY_HEADER, WorkloadApiSyncStub
from insignia.workloadapi import WorkloadApiClient, WorkloadApiError, X509Context, grpc_target

pytestmark = [pytest.mark.integration, pytest.mark.root]


def openssl_verify(tmp_path: Path, chain_pem: list[str], bundle_pem: list[str]) -> str:
    (tmp_path / "leaf.pem").write_text(chain_pem[0])
    (tmp_path / "untrusted.pem").write_text("".join(chain_pem[1:]))
    (tmp_path / "ca.pem").write_text("".join(bundle_pem))
    args = ["openssl", "verify", "-CAfile", str(tmp_path / "ca.pem")]
    if len(chain_pem) > 1:
        args += ["-untrusted", str(tmp_path / "untrusted.pem")]
    result = subprocess.run([*args, str(tmp_path / "leaf.pem")], capture_output=True, text=True)
    return result.stdout + result.stderr


def test_each_uid_gets_its_own_identity_and_no_one_elses(
    running_server: ServerProcess, running_agent: AgentProcess, tmp_path: Path
) -> None:
    register(running_server, running_agent, "/team-a", f"unix:uid:{UID_A}")
    a = pyspiffe(running_agent, "x509", uid=UID_A)
    assert a["ids"] == [f"spiffe://{running_server.trust_domain}/team-a"], a
    assert a["has_own_bundle"]
    assert openssl_verify(tmp_path, a["chain_pem"], a["bundle_pem"]).strip().endswith(": OK")

    b = pyspiffe(running_agent, "x509", uid=UID_B)
    assert b["error"] == "PERMISSION_DENIED" and "no identity issued" in b["detail"]
    b_jwt = pyspiffe(running_agent, "jwt", "svc", uid=UID_B)
    assert b_jwt["error"] == "PERMISSION_DENIED"


def test_a_caller_in_another_network_namespace_is_attested_like_any_other(
    running_server: ServerProcess, running_agent: AgentProcess
) -> None:
    """A container or pod reaching a host-path socket: its connection belongs to its own
    network namespace, where the agent's peer lookup must follow it."""
    register(running_server, running_agent, "/pod", f"unix:uid:{UID_A}")
    a = pyspiffe(running_agent, "x509", uid=UID_A, own_netns=True)
    assert a.get("ids") == [f"spiffe://{running_server.trust_domain}/pod"], a
    b = pyspiffe(running_agent, "x509", uid=UID_B, own_netns=True)
    assert b["error"] == "PERMISSION_DENIED", b


def test_x509_source_and_a_rotation_on_the_stream(
    running_server: ServerProcess, running_agent: AgentProcess
) -> None:
    register(
        running_server,
        running_agent,
        "/rotating",
        f"unix:uid:{UID_A}",
        extra=("--x509-svid-ttl", "8"),
    )
    source = pyspiffe(running_agent, "source", uid=UID_A)
    assert source["ids"] == [f"spiffe://{running_server.trust_domain}/rotating"]
    watched = pyspiffe(running_agent, "watch", "2", "60", uid=UID_A, timeout=90)
    assert len(watched["serials"]) == 2, watched
    assert watched["errors"] == []
    rotations = running_agent.metric("insignia_agent_svid_rotations_total", {"reason": "half_life"})
    assert rotations is not None and rotations >= 1


def test_jwt_svids_validate_independently_and_through_the_agent(
    running_server: ServerProcess, running_agent: AgentProcess
) -> None:
    register(running_server, running_agent, "/api", f"unix:uid:{UID_A}")
    result = pyspiffe(running_agent, "jwt", "orders", "billing", uid=UID_A)
    expected = f"spiffe://{running_server.trust_domain}/api"
    assert result["spiffe_id"] == expected and result["agent_validated"] == expected
    assert result["aud"] == ["billing", "orders"]

    # A second JOSE library checks the token against the server's own bundle document.
    fetched = agent_cli(
        "api",
        "fetch",
        "jwt",
        "--socket",
        str(running_agent.socket_path),
        "--audience",
        "orders",
        uid=UID_A,
    )
    assert fetched.returncode == 0, fetched.stderr
    token = fetched.stdout.splitlines()[1].strip()
    document = json.loads(running_server.cli("bundle", "show", "--format", "spiffe").stdout)
    jwks = {"keys": [{**k, "use": "sig"} for k in document["keys"] if k["use"] == "jwt-svid"]}
    decoded = jwt.decode(token, KeySet.import_key_set(jwks))
    assert decoded.claims["sub"] == expected and decoded.claims["aud"] == ["orders"]

    # The agent refuses a token for another audience, with the reason.
    validate = agent_cli(
        "api",
        "validate",
        "jwt",
        "--socket",
        str(running_agent.socket_path),
        "--audience",
        "someone-else",
        "--svid",
        token,
        uid=UID_A,
    )
    assert validate.returncode == 1
    assert "INVALID_ARGUMENT" in validate.stderr and "aud" in validate.stderr


def test_cli_writes_files_like_spire_and_reads_the_endpoint_variable(
    running_server: ServerProcess, running_agent: AgentProcess, tmp_path: Path
) -> None:
    register(running_server, running_agent, "/cli", "unix:uid:0")
    out = tmp_path / "out"
    env = {"SPIFFE_ENDPOINT_SOCKET": running_agent.endpoint, "PATH": "/usr/bin:/bin"}
    result = agent_cli("api", "fetch", "x509", "--write", str(out), env=env)
    assert result.returncode == 0, result.stderr
    assert f"spiffe://{running_server.trust_domain}/cli" in result.stdout
    assert stat.S_IMODE((out / "svid.0.key").stat().st_mode) == 0o600
    verify = subprocess.run(
        ["openssl", "verify", "-CAfile", str(out / "bundle.0.pem"), str(out / "svid.0.pem")],
        capture_output=True,
        text=True,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr

    health = agent_cli("healthcheck", "--config", str(running_agent.config_path))
    assert health.returncode == 0 and "healthy" in health.stdout


def test_one_identity_per_hint_oldest_entry_wins(
    running_server: ServerProcess, running_agent: AgentProcess
) -> None:
    register(running_server, running_agent, "/db-old", f"unix:uid:{UID_A}", extra=("--hint", "db"))
    first_second = int(time.time())  # created_at has whole seconds: let the clock move on
    wait_for(lambda: int(time.time()) > first_second, 5, "the next second")
    register(running_server, running_agent, "/db-new", f"unix:uid:{UID_A}", extra=("--hint", "db"))
    register(running_server, running_agent, "/plain", f"unix:uid:{UID_A}")
    got = pyspiffe(running_agent, "x509", uid=UID_A)
    td = running_server.trust_domain
    assert sorted(got["ids"]) == [f"spiffe://{td}/db-old", f"spiffe://{td}/plain"], got


def test_open_streams_follow_entry_changes_and_bundle_changes(
    running_server: ServerProcess, running_agent: AgentProcess
) -> None:
    td = running_server.trust_domain
    first = register(running_server, running_agent, "/one", f"unix:uid:{os.getuid()}")
    with WorkloadApiClient(running_agent.socket_path, timeout=60) as client:
        contexts = client.watch_x509_context()
        bundles = client.watch_x509_bundles()
        assert ids(next(contexts)) == [f"spiffe://{td}/one"]
        initial = next(bundles).get_bundle_for_trust_domain(TrustDomain.parse(td))
        assert initial is not None and len(initial.x509_authorities) == 1

        second = register(running_server, running_agent, "/two", f"unix:uid:{os.getuid()}")
        assert ids(next(contexts)) == [f"spiffe://{td}/one", f"spiffe://{td}/two"]
        running_server.cli("entry", "delete", first)
        assert ids(next(contexts)) == [f"spiffe://{td}/two"]

        running_server.cli("authority", "x509", "prepare")  # the bundle gains a CA
        grown = next(bundles).get_bundle_for_trust_domain(TrustDomain.parse(td))
        assert grown is not None and len(grown.x509_authorities) == 2
        assert (
            len(
                next(contexts)
                .bundles.get_bundle_for_trust_domain(TrustDomain.parse(td))
                .x509_authorities
            )
            == 2
        )  # type: ignore[union-attr]

        running_server.cli("entry", "delete", second)
        with pytest.raises(WorkloadApiError) as info:
            next(contexts)
        assert info.value.code == grpc.StatusCode.PERMISSION_DENIED


def ids(context: X509Context) -> list[str]:
    return sorted(str(s.spiffe_id) for s in context.svids)


def test_back_to_back_calls_on_one_connection_share_an_attestation(
    running_server: ServerProcess, running_agent: AgentProcess
) -> None:
    register(running_server, running_agent, "/busy", f"unix:uid:{os.getuid()}")
    attested = "insignia_agent_workloads_attested_total"
    with WorkloadApiClient(running_agent.socket_path) as client:
        client.fetch_jwt_svids(["warm-up"])
        before = running_agent.metric(attested) or 0
        started = time.monotonic()
        for i in range(20):
            assert client.fetch_jwt_svids([f"aud-{i}"])
        elapsed = time.monotonic() - started
    after = running_agent.metric(attested) or 0
    # Within the reuse window at most one attestation per elapsed second (plus one).
    assert after - before <= int(elapsed) + 1, (before, after, elapsed)
    # grpc-core shares one connection between channels to the same target unless told not
    # to, so the second connection is forced with a channel-local subchannel pool.
    with grpc.insecure_channel(
        grpc_target(running_agent.socket_path), options=[("grpc.use_local_subchannel_pool", 1)]
    ) as channel:
        WorkloadApiSyncStub(channel).FetchJWTSVID(
            pb.JWTSVIDRequest(audience=["new-connection"]), metadata=SECURITY_HEADER, timeout=10
        )
    assert (running_agent.metric(attested) or 0) == after + 1  # a new connection attests anew


def test_bundle_maps_are_keyed_by_the_trust_domain_id(
    running_server: ServerProcess, running_agent: AgentProcess
) -> None:
    """The proto says "keyed by the SPIFFE ID of the trust domain", and SPIRE sends that:
    a client that looks up `spiffe://example.org` must find it (issue 12, item 6)."""
    register(running_server, running_agent, "/raw", "unix:uid:0")
    td_id = f"spiffe://{running_server.trust_domain}"
    with grpc.insecure_channel(f"unix:{running_agent.socket_path}") as channel:
        stub = WorkloadApiSyncStub(channel)
        for call, request in (
            (stub.FetchX509Bundles, pb.X509BundlesRequest()),
            (stub.FetchJWTBundles, pb.JWTBundlesRequest()),
        ):
            stream = call(request, metadata=SECURITY_HEADER, timeout=30)
            assert list(next(stream).bundles) == [td_id]
            stream.cancel()
    with WorkloadApiClient(running_agent.socket_path) as client:  # our SDK reads it back
        bundles = client.fetch_x509_bundles()
        assert bundles.get_bundle_for_trust_domain(TrustDomain.parse(td_id)) is not None
