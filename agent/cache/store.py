"""The agent's in-memory view: authorized entries, bundles, tainted authorities and SVIDs
(X.509, JWT, and WIT-SVIDs with the key pairs they bind).

The cache is the single source the Workload API answers from, so it keeps answering while
the server is unreachable. It is owned by the daemon's one thread (trio and grpc.aio share
it, docs/design-notes.md §2), so it takes no locks. Every mutation reports a `Change`, and the cache
wakes only the subscribers (open workload streams) whose selectors the change can concern:
a rotated SVID wakes the workloads holding that entry, not every stream on the node.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Final, Protocol

from insignia.agent.cache.entries import Entry, entitled
from insignia.agent.svids.rotation import SvidTiming, WitTiming
from insignia.bundle import Bundle
from insignia.selectors import Selector, matches
from insignia.spiffeid import SpiffeId, TrustDomain

MAX_JWT_CACHE_BYTES_PER_ENTRY: Final = 1024 * 1024
"""A workload picks its audiences freely; this bounds what one entry can make the cache hold
(tokens and their audience keys, by bytes: a count would let large audiences multiply it)."""
_RECORD_OVERHEAD: Final = 256  # the record, its datetimes and the dict slots, roughly


@dataclass(frozen=True, slots=True)
class X509SvidRecord:
    entry_id: str
    spiffe_id: SpiffeId
    chain_der: bytes  # concatenated DER, leaf first (the Workload API encoding)
    key_der: bytes  # PKCS#8 DER; generated on this node and never sent anywhere else
    timing: SvidTiming


@dataclass(frozen=True, slots=True)
class JwtSvidRecord:
    spiffe_id: SpiffeId
    token: str
    kid: str
    issued_at: datetime
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class WitSvidRecord:
    """A WIT-SVID and the key pair it binds (made on this node; the server saw the public
    half only). `key_jwk` is the private JWK the Workload API hands out."""

    entry_id: str
    spiffe_id: SpiffeId
    token: str
    key_jwk: str
    issued_at: datetime
    timing: WitTiming


@dataclass(frozen=True)
class BundleView:
    """The trust material from one Sync update, replaced as a whole when it changes."""

    local: Bundle
    federated: Mapping[TrustDomain, Bundle] = field(default_factory=dict)
    tainted_x509: frozenset[str] = frozenset()
    tainted_jwt: frozenset[str] = frozenset()
    tainted_wit: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        object.__setattr__(self, "federated", MappingProxyType(dict(self.federated)))


@dataclass(frozen=True, slots=True)
class SyncDelta:
    """One Sync update, parsed and validated at the boundary (agent/sync.py)."""

    store_id: str
    revision: int
    full: bool
    entries: tuple[Entry, ...] = ()
    deleted_entry_ids: tuple[str, ...] = ()
    bundles: BundleView | None = None


@dataclass(frozen=True, slots=True)
class Change:
    """What a mutation touched: selector sets of affected entries (before and after)."""

    selector_sets: tuple[frozenset[Selector], ...] = ()
    bundles: bool = False

    def concerns(self, selectors: frozenset[Selector]) -> bool:
        return self.bundles or any(matches(s, selectors) for s in self.selector_sets)

    def __bool__(self) -> bool:
        return self.bundles or bool(self.selector_sets)


class Subscriber(Protocol):
    """An open workload stream: its caller's selectors and a way to wake it."""

    @property
    def selectors(self) -> frozenset[Selector]: ...

    def wake(self) -> None: ...


def _jwt_bytes(audience: frozenset[str], record: JwtSvidRecord) -> int:
    """What one cached JWT-SVID costs: its token, its audience key and fixed overhead."""
    return len(record.token) + sum(len(a) for a in audience) + _RECORD_OVERHEAD


