"""The agent daemon: one trio nursery (as a guest of asyncio) running every agent task.

Start-up order matters to an operator: the agent proves its identity first (from disk when
the persisted SVID is still valid, else by node attestation), takes its first Sync (or, with
a resumed identity, the cache it saved on disk: agent/cache/persisted.py), and only then
opens the Workload API, so a workload never sees PERMISSION_DENIED merely because the agent
had not synced yet. Server-facing tasks run in an inner nursery: if the server evicts
the agent, that nursery ends, the agent re-attests when its attestor allows it, and the
Workload API keeps serving the cache meanwhile.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import grpc
import trio

from insignia.agent.cache.persisted import CachePersister, read_cache_file, restore_cache
from insignia.agent.cache.store import Cache, Change
from insignia.agent.cache.sync import run_sync
from insignia.agent.config import AgentConfig
from insignia.agent.identity.keeper import IdentityKeeper
from insignia.agent.identity.node_attestation import NeedsNewJoinToken, forget_identity
from insignia.agent.identity.server_client import AgentEvicted, ServerClient
from insignia.agent.metrics import AgentMetrics
from insignia.agent.svids.signing import JwtMinter, MintBudget, X509Signer
from insignia.agent.svids.wit import WitIssuer
from insignia.agent.workloadapi.broker import API_NAME as BROKER_API
from insignia.agent.workloadapi.broker import BrokerApi, broker_api_handler
from insignia.agent.workloadapi.delegated_identity import API_NAME as DELEGATED_IDENTITY_API
from insignia.agent.workloadapi.delegated_identity import (
    DelegatedIdentity,
    delegated_identity_handler,
)
from insignia.agent.workloadapi.first_call import LoadedOnFirstCall
from insignia.agent.workloadapi.gate import (
    ConnectionNotOwned,
    WorkloadAttestationFailed,
    WorkloadGate,
)
from insignia.agent.workloadapi.on_behalf import OnBehalf
from insignia.agent.workloadapi.reflection import reflection_handlers
from insignia.agent.workloadapi.rpcs import WorkloadApi
from insignia.agent.workloadapi.sds_service import SDS_SERVICE, SdsNames
from insignia.attestors.interface import AttestationError, NodeAttestorAgent
from insignia.attestors.registry import ConfiguredWorkloadAttestor
from insignia.attestors.workload_attestation import attest_workload
from insignia.daemon.config.loading import refused_for_key
from insignia.daemon.files import check_owned_directory, ensure_data_dir, ensure_private_dir
from insignia.daemon.http.endpoint import serve_connection
from insignia.daemon.http.health import HealthApp, ReadyNote, serve_health
from insignia.daemon.instance import claim_socket_path, lock_data_dir
from insignia.daemon.logs import get_logger
from insignia.daemon.peercred.credentials import CallerTable, PeerCredentials, ProcessGone
from insignia.daemon.peercred.front import DEFAULT_MAX_CONNECTIONS, FrontLimits
from insignia.daemon.peercred.grpc_server import serve_grpc_with_peercred
from insignia.daemon.peercred.holders import connection_problem
from insignia.daemon.runtime import open_trio_bridge
from insignia.daemon.systemd_notify import sd_notify
from insignia.selectors import Selector
from insignia.spiffeid import SpiffeId
from insignia.workload_wire import workload_api_handler

log = get_logger("insignia.agent")

# Operators' tools and a few delegates, not workloads: the admin and Broker sockets need few.
ADMIN_MAX_CONNECTIONS = 256


Attest = Callable[[PeerCredentials], Awaitable[frozenset[Selector]]]
"""Trio side: the caller's selectors, or WorkloadAttestationFailed (deadline included)."""


def make_attest(
    attestors: tuple[ConfiguredWorkloadAttestor, ...], timeout: float, *, connected: bool = True
) -> Attest:
    """Workload attestation: every attestor at once, with a deadline. For a caller on a
    socket (`connected`), only once it is shown to hold its connection alone
    (insignia.daemon.peercred.holders); a process named by reference (Broker and Delegated
    Identity APIs) holds no connection of ours, so that check does not apply to it."""

    async def attest(creds: PeerCredentials) -> frozenset[Selector]:
        with trio.move_on_after(timeout + 1.0) as scope:
            try:
                if connected:
                    problem = await trio.to_thread.run_sync(connection_problem, creds)
                    if problem is not None:
                        raise ConnectionNotOwned(problem)
                return frozenset(await attest_workload(creds, attestors, timeout))
            except AttestationError as exc:
                raise WorkloadAttestationFailed(exc.plugin, str(exc)) from exc
            except (ProcessGone, ValueError) as exc:  # ValueError: its pidfd is closed
                raise WorkloadAttestationFailed("process_gone", str(exc)) from exc
        assert scope.cancelled_caught
        raise WorkloadAttestationFailed("timeout", f"no selectors within {timeout:g}s")

    return attest


