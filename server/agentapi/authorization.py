"""Which registration entries an agent may fetch SVIDs for: a pure decision over entries.

An agent is authorized for the entries parented to its own ID, the node-alias entries whose
selectors it holds (parent = the server ID), and, transitively, every entry parented to the
SPIFFE ID of an entry it is already authorized for (nested and downstream workloads). The
server asks this for every connected agent, so the index is built once and updated per change
instead of scanning all entries.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from insignia.daemon.reserved_ids import is_agent_id
from insignia.selectors import Selector, matches
from insignia.server.entries import RegistrationEntry
from insignia.spiffeid import SpiffeId

K = TypeVar("K", SpiffeId, Selector)


@dataclass(frozen=True, slots=True)
class EntryChange:
    """One entry before and after a change: `old` is None on create, `new` None on delete."""

    old: RegistrationEntry | None
    new: RegistrationEntry | None

    def __post_init__(self) -> None:
        if self.old is None and self.new is None:
            raise ValueError("an entry change needs an old or a new entry")
        if self.old is not None and self.new is not None and self.old.id != self.new.id:
            raise ValueError(f"entry change mixes ids {self.old.id!r} and {self.new.id!r}")


class EntryIndex:
    """Entries indexed by parent ID, by SPIFFE ID, and node aliases by one of their selectors.

    Not thread-safe: the server keeps one per process and updates it from a single task.
    """

    def __init__(self, server_id: SpiffeId, entries: Iterable[RegistrationEntry] = ()) -> None:
        self.server_id = server_id
        self._by_id: dict[str, RegistrationEntry] = {}
        self._by_parent: defaultdict[SpiffeId, dict[str, RegistrationEntry]] = defaultdict(dict)
        self._by_spiffe_id: defaultdict[SpiffeId, dict[str, RegistrationEntry]] = defaultdict(dict)
        # Node aliases keyed by their smallest selector: an agent can only match an alias
        # whose every selector it holds, so that one selector is a sound lookup key.
        self._aliases_by_key: defaultdict[Selector, dict[str, RegistrationEntry]] = defaultdict(
            dict
        )
        for entry in entries:
            self.upsert(entry)

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, entry_id: object) -> bool:
        return entry_id in self._by_id

    def get(self, entry_id: str) -> RegistrationEntry | None:
        return self._by_id.get(entry_id)

    def entries(self) -> Iterable[RegistrationEntry]:
        return self._by_id.values()

    def upsert(self, entry: RegistrationEntry) -> RegistrationEntry | None:
        """Add or replace an entry; returns the version it replaced."""
        old = self.remove(entry.id)
        self._by_id[entry.id] = entry
        self._by_parent[entry.parent_id][entry.id] = entry
        self._by_spiffe_id[entry.spiffe_id][entry.id] = entry
        if self._is_alias(entry):
            self._aliases_by_key[entry.selectors[0]][entry.id] = entry
        return old

    def remove(self, entry_id: str) -> RegistrationEntry | None:
        entry = self._by_id.pop(entry_id, None)
        if entry is None:
            return None
        _discard(self._by_parent, entry.parent_id, entry_id)
        _discard(self._by_spiffe_id, entry.spiffe_id, entry_id)
        if self._is_alias(entry):
            _discard(self._aliases_by_key, entry.selectors[0], entry_id)
        return entry

    def apply(self, change: EntryChange) -> None:
        if change.new is None:
            assert change.old is not None
            self.remove(change.old.id)
        else:
            self.upsert(change.new)

    def has_children(self, spiffe_id: SpiffeId) -> bool:
        """Whether some entry is parented to `spiffe_id` (its authorization hangs on it)."""
        return spiffe_id in self._by_parent

    def has_orphans(self) -> bool:
        """Whether some entry's parent is neither the server, an agent, nor an entry: the
        trace an entry leaves when it was deleted, or renamed, under its children."""
        return any(
            parent != self.server_id
            and not is_agent_id(parent)
            and parent not in self._by_spiffe_id
            for parent in self._by_parent
        )

    def _is_alias(self, entry: RegistrationEntry) -> bool:
        return entry.parent_id == self.server_id and bool(entry.selectors)

    def matching_aliases(self, node_selectors: frozenset[Selector]) -> list[RegistrationEntry]:
        """Node-alias entries whose selectors are all among the agent's node selectors."""
        found: list[RegistrationEntry] = []
        for selector in node_selectors:
            for alias in self._aliases_by_key.get(selector, {}).values():
                if matches(alias.selectors, node_selectors):
                    found.append(alias)
        return found

    def authorized_entries(
        self,
        agent_id: SpiffeId,
        node_selectors: Iterable[Selector],
        now: datetime | None = None,
    ) -> list[RegistrationEntry]:
        """Every entry the agent may fetch, each once. With `now`, expired entries (and
        whatever is reachable only through them) are left out."""
        return list(self.authorized_by_id(agent_id, node_selectors, now).values())

    def authorized_by_id(
        self,
        agent_id: SpiffeId,
        node_selectors: Iterable[Selector],
        now: datetime | None = None,
    ) -> dict[str, RegistrationEntry]:
        """`authorized_entries` keyed by entry id, as it is built (the server's cache keeps
        this form: a second dict of 100k entries costs as much as the walk)."""
        selectors = frozenset(node_selectors)
        authorized: dict[str, RegistrationEntry] = {}
        visited: set[SpiffeId] = {agent_id}
        frontier: list[SpiffeId] = [agent_id]
        for alias in self.matching_aliases(selectors):
            if now is None or not alias.expired(now):
                authorized[alias.id] = alias
                if alias.spiffe_id not in visited:
                    visited.add(alias.spiffe_id)
                    frontier.append(alias.spiffe_id)
        by_parent = self._by_parent
        while frontier:
            parent = frontier.pop()
            if parent == self.server_id:
                continue  # aliases are granted by selectors above, never by parentage
            for entry in by_parent.get(parent, {}).values():
                if entry.id in authorized or (now is not None and entry.expired(now)):
                    continue
                authorized[entry.id] = entry
                # Only an ID with children widens the set: leaves (most entries) skip the
                # visited set, which costs two SpiffeId hashes each.
                spiffe_id = entry.spiffe_id
                if spiffe_id in by_parent and spiffe_id not in visited:
                    visited.add(spiffe_id)
                    frontier.append(spiffe_id)
        return authorized

    def agents_reaching(
        self,
        entry: RegistrationEntry,
        agents: Mapping[SpiffeId, frozenset[Selector]],
    ) -> set[SpiffeId]:
        """The agents (from `agents`: id -> node selectors) authorized for `entry`, judged by
        its parent alone, so the answer holds both before and after `entry` itself changes."""
        reached: set[SpiffeId] = set()
        seen: set[SpiffeId] = set()
        pending: list[RegistrationEntry] = [entry]
        while pending:
            current = pending.pop()
            if current.parent_id == self.server_id:
                reached.update(
                    agent
                    for agent, selectors in agents.items()
                    if matches(current.selectors, selectors)
                )
                continue
            parent = current.parent_id
            if parent in seen:
                continue
            seen.add(parent)
            if parent in agents:
                reached.add(parent)
            for ancestor in self._by_spiffe_id.get(parent, {}).values():
                if ancestor.id != entry.id:
                    pending.append(ancestor)
        return reached

    def affected_agents(
        self,
        change: EntryChange,
        agents: Mapping[SpiffeId, frozenset[Selector]],
    ) -> frozenset[SpiffeId]:
        """Agents whose authorized set may differ because of `change`: those that reached the
        old version and those that reach the new one (with everything nested below them).

        Call it before or after `apply(change)`: the answer ignores the changed entry's own
        index slot, so both orders give the same set.
        """
        affected: set[SpiffeId] = set()
        for version in (change.old, change.new):
            if version is not None:
                affected |= self.agents_reaching(version, agents)
        return frozenset(affected)


def authorized_entries(
    agent_id: SpiffeId,
    node_selectors: Iterable[Selector],
    entries: Iterable[RegistrationEntry],
    server_id: SpiffeId,
    now: datetime | None = None,
) -> list[RegistrationEntry]:
    """One-shot form of `EntryIndex.authorized_entries` for callers without an index."""
    return EntryIndex(server_id, entries).authorized_entries(agent_id, node_selectors, now)


def _discard(index: dict[K, dict[str, RegistrationEntry]], key: K, entry_id: str) -> None:
    bucket = index.get(key)
    if bucket is not None:
        bucket.pop(entry_id, None)
        if not bucket:
            del index[key]
