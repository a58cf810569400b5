"""The server's in-memory view of entries, agents and the bundle state, kept current from the
datastore's change log, and the wake-ups that push changes to connected agents.

Lives on the daemon's one thread (trio guest + asyncio host), so gRPC handlers read it without
locks. Writes reach it two ways: the change-log follower (every datastore write, whoever made
it), and directly from the handler that made a write, so an agent that just attested can call
Sync at once without waiting for the follower.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime

from insignia_proto import agent_pb2

from insignia.server.agentapi.authorization import EntryChange, EntryIndex
from insignia.server.agentapi.sync import AgentHistory, bundle_digest
from insignia.server.datastore.records import AgentRecord
from insignia.server.entries import RegistrationEntry
from insignia.spiffeid import SpiffeId


@dataclass(frozen=True, slots=True)
class _Authorized:
    entries: dict[str, RegistrationEntry]
    valid_until: datetime | None  # when the first of `entries` expires


def _same_svid(serial: str, fingerprint: str, known_serial: str, known_fingerprint: str) -> bool:
    """ "" as the known fingerprint: recorded before fingerprints were (schema 0001)."""
    if not known_serial or serial != known_serial:
        return False
    return not known_fingerprint or hmac.compare_digest(fingerprint, known_fingerprint)


@dataclass(frozen=True, slots=True)
class AgentStatus:
    """Why an agent's RPC is refused, if it is; None from `check_agent` means accepted."""

    code: str  # "unknown", "banned", "stale"
    message: str


class ServerModel:
    def __init__(self, server_id: SpiffeId) -> None:
        self.server_id = server_id
        # The datastore's (ServerCore.load_model): resume points hold across its servers.
        self.store_id = secrets.token_hex(16)
        self.revision = 0
        self.index = EntryIndex(server_id)
        self.agents: dict[SpiffeId, AgentRecord] = {}
        self.bundle_state = agent_pb2.BundleState()
        self.bundle_state_digest = bundle_digest(self.bundle_state)
        self.histories: dict[SpiffeId, AgentHistory] = {}
        self._authorized: dict[SpiffeId, _Authorized] = {}
        self._watchers: dict[SpiffeId, set[asyncio.Event]] = {}

    # --- loading and applying changes ---------------------------------------------------

    def load(
        self, entries: Iterable[RegistrationEntry], agents: Iterable[AgentRecord], revision: int
    ) -> None:
        self.index = EntryIndex(self.server_id, entries)
        self.agents = {a.spiffe_id: a for a in agents}
        self.revision = revision
        self._authorized.clear()
        self._wake_all()

    def apply_entry_changes(self, changes: Iterable[EntryChange]) -> frozenset[SpiffeId]:
        """Update the index; wake (and return) the agents whose authorized set may differ."""
        selectors = {a: frozenset(r.selectors) for a, r in self.agents.items()}
        affected: set[SpiffeId] = set()
        for change in changes:
            affected |= self.index.affected_agents(change, selectors)
            self.index.apply(change)
        for agent_id in affected:
            self._authorized.pop(agent_id, None)
            self._wake(agent_id)
        return frozenset(affected)

    def apply_agent(self, agent_id: SpiffeId, record: AgentRecord | None) -> None:
        if record is None:
            self.agents.pop(agent_id, None)
            self.histories.pop(agent_id, None)
        else:
            self.agents[agent_id] = record
        self._authorized.pop(agent_id, None)
        self._wake(agent_id)

    def set_bundle_state(self, state: agent_pb2.BundleState) -> bool:
        digest = bundle_digest(state)
        if digest == self.bundle_state_digest:
            return False
        self.bundle_state, self.bundle_state_digest = state, digest
        self._wake_all()
        return True

    # --- queries ------------------------------------------------------------------------

    def authorized(self, agent_id: SpiffeId, now: datetime) -> dict[str, RegistrationEntry]:
        """Entries the agent may have SVIDs for at `now`: expired entries are left out even
        before housekeeping prunes them. Cached until a change affects the agent or the
        first cached entry expires."""
        cached = self._authorized.get(agent_id)
        if cached is None or (cached.valid_until is not None and now >= cached.valid_until):
            record = self.agents.get(agent_id)
            selectors = record.selectors if record is not None else ()
            found = self.index.authorized_by_id(agent_id, selectors, now)
            expiries = [e.expires_at for e in found.values() if e.expires_at is not None]
            cached = _Authorized(found, min(expiries, default=None))
            self._authorized[agent_id] = cached
        return cached.entries

    def check_agent(self, agent_id: SpiffeId, serial: str, fingerprint: str) -> AgentStatus | None:
        """Is the SVID with `serial` and `fingerprint` (SHA-256 hex of its DER) a current SVID
        of a known, unbanned agent? The serial alone is not enough: another CA the bundle
        trusts (an upstream's sibling) could issue a certificate with the same serial."""
        record = self.agents.get(agent_id)
        if record is None:
            return AgentStatus("unknown", f"agent {agent_id} is not attested (evicted?)")
        if record.banned:
            return AgentStatus("banned", f"agent {agent_id} is banned")
        current = (
            (record.serial_number, record.svid_fingerprint),
            (record.new_serial_number, record.new_svid_fingerprint),
        )
        if not any(_same_svid(serial, fingerprint, s, f) for s, f in current):
            return AgentStatus("stale", f"agent {agent_id}: SVID serial {serial} is not current")
        return None

    def history(self, agent_id: SpiffeId) -> AgentHistory:
        return self.histories.setdefault(agent_id, AgentHistory())

    # --- wake-ups for Sync streams ------------------------------------------------------

    @contextlib.contextmanager
    def watch(self, agent_id: SpiffeId) -> Iterator[asyncio.Event]:
        """An event set whenever something the agent may see changed (stream lifetime)."""
        event = asyncio.Event()
        self._watchers.setdefault(agent_id, set()).add(event)
        try:
            yield event
        finally:
            watchers = self._watchers.get(agent_id)
            if watchers is not None:
                watchers.discard(event)
                if not watchers:
                    del self._watchers[agent_id]

    def connected_agents(self) -> int:
        return len(self._watchers)

    def _wake(self, agent_id: SpiffeId) -> None:
        for event in self._watchers.get(agent_id, ()):
            event.set()

    def _wake_all(self) -> None:
        for events in self._watchers.values():
            for event in events:
                event.set()