class AgentDaemon:
    def __init__(
        self,
        config: AgentConfig,
        workload_attestors: tuple[ConfiguredWorkloadAttestor, ...],
        node_attestor: NodeAttestorAgent,
    ) -> None:
        self.config = config
        self.metrics = AgentMetrics()
        self.keeper = IdentityKeeper(config, node_attestor, self.metrics)
        self.cache = Cache(config.trust_domain_value)
        self.callers = CallerTable()
        self.attestors = workload_attestors
        self.synced = trio.Event()
        self.serving = False
        self.backoff = config.sync.backoff()
        self.cache.add_listener(self._on_change)
        self._bundle_dirty = trio.Event()
        self.persister = CachePersister(config.data_dir, self.cache, self._agent_id)
        # Set while the cache came from disk and no server has answered since: /ready says so.
        self.stale_since: str | None = None

    def _agent_id(self) -> SpiffeId | None:
        return self.keeper.identity.spiffe_id if self.keeper.identity else None

    def readiness(self) -> str | None:
        if self.keeper.identity is None:
            return "node attestation has not completed"
        if not self.synced.is_set():
            return "waiting for the first sync from the server"
        if not self.serving:
            return "the Workload API is not listening yet"
        if self.stale_since is not None:
            return ReadyNote(
                f"stale: serving from the disk cache (revision {self.cache.revision}, saved "
                f"{self.stale_since}); no server has answered since the agent started"
            )
        return None

    def _on_change(self, change: Change) -> None:
        self.persister.mark_dirty()
        if change.bundles:
            self._bundle_dirty.set()

    def _on_sync_update(self) -> None:
        if self.stale_since is not None:
            log.info("agent.cache_fresh", detail="a server answered; no longer serving stale")
            self.stale_since = None
        self.synced.set()
        self.persister.mark_dirty()  # the revision moved, even when no entry did

    async def _restore_cache(self) -> None:
        """After resuming a persisted identity: serve the cache it saved, until a server
        answers, so a restart during a server outage does not leave workloads empty-handed."""
        agent_id = self._agent_id()
        if not self.keeper.resumed or agent_id is None:
            return
        data_dir = self.config.data_dir
        found = await trio.to_thread.run_sync(read_cache_file, data_dir, self.cache)
        if found is None:
            return
        payload, saved = found
        svids = restore_cache(data_dir, self.cache, payload, agent_id)
        if svids is None:
            return
        self.stale_since = saved
        self.synced.set()
        self.metrics.cached_entries.set(len(self.cache.entries))
        log.info(
            "agent.cache_restored",
            entries=len(self.cache.entries),
            svids=svids,
            revision=self.cache.revision,
            saved=saved,
        )

    async def _follow_bundle(self, server: ServerClient) -> None:
        """Trust and persist every new bundle, so a restart survives CA rotation."""
        while True:
            await self._bundle_dirty.wait()
            self._bundle_dirty = trio.Event()
            view = self.cache.bundles
            if view is not None:
                server.set_roots(view.local.x509_pem())
                await self.keeper.update_bundle(view.local)
                self.keeper.note_tainted(view.tainted_x509)

    async def _server_tasks(self, server: ServerClient) -> None:
        signer = X509Signer(
            self.cache, server, self.config.workload.key_type, self.metrics, self.backoff
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.keeper.maintain, server)
            nursery.start_soon(signer.run)
            nursery.start_soon(self._follow_bundle, server)
            nursery.start_soon(
                lambda: run_sync(
                    server, self.cache, self.metrics, self.backoff, on_update=self._on_sync_update
                )
            )

    async def _stay_attested(self, server: ServerClient) -> None:
        """Run the server-facing tasks; after an eviction, re-attest or give up clearly."""
        while True:
            try:
                await self._server_tasks(server)
            except* AgentEvicted as group:
                detail = str(group.exceptions[0])
                identity = self.keeper.identity
                await trio.to_thread.run_sync(forget_identity, self.config.data_dir)
                if identity is None or not identity.reattestable:
                    raise NeedsNewJoinToken(detail) from None
                log.warning("agent.evicted_reattesting", detail=detail)
                await self.keeper.attest(server, self.backoff)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the data_dir lock for as long as the daemon runs; log when it has stopped."""
        with refused_for_key("data_dir"):
            ensure_data_dir(self.config.data_dir)
        with lock_data_dir(self.config.data_dir):
            try:
                await self._run(task_status)
            finally:
                if self.serving:  # a refusal to start is its own one line, not a stop
                    log.info("agent.stopped")

    async def _run(self, task_status: trio.TaskStatus[None]) -> None:
        config = self.config
        with refused_for_key("admin_socket_path"):
            admin_dir = ensure_private_dir(config.admin_socket_path.parent)
        with refused_for_key("socket_path"):
            config.socket_path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            # Whoever can write there can replace our socket with theirs and hand out identities.
            check_owned_directory(config.socket_path.parent, frozenset({0, os.geteuid()}))
        # Before attesting: a second agent on these paths must stop here, not after a join.
        broker_path = config.broker_api.socket_path
        if broker_path is not None:
            with refused_for_key("broker_api.socket_path"):
                broker_path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
                # As for socket_path: its directory must be ours, or the socket could be swapped.
                check_owned_directory(broker_path.parent, frozenset({0, os.geteuid()}))
        for path in (config.socket_path, config.admin_socket_path, broker_path):
            if path is not None:
                claim_socket_path(path)
        server = await self.keeper.start(self.backoff)
        await self._restore_cache()
        timeout = config.workload.attestation_timeout.total_seconds()
        async with open_trio_bridge() as bridge, trio.open_nursery() as nursery:
            nursery.start_soon(self._stay_attested, server)
            nursery.start_soon(self.persister.run)
            await self.synced.wait()
            attest = make_attest(self.attestors, timeout)
            api = WorkloadApi(
                self.cache,
                WorkloadGate(self.callers, lambda caller: bridge.call_trio(attest, caller)),
                JwtMinter(
                    self.cache,
                    server,
                    self.metrics,
                    MintBudget(
                        config.workload.jwt_mint_rate_per_uid,
                        config.workload.jwt_mint_rate_per_spiffe_id,
                    ),
                ),
                self.metrics,
                config.workload.audience_limits,
                WitIssuer(self.cache, server, config.workload.key_type, self.metrics, self.backoff),
            )
            sds = LoadedOnFirstCall(
                (SDS_SERVICE,),
                partial(_sds_handlers, api, self.cache, self.metrics, config.sds.names),
            )
            attest_referenced = make_attest(self.attestors, timeout, connected=False)

            def on_behalf(name: str, role: str, allowed: frozenset[SpiffeId]) -> OnBehalf:
                return OnBehalf(
                    name,
                    role,
                    api,
                    self.cache,
                    lambda process: bridge.call_trio(attest_referenced, process),
                    allowed,
                )

            max_bytes = config.workload.max_message_bytes
            await nursery.start(
                lambda task_status: serve_grpc_with_peercred(
                    config.socket_path,
                    [workload_api_handler(api), sds, *reflection_handlers()],
                    self.callers,
                    private_dir=admin_dir / "workload",
                    max_connections=DEFAULT_MAX_CONNECTIONS,
                    max_connections_per_uid=config.workload.max_connections_per_uid,
                    limits=FrontLimits(stall_timeout=config.workload.stall_timeout.total_seconds()),
                    server_options=(
                        ("grpc.max_receive_message_length", max_bytes),
                        ("grpc.max_send_message_length", max_bytes),
                    ),
                    task_status=task_status,
                )
            )
            self.serving = True
            health = HealthApp(self.metrics.registry, self.readiness, log_control=True)
            # The admin socket (its directory is 0700: operators only) answers HTTP/1.1 for
            # health, metrics and the log level, and gRPC for SPIRE's Delegated Identity API.
            await nursery.start(
                lambda task_status: serve_grpc_with_peercred(
                    config.admin_socket_path,
                    [
                        delegated_identity_handler(
                            DelegatedIdentity(
                                on_behalf(DELEGATED_IDENTITY_API, "delegate", config.delegates)
                            )
                        )
                    ],
                    self.callers,
                    private_dir=admin_dir / "admin",
                    mode=0o600,
                    max_connections=ADMIN_MAX_CONNECTIONS,
                    other_protocol=lambda stream: serve_connection(stream, health.handle),
                    task_status=task_status,
                )
            )
            broker_path = config.broker_api.socket_path
            if broker_path is not None:
                await nursery.start(
                    lambda task_status: serve_grpc_with_peercred(
                        broker_path,
                        [
                            broker_api_handler(
                                BrokerApi(
                                    on_behalf(BROKER_API, "broker", config.broker_api.brokers)
                                )
                            )
                        ],
                        self.callers,
                        private_dir=admin_dir / "broker",
                        max_connections=ADMIN_MAX_CONNECTIONS,
                        task_status=task_status,
                    )
                )
            for address in dict.fromkeys((config.health.address, config.metrics.address)):
                if address:
                    key = "health" if address == config.health.address else "metrics"
                    with refused_for_key(f"{key}.address"):
                        await nursery.start(
                            serve_health, address, self.metrics.registry, self.readiness
                        )
            log.info(
                "agent.ready",
                spiffe_id=str(self.keeper.identity.spiffe_id) if self.keeper.identity else None,
                socket=str(config.socket_path),
            )
            sd_notify("READY=1")
            task_status.started()
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGHUP) as signals:
                async for signum in signals:
                    if signum == signal.SIGHUP:  # would otherwise kill the daemon
                        log.info("agent.sighup_ignored", detail="no reload; restart to reconfigure")
                        continue
                    log.info("agent.stopping", signal="SIGTERM")
                    sd_notify("STOPPING=1")
                    await self.persister.write_now()  # the latest SVIDs, for the next start
                    nursery.cancel_scope.cancel()
                    return


def _sds_handlers(
    api: WorkloadApi, cache: Cache, metrics: AgentMetrics, names: SdsNames
) -> list[grpc.GenericRpcHandler[Any, Any]]:
    """The SDS handler, imported on the first SDS call (agent/workloadapi/first_call.py)."""
    from insignia.agent.workloadapi.sds import SecretDiscovery, sds_handler

    return [sds_handler(SecretDiscovery(api, cache, metrics, names))]