class Cache:
    def __init__(self, trust_domain: TrustDomain) -> None:
        self.trust_domain = trust_domain
        self.store_id = ""
        self.revision = 0
        self._entries: dict[str, Entry] = {}
        self._bundles: BundleView | None = None
        self._x509: dict[str, X509SvidRecord] = {}
        self._jwt: dict[str, dict[frozenset[str], JwtSvidRecord]] = {}
        self._wit: dict[str, WitSvidRecord] = {}
        # Grouped by selectors: a change is matched once per distinct set, not once per stream.
        self._subscribers: dict[frozenset[Selector], set[Subscriber]] = {}
        self._subscriber_count = 0
        #: Bumped by every change that wakes anyone: what a view was built from is still
        #: current while it holds (agent/workloadapi/shared.py keys encodings on it).
        self.generation = 0
        self._listeners: list[Callable[[Change], None]] = []

    # --- reads ----------------------------------------------------------------------

    @property
    def entries(self) -> Mapping[str, Entry]:
        return MappingProxyType(self._entries)

    @property
    def bundles(self) -> BundleView | None:
        return self._bundles

    @property
    def subscriber_count(self) -> int:
        return self._subscriber_count

    def x509_svid(self, entry_id: str) -> X509SvidRecord | None:
        return self._x509.get(entry_id)

    def x509_svids(self) -> Mapping[str, X509SvidRecord]:
        return MappingProxyType(self._x509)

    def jwt_svid(self, entry_id: str, audience: frozenset[str]) -> JwtSvidRecord | None:
        return self._jwt.get(entry_id, {}).get(audience)

    def wit_svid(self, entry_id: str) -> WitSvidRecord | None:
        return self._wit.get(entry_id)

    def entitled(self, selectors: frozenset[Selector], now: float) -> list[Entry]:
        return entitled(self._entries.values(), selectors, now)

    # --- writes ---------------------------------------------------------------------

    def apply(self, delta: SyncDelta) -> Change:
        """Apply a Sync update; a full update replaces the whole view."""
        touched: list[frozenset[Selector]] = []
        if delta.full:
            incoming = {e.id: e for e in delta.entries}
            gone = [i for i in self._entries if i not in incoming]
        else:
            incoming = {e.id: e for e in delta.entries}
            gone = [i for i in delta.deleted_entry_ids if i in self._entries]
        for entry_id in gone:
            touched.append(self._entries.pop(entry_id).selectors)
            self._x509.pop(entry_id, None)
            self._jwt.pop(entry_id, None)
            self._wit.pop(entry_id, None)
        for entry_id, entry in incoming.items():
            old = self._entries.get(entry_id)
            if old == entry:
                continue
            if old is not None:
                touched.append(old.selectors)
                if old.spiffe_id != entry.spiffe_id:
                    self._jwt.pop(entry_id, None)
                    self._wit.pop(entry_id, None)
            touched.append(entry.selectors)
            self._entries[entry_id] = entry
        bundles_changed = delta.bundles is not None and delta.bundles != self._bundles
        if delta.bundles is not None:
            self._bundles = delta.bundles
        self.store_id, self.revision = delta.store_id, delta.revision
        return self._publish(Change(tuple(set(touched)), bundles_changed))

    def put_x509(self, records: Iterable[X509SvidRecord]) -> Change:
        """Store newly signed SVIDs (for entries still present); wake their workloads."""
        touched = []
        for record in records:
            entry = self._entries.get(record.entry_id)
            if entry is None or entry.spiffe_id != record.spiffe_id:
                continue  # the entry went away or changed while the CSR was in flight
            self._x509[record.entry_id] = record
            touched.append(entry.selectors)
        return self._publish(Change(tuple(set(touched))))

    def put_wit(self, records: Iterable[WitSvidRecord]) -> Change:
        """Store newly signed WIT-SVIDs (for entries still present); wake their workloads,
        whose FetchWITSVID streams push the new token and key."""
        touched = []
        for record in records:
            entry = self._entries.get(record.entry_id)
            if entry is None or entry.spiffe_id != record.spiffe_id:
                continue  # the entry went away or changed while the request was in flight
            self._wit[record.entry_id] = record
            touched.append(entry.selectors)
        return self._publish(Change(tuple(set(touched))))

    def touch(self, entry_ids: Iterable[str]) -> Change:
        """Wake the workloads of these entries with nothing changed: a WIT-SVID request for
        them was refused, and their streams must look again when its retry is due."""
        touched = {self._entries[i].selectors for i in entry_ids if i in self._entries}
        return self._publish(Change(tuple(touched)))

    def put_jwt(
        self, entry_id: str, audience: frozenset[str], record: JwtSvidRecord, now: datetime
    ) -> None:
        """Cache a JWT-SVID per (entry, audience set), dropping the entry's expired ones.

        JWTs are fetched, never pushed, so storing one wakes nobody.
        """
        entry = self._entries.get(entry_id)
        if entry is None or entry.spiffe_id != record.spiffe_id:
            return
        per_entry = self._jwt.setdefault(entry_id, {})
        for stale in [a for a, r in per_entry.items() if r.expires_at <= now or a == audience]:
            del per_entry[stale]
        per_entry[audience] = record
        held = sum(_jwt_bytes(a, r) for a, r in per_entry.items())
        while held > MAX_JWT_CACHE_BYTES_PER_ENTRY:
            oldest = next(iter(per_entry))  # oldest insertion first
            held -= _jwt_bytes(oldest, per_entry.pop(oldest))

    # --- subscriptions --------------------------------------------------------------

    def subscribe(self, subscriber: Subscriber) -> None:
        group = self._subscribers.setdefault(subscriber.selectors, set())
        if subscriber not in group:
            group.add(subscriber)
            self._subscriber_count += 1

    def unsubscribe(self, subscriber: Subscriber) -> None:
        group = self._subscribers.get(subscriber.selectors)
        if group is None or subscriber not in group:
            return
        group.remove(subscriber)
        self._subscriber_count -= 1
        if not group:
            del self._subscribers[subscriber.selectors]

    def add_listener(self, listener: Callable[[Change], None]) -> None:
        """Daemon-internal observers (the signer) that see every change."""
        self._listeners.append(listener)

    def _publish(self, change: Change) -> Change:
        if not change:
            return change
        self.generation += 1
        for listener in self._listeners:
            listener(change)
        for selectors, group in list(self._subscribers.items()):
            if change.concerns(selectors):
                for subscriber in list(group):
                    subscriber.wake()
        return change
