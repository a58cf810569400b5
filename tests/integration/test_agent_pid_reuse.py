"""A caller that exits and whose pid is reused mid-attestation gets UNAUTHENTICATED.

Deterministic: a test-only workload attestor ("gate", installed through an entry point like
any third-party plugin) holds attestation until the test releases it. Meanwhile the caller
process exits and, as root, the test makes a new process take exactly its pid. The connection
itself survives because the caller handed its socket to the test before exiting.
"""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import pytest

from devtools.harness.agent_clients import (
    register,
)
from devtools.harness.agent_process import AgentProcess
from devtools.harness.agent_workloads import (
    Relay,
    connect_from_child,
    end,
    read_fifo_line,
    spawn_with_pid,
    write_fifo_line,
)
from devtools.harness.server_process import REPO, ServerProcess
from insignia.workloadapi import WorkloadApiClient, WorkloadApiError
from tests.integration.agent_gate_plugin import install_gate_plugin, make_fifos
from tests.integration.conftest import AgentFactory

pytestmark = [pytest.mark.integration, pytest.mark.root]


@pytest.fixture
def gated_agent(
    tmp_path: Path,
    running_server: ServerProcess,
    agent_factory: AgentFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[AgentProcess, Path, Path]:
    site = install_gate_plugin(tmp_path / "site")
    # `entry create` accepts only selectors of installed attestors: let the CLI see gate too
    monkeypatch.setenv("PYTHONPATH", f"{site}:{REPO}:{REPO / 'proto'}")
    started, release = make_fifos(tmp_path)
    agent = agent_factory(
        env={"PYTHONPATH": f"{site}:{REPO}:{REPO / 'proto'}"},
        workload_attestors={
            "unix": {},
            "gate": {"started_fifo": str(started), "release_fifo": str(release)},
        },
        workload={"attestation_timeout": "60s"},
    )
    register(running_server, agent, "/gated", "unix:uid:0", "gate:passed")
    return agent, started, release


def _fetch_through(relay: Relay, result: dict[str, str]) -> None:
    try:
        with WorkloadApiClient(relay.path, timeout=60) as client:
            result["spiffe_id"] = str(client.fetch_x509_context().default_svid.spiffe_id)
    except WorkloadApiError as exc:
        result["code"] = exc.code.name if exc.code else "INVALID_RESPONSE"
        result["details"] = exc.details


def _call_held_at_the_gate(
    agent: AgentProcess, started: Path, tmp_path: Path, name: str
) -> tuple[subprocess.Popen[bytes], threading.Thread, dict[str, str]]:
    caller, connection = connect_from_child(agent.socket_path)
    relay = Relay(connection, tmp_path / f"{name}.sock")
    result: dict[str, str] = {}
    thread = threading.Thread(target=_fetch_through, args=(relay, result))
    thread.start()
    assert int(read_fifo_line(started, 60)) == caller.pid  # attestation is now held
    return caller, thread, result


def test_a_caller_that_stays_gets_its_identity(
    gated_agent: tuple[AgentProcess, Path, Path], tmp_path: Path
) -> None:
    agent, started, release = gated_agent
    caller, thread, result = _call_held_at_the_gate(agent, started, tmp_path, "stays")
    write_fifo_line(release, "go")
    thread.join(60)
    end(caller)
    assert result.get("spiffe_id") == "spiffe://example.org/gated", result


def test_a_caller_replaced_mid_attestation_is_refused(
    gated_agent: tuple[AgentProcess, Path, Path], tmp_path: Path
) -> None:
    agent, started, release = gated_agent
    caller, thread, result = _call_held_at_the_gate(agent, started, tmp_path, "replaced")
    pid = caller.pid
    end(caller)
    impostor = spawn_with_pid(pid)
    try:
        assert impostor is not None, f"could not make a new process take pid {pid}"
        write_fifo_line(release, "go")
        thread.join(60)
        assert result.get("code") == "UNAUTHENTICATED", result
        assert "exited or was replaced" in result["details"]
    finally:
        if impostor is not None:
            end(impostor)
    replaced = [e for e in agent.log_events() if e.get("event") == "workload.caller_replaced"]
    assert replaced and replaced[-1]["pid"] == pid
