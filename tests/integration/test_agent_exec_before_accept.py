"""Exec between connect() and accept() never yields the new binary's identity.

The agent reads a caller's executable at accept(). A process that connects, hands its socket
to a helper and execs a binary an entry selects before the agent accepts would be attested as
that binary. Stopping the agent (SIGSTOP) while the caller connects and execs puts accept()
after the exec every time: the race, made deterministic. The agent must then see that the
attested process no longer holds the connection, or shares it with another executable.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from devtools.harness.agent_clients import register
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


@contextmanager
def exec_before_accept(
    agent: AgentProcess, tmp_path: Path, keep_on_exec: bool
) -> Iterator[tuple[subprocess.Popen[bytes], Relay]]:
    """A caller that connected and exec'd `sleep` while the agent was stopped; the test
    speaks over the connection as the helper holding it would."""
    assert agent.process is not None
    os.kill(agent.process.pid, signal.SIGSTOP)
    try:
        proc, connection = connect_from_child(
            agent.socket_path, then_exec=SLEEP, keep_on_exec=keep_on_exec
        )
        exec_in_child(proc, SLEEP)
    finally:
        os.kill(agent.process.pid, signal.SIGCONT)
    relay = Relay(connection, tmp_path / "relay.sock")
    try:
        yield proc, relay
    finally:
        relay.close()
        proc.kill()
        proc.wait(timeout=30)


def _refusal(relay: Relay) -> WorkloadApiError:
    with (
        WorkloadApiClient(relay.path, timeout=30) as client,
        pytest.raises(WorkloadApiError) as info,
    ):
        client.fetch_x509_context()
    return info.value


def test_exec_before_accept_is_refused(
    running_server: ServerProcess, agent: AgentProcess, tmp_path: Path
) -> None:
    register(running_server, agent, "/sleep", f"unix:path:{SLEEP}")
    with exec_before_accept(agent, tmp_path, keep_on_exec=False) as (proc, relay):
        error = _refusal(relay)
    assert error.code is not None and error.code.name == "PERMISSION_DENIED", error
    assert f"process {proc.pid} no longer holds the connection" in error.details
    refused = [e for e in agent.log_events() if e.get("reason") == "connection_not_owned"]
    assert refused and refused[-1]["pid"] == proc.pid


def test_exec_keeping_the_socket_while_another_binary_holds_it_is_refused(
    running_server: ServerProcess, agent: AgentProcess, tmp_path: Path
) -> None:
    register(running_server, agent, "/sleep", f"unix:path:{SLEEP}")
    with exec_before_accept(agent, tmp_path, keep_on_exec=True) as (proc, relay):
        error = _refusal(relay)
    assert error.code is not None and error.code.name == "PERMISSION_DENIED", error
    assert "which runs a different executable" in error.details
    assert f"process {proc.pid}" in error.details
