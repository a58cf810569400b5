"""The agent's own identity: persisted across restarts, and what happens on eviction."""

from __future__ import annotations

import stat

import pytest

from tests.integration.agent_clients import short_tmp_path  # noqa: F401  (the tmp_path fixture)
from tests.integration.agent_fixtures import AgentProcess
from tests.integration.conftest import AgentFactory
from tests.integration.server_fixtures import ServerProcess

pytestmark = [pytest.mark.integration]


def _events(agent: AgentProcess, name: str) -> list[dict[str, object]]:
    return [e for e in agent.log_events() if e.get("event") == name]


def test_restart_with_a_valid_svid_needs_no_new_token(running_agent: AgentProcess) -> None:
    agent_id = running_agent.agent_id
    assert stat.S_IMODE(running_agent.data_dir.stat().st_mode) == 0o700
    for path in running_agent.data_dir.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert running_agent.stop() == 0

    # The used token is gone: attesting again would fail, so a ready agent proves it resumed.
    (running_agent.workdir / "join-token").write_text("")
    running_agent.start()
    assert running_agent.agent_id == agent_id
    assert _events(running_agent, "agent.resumed")
    assert len(_events(running_agent, "agent.attested")) == 1  # only the first run attested


def test_an_evicted_join_token_agent_asks_for_a_new_token(
    running_server: ServerProcess, running_agent: AgentProcess
) -> None:
    old_id = running_agent.agent_id
    running_server.cli("agent", "evict", old_id)
    assert running_agent.wait_exit(60) == 1
    assert "create a new join token" in running_agent.logs()
    assert not (running_agent.data_dir / "agent_svid.pem").exists()

    running_agent.start(running_server.join_token())
    assert running_agent.agent_id != old_id


def test_a_refused_token_fails_fast_with_the_reason(
    running_server: ServerProcess, agent_factory: AgentFactory
) -> None:
    agent = agent_factory(start=False)
    agent.start("00000000-0000-0000-0000-000000000000", wait=False)
    assert agent.wait_exit(60) == 1
    assert "join token" in agent.logs() and "restart with --join-token" in agent.logs()
