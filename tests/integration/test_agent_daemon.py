"""The agent as a service: systemd readiness, file modes, health, metrics, clean stop."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

from devtools.harness.agent_clients import (
    agent_cli,
    register,
)
from devtools.harness.agent_process import to_toml
from devtools.harness.server_process import ServerProcess
from tests.integration.conftest import AgentFactory

pytestmark = [pytest.mark.integration]


def test_notifies_systemd_serves_health_and_metrics_and_stops_cleanly(
    running_server: ServerProcess, agent_factory: AgentFactory, tmp_path: Path
) -> None:
    notify_path = tmp_path / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(60)
    agent = agent_factory(env={"NOTIFY_SOCKET": str(notify_path)})
    assert notify.recv(4096) == b"READY=1"

    assert stat.S_IMODE(agent.socket_path.stat().st_mode) == 0o777  # any workload may connect
    assert stat.S_IMODE(agent.admin_socket_path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(agent.data_dir.stat().st_mode) == 0o700

    register(running_server, agent, "/svc", f"unix:uid:{os.getuid()}")
    fetched = agent_cli("api", "fetch", "x509", "--socket", str(agent.socket_path))
    assert fetched.returncode == 0, fetched.stderr
    assert agent.metric("insignia_agent_svids_served_total", {"type": "x509"}) == 1
    assert (agent.metric("insignia_agent_workloads_attested_total") or 0) >= 1
    assert agent.metric("insignia_agent_cached_entries") == 1
    assert agent.metric("insignia_agent_workload_streams") == 0
    latency = agent.metric(
        "insignia_agent_workload_rpc_duration_seconds_count",
        {"code": "OK", "method": "FetchX509SVID"},
    )
    assert latency == 1

    assert agent.stop() == 0
    notify.settimeout(5)
    assert notify.recv(4096) == b"STOPPING=1"
    assert not agent.socket_path.exists()  # the front removes its socket on the way out


def test_insecure_bootstrap_attests_and_warns(
    running_server: ServerProcess, agent_factory: AgentFactory
) -> None:
    agent = agent_factory(start=False)
    config = agent.config()
    del config["trust_bundle_path"]
    config["insecure_bootstrap"] = True
    agent.config_path.write_text(to_toml(config))
    agent.start(running_server.join_token())
    assert any(e.get("event") == "agent.insecure_bootstrap" for e in agent.log_events())
    assert agent.agent_id.startswith("spiffe://example.org/insignia/agent/join_token/")


def test_refuses_a_workload_socket_directory_others_can_write(
    agent_factory: AgentFactory,
) -> None:
    agent = agent_factory(start=False)
    (agent.workdir / "join-token").write_text("unused\n")
    agent.socket_path.parent.chmod(0o777)
    done = agent_cli("run", "--config", str(agent.config_path), timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    assert (
        f"socket_path: {agent.socket_path.parent}: mode 0777 is writable by group or others"
        in done.stderr
    )
    assert stat.S_IMODE(agent.socket_path.parent.stat().st_mode) == 0o777  # not "fixed"
    assert not agent.socket_path.exists()
