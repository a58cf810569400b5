"""One instance never breaks another: a second agent or server on the same data_dir, socket
or port refuses to start with one line naming what is taken and by which pid, and the first
keeps serving."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from devtools.harness.agent_clients import agent_cli, register
from devtools.harness.agent_process import AgentProcess
from devtools.harness.server_process import SERVER_BIN, ServerProcess, server_env
from tests.integration.conftest import AgentFactory, ServerFactory

pytestmark = pytest.mark.integration


def run_server(server: ServerProcess) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SERVER_BIN), "run", "--config", str(server.config_path)],
        capture_output=True,
        text=True,
        env=server_env(),
        timeout=60,
    )


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line, log records aside, of a daemon that refused to start (exit 2)."""
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("{")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def pid_of(process: subprocess.Popen[bytes] | None) -> int:
    assert process is not None
    return process.pid


def assert_agent_still_serves(server: ServerProcess, agent: AgentProcess, path: str) -> None:
    status = agent.ready_status()
    assert status is not None and status[0] == 200, status
    register(server, agent, path, f"unix:uid:{os.getuid()}")
    fetched = agent_cli("api", "fetch", "x509", "--socket", str(agent.socket_path))
    assert fetched.returncode == 0, fetched.stderr


def test_second_agent_with_the_same_config_is_refused(
    running_server: ServerProcess, running_agent: AgentProcess
) -> None:
    line = one_line(agent_cli("run", "--config", str(running_agent.config_path)))
    assert f"data_dir: {running_agent.data_dir} is in use by another instance" in line
    assert f"(pid {pid_of(running_agent.process)})" in line
    assert_agent_still_serves(running_server, running_agent, "/after-second-agent")


@pytest.mark.parametrize("shared", ["socket_path", "admin_socket_path"])
def test_second_agent_on_the_same_socket_is_refused_and_unlinks_nothing(
    running_server: ServerProcess,
    running_agent: AgentProcess,
    agent_factory: AgentFactory,
    shared: str,
) -> None:
    path: Path = getattr(running_agent, shared)
    second = agent_factory(name="second", start=False, **{shared: path})
    (second.workdir / "join-token").write_text(running_server.join_token() + "\n")
    line = one_line(agent_cli("run", "--config", str(second.config_path)))
    assert line.startswith("insignia-agent: ")
    assert f"{path} is in use by another running process" in line
    assert f"(pid {pid_of(running_agent.process)})" in line
    assert path.exists()
    assert_agent_still_serves(running_server, running_agent, f"/after-{shared}")


def test_second_server_with_the_same_data_dir_is_refused(running_server: ServerProcess) -> None:
    line = one_line(run_server(running_server))
    assert f"data_dir: {running_server.data_dir} is in use by another instance" in line
    assert f"(pid {pid_of(running_server.process)})" in line
    running_server.cli("healthcheck")


def test_second_server_on_the_same_admin_socket_is_refused(
    server_factory: ServerFactory, running_server: ServerProcess
) -> None:
    second = server_factory(name="second", start=False, admin_socket=running_server.admin_socket)
    line = one_line(run_server(second))
    assert f"{running_server.admin_socket} is in use by another running process" in line
    assert f"(pid {pid_of(running_server.process)})" in line
    running_server.cli("healthcheck")  # still manageable after the second one exited


@pytest.mark.parametrize("port", ["port", "attestation_port"])
def test_second_server_on_the_same_agent_api_port_is_refused(
    server_factory: ServerFactory, running_server: ServerProcess, port: str
) -> None:
    taken = getattr(running_server, "agent_api_port" if port == "port" else port)
    second = server_factory(name="second", start=False, agent_api={port: taken})
    line = one_line(run_server(second))
    assert f"agent_api.{port}: cannot listen on 127.0.0.1:{taken}: Address already in use" in line
    running_server.cli("healthcheck")
