"""Issue 15, agent side: failover between servers, restart offline from the disk cache, and
corrupt cache files. Real server and agent processes throughout."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from devtools.harness.agent_clients import register
from devtools.harness.agent_process import AgentProcess, merge
from devtools.harness.postgres import database_url
from devtools.harness.server_process import ServerProcess
from devtools.harness.svid_sampler import Sampler
from devtools.harness.waiting import wait_for
from insignia.agent.cache.persisted import CACHE_FILE
from insignia.agent.identity.node_attestation import IDENTITY_FILE
from insignia.daemon.sealed import seal, unseal
from insignia.workloadapi import WorkloadApiClient
from tests.integration.conftest import AgentFactory, ServerFactory

UID = f"unix:uid:{os.getuid()}"


def _events(agent: AgentProcess, name: str) -> list[dict[str, Any]]:
    return [e for e in agent.log_events() if e.get("event") == name]


def _pin_ports(server: ServerProcess) -> None:
    """Keep the ports a started server picked, so a restart listens where agents look."""
    ports = {"port": server.agent_api_port, "attestation_port": server.attestation_port}
    server.extra_config = merge(dict(server.extra_config), {"agent_api": ports})
    server.write_config()


def _agent_api(server: ServerProcess) -> str:
    return f"{server.host}:{server.agent_api_port}"


@pytest.fixture
def shared_database(tmp_path: Path) -> Iterator[str]:
    """One PostgreSQL database (schema) for every server of the test."""
    with database_url("postgresql", tmp_path) as url:
        yield url


@pytest.mark.postgres
def test_sigkill_of_the_server_moves_the_agent_to_the_next_one_within_5s(
    shared_database: str, server_factory: ServerFactory, agent_factory: AgentFactory
) -> None:
    first = server_factory(name="s1", database={"url": shared_database})
    # Until servers share changes (the server half of issue 15), the second server learns the
    # agent and its entries from the datastore when it starts: start it after both exist.
    agent = agent_factory(server=first, start=False)
    agent.extra_config = {"server": {"addresses": [_agent_api(first)]}}
    agent.write_config()
    agent.start(first.join_token())
    register(first, agent, "/workload", UID)
    second = server_factory(name="s2", database={"url": shared_database})
    agent.stop()
    agent.extra_config = {"server": {"addresses": [_agent_api(first), _agent_api(second)]}}
    agent.write_config()
    agent.start()
    assert _events(agent, "sync.attached")[-1]["server"] == _agent_api(first)

    with Sampler(agent.socket_path) as sampler:
        wait_for(lambda: sampler.samples >= 5, 10, "the sampler to run")
        killed_at = time.monotonic()
        assert first.process is not None
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(10)

        def on_second() -> bool:
            return any(e["server"] == _agent_api(second) for e in _events(agent, "sync.attached"))

        wait_for(on_second, 10, "the agent to attach to the second server")
        moved_after = time.monotonic() - killed_at
        wait_for(lambda: sampler.samples >= 20, 10, "more samples after the move")
    assert moved_after < 5, f"moved after {moved_after:.1f}s"
    assert sampler.failures == []
    attached = [e for e in _events(agent, "sync.attached") if e["server"] == _agent_api(second)]
    assert attached[0]["full"] is False  # resumed from its revision through the change log
    # Renewals and new entries now go through the second server.
    register(second, agent, "/after-failover", UID)


def test_agents_restarted_while_every_server_is_down_serve_from_disk(
    running_server: ServerProcess, agent_factory: AgentFactory
) -> None:
    server = running_server
    _pin_ports(server)
    agent = agent_factory()
    register(server, agent, "/offline", UID)
    with WorkloadApiClient(agent.socket_path) as client:
        wait_for(lambda: bool(client.fetch_x509_context().svids), 30, "the first SVID")
        before = client.fetch_x509_context().default_svid
    server.stop()
    agent.stop()
    mode = (agent.data_dir / CACHE_FILE).stat().st_mode & 0o777
    assert mode == 0o600

    agent.start()  # no server answers: it must come up from its disk cache alone
    status = agent.ready_status()
    assert status is not None and status[0] == 200 and "stale" in status[1], status
    with WorkloadApiClient(agent.socket_path) as client:
        served = client.fetch_x509_context().default_svid
    assert served.spiffe_id == before.spiffe_id and served.chain == before.chain
    assert served.expires_at > datetime.now(UTC)
    assert len(_events(agent, "agent.cache_restored")) == 1

    server.start()
    wait_for(lambda: "stale" not in (agent.ready_status() or (0, "stale"))[1], 30, "fresh")
    register(server, agent, "/after-outage", UID)


def _foreign(data: bytes, kind: str, trust_domain: str) -> bytes:
    """The same content, sealed for another trust domain (a file copied from elsewhere)."""
    return seal(kind, 1, "other.org", unseal(data, kind, 1, trust_domain))


CORRUPTIONS = {
    "truncated": lambda data, kind, td: data[: len(data) // 2],
    "checksum": lambda data, kind, td: data[:-2] + bytes([data[-2] ^ 1]) + data[-1:],
    "foreign": _foreign,
}


@pytest.mark.parametrize("damage", sorted(CORRUPTIONS))
def test_a_corrupt_identity_file_is_discarded_and_the_agent_attests_anew(
    running_server: ServerProcess, agent_factory: AgentFactory, damage: str
) -> None:
    agent = agent_factory()
    old_id = agent.agent_id
    agent.stop()
    path = agent.data_dir / IDENTITY_FILE
    path.write_bytes(CORRUPTIONS[damage](path.read_bytes(), "agent_identity", agent.trust_domain))
    log_size = agent.log_path.stat().st_size

    agent.start(running_server.join_token())
    new_log = agent.log_path.read_bytes()[log_size:].decode()
    warnings = [line for line in new_log.splitlines() if "state_file.discarded" in line]
    assert len(warnings) == 1 and IDENTITY_FILE in warnings[0], new_log
    assert "Traceback" not in new_log
    assert agent.agent_id != old_id  # attested anew with the fresh token
    register(running_server, agent, "/after-corruption", UID)


@pytest.mark.parametrize("damage", sorted(CORRUPTIONS))
def test_a_corrupt_cache_file_is_never_served(
    running_server: ServerProcess, agent_factory: AgentFactory, damage: str
) -> None:
    server = running_server
    _pin_ports(server)
    agent = agent_factory()
    register(server, agent, "/cached", UID)
    wait_for(lambda: (agent.data_dir / CACHE_FILE).exists(), 10, "the cache file")
    server.stop()
    agent.stop()
    path = agent.data_dir / CACHE_FILE
    path.write_bytes(CORRUPTIONS[damage](path.read_bytes(), "agent_cache", agent.trust_domain))

    agent.start(wait=False)
    wait_for(lambda: bool(_events(agent, "state_file.discarded")), 30, "the discard warning")
    warnings = _events(agent, "state_file.discarded")
    assert len(warnings) == 1 and warnings[0]["file"].endswith(CACHE_FILE)
    assert not _events(agent, "agent.cache_restored")
    status = agent.ready_status()
    assert status is None or status[0] == 503  # nothing to serve until a server answers
    assert agent.process is not None and agent.process.poll() is None

    server.start()
    agent.wait_ready()
    register(server, agent, "/after-discard", UID)
