"""A process that execs another binary never gets, or keeps getting, the other's identity.

The attack: P connects to the Workload API, a child C inherits the socket, P execs a binary
that has an entry (same uid, same pid, same start time), and C reads that binary's SVID.
The agent records the caller's executable at accept and re-checks it before every answer,
including every later message on an open stream.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.harness.agent_clients import (
    register,
)
from devtools.harness.agent_process import AgentProcess
from devtools.harness.agent_workloads import Relay, connect_from_child, exec_in_child
from devtools.harness.server_process import ServerProcess
from insignia.workloadapi import WorkloadApiClient, WorkloadApiError
from tests.integration.conftest import AgentFactory

pytestmark = [pytest.mark.integration]

SLEEP = os.path.realpath(shutil.which("sleep") or "/usr/bin/sleep")


@pytest.fixture
def agent(agent_factory: AgentFactory) -> AgentProcess:
    return agent_factory(workload_attestors={"unix": {"discover_workload_path": True}})


@pytest.fixture
def caller(agent: AgentProcess, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Relay]]:
    """A python process connected to the agent that execs `sleep` on request; the test speaks
    over its connection through a relay, as the forked child sharing the socket would."""
    proc, connection = connect_from_child(agent.socket_path, then_exec=SLEEP)
    relay = Relay(connection, tmp_path / "relay.sock")
    try:
        yield proc, relay
    finally:
        relay.close()
        proc.kill()
        proc.wait(timeout=30)


def _code(exc: pytest.ExceptionInfo[WorkloadApiError]) -> str:
    return exc.value.code.name if exc.value.code else "?"


def test_connect_then_exec_does_not_get_the_new_binarys_identity(
    running_server: ServerProcess,
    agent: AgentProcess,
    caller: tuple[subprocess.Popen[bytes], Relay],
) -> None:
    proc, relay = caller
    register(running_server, agent, "/legit", f"unix:path:{SLEEP}")
    with WorkloadApiClient(relay.path, timeout=30) as client:
        # First call on this connection: the agent has accepted it and recorded python.
        with pytest.raises(WorkloadApiError) as before:
            client.fetch_x509_context()
        assert _code(before) == "PERMISSION_DENIED"
        exec_in_child(proc, SLEEP)
        with pytest.raises(WorkloadApiError) as after:
            client.fetch_x509_context()
    assert _code(after) == "UNAUTHENTICATED", after.value.details
    assert "exited or was replaced" in after.value.details
    replaced = [e for e in agent.log_events() if e.get("event") == "workload.caller_replaced"]
    assert replaced and replaced[-1]["pid"] == proc.pid


def test_an_open_stream_ends_when_its_caller_execs(
    running_server: ServerProcess,
    agent: AgentProcess,
    caller: tuple[subprocess.Popen[bytes], Relay],
) -> None:
    proc, relay = caller
    python = os.path.realpath(f"/proc/{proc.pid}/exe")
    register(running_server, agent, "/python", f"unix:path:{python}")
    received: list[int] = []
    failure: list[WorkloadApiError] = []
    first = threading.Event()

    def watch() -> None:
        with WorkloadApiClient(relay.path, timeout=60) as client:
            try:
                for context in client.watch_x509_context():
                    received.append(len(context.svids))
                    first.set()
            except WorkloadApiError as exc:
                failure.append(exc)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    assert first.wait(60), "no first message on the stream"
    exec_in_child(proc, SLEEP)
    # A second identity for python changes what the stream would send next.
    register(running_server, agent, "/python-2", f"unix:path:{python}")
    watcher.join(60)
    assert not watcher.is_alive()
    assert received == [1], received  # the update never reached the fd's new holder
    assert failure and failure[0].code is not None
    assert failure[0].code.name == "UNAUTHENTICATED", failure[0]
    assert "while streaming" in failure[0].details
