"""A stale bootstrap bundle: one JSON line that says so, and no raw gRPC C-core lines."""

from __future__ import annotations

from devtools.harness.waiting import wait_for
from tests.integration.conftest import AgentFactory, ServerFactory


def _raw_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("{")]


def test_stale_bundle_is_named_once_without_c_core_noise(
    server_factory: ServerFactory, agent_factory: AgentFactory
) -> None:
    server = server_factory(name="stale-target")
    other = server_factory(name="other")  # another CA: its bundle is "stale" for `server`
    agent = agent_factory(server=server, start=False, trust_bundle_path=other.bundle_path)
    agent.start(server.join_token(), wait=False)

    def retries() -> int:
        return sum(1 for e in agent.log_events() if e.get("event") == "agent.attestation_retry")

    wait_for(lambda: retries() >= 6, 60, "several attestation attempts")
    told = [e for e in agent.log_events() if e.get("event") == "agent.server_not_trusted"]
    assert len(told) == 1, agent.log_tail()
    assert f"trust_bundle_path {other.bundle_path}" in told[0]["detail"]
    assert "insignia-server bundle show --format pem" in told[0]["detail"]
    assert told[0]["level"] == "error"
    assert _raw_lines(agent.logs()) == [], agent.log_tail()
    assert _raw_lines(server.log_path.read_text()) == []
