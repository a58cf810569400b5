"""The agent's keepalive pings on its idle Sync stream are within what the server accepts
(issue 12, item 8): gRPC's server defaults answered the third ping with GOAWAY
"too_many_pings", which broke the stream and made the agent reconnect."""

from __future__ import annotations

import re

import pytest

from devtools.harness.agent_process import AgentProcess
from devtools.harness.waiting import wait_for
from tests.integration.conftest import AgentFactory

pytestmark = pytest.mark.integration

PINGS = 6  # gRPC's default server policy sends GOAWAY at the third


def pings_sent(agent: AgentProcess) -> int:
    """Keepalive pings to the agent API, as the agent's gRPC core traces them
    (GRPC_TRACE=http_keepalive). grpc-core words it differently across releases ("Finish keepalive
    ping" in some releases, "Ping <id> sent [<peer>]" in 1.85.3), so either line counts."""
    logs = agent.logs()
    port = agent.server_port
    finished = logs.count(f":{port}: Finish keepalive ping")
    sent = len(re.findall(rf"Ping \d+ sent \[ipv4:127\.0\.0\.1:{port}\]", logs))
    return max(finished, sent)


def test_fast_pings_never_end_the_idle_sync_stream(agent_factory: AgentFactory) -> None:
    agent = agent_factory(
        sync={"keepalive_interval": "5s"},
        env={"GRPC_TRACE": "http_keepalive", "GRPC_VERBOSITY": "debug"},
    )
    wait_for(lambda: pings_sent(agent) >= PINGS, 90, f"{PINGS} keepalive pings")
    assert agent.metric("insignia_agent_sync_reconnects_total") == 0
    disconnects = [e for e in agent.log_events() if e.get("event") == "sync.disconnected"]
    assert disconnects == []
    assert "too_many_pings" not in agent.logs()
