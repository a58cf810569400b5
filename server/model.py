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
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from insignia_proto import agent_pb2

from insignia.spiffeid import SpiffeId
from server.authorization import EntryChange, EntryIndex
from server.datastore.records import AgentRecord
from server.entries import RegistrationEntry
from server.sync import AgentHistory, bundle_digest


@dataclass(frozen=True, slots=True)
class AgentStatus:
    """Why an agent's RPC is refused, if it is; None from `check_agent` means accepted."""

    code: str  # "unknown", "banned", "stale"
    message: str


class ServerModel:
    def __init__(self, server_id: SpiffeId) -> None:
        self.server_id = server_id
        self.store_id = secrets.token_hex(16)  # per process: see server/sync.py
        self.revision = 0
        self.index = EntryIndex(server_id)
        self.agents: dict[SpiffeId, AgentRecord] = {}
        self.bundle_state = agent_pb2.BundleState()
        self.bundle_state_digest = bundle_digest(self.bundle_state)
        self.histories: dict[SpiffeId, AgentHistory] = {}
        self._authorized: dict[SpiffeId, dict[str, RegistrationEntry]] = {}
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

    def authorized(self, agent_id: SpiffeId) -> dict[str, RegistrationEntry]:
        """Entries the agent may have SVIDs for (cached until a change affects it)."""
        cached = self._authorized.get(agent_id)
        if cached is None:
            record = self.agents.get(agent_id)
            selectors = record.selectors if record is not None else ()
            cached = {e.id: e for e in self.index.authorized_entries(agent_id, selectors)}
            self._authorized[agent_id] = cached
        return cached

    def check_agent(self, agent_id: SpiffeId, serial: str) -> AgentStatus | None:
        """Is `serial` a current SVID of a known, unbanned agent?"""
        record = self.agents.get(agent_id)
        if record is None:
            return AgentStatus("unknown", f"agent {agent_id} is not attested (evicted?)")
        if record.banned:
            return AgentStatus("banned", f"agent {agent_id} is banned")
        if serial not in (record.serial_number, record.new_serial_number):
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
