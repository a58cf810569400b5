"""What to send an agent on its Sync stream: a pure diff between what it has and what it may have.

The server remembers, per agent, the few views it sent last (entry id -> entry revision, and a
digest of the bundle state), keyed by the revision each update reached. An agent reconnecting
with the store id and a revision the server still remembers gets only the difference. The
store id names the datastore, not the process, so an agent that moves to another server of
the same datastore (or returns to a restarted one) resumes from the change log when it still
reaches back to its revision (`log_resumable`); anything else gets the full state. Nothing
here does I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from insignia_proto import agent_pb2

from insignia.server.agentapi.authorization import EntryIndex
from insignia.server.datastore.records import ChangeEvent
from insignia.server.entries import Defaults, RegistrationEntry
from insignia.spiffeid import SpiffeId

MAX_REMEMBERED_VIEWS = 4
MAX_ENTRIES_PER_MESSAGE = 2000  # ~250 KB with typical entries
# And at most about 1 MiB whatever the entries hold: far below gRPC's default 4 MiB receive
# limit, which a full state of large entries would otherwise cross (as SPIRE users hit).
MAX_PART_BYTES = 1 << 20


def resolved_ttls(entry: RegistrationEntry, defaults: Defaults) -> tuple[int, int, int]:
    """An agent gets TTLs resolved: it never sees the server's 0 = default."""
    x509 = defaults.x509(entry.x509_svid_ttl)
    jwt = defaults.jwt(entry.jwt_svid_ttl)
    wit = defaults.wit(entry.wit_svid_ttl)
    return int(x509.total_seconds()), int(jwt.total_seconds()), int(wit.total_seconds())


def entry_fields(
    entry: RegistrationEntry,
    defaults: Defaults,
    resolved: dict[tuple[int, int, int], tuple[int, int, int]] | None = None,
) -> dict[str, Any]:
    """An entry as the agent gets it, as `agent_pb2.Entry` fields: `entries.add(**fields)`
    builds it in place, where a finished Entry would be copied into the update. `resolved`
    memoizes `resolved_ttls` across one update's entries, which share a few TTL triples."""
    key = (entry.x509_svid_ttl, entry.jwt_svid_ttl, entry.wit_svid_ttl)
    ttls = resolved.get(key) if resolved is not None else None
    if ttls is None:
        ttls = resolved_ttls(entry, defaults)
        if resolved is not None:
            resolved[key] = ttls
    x509_ttl, jwt_ttl, wit_ttl = ttls
    fields: dict[str, Any] = {
        "id": entry.id,
        "spiffe_id": str(entry.spiffe_id),
        "parent_id": str(entry.parent_id),
        "selectors": [str(s) for s in entry.selectors],
        "x509_svid_ttl": x509_ttl,
        "jwt_svid_ttl": jwt_ttl,
        "wit_svid_ttl": wit_ttl,
        "revision": entry.revision,
        "created_at": int(entry.created_at.timestamp()),
    }
    # Fields at their proto3 default are left out: the wire is the same (proto3 never
    # encodes them), and setting them costs upb about 40% of building a typical entry.
    if entry.dns_names:
        fields["dns_names"] = entry.dns_names
    if entry.federates_with:
        fields["federates_with"] = [str(td) for td in entry.federates_with]
    if entry.hint:
        fields["hint"] = entry.hint
    if entry.admin:
        fields["admin"] = True
    if entry.downstream:
        fields["downstream"] = True
    if entry.expires_at:
        fields["expires_at"] = int(entry.expires_at.timestamp())
    return fields


@dataclass(frozen=True, slots=True)
class PendingUpdate:
    """An update not yet encoded: its header (store id, revision, full, bundle, deletions)
    and the entries it carries. `parts()` encodes it part by part as the stream writes them,
    so a full state of 100k entries is never one message, nor held twice."""

    header: agent_pb2.SyncUpdate
    entries: Sequence[RegistrationEntry]
    defaults: Defaults

    def parts(
        self, max_entries: int = MAX_ENTRIES_PER_MESSAGE, max_bytes: int = MAX_PART_BYTES
    ) -> Iterator[agent_pb2.SyncUpdate]:
        """The update in parts of at most `max_entries` entries and about `max_bytes`
        (whatever the entries' sizes), chained with `more`; the bundle and the deletions go
        in the first part only."""
        part = agent_pb2.SyncUpdate()
        part.CopyFrom(self.header)
        size, count = part.ByteSize(), 0
        ttls: dict[tuple[int, int, int], tuple[int, int, int]] = {}
        for entry in self.entries:
            fields = entry_fields(entry, self.defaults, ttls)
            if count >= max_entries:
                part.more = True
                yield part
                part, size, count = self._next_part(), 0, 0
            entry_size = part.entries.add(**fields).ByteSize() + 8  # with tag and length
            if count and size + entry_size > max_bytes:  # over budget: it opens the next
                del part.entries[-1]
                part.more = True
                yield part
                part, size, count = self._next_part(), 0, 0
                part.entries.add(**fields)
            size += entry_size
            count += 1
        yield part

    def message(self) -> agent_pb2.SyncUpdate:
        """The whole update as one message (small updates, tests)."""
        whole = agent_pb2.SyncUpdate()
        whole.CopyFrom(self.header)
        for part in self.parts(max_entries=len(self.entries) + 1, max_bytes=1 << 62):
            whole.entries.MergeFrom(part.entries)
        return whole

    def _next_part(self) -> agent_pb2.SyncUpdate:
        header = self.header
        return agent_pb2.SyncUpdate(
            store_id=header.store_id, revision=header.revision, full=header.full
        )


