"""Misbehaving clients on the Workload API socket do not stop the agent serving the others."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import grpc
import pytest
from insignia_proto import workload_pb2 as pb

from devtools.harness import hostile_http2
from devtools.harness.agent_clients import (
    register,
)
from devtools.harness.agent_process import AgentProcess
from devtools.harness.server_process import ServerProcess
from devtools.harness.waiting import wait_for
from insignia.workload_wire import SECURITY_HEADER, WorkloadApiSyncStub
from insignia.workloadapi import WorkloadApiClient
from tests.integration.conftest import AgentFactory

pytestmark = [pytest.mark.integration]

MAX_MESSAGE = 64 * 1024


@pytest.fixture
def agent(running_server: ServerProcess, agent_factory: AgentFactory) -> AgentProcess:
    agent = agent_factory(workload={"max_message_bytes": MAX_MESSAGE})
    register(running_server, agent, "/steady", f"unix:uid:{os.getuid()}")
    return agent


def still_serving(agent: AgentProcess) -> str:
    with WorkloadApiClient(agent.socket_path, timeout=30) as client:
        return str(client.fetch_x509_context().default_svid.spiffe_id)


def send_garbage(agent: AgentProcess, payload: bytes) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(agent.socket_path))
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(65536):  # the agent answers, then hangs up
            pass


def bad_preface_events(agent: AgentProcess) -> list[dict[str, object]]:
    return [e for e in agent.log_events() if e.get("event") == "peercred_front.bad_preface"]


def test_garbage_bytes_are_dropped_and_the_cause_logged(agent: AgentProcess) -> None:
    payloads = [
        b"GET / HTTP/1.1\r\nHost: agent\r\n\r\n",
        os.urandom(70_000),
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\xff" * 64,
        b"",
    ]
    for payload in payloads:
        send_garbage(agent, payload)
    assert still_serving(agent) == "spiffe://example.org/steady"

    def bad_prefaces() -> list[dict[str, object]]:
        found = bad_preface_events(agent)
        return found if len(found) >= 3 else []

    logged = wait_for(bad_prefaces, 30, "three peercred_front.bad_preface log lines")
    assert {(e["pid"], e["uid"]) for e in logged} == {(os.getpid(), os.getuid())}
    causes = [str(e["cause"]) for e in logged]
    assert "closed after 0 of the 24 HTTP/2 preface bytes" in causes  # the empty payload
    assert "not an HTTP/2 preface: first bytes b'GET / HTTP/1.1\\r\\n'" in causes
    assert sum(c.startswith("not an HTTP/2 preface") for c in causes) == 2  # + the random bytes


def test_a_flood_of_garbage_is_logged_within_a_budget_that_counts_the_rest(
    agent: AgentProcess,
) -> None:
    started = time.monotonic()
    for _ in range(100):
        send_garbage(agent, b"GET / HTTP/1.1\r\n\r\n")
    assert still_serving(agent) == "spiffe://example.org/steady"

    # Wait until all 100 were handled: every one is a line or counted by a later line.
    def later_line() -> list[dict[str, object]]:
        send_garbage(agent, b"GET / HTTP/1.1\r\n\r\n")
        events = bad_preface_events(agent)
        return events if any(int(str(e["held_back"])) > 0 for e in events) else []

    events = wait_for(later_line, 60, "a bad_preface line counting the ones held back")
    elapsed = time.monotonic() - started
    assert len(events) <= 10 + elapsed + 1  # burst of ten, then one a second
    assert len(events) < 100
    assert sum(1 + int(str(e["held_back"])) for e in events) >= 100


def test_oversized_request_is_refused(agent: AgentProcess) -> None:
    with grpc.insecure_channel(f"unix:{agent.socket_path}") as channel:
        stub = WorkloadApiSyncStub(channel)
        request = pb.JWTSVIDRequest(audience=["x" * (MAX_MESSAGE * 2)])
        with pytest.raises(grpc.RpcError) as info:
            stub.FetchJWTSVID(request, metadata=SECURITY_HEADER, timeout=30)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
    assert still_serving(agent) == "spiffe://example.org/steady"


def test_missing_security_header_is_invalid_argument_and_logged(agent: AgentProcess) -> None:
    with grpc.insecure_channel(f"unix:{agent.socket_path}") as channel:
        stream = WorkloadApiSyncStub(channel).FetchX509SVID(pb.X509SVIDRequest(), timeout=30)
        with pytest.raises(grpc.RpcError) as info:
            next(iter(stream))
    error = info.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert error.details() == "security header missing from request"  # type: ignore[attr-defined]
    assert any(e.get("event") == "workload.header_missing" for e in agent.log_events())


def test_a_thousand_connect_and_drop_clients_leave_open_streams_working(
    running_server: ServerProcess, agent: AgentProcess, tmp_path: Path
) -> None:
    updates: list[str] = []
    got_second = threading.Event()
    client = WorkloadApiClient(agent.socket_path, timeout=30)

    def watch() -> None:
        for context in client.watch_x509_context():
            updates.append(str(context.default_svid.leaf.serial_number))
            if len(updates) >= 2:
                got_second.set()
                return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()

    for _ in range(1000):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(str(agent.socket_path))
    assert still_serving(agent) == "spiffe://example.org/steady"
    # Then a few hundred at once (under the per-uid cap), all held while a client is served.
    held = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(300)]
    try:
        for sock in held:
            sock.connect(str(agent.socket_path))
        assert still_serving(agent) == "spiffe://example.org/steady"
    finally:
        for sock in held:
            sock.close()

    # Changing the entry re-signs its SVID; the stream opened before the flood must see it.
    entry_id = next(e["id"] for e in running_server.cli_json("entry", "show")["entries"])
    running_server.cli("entry", "update", entry_id, "--x509-svid-ttl", "1800")
    assert got_second.wait(60), f"no update on the open stream; got {updates}"
    client.close()
    assert agent.ready_status() == (200, "ready\n")


# --- issue 12 item 2: connections that never close, and what they hold ----------------

STALL_TIMEOUT = 1.0


@pytest.fixture
def strict_agent(running_server: ServerProcess, agent_factory: AgentFactory) -> AgentProcess:
    """An agent whose stall deadline is short, so stalled clients are cut quickly."""
    agent = agent_factory(workload={"stall_timeout": f"{STALL_TIMEOUT:g}s"})
    register(running_server, agent, "/steady", f"unix:uid:{os.getuid()}")
    return agent


def fd_count(agent: AgentProcess) -> int:
    assert agent.process is not None
    return len(os.listdir(f"/proc/{agent.process.pid}/fd"))


def settled_fds(agent: AgentProcess) -> int:
    assert still_serving(agent) == "spiffe://example.org/steady"  # its channel is closed now
    return wait_for(lambda: fd_count(agent) or None, 5, "the agent's fd count")


def wait_fds_back(agent: AgentProcess, baseline: int) -> None:
    wait_for(lambda: fd_count(agent) <= baseline + 5, 10, f"agent fds back to {baseline} + 5")


def test_a_ping_flood_that_never_reads_is_cut_and_released(strict_agent: AgentProcess) -> None:
    baseline = settled_fds(strict_agent)
    assert hostile_http2.ping_flood(strict_agent.socket_path, 10.0)
    wait_fds_back(strict_agent, baseline)
    assert still_serving(strict_agent) == "spiffe://example.org/steady"


def test_a_stalled_reader_is_cut_after_the_deadline(strict_agent: AgentProcess) -> None:
    baseline = settled_fds(strict_agent)
    started = time.monotonic()
    assert hostile_http2.stall(strict_agent.socket_path, 10, 10.0)
    assert time.monotonic() - started >= STALL_TIMEOUT * 0.9
    wait_fds_back(strict_agent, baseline)


def test_a_continuation_flood_is_cut_and_released(strict_agent: AgentProcess) -> None:
    baseline = settled_fds(strict_agent)
    assert hostile_http2.continuation_flood(strict_agent.socket_path, 10.0)
    wait_fds_back(strict_agent, baseline)

    def dropped_for_continuation() -> bool:
        return any(
            e.get("event") == "peercred_front.connection_dropped"
            and "CONTINUATION" in str(e["cause"])
            for e in strict_agent.log_events()
        )

    wait_for(dropped_for_continuation, 10, "a connection_dropped line naming CONTINUATION")


def test_an_idle_client_is_kept_and_one_that_never_reads_is_cut(
    strict_agent: AgentProcess,
) -> None:
    """Idle connections of real clients are legitimate (grpc-go and SPIRE keep them): one
    that reads what the agent sends stays open however long it idles. One that leaves even
    grpc's SETTINGS unread is stuck, and goes at the stall deadline."""
    baseline = settled_fds(strict_agent)
    reader = hostile_http2.IdleReader(strict_agent.socket_path)
    silent = hostile_http2.connect(strict_agent.socket_path)
    try:
        silent.send(hostile_http2.OPENING)

        def silent_cut() -> bool:
            assert reader.drain(), "the agent closed an idle client that reads"
            return hostile_http2.hung_up(silent)

        wait_for(silent_cut, STALL_TIMEOUT + 5, "the agent to cut the client that never reads")
        kept_until = time.monotonic() + 3 * STALL_TIMEOUT
        while time.monotonic() < kept_until:  # idle three more deadlines, reading
            assert reader.drain(), "the agent closed an idle client that reads"
            time.sleep(0.1)
    finally:
        reader.close()
        silent.close()
    wait_fds_back(strict_agent, baseline)


