"""Interop through a real agent: py-spiffe + spiffe-tls workloads, and our SDK, in every pairing.

py-spiffe runs in its own processes under other uids (it cannot share a process with our
protobuf messages, docs/design-notes.md §1); our SDK runs in this test process, as root,
with its own entry. Every pairing completes an mTLS echo in which each side checks the
other's SPIFFE ID.
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Iterator

import pytest
import trio

from devtools.harness.agent_clients import (
    UID_A,
    UID_B,
    register,
    spiffetls_client,
    spiffetls_server,
)
from devtools.harness.agent_process import AgentProcess
from devtools.harness.server_process import ServerProcess
from insignia.authorize import one_of
from insignia.jwtsvid import parse_and_validate
from insignia.spiffetls import TlsStream, client_context, server_context
from insignia.workloadapi import TrioWorkloadApiClient, WorkloadX509Source, open_x509_source

pytestmark = [pytest.mark.integration, pytest.mark.root]


@pytest.fixture
def ids(running_server: ServerProcess, running_agent: AgentProcess) -> dict[str, str]:
    """Entries for uid A and uid B (py-spiffe workloads) and uid 0 (this process, our SDK)."""
    td = running_server.trust_domain
    out = {}
    for name, uid in (("a", UID_A), ("b", UID_B), ("sdk", 0)):
        register(running_server, running_agent, f"/{name}", f"unix:uid:{uid}")
        out[name] = f"spiffe://{td}/{name}"
    return out


@pytest.fixture
def pyspiffe_server(
    running_agent: AgentProcess, ids: dict[str, str], request: pytest.FixtureRequest
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """A spiffe-tls echo server as uid A that admits only the ID the test names."""
    with spiffetls_server(UID_A, running_agent, ids[request.param]) as server:
        yield server


@pytest.mark.parametrize("pyspiffe_server", ["b"], indirect=True)
def test_pyspiffe_workloads_of_two_uids_talk_mtls_through_our_agent(
    running_agent: AgentProcess,
    ids: dict[str, str],
    pyspiffe_server: tuple[subprocess.Popen[bytes], int],
) -> None:
    server, port = pyspiffe_server
    client = spiffetls_client(UID_B, running_agent, ids["a"], f"127.0.0.1:{port}")
    assert client.returncode == 0, client.stderr
    assert client.stdout == "hello ping\n"
    assert server.wait(30) == 0


@pytest.fixture
async def sdk_source(running_agent: AgentProcess) -> AsyncIterator[WorkloadX509Source]:
    async with open_x509_source(running_agent.endpoint, ready_timeout=30) as source:
        yield source


@pytest.mark.parametrize("pyspiffe_server", ["sdk"], indirect=True)
async def test_our_client_context_against_a_spiffe_tls_server(
    ids: dict[str, str],
    pyspiffe_server: tuple[subprocess.Popen[bytes], int],
    sdk_source: WorkloadX509Source,
) -> None:
    server, port = pyspiffe_server
    tls = client_context(sdk_source, authorize=one_of(ids["a"]))
    with trio.fail_after(30):
        async with await tls.connect_tcp("127.0.0.1", port) as stream:
            assert str(stream.peer_id) == ids["a"]
            await stream.send_all(b"ping\n")
            reply = b""
            while not reply.endswith(b"\n"):
                chunk = await stream.receive_some()
                assert chunk, f"the server closed after {reply!r}"
                reply += chunk
    assert reply == b"hello ping\n"
    assert await trio.to_thread.run_sync(server.wait, 30) == 0


async def test_a_spiffe_tls_client_against_our_server_context(
    running_agent: AgentProcess, ids: dict[str, str], sdk_source: WorkloadX509Source
) -> None:
    seen: list[str] = []

    async def echo(stream: TlsStream) -> None:
        seen.append(str(stream.peer_id))
        line = await stream.receive_some()
        await stream.send_all(b"hello " + line)

    tls = server_context(sdk_source, authorize=one_of(ids["b"]))
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, tls.serve(echo), 0)
        port = listeners[0].socket.getsockname()[1]
        client = await trio.to_thread.run_sync(
            lambda: spiffetls_client(UID_B, running_agent, ids["sdk"], f"127.0.0.1:{port}")
        )
        nursery.cancel_scope.cancel()
    assert client.returncode == 0, client.stderr
    assert client.stdout == "hello ping\n"
    assert seen == [ids["b"]]


async def test_our_sdk_follows_our_agent_through_rotation_and_a_restart(
    running_server: ServerProcess, running_agent: AgentProcess
) -> None:
    td = running_server.trust_domain
    await trio.to_thread.run_sync(
        lambda: register(
            running_server, running_agent, "/rotating", "unix:uid:0", extra=("--x509-svid-ttl", "6")
        )
    )
    client = TrioWorkloadApiClient(running_agent.endpoint)
    async with open_x509_source(running_agent.endpoint, ready_timeout=30) as source:
        assert str(source.get_x509_svid().spiffe_id) == f"spiffe://{td}/rotating"

        # JWT-SVIDs: checked against the live JWT bundle here, and by the agent.
        token = await client.fetch_jwt_svid(["interop"])
        assert parse_and_validate(token.token, source, "interop").spiffe_id == token.spiffe_id
        spiffe_id, claims = await client.validate_jwt_svid(token.token, "interop")
        assert spiffe_id == token.spiffe_id and claims["aud"] == ["interop"]

        # Rotation arrives on the watch, with no call from us.
        first = source.get_x509_svid().leaf.serial_number
        with trio.fail_after(30):
            while source.get_x509_svid().leaf.serial_number == first:
                await source.wait_for_update()

        # The agent goes away and comes back: the watch reconnects by itself.
        await trio.to_thread.run_sync(running_agent.stop)
        (running_agent.workdir / "join-token").write_text("")  # resume, do not re-attest
        await trio.to_thread.run_sync(running_agent.start)
        before = source.get_x509_svid().leaf.serial_number
        with trio.fail_after(30):
            while source.get_x509_svid().leaf.serial_number == before:
                await source.wait_for_update()
        assert source.last_error is not None  # it did see the outage
