"""Go clients we did not write against the real server and agent: go-spiffe v2.9.0's
workloadapi, x509svid, jwtsvid, spiffetls and tlsconfig, go-jose v4, and a raw grpc-go
client that uses only go-spiffe's generated stubs.

The Go program (tests/interop/go) runs as a workload of its own uid; our Python SDK, where a
case pairs it with Go, runs in this process as root with an entry of its own.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
import trio

from devtools.harness.agent_clients import UID_A, UID_B, register
from devtools.harness.agent_process import AgentProcess
from devtools.harness.server_process import ServerProcess
from insignia.authorize import Authorizer, any_member_of, one_of
from insignia.spiffetls import TlsHandshakeError, TlsStream, client_context, server_context
from insignia.workloadapi import WorkloadX509Source, open_x509_source
from tests.integration.go_interop import GoClient, GoFailed, finish, next_json

pytestmark = [pytest.mark.integration, pytest.mark.root]


@pytest.fixture
def ids(running_server: ServerProcess, running_agent: AgentProcess) -> dict[str, str]:
    """`go`: the Go workload's ID (uid A); `sdk`: this process's (uid 0). uid B has none."""
    td = running_server.trust_domain
    register(running_server, running_agent, "/go", f"unix:uid:{UID_A}")
    register(running_server, running_agent, "/sdk", "unix:uid:0")
    return {"go": f"spiffe://{td}/go", "sdk": f"spiffe://{td}/sdk", "td": td}


def test_x509_context_svids_and_bundles_verify_with_go_spiffe(
    go: GoClient, running_agent: AgentProcess, ids: dict[str, str]
) -> None:
    got = go.run(running_agent.endpoint, "x509", uid=UID_A)
    assert [svid["spiffe_id"] for svid in got["context_svids"]] == [ids["go"]]
    assert got["svids"] == [ids["go"]]
    assert got["bundle_domains"] == [ids["td"]]
    assert got["bundle_authorities"] >= 1
    assert got["context_bundle_size"] == 1
    # x509svid.Verify built a chain from our leaf to a root of our bundle.
    assert got["verified_id"] == ids["go"]
    assert got["verified_chain_len"] >= 2


@pytest.mark.parametrize("audiences", [["svc-a"], ["svc-a", "svc-b", "svc-c"]])
def test_jwt_svid_validates_with_go_spiffe_go_jose_and_the_agent(
    go: GoClient, running_agent: AgentProcess, ids: dict[str, str], audiences: list[str]
) -> None:
    got = go.run(running_agent.endpoint, "jwt", *audiences, uid=UID_A)
    assert got["spiffe_id"] == got["validated_id"] == got["agent_validated_id"] == ids["go"]
    assert sorted(got["audience"]) == sorted(audiences)
    assert sorted(got["validated_audience"]) == sorted(audiences)
    assert audiences[-1] in got["agent_validated_aud"]
    assert got["alg"] in {"ES256", "ES384", "RS256", "PS256"}
    assert got["kid_in_bundle"] is True
    assert 0 < got["expires_in_seconds"] <= 3600
    # The same token for an audience it was not issued to: refused locally and by the agent.
    assert "audience" in got["other_audience_error"].lower()
    assert got["agent_other_aud_error"] != ""


def test_watch_x509_context_sees_the_resigned_svid_after_a_taint(
    go: GoClient, running_server: ServerProcess, running_agent: AgentProcess
) -> None:
    td = running_server.trust_domain
    register(
        running_server,
        running_agent,
        "/go-long",
        f"unix:uid:{UID_A}",
        extra=("--x509-svid-ttl", "86400"),
    )
    with go.start(running_agent.endpoint, "watch-x509", "80", uid=UID_A) as watcher:
        first = next_json(watcher, 60, "the first WatchX509Context update")["update"]
        assert first["spiffe_id"] == f"spiffe://{td}/go-long"
        old = running_server.cli_json("authority", "x509", "show")
        running_server.cli("authority", "x509", "prepare")
        running_server.cli("authority", "x509", "activate")
        active = next(a for a in old["authorities"] if a["state"] == "active")
        running_server.cli("authority", "x509", "taint", active["authority_id"])
        code, out, err = finish(watcher, 90)
    assert code == 0, err
    final = json.loads(out.strip().splitlines()[-1])
    assert final["first"]["issuer_key_id"] == first["issuer_key_id"]
    assert final["resigned"]["spiffe_id"] == f"spiffe://{td}/go-long"
    assert final["resigned"]["issuer_key_id"] != first["issuer_key_id"]
    assert final["resigned"]["serial"] != first["serial"]


@pytest.fixture
async def sdk_source(
    running_agent: AgentProcess, ids: dict[str, str]
) -> AsyncIterator[WorkloadX509Source]:
    async with open_x509_source(running_agent.endpoint, ready_timeout=30) as source:
        assert str(source.get_x509_svid().spiffe_id) == ids["sdk"]
        yield source


async def _sdk_client(
    source: WorkloadX509Source, port: int, authorize: Authorizer
) -> tuple[str, bytes]:
    tls = client_context(source, authorize=authorize)
    with trio.fail_after(30):
        async with await tls.connect_tcp("127.0.0.1", port) as stream:
            await stream.send_all(b"ping\n")
            reply = b""
            while not reply.endswith(b"\n"):
                chunk = await stream.receive_some()
                if not chunk:
                    break
                reply += chunk
            return str(stream.peer_id), reply


@pytest.mark.parametrize("go_authorizer", ["id", "member-of"])
@pytest.mark.parametrize("sdk_authorizer", ["id", "member-of"])
async def test_go_spiffetls_server_and_our_sdk_client_authorize_each_other(
    go: GoClient,
    running_agent: AgentProcess,
    ids: dict[str, str],
    sdk_source: WorkloadX509Source,
    go_authorizer: str,
    sdk_authorizer: str,
) -> None:
    value = ids["sdk"] if go_authorizer == "id" else ids["td"]
    authorize = one_of(ids["go"]) if sdk_authorizer == "id" else any_member_of(ids["td"])
    with go.start(running_agent.endpoint, "mtls-server", go_authorizer, value, uid=UID_A) as server:
        port = (await trio.to_thread.run_sync(next_json, server, 60, "the Go server's port"))[
            "port"
        ]
        peer, reply = await _sdk_client(sdk_source, port, authorize)
        code, out, err = await trio.to_thread.run_sync(finish, server, 30)
    assert (peer, reply) == (ids["go"], b"hello ping\n")
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1]) == {"peer_id": ids["sdk"], "received": "ping\n"}


async def test_go_server_refuses_our_client_of_a_wrong_id_and_we_see_its_alert(
    go: GoClient, running_agent: AgentProcess, ids: dict[str, str], sdk_source: WorkloadX509Source
) -> None:
    wrong = f"spiffe://{ids['td']}/someone-else"
    with go.start(running_agent.endpoint, "mtls-server", "id", wrong, uid=UID_A) as server:
        port = (await trio.to_thread.run_sync(next_json, server, 60, "the Go server's port"))[
            "port"
        ]
        try:
            _, reply = await _sdk_client(sdk_source, port, one_of(ids["go"]))
        except (TlsHandshakeError, trio.BrokenResourceError) as exc:
            ours = f"{type(exc).__name__}: {exc}"
        else:
            # TLS 1.3: the server's verdict on our certificate comes after our handshake.
            assert reply == b"", "the Go server answered a client it should have refused"
            ours = "closed without a reply"
        code, _, err = await trio.to_thread.run_sync(finish, server, 30)
    assert code == 1
    assert "unexpected ID" in err and ids["sdk"] in err, err
    assert ours


async def test_our_client_refuses_a_go_server_of_a_wrong_id(
    go: GoClient, running_agent: AgentProcess, ids: dict[str, str], sdk_source: WorkloadX509Source
) -> None:
    wrong = f"spiffe://{ids['td']}/not-the-go-server"
    with go.start(running_agent.endpoint, "mtls-server", "id", ids["sdk"], uid=UID_A) as server:
        port = (await trio.to_thread.run_sync(next_json, server, 60, "the Go server's port"))[
            "port"
        ]
        with pytest.raises(TlsHandshakeError) as refused:
            await _sdk_client(sdk_source, port, one_of(wrong))
        code, _, err = await trio.to_thread.run_sync(finish, server, 30)
    assert ids["go"] in str(refused.value)
    assert code == 1 and "serving the client" in err, err


@pytest.mark.parametrize("go_authorizer", ["id", "member-of"])
@pytest.mark.parametrize("sdk_authorizer", ["id", "member-of"])
async def test_our_sdk_server_and_a_go_spiffetls_client_authorize_each_other(
    go: GoClient,
    running_agent: AgentProcess,
    ids: dict[str, str],
    sdk_source: WorkloadX509Source,
    go_authorizer: str,
    sdk_authorizer: str,
) -> None:
    value = ids["sdk"] if go_authorizer == "id" else ids["td"]
    authorize = one_of(ids["go"]) if sdk_authorizer == "id" else any_member_of(ids["td"])
    result = await _go_client_against_sdk_server(
        go, running_agent, sdk_source, authorize, go_authorizer, value
    )
    code, out, err, seen = result
    assert code == 0, err
    assert json.loads(out) == {"peer_id": ids["sdk"], "reply": "hello ping\n"}
    assert seen == [ids["go"]]


async def _go_client_against_sdk_server(
    go: GoClient,
    agent: AgentProcess,
    source: WorkloadX509Source,
    authorize: Authorizer,
    go_authorizer: str,
    value: str,
) -> tuple[int, str, str, list[str]]:
    """Our SDK server (admitting `authorize`) serves one Go client (admitting `value`)."""
    seen: list[str] = []

    async def echo(stream: TlsStream) -> None:
        seen.append(str(stream.peer_id))
        line = await stream.receive_some()
        await stream.send_all(b"hello " + line)

    tls = server_context(source, authorize=authorize)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, tls.serve(echo), 0)
        port = listeners[0].socket.getsockname()[1]
        completed = await trio.to_thread.run_sync(
            lambda: _run_go(go, agent, f"127.0.0.1:{port}", go_authorizer, value)
        )
        nursery.cancel_scope.cancel()
    return (*completed, seen)


def _run_go(
    go: GoClient, agent: AgentProcess, address: str, kind: str, value: str
) -> tuple[int, str, str]:
    try:
        result = go.run(agent.endpoint, "mtls-client", address, kind, value, uid=UID_A)
    except GoFailed as failed:
        return 1, "", str(failed)
    return 0, json.dumps(result), ""


async def test_go_client_refuses_our_server_of_a_wrong_id(
    go: GoClient, running_agent: AgentProcess, ids: dict[str, str], sdk_source: WorkloadX509Source
) -> None:
    wrong = f"spiffe://{ids['td']}/not-our-server"
    code, _, err, seen = await _go_client_against_sdk_server(
        go, running_agent, sdk_source, one_of(ids["go"]), "id", wrong
    )
    assert code == 1
    assert "unexpected ID" in err and ids["sdk"] in err, err
    assert seen == []


async def test_our_server_refuses_a_go_client_of_a_wrong_id_and_go_sees_the_alert(
    go: GoClient, running_agent: AgentProcess, ids: dict[str, str], sdk_source: WorkloadX509Source
) -> None:
    wrong = f"spiffe://{ids['td']}/not-the-go-client"
    code, _, err, seen = await _go_client_against_sdk_server(
        go, running_agent, sdk_source, one_of(wrong), "id", ids["sdk"]
    )
    assert code == 1
    assert "tls" in err.lower() and ("certificate" in err.lower() or "alert" in err.lower()), err
    assert seen == []


def test_raw_grpc_go_client_gets_the_workload_api_error_codes(
    go: GoClient, running_agent: AgentProcess, ids: dict[str, str]
) -> None:
    endpoint = running_agent.endpoint
    no_header = go.run(endpoint, "raw", "x509", "--no-header", uid=UID_A)
    assert no_header["code"] == "InvalidArgument"
    assert "security header" in no_header["message"]
    no_header_jwt = go.run(endpoint, "raw", "jwt", "--no-header", "aud", uid=UID_A)
    assert no_header_jwt["code"] == "InvalidArgument"

    assert go.run(endpoint, "raw", "x509", uid=UID_B)["code"] == "PermissionDenied"
    assert go.run(endpoint, "raw", "jwt", "aud", uid=UID_B)["code"] == "PermissionDenied"

    no_audience = go.run(endpoint, "raw", "jwt", uid=UID_A)
    assert no_audience["code"] == "InvalidArgument"
    assert "audience" in no_audience["message"].lower()

    # And with everything right, the same raw client gets its identity.
    assert go.run(endpoint, "raw", "x509", uid=UID_A) == {
        "code": "OK",
        "message": "",
        "spiffe_id": ids["go"],
    }
