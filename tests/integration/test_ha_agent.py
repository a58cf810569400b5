"""Issue 15, agent side: failover between servers, restart offline from the disk cache, and
corrupt cache files. Real server and agent processes throughout."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from devtools.harness.agent_clients import register
from devtools.harness.agent_process import AgentProcess, merge
from devtools.harness.postgres import database_url
from devtools.harness.server_process import ServerProcess
from devtools.harness.svid_sampler import Sampler
from devtools.harness.waiting import wait_for
from insignia.agent.cache.persisted import CACHE_FILE
from insignia.agent.identity.node_attestation import IDENTITY_FILE
from insignia.daemon.sealed import seal, unseal
from insignia.server.ca.state import x509_authority_id
from insignia.server.datastore import Datastore
from insignia.spiffeid import TrustDomain
from insignia.workloadapi import WorkloadApiClient, WorkloadApiError, X509Context
from insignia.x509svid import X509Svid
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


WORKLOADS = 3
SVID_TTL = "60"  # seconds: renewals during the test go to whichever server the agent is on


def _two_servers(url: str, server_factory: ServerFactory) -> tuple[ServerProcess, ServerProcess]:
    """Both servers on one PostgreSQL from the start, their ports kept for restarts."""
    servers = [server_factory(name=n, database={"url": url}) for n in ("s1", "s2")]
    for server in servers:
        _pin_ports(server)
    return servers[0], servers[1]


def _agent_of_both(
    first: ServerProcess, second: ServerProcess, agent_factory: AgentFactory, name: str = "a"
) -> AgentProcess:
    """An agent listing both servers, attested on the first (its attestation port)."""
    agent = agent_factory(server=first, name=name, start=False)
    agent.extra_config = {"server": {"addresses": [_agent_api(first), _agent_api(second)]}}
    agent.write_config()
    agent.start(first.join_token())
    assert _events(agent, "sync.attached")[-1]["server"] == _agent_api(first)
    return agent


def _attached(agent: AgentProcess, server: ServerProcess) -> list[dict[str, Any]]:
    return [e for e in _events(agent, "sync.attached") if e["server"] == _agent_api(server)]


def _wait_for_move(
    agent: AgentProcess, target: ServerProcess, fail: Callable[[], None]
) -> tuple[float, dict[str, Any]]:
    """Run `fail`; seconds until the agent attached to `target`, and that attachment."""
    before = len(_attached(agent, target))
    failed_at = time.monotonic()
    fail()
    wait_for(lambda: len(_attached(agent, target)) > before, 10, f"a move to {target.workdir}")
    return time.monotonic() - failed_at, _attached(agent, target)[before]


def _kill_and_wait_for_move(
    agent: AgentProcess, killed: ServerProcess, target: ServerProcess
) -> tuple[float, dict[str, Any]]:
    """SIGKILL `killed`; seconds until the agent attached to `target`, and that attachment."""
    return _wait_for_move(agent, target, lambda: killed.stop(signal.SIGKILL))


def _issuers(svids: tuple[X509Svid, ...]) -> set[str]:
    """The authority ids (the CLI's) of the CAs that signed these SVIDs."""
    return {
        svid.leaf.extensions.get_extension_for_class(
            x509.AuthorityKeyIdentifier
        ).value.key_identifier.hex()  # type: ignore[union-attr]
        for svid in svids
    }


def _half_life(svid: X509Svid) -> datetime:
    """The earliest the agent renews `svid` on its own schedule (half life, less jitter)."""
    start, end = svid.leaf.not_valid_before_utc, svid.leaf.not_valid_after_utc
    return start + (end - start) * 0.45


def _authorities(server: ServerProcess, owner: ServerProcess) -> dict[str, str]:
    """`owner`'s X.509 authorities as `server` lists them: id -> state."""
    shown = server.cli_json("authority", "x509", "show")["authorities"]
    return {a["authority_id"]: a["state"] for a in shown if a["server_id"] == owner.instance_id}


@pytest.mark.postgres
def test_sigkill_moves_the_agent_to_the_other_server_and_back_without_a_gap(
    shared_database: str, server_factory: ServerFactory, agent_factory: AgentFactory
) -> None:
    """Issue 15, test 2: workloads hold an unexpired SVID throughout two moves; a forced
    rotation through the surviving server reaches every workload; the move back verifies
    against the first server's CA (the union bundle)."""
    first, second = _two_servers(shared_database, server_factory)
    agent = _agent_of_both(first, second, agent_factory)
    for n in range(WORKLOADS):
        register(first, agent, f"/w{n}", UID, extra=("--x509-svid-ttl", SVID_TTL))

    with Sampler(agent.socket_path, svids=WORKLOADS) as sampler:
        wait_for(lambda: len(sampler.latest) == WORKLOADS, 30, "every workload's SVID")
        moved_after, attached = _kill_and_wait_for_move(agent, first, second)
        assert moved_after < 5, f"moved after {moved_after:.1f}s"
        assert attached["full"] is False  # resumed from its revision through the change log

        # Renewals go to the server the agent is on: soon every SVID is signed by server 2.
        (active,) = [i for i, s in _authorities(second, second).items() if s == "active"]
        wait_for(lambda: _issuers(sampler.latest) == {active}, 60, "renewals through server 2")

        # A forced rotation after the kill, through server 2: prepare, activate, taint the
        # old key (found in the listing by its owner). Every workload gets a new SVID long
        # before half its life, so the taint, not the schedule, replaced them.
        renew_by = min(_half_life(svid) for svid in sampler.latest)
        second.cli("authority", "x509", "prepare")
        second.cli("authority", "x509", "activate")
        (new,) = [i for i, s in _authorities(second, second).items() if s == "active"]
        second.cli("authority", "x509", "taint", active)
        wait_for(lambda: _issuers(sampler.latest) == {new}, 30, "the taint to reach every SVID")
        assert datetime.now(UTC) < renew_by

        # Back to a restarted server 1: its TLS roots hold server 2's new CA (the union).
        first.start()
        moved_back_after, back = _kill_and_wait_for_move(agent, second, first)
        wait_for(lambda: sampler.samples >= 20, 10, "samples after the move back")
    assert moved_back_after < 5, f"moved back after {moved_back_after:.1f}s"
    assert back["full"] is False
    assert sampler.failures == []
    register(first, agent, "/after-failover", UID)


@pytest.mark.postgres
def test_a_frozen_server_is_left_for_the_next_within_its_heartbeat_limit(
    shared_database: str, server_factory: ServerFactory, agent_factory: AgentFactory
) -> None:
    """A SIGSTOPped server closes nothing: its connections stay open and TCP still answers.
    The agent notices the missing heartbeats (2 s each by default, so 4.5 s of silence) and
    moves on, long before keepalive would; workloads keep their SVIDs throughout."""
    first, second = _two_servers(shared_database, server_factory)
    agent = _agent_of_both(first, second, agent_factory)
    register(first, agent, "/frozen", UID)
    assert first.process is not None
    frozen = first.process.pid
    try:
        with Sampler(agent.socket_path, svids=1) as sampler:
            wait_for(lambda: len(sampler.latest) == 1, 30, "the workload's SVID")
            moved_after, attached = _wait_for_move(
                agent, second, lambda: os.kill(frozen, signal.SIGSTOP)
            )
            wait_for(lambda: sampler.samples >= 10, 10, "samples after the move")
        assert sampler.failures == []
    finally:
        os.kill(frozen, signal.SIGCONT)
    assert attached["full"] is False
    (left,) = [e for e in _events(agent, "sync.disconnected") if e["server"] == _agent_api(first)]
    assert "no message from the server for 4.5s" in left["error"], left
    assert moved_after < 9, f"moved after {moved_after:.1f}s"  # not keepalive's 30 s
    register(second, agent, "/after-the-freeze", UID)


@pytest.mark.postgres
def test_a_move_resumes_from_the_log_unless_it_was_pruned(
    shared_database: str, server_factory: ServerFactory, agent_factory: AgentFactory
) -> None:
    """Issue 15: on another server the agent resumes from its revision while the change log
    covers it, and gets full state once the log was pruned past it."""
    first, second = _two_servers(shared_database, server_factory)
    agent = _agent_of_both(first, second, agent_factory)
    register(first, agent, "/mine", UID)
    _, attached = _kill_and_wait_for_move(agent, first, second)
    assert attached["full"] is False
    first.start()

    # Changes the agent is not entitled to (it keeps its revision), then the log is pruned
    # past that revision (keeping the newest event, as the server's own pruning does).
    since = attached["since_revision"]
    for n in range(2):
        second.create_entry(f"spiffe://example.org/other-{n}", "spiffe://example.org/x", [UID])
    with Datastore.open(shared_database) as store:
        assert store.prune_events(datetime.now(UTC) + timedelta(seconds=1)) >= 2
    _, pruned = _kill_and_wait_for_move(agent, second, first)
    assert pruned["full"] is True and pruned["since_revision"] >= since
    register(first, agent, "/after-prune", UID)


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


@pytest.mark.postgres
def test_an_agent_attested_on_one_server_is_not_refused_by_the_next(
    shared_database: str, server_factory: ServerFactory, agent_factory: AgentFactory
) -> None:
    """Attestation on server 1, the first Sync on server 2 a moment later: server 2 may not
    have followed the attestation yet, and must not refuse the agent (which would take the
    refusal for an eviction and, with a used join token, stop)."""
    first, second = _two_servers(shared_database, server_factory)
    for n in range(5):
        agent = agent_factory(server=first, name=f"a{n}", start=False)
        # Listed first, server 2 gets the Sync; the attestation port is server 1's.
        agent.extra_config = {"server": {"addresses": [_agent_api(second), _agent_api(first)]}}
        agent.write_config()
        agent.start(first.join_token())
        assert _events(agent, "sync.attached")[0]["server"] == _agent_api(second)
        register(second, agent, "/fresh", UID)
        assert agent.process is not None and agent.process.poll() is None
        agent.stop()


class _Watch:
    """The latest FetchX509SVID message of one open stream, read in a thread, so a test
    waits (with a deadline) for what the agent pushes rather than what it answers a poll."""

    def __init__(self, agent: AgentProcess) -> None:
        self.client = WorkloadApiClient(agent.socket_path, timeout=60)
        self.latest: X509Context | None = None
        self.messages = 0
        threading.Thread(target=self._follow, daemon=True).start()

    def _follow(self) -> None:
        with contextlib.suppress(WorkloadApiError):  # closed by the test
            for context in self.client.watch_x509_context():
                self.latest, self.messages = context, self.messages + 1

    def issuers(self) -> set[str]:
        return _issuers(self.latest.svids) if self.latest else set()

    def bundle_cas(self) -> set[str]:
        """The authority ids of the CAs in the workload's own trust-domain bundle."""
        if self.latest is None:
            return set()
        bundle = self.latest.bundles.get_bundle_for_trust_domain(TrustDomain.parse("example.org"))
        assert bundle is not None
        return {x509_authority_id(ca) for ca in bundle.x509_authorities}


def _active(server: ServerProcess, owner: ServerProcess) -> str:
    (active,) = [i for i, s in _authorities(server, owner).items() if s == "active"]
    return active


@pytest.mark.postgres
def test_a_dead_servers_active_key_is_tainted_and_revoked_through_the_live_one(
    shared_database: str, server_factory: ServerFactory, agent_factory: AgentFactory
) -> None:
    """Server 1 is SIGKILLed with its CA still active; its agent moves to server 2. Tainting
    that CA through server 2 gets the workload a new SVID from server 2's CA; server 1,
    restarted, replaces it; revoking it takes it out of the workload's bundle."""
    first, second = _two_servers(shared_database, server_factory)
    agent = _agent_of_both(first, second, agent_factory)
    register(first, agent, "/w", UID, extra=("--x509-svid-ttl", "86400"))  # only a taint renews
    dead = _active(first, first)
    watch = _Watch(agent)
    wait_for(lambda: watch.issuers() == {dead}, 30, "the workload's SVID from server 1")
    _kill_and_wait_for_move(agent, first, second)
    live = _active(second, second)
    assert dead in _authorities(second, first), "server 1's CA listed on server 2"

    second.cli("authority", "x509", "taint", dead)
    wait_for(lambda: watch.issuers() == {live}, 30, "a new SVID from server 2's CA")
    assert dead in watch.bundle_cas()  # tainted, not revoked: still trusted meanwhile
    # Server 1 restarts: it finds its active CA tainted and replaces it before serving.
    first.start()
    successor = _active(first, first)
    assert successor not in (dead, live)
    wait_for(lambda: _authorities(second, first)[dead] == "old", 10, "server 2 to see it")
    second.cli("authority", "x509", "revoke", dead)
    wait_for(lambda: dead not in watch.bundle_cas(), 30, "the revoked CA to leave the bundle")
    assert live in watch.bundle_cas() and watch.issuers() == {live}
    assert dead not in _authorities(second, first)
    watch.client.close()


@pytest.mark.postgres
def test_a_live_server_replaces_its_active_key_tainted_through_another(
    shared_database: str, server_factory: ServerFactory, agent_factory: AgentFactory
) -> None:
    """Server 2 taints server 1's active CA while server 1 runs: server 1 stops signing with
    it, publishes a successor, activates it, and re-signs its agent's workload with it."""
    first, second = _two_servers(shared_database, server_factory)
    agent = _agent_of_both(first, second, agent_factory)
    register(first, agent, "/w", UID, extra=("--x509-svid-ttl", "86400"))
    tainted = _active(first, first)
    watch = _Watch(agent)
    wait_for(lambda: watch.issuers() == {tainted}, 30, "the workload's SVID from server 1")

    second.cli("authority", "x509", "taint", tainted)
    successor = wait_for(
        lambda: (active := _active(first, first)) != tainted and active,
        30,
        "server 1 to activate a successor",
    )
    wait_for(lambda: watch.issuers() == {successor}, 30, "a new SVID from the successor")
    assert {tainted, successor} <= watch.bundle_cas()
    shown = {
        a["authority_id"]: a for a in first.cli_json("authority", "x509", "show")["authorities"]
    }
    assert shown[tainted]["state"] == "old" and shown[tainted]["tainted"]
    # The successor reached the bundle before it signed: published first, activated after.
    steps = [e for e in first.log_lines() if "tainted" in e.get("step", "")]
    assert [e["step"].split()[1] for e in steps] == ["prepared", "activated"], steps
    prepared_at, activated_at = (datetime.fromisoformat(e["timestamp"]) for e in steps)
    assert activated_at - prepared_at >= timedelta(seconds=2)  # two poll intervals
    # It keeps serving: a new entry gets an SVID from the successor.
    register(first, agent, "/after", UID)
    with WorkloadApiClient(agent.socket_path, timeout=30) as client:
        ids = wait_for(
            lambda: (
                {str(s.spiffe_id) for s in client.fetch_x509_context().svids}
                >= {
                    "spiffe://example.org/w",
                    "spiffe://example.org/after",
                }
            ),
            30,
            "the new entry's SVID",
        )
    assert ids
    second.cli("authority", "x509", "revoke", tainted)
    wait_for(lambda: tainted not in watch.bundle_cas(), 30, "the revoked CA to leave the bundle")
    watch.client.close()
