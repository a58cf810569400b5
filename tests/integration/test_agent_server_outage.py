"""With the server stopped, workloads keep their SVIDs, also on new connections; once the
server is back, rotation resumes."""

from __future__ import annotations

import time
from typing import Any

import pytest
from insignia_proto import admin_pb2

from devtools.harness.agent_clients import (
    UID_A,
    pyspiffe,
    register,
)
from devtools.harness.ports import free_port
from devtools.harness.waiting import wait_for
from tests.integration.conftest import AgentFactory, ServerFactory

pytestmark = [pytest.mark.integration, pytest.mark.root, pytest.mark.slow]


def test_svids_survive_a_server_outage_and_rotation_resumes(
    server_factory: ServerFactory, agent_factory: AgentFactory
) -> None:
    # Fixed ports, so the restarted server is where the agent expects it.
    server = server_factory(
        name="outage",  # agent_factory's running_server has the default workdir (and data_dir)
        agent_api={"port": free_port(), "attestation_port": free_port(), "attestation_rate": 1000},
    )
    agent = agent_factory(server=server)
    # 30 s TTL (+ backdating): renewal falls due a few seconds into the outage, expiry later.
    register(server, agent, "/steady", f"unix:uid:{UID_A}", extra=("--x509-svid-ttl", "30"))
    before = pyspiffe(agent, "x509", uid=UID_A)
    assert before["ids"] == ["spiffe://example.org/steady"], before

    server.stop()
    during = pyspiffe(agent, "x509", uid=UID_A)  # a new connection, served from the cache
    assert during.get("ids") == before["ids"], during

    # Wait until the agent has tried to renew and failed: the server is really gone for it.
    def renewal_failed() -> bool:
        return any(e.get("event") == "signer.unavailable" for e in agent.log_events())

    wait_for(renewal_failed, 60, "a failed renewal while the server is down")
    stale = pyspiffe(agent, "x509", uid=UID_A)
    assert stale.get("ids") == before["ids"], stale
    assert agent.ready_status() == (200, "ready\n")

    server.start()
    latest = {stale["serial"], before["serial"], during["serial"]}

    def rotated() -> bool:
        return pyspiffe(agent, "x509", uid=UID_A).get("serial") not in latest

    wait_for(rotated, 60, "a rotated SVID after the server came back")
    since = agent.metric("insignia_agent_seconds_since_server_contact")
    assert since is not None and 0 <= since < 30


def test_expired_svids_during_an_outage_answer_unavailable(
    server_factory: ServerFactory, agent_factory: AgentFactory
) -> None:
    server = server_factory(name="expiring")  # not running_server's workdir (and data_dir)
    agent = agent_factory(server=server)
    register(server, agent, "/brief", f"unix:uid:{UID_A}", extra=("--x509-svid-ttl", "10"))
    before = pyspiffe(agent, "x509", uid=UID_A)
    assert before["ids"] == ["spiffe://example.org/brief"], before
    server.stop()

    # An outage longer than the TTL: nothing valid is left to serve. The client must hear
    # why at once, not wait for its own deadline.
    def refused() -> Any:
        answer = pyspiffe(agent, "x509", uid=UID_A)
        return answer if answer.get("error") else None

    answer = wait_for(refused, 90, "FetchX509SVID to refuse once the SVID expired")
    assert answer["error"] == "UNAVAILABLE", answer
    assert "cannot reach a server" in answer["detail"], answer
    expired = [e for e in agent.log_events() if e.get("event") == "workload.svids_expired"]
    assert expired


def test_agent_resyncs_within_seconds_of_the_server_returning(
    server_factory: ServerFactory, agent_factory: AgentFactory
) -> None:
    server = server_factory(
        name="outage",  # agent_factory's running_server has the default workdir (and data_dir)
        agent_api={"port": free_port(), "attestation_port": free_port(), "attestation_rate": 1000},
    )
    # The default ceiling: a long outage has grown the agent's retry delay to many seconds.
    agent = agent_factory(server=server, sync={"initial_backoff": "200ms", "max_backoff": "30s"})
    register(server, agent, "/before", f"unix:uid:{UID_A}")
    server.stop()

    def long_backoff() -> bool:
        return any(
            e.get("event") == "sync.disconnected" and e.get("retry_in", 0) >= 5
            for e in agent.log_events()
        )

    wait_for(long_backoff, 60, "the agent's sync retry delay to reach 5 s")
    server.start()
    ready = time.monotonic()
    entry = admin_pb2.Entry(
        spiffe_id="spiffe://example.org/after",
        parent_id=agent.agent_id,
        selectors=[f"unix:uid:{UID_A}"],
    )
    with server.admin() as admin:
        admin.CreateEntries(admin_pb2.CreateEntriesRequest(entries=[entry]), timeout=10)
    wait_for(
        lambda: agent.metric("insignia_agent_cached_entries") == 2,
        30,
        "the new entry to reach the agent",
    )
    resynced = time.monotonic() - ready
    assert resynced < 2.5, f"the agent took {resynced:.1f}s after the server was ready"
    fetched = pyspiffe(agent, "x509", uid=UID_A)  # a new workload gets the new SVID
    assert "spiffe://example.org/after" in fetched.get("ids", []), fetched
