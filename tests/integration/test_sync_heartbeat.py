"""insignia_agent_seconds_since_server_contact follows the Sync stream's heartbeats."""

from __future__ import annotations

import time

from devtools.harness.waiting import wait_for
from tests.integration.conftest import AgentFactory, ServerFactory

HEARTBEAT = 1.0
MARGIN = 1.5


def test_seconds_since_contact_stays_low_on_a_healthy_agent(
    server_factory: ServerFactory, agent_factory: AgentFactory
) -> None:
    server = server_factory(
        name="heartbeat", agent_api={"sync_heartbeat_interval": f"{HEARTBEAT}s"}
    )
    agent = agent_factory(server=server)
    samples: list[float] = []
    end = time.monotonic() + 5 * HEARTBEAT  # several intervals with nothing to sync

    def sampled_long_enough() -> bool:
        value = agent.metric("insignia_agent_seconds_since_server_contact")
        assert value is not None
        samples.append(value)
        return time.monotonic() > end

    wait_for(sampled_long_enough, 30, "five heartbeat intervals of samples")
    assert len(samples) >= 10
    assert max(samples) < HEARTBEAT + MARGIN, samples
    assert agent.metric("insignia_agent_sync_reconnects_total") in (None, 0.0)
