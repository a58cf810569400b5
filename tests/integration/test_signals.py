"""Signals an operator sends: SIGHUP leaves the server running, as it does the agent, and a
stopped daemon says so and leaves no socket behind."""

from __future__ import annotations

import signal

import pytest

from devtools.harness.agent_process import AgentProcess
from devtools.harness.server_process import ServerProcess
from devtools.harness.waiting import wait_for

pytestmark = pytest.mark.integration


def test_server_survives_sighup_and_stops_cleanly(running_server: ServerProcess) -> None:
    assert running_server.process is not None
    running_server.process.send_signal(signal.SIGHUP)
    wait_for(
        lambda: any(r.get("event") == "server.sighup_ignored" for r in running_server.log_lines()),
        20,
        "the server to log the SIGHUP",
    )
    assert running_server.process.poll() is None
    running_server.cli("healthcheck")
    assert running_server.stop() == 0
    assert not running_server.admin_socket.exists()
    assert "leaked semaphore" not in running_server.log_path.read_text()


def test_agent_logs_stopped_and_removes_its_admin_socket(running_agent: AgentProcess) -> None:
    assert running_agent.admin_socket_path.exists()
    assert running_agent.stop() == 0
    assert any(e.get("event") == "agent.stopped" for e in running_agent.log_events())
    assert not running_agent.admin_socket_path.exists()
    assert not running_agent.socket_path.exists()
