"""`run --log-level` and changing a running daemon's level through its admin socket."""

from __future__ import annotations

from devtools.harness.agent_clients import agent_cli
from devtools.harness.agent_process import AgentProcess
from devtools.harness.server_process import ServerProcess
from devtools.harness.waiting import wait_for
from tests.integration.conftest import AgentFactory, ServerFactory


def _events(agent: AgentProcess, name: str) -> int:
    return sum(1 for e in agent.log_events() if e.get("event") == name)


def _unknown_caller(agent: AgentProcess) -> None:
    """A fetch by a caller without an entry: the agent logs workload.no_identity at info."""
    result = agent_cli("api", "fetch", "x509", "--socket", agent.endpoint, "--timeout", "5")
    assert result.returncode == 1, result.stderr


def test_agent_run_log_level_overrides_the_config(
    agent_factory: AgentFactory, running_server: ServerProcess
) -> None:
    agent = agent_factory(start=False)  # the config says info
    agent.start(running_server.join_token(), run_args=["--log-level", "warning"])
    shown = agent_cli("log-level", "show", "--admin-socket", str(agent.admin_socket_path))
    assert (shown.returncode, shown.stdout.strip()) == (0, "warning"), shown.stderr
    _unknown_caller(agent)
    assert _events(agent, "workload.no_identity") == 0
    assert not any(e.get("level") == "info" for e in agent.log_events())


def test_agent_log_level_changes_at_runtime(running_agent: AgentProcess) -> None:
    socket = ["--admin-socket", str(running_agent.admin_socket_path)]
    changed = agent_cli("log-level", "set", "warning", *socket)
    assert (changed.returncode, changed.stdout.strip()) == (0, "log level is now warning")
    _unknown_caller(running_agent)
    assert _events(running_agent, "workload.no_identity") == 0

    changed = agent_cli("log-level", "set", "info", "--config", str(running_agent.config_path))
    assert changed.returncode == 0, changed.stderr
    _unknown_caller(running_agent)
    wait_for(
        lambda: _events(running_agent, "workload.no_identity") == 1, 10, "the info line to appear"
    )
    changes = [e for e in running_agent.log_events() if e.get("event") == "log level changed"]
    assert [(e["from_level"], e["to_level"]) for e in changes] == [
        ("info", "warning"),
        ("warning", "info"),
    ]
    shown = agent_cli("log-level", "show", *socket)
    assert shown.stdout.strip() == "info"


def test_agent_log_level_refuses_an_unknown_level(running_agent: AgentProcess) -> None:
    socket = ["--admin-socket", str(running_agent.admin_socket_path)]
    result = agent_cli("log-level", "set", "chatty", *socket)
    assert result.returncode == 2 and "chatty" in result.stderr


def test_server_run_log_level_and_runtime_change(server_factory: ServerFactory) -> None:
    server = server_factory(start=False, log={"level": "debug"})
    server.start(run_args=["--log-level", "warning"])
    assert server.cli("log-level", "show").stdout.strip() == "warning"
    assert not any(r.get("level") in ("info", "debug") for r in server.log_lines())

    assert server.cli("log-level", "set", "info").stdout.strip() == "log level is now info"
    assert server.cli_json("log-level", "show") == {"level": "info"}
    changes = [r for r in server.log_lines() if r.get("event") == "log level changed"]
    assert [(r["from_level"], r["to_level"]) for r in changes] == [("warning", "info")]
    # at info, admin calls are audit-logged again
    assert any(r.get("method") == "GetLogLevel" for r in server.log_lines())