def bundle_digest(state: agent_pb2.BundleState) -> str:
    return hashlib.sha256(state.SerializeToString(deterministic=True)).hexdigest()


@dataclass(frozen=True, slots=True)
class SentView:
    """What one update left the agent holding."""

    revision: int
    entries: Mapping[str, int]  # entry id -> entry revision
    bundle_digest: str


@dataclass(slots=True)
class AgentHistory:
    """The last few views sent to one agent (kept across its reconnects, not restarts)."""

    views: list[SentView] = field(default_factory=list)

    def remember(self, view: SentView) -> None:
        self.views = [*self.views[-(MAX_REMEMBERED_VIEWS - 1) :], view]

    def find(self, revision: int) -> SentView | None:
        return next((v for v in reversed(self.views) if v.revision == revision), None)


def full_update(
    store_id: str,
    revision: int,
    authorized: Iterable[RegistrationEntry],
    bundle: agent_pb2.BundleState,
    defaults: Defaults,
) -> tuple[PendingUpdate, SentView]:
    entries = list(authorized)
    header = agent_pb2.SyncUpdate(store_id=store_id, revision=revision, full=True, bundle=bundle)
    view = SentView(revision, {e.id: e.revision for e in entries}, bundle_digest(bundle))
    return PendingUpdate(header, entries, defaults), view


def delta_update(
    store_id: str,
    revision: int,
    previous: SentView,
    authorized: Iterable[RegistrationEntry],
    bundle: agent_pb2.BundleState,
    defaults: Defaults,
) -> tuple[PendingUpdate | None, SentView]:
    """The changes from `previous` to now, or None when there are none."""
    current = {e.id: e for e in authorized}
    changed = [e for e_id, e in current.items() if previous.entries.get(e_id) != e.revision]
    deleted = sorted(e_id for e_id in previous.entries if e_id not in current)
    digest = bundle_digest(bundle)
    view = SentView(revision, {e.id: e.revision for e in current.values()}, digest)
    if not changed and not deleted and digest == previous.bundle_digest:
        return None, view
    header = agent_pb2.SyncUpdate(
        store_id=store_id, revision=revision, full=False, deleted_entry_ids=deleted
    )
    if digest != previous.bundle_digest:
        header.bundle.CopyFrom(bundle)
    return PendingUpdate(header, changed, defaults), view


def log_resumable(
    changes: Sequence[ChangeEvent], agent_id: SpiffeId, index: EntryIndex
) -> frozenset[str] | None:
    """The ids of the entries changed since an agent's revision, when those alone can have
    changed what it may have; None when only full state is safe.

    An unchanged entry changes authorization only through its parent chain (an ancestor
    entry changed, was deleted or renamed) or the agent's own record (its node selectors):
    then the agent gets full state. Otherwise sending the changed entries it may have now,
    and the others as deletions, leaves it exactly where full state would.
    """
    if any(e.kind == "agent" and e.subject == str(agent_id) for e in changes):
        return None
    changed = frozenset(e.subject for e in changes if e.kind == "entry")
    for entry_id in changed:
        entry = index.get(entry_id)
        if entry is not None and index.has_children(entry.spiffe_id):
            return None
    if changed and index.has_orphans():
        return None
    return changed


def log_resume_update(
    store_id: str,
    revision: int,
    changed: Iterable[str],
    authorized: Mapping[str, RegistrationEntry],
    bundle: agent_pb2.BundleState,
    defaults: Defaults,
) -> tuple[PendingUpdate, SentView]:
    """The update for an agent resuming on a server that has no memory of it (another
    server's agent, or this one restarted): the changed entries it may have, the rest of the
    changed ids as deletions (the agent ignores ids it never held), and the bundle."""
    ids = sorted(changed)
    header = agent_pb2.SyncUpdate(
        store_id=store_id,
        revision=revision,
        full=False,
        deleted_entry_ids=[i for i in ids if i not in authorized],
        bundle=bundle,
    )
    view = SentView(
        revision, {e.id: e.revision for e in authorized.values()}, bundle_digest(bundle)
    )
    return PendingUpdate(header, [authorized[i] for i in ids if i in authorized], defaults), view