def test_stuck_connections_give_back_their_uid_slots_and_fds(
    running_server: ServerProcess, agent_factory: AgentFactory
) -> None:
    """A uid's stuck connections count against its cap only until the stall deadline cuts
    them: then the slots and every descriptor (the front's and grpc's) come back."""
    # The deadline leaves time to see the cap full, even when a loaded machine is slow to get
    # all four answered: a stuck connection cut early would free a slot for the fifth.
    cap, stall = 4, 30.0
    agent = agent_factory(workload={"stall_timeout": f"{stall:g}s", "max_connections_per_uid": cap})
    register(running_server, agent, "/steady", f"unix:uid:{os.getuid()}")
    baseline = settled_fds(agent)

    def stuck_one() -> socket.socket:
        sock = hostile_http2.connect(agent.socket_path)
        sock.send(hostile_http2.OPENING + hostile_http2.fetch_x509_request(1))
        return sock

    def all_held() -> bool:
        """Each is proxied (grpc's answer waits, unread), so each holds a slot. One refused
        because a connection of this test's from before (register's client) still held a
        slot is replaced: refused, it would read as "answered" (EOF is readable), and that
        slot's late release would let the fifth in."""
        for i, sock in enumerate(stuck):
            if hostile_http2.hung_up(sock):
                sock.close()
                stuck[i] = stuck_one()
        return all(hostile_http2.readable(s) and not hostile_http2.hung_up(s) for s in stuck)

    stuck = [stuck_one() for _ in range(cap)]
    try:
        wait_for(all_held, 10, "grpc answering all four")
        with hostile_http2.connect(agent.socket_path) as one_too_many:
            assert hostile_http2.wait_hung_up(one_too_many, 5), "the uid's cap did not hold"
        wait_for(
            lambda: all(map(hostile_http2.hung_up, stuck)),
            stall + 5,
            "the stall deadline to cut the stuck connections",
        )
    finally:
        for sock in stuck:
            sock.close()
    wait_fds_back(agent, baseline)
    assert still_serving(agent) == "spiffe://example.org/steady"
