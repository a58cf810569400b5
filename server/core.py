"""What both APIs share: config, datastore, CA, in-memory model, metrics, and the writes that
must also update the model (agents, the published bundle).

The change-log follower lives here too: it turns every committed datastore write (from this
process or another) into model updates and Sync wake-ups, usually within milliseconds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import trio
from insignia_proto import agent_pb2

from insignia.attestors.interface import NodeAttestorServer
from insignia.daemon.logs import get_logger
from insignia.daemon.ratelimit import RateLimiter
from insignia.daemon.runtime import TrioBridge
from insignia.server.agentapi.authorization import EntryChange
from insignia.server.ca.authorities import Authorities
from insignia.server.ca.bundle_publication import publication
from insignia.server.ca.signer_pool import SignerPool, default_processes
from insignia.server.ca.state import KEY_KINDS, x509_authority_id
from insignia.server.config import ServerConfig
from insignia.server.datastore.errors import DatastoreUnavailable, JoinTokenError, RevisionPruned
from insignia.server.datastore.records import AgentRecord, BundleRecord, CaKeyRecord, ChangeEvent
from insignia.server.datastore.store import Datastore
from insignia.server.entries import Defaults, EntryLimits, server_spiffe_id
from insignia.server.federation.relationship import (
    Relationship,
    relationships_in_force,
)
from insignia.server.federation.status import RefreshStatus
from insignia.server.federation.stored import stored_relationship
from insignia.server.metrics import ServerMetrics
from insignia.server.model import ServerModel
from insignia.spiffeid import SpiffeId, TrustDomain

T = TypeVar("T")
log = get_logger("insignia.server")


def utc_now() -> datetime:
    return datetime.now(UTC)


class JoinTokens:
    """`JoinTokenStore` for the join_token attestor: one use per token, atomically."""

    def __init__(self, store: Datastore | None = None) -> None:
        self.store = store

    async def consume_token(self, token: str, now: datetime) -> bool:
        if self.store is None:
            return False
        try:
            await trio.to_thread.run_sync(self.store.consume_join_token, token)
        except JoinTokenError as exc:
            log.info("join token refused", reason=exc.reason)
            return False
        return True


@dataclass
class ServerCore:
    config: ServerConfig
    store: Datastore
    authorities: Authorities
    metrics: ServerMetrics
    bridge: TrioBridge | None = None
    attestors: dict[str, NodeAttestorServer] = field(default_factory=dict)
    clock: Callable[[], datetime] = utc_now
    instance_id: str = ""  # this server among those sharing the database (server/registry.py)

    def __post_init__(self) -> None:
        self.trust_domain: TrustDomain = self.config.td
        self.server_id: SpiffeId = server_spiffe_id(self.trust_domain)
        self.model = ServerModel(self.server_id)
        self.defaults = Defaults(
            self.config.default_x509_svid_ttl, self.config.default_jwt_svid_ttl
        )
        api = self.config.agent_api
        self.attestation_limiter = RateLimiter(api.attestation_rate)
        self.signing_limiters = {
            "x509": RateLimiter(api.x509_signing_rate),
            "jwt": RateLimiter(api.jwt_signing_rate),
            "wit": RateLimiter(api.jwt_signing_rate),
        }
        self.limits = EntryLimits.for_ca(self.trust_domain, self.config.ca.ttl)
        self.ca_lock = trio.Lock()
        # Set when another server's journal write changed our keys: a taint or revocation of
        # our active key needs a successor (the rotation loop waits on it).
        self.rotation_due = trio.Event()
        self.attestations_in_flight = 0  # on the event loop thread only: no lock
        self.ready_reason: str | None = "starting"
        processes = api.signing_processes
        self.signer = SignerPool(default_processes() if processes < 0 else processes)
        self.on_ca_change: Callable[[], None] = lambda: None
        # The config file's relationships by peer trust domain; `on_federation_change` hears
        # every new set in force (the datastore's, overridden by the config's).
        self.configured_federation: dict[TrustDomain, Relationship] = {}
        self.on_federation_change: Callable[[dict[TrustDomain, Relationship]], None] = (
            lambda _relationships: None
        )
        self.federation: dict[TrustDomain, Relationship] = {}  # in force, as last reloaded
        self.federation_status: dict[TrustDomain, RefreshStatus] = {}  # kept by the refresher
        # Told every batch of changes the follower applied (the console's live events).
        self.on_changes: Callable[[Sequence[ChangeEvent]], None] = lambda events: None

    @property
    def settings_upstream_id(self) -> str:
        upstream = self.authorities.settings.upstream
        return x509_authority_id(upstream.authority.certificate) if upstream else ""

    def readiness(self) -> str | None:
        """None when ready, else why not (blocking: pings the database)."""
        try:
            self.store.ping()
        except DatastoreUnavailable as exc:
            return f"datastore unavailable: {exc}"
        if self.authorities.state.active_x509() is None:
            return "no active X.509 CA"
        for kind in KEY_KINDS:
            if self.authorities.state.active_key(kind) is None:
                return f"no active {kind.upper()} signing key"
        return None

    def active_key_ids(self) -> tuple[str, str]:
        """The X.509 CA and JWT key this server signs with now ("" for none), for the
        servers registry."""
        state = self.authorities.state
        x509_authority, jwt = state.active_x509(), state.active_key("jwt")
        return (
            x509_authority_id(x509_authority.certificate) if x509_authority else "",
            jwt[0] if jwt else "",
        )

    # --- running blocking work off the event loop ---------------------------------------

    async def blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking call (SQL, key generation) in a worker thread from asyncio code."""
        return await asyncio.to_thread(fn, *args)

    async def ca_operation(self, fn: Callable[..., T], *args: Any) -> T:
        """From trio: run a CA change (rotation step or operator command) in a thread, one at
        a time, then republish the bundle and push the new bundle state to agents."""
        async with self.ca_lock:
            result = await trio.to_thread.run_sync(fn, *args)
            await self._after_ca_change()
        return result

    async def adopt_journal(self) -> None:
        """From trio: take in other servers' CA journal changes (their keys, taint or revoke
        of ours), and republish only if something changed."""
        async with self.ca_lock:
            if await trio.to_thread.run_sync(self.authorities.adopt_journal):
                await self._after_ca_change()
                self.rotation_due.set()

    async def replace_compromised_keys(self) -> None:
        """From trio: our active key was tainted through another server, so it signs nothing
        more (`CaState.active_x509`). Activate the prepared successor, which every bundle
        already holds; without one, prepare it, publish it, and activate it only after two
        poll intervals, by when every live server's follower has read the new bundle and
        pushed it to its agents: a key reaches every bundle before it signs."""
        while self.authorities.compromised():
            done, prepared = await self.ca_operation(self.authorities.replace_compromised)
            for step in done:
                log.info("ca rotation", step=step)
            if prepared:
                await trio.sleep(2 * self.config.cluster.poll_interval.total_seconds())

    async def refresh_bundle(self) -> None:
        """From trio: republish when time alone changed the bundle (a stale server's key
        expired: nobody else will drop it)."""
        async with self.ca_lock:
            if await trio.to_thread.run_sync(self.publish_bundle):
                self.model.set_bundle_state(await trio.to_thread.run_sync(self.bundle_state))

    async def _after_ca_change(self) -> None:
        await trio.to_thread.run_sync(self.publish_bundle)
        self.model.set_bundle_state(await trio.to_thread.run_sync(self.bundle_state))
        self.on_ca_change()
        self._export_ca_expiry()

    def _export_ca_expiry(self) -> None:
        state = self.authorities.state
        x509_authority = state.active_x509()
        if x509_authority is not None:
            self.metrics.ca_expiry.labels("x509").set(x509_authority.not_after.timestamp())
        for kind in KEY_KINDS:
            not_after = state.active_key_not_after(kind)
            if not_after is not None:
                self.metrics.ca_expiry.labels(kind).set(not_after.timestamp())

    async def in_trio(self, fn: Callable[..., Any], *args: Any) -> Any:
        """From asyncio: run trio function `fn(*args)` in the daemon's nursery."""
        assert self.bridge is not None
        return await self.bridge.call_trio(fn, *args)

    # --- writes that the model must see at once -------------------------------------------

    async def save_agent(self, record: AgentRecord) -> AgentRecord:
        stored = await self.blocking(self.store.put_agent, record)
        self.model.apply_agent(stored.spiffe_id, stored)
        return stored

    async def reread_agent(self, agent_id: SpiffeId) -> None:
        """Take the agent's row from the datastore now, ahead of the follower: another server
        may have attested or renewed it a moment ago, and a refusal must rest on what the
        datastore says, since the agent takes it for an eviction."""
        record = await self.blocking(self.store.find_agent, agent_id)
        self.model.apply_agent(agent_id, record)

    # --- bundle publishing ------------------------------------------------------------------

    def publish_bundle(self) -> bool:
        """Recompute the local bundle from every server's keys in the CA journal; store it if
        it changed (True then). One write transaction reads the journal and writes the
        bundle, so two servers publishing at once cannot drop each other's new keys.

        Blocking (SQL): call from a worker thread. The model update happens via the follower
        (bundle and CA journal events), and directly here for this process.
        """

        def compose(journal: list[CaKeyRecord], stored: BundleRecord | None) -> str | None:
            first = stored.sequence if stored else 0
            current = self.authorities.bundle(first, journal).to_spiffe().decode()
            decided = publication(stored, current)
            if not decided.store:
                return None
            return self.authorities.bundle(decided.sequence, journal).to_spiffe().decode()

        return self.store.update_bundle(self.trust_domain, compose)

    def bundle_state(self) -> agent_pb2.BundleState:
        """Blocking read of the bundles table plus the in-memory taint lists."""
        state = agent_pb2.BundleState(
            tainted_x509_authorities=self.authorities.tainted("x509"),
            tainted_jwt_authorities=self.authorities.tainted("jwt"),
            tainted_wit_authorities=self.authorities.tainted("wit"),
        )
        for record in self.store.list_bundles():
            if record.trust_domain == self.trust_domain:
                state.spiffe_bundle = record.document.encode()
            else:
                state.federated_bundles[str(record.trust_domain)] = record.document.encode()
        return state

    # --- federation relationships -------------------------------------------------------------

    async def reload_federation(self) -> None:
        """From trio: the relationships in force again, from the config and the datastore."""
        records = await trio.to_thread.run_sync(self.store.list_federations)
        stored = []
        for record in records:
            try:
                stored.append(stored_relationship(record))
            except ValueError as exc:  # written by a release with other rules: skip, say so
                log.warning(
                    "federation.relationship_unusable",
                    trust_domain=str(record.trust_domain),
                    error=str(exc),
                )
        self.federation = relationships_in_force(self.configured_federation.values(), stored)
        self.on_federation_change(self.federation)

    # --- following the change log --------------------------------------------------------------

    async def load_model(self) -> None:
        self.model.store_id = await trio.to_thread.run_sync(self.store.store_id)
        snapshot = await trio.to_thread.run_sync(self.store.entries_snapshot)
        agents = await trio.to_thread.run_sync(self.store.list_agents)
        self.model.load(snapshot.entries, agents, snapshot.revision)
        self.model.set_bundle_state(await trio.to_thread.run_sync(self.bundle_state))

    async def follow(self, wakeup: trio.Event | None = None) -> None:
        """Apply every change after `model.revision`; returns when caught up."""
        try:
            events = await trio.to_thread.run_sync(self.store.events_since, self.model.revision)
        except RevisionPruned:
            await self.load_model()
            return
        if not events:
            return
        entry_ids = {e.subject for e in events if e.kind == "entry"}
        agent_ids = {e.subject for e in events if e.kind == "agent"}
        bundle_changed = any(e.kind == "bundle" for e in events)
        journal_changed = any(e.kind == "ca_key" for e in events)
        federation_changed = any(e.kind == "federation" for e in events)
        loaded = await trio.to_thread.run_sync(self.store.get_entries, entry_ids)
        changes = [
            EntryChange(self.model.index.get(i), loaded.get(i))
            for i in entry_ids
            if self.model.index.get(i) is not None or loaded.get(i) is not None
        ]
        self.model.apply_entry_changes(changes)
        for agent_text in agent_ids:
            agent_id = SpiffeId.parse(agent_text)
            record = await trio.to_thread.run_sync(self.store.find_agent, agent_id)
            self.model.apply_agent(agent_id, record)
        if federation_changed:  # before the revision moves on: a failure retries it
            await self.reload_federation()
        self.model.revision = events[-1].revision
        self.on_changes(events)
        if journal_changed:
            await self.adopt_journal()
        if bundle_changed or journal_changed:
            # Under the CA lock: mid-operation, the journal and the bundles table disagree.
            async with self.ca_lock:
                self.model.set_bundle_state(await trio.to_thread.run_sync(self.bundle_state))
