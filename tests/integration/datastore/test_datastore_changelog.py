"""The change log: one event per change, committed with it, resumable, prunable."""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from insignia.server.datastore import (
    AgentRecord,
    CaKeyRecord,
    ChangeEvent,
    Datastore,
    DuplicateEntry,
    RevisionPruned,
)
from insignia.server.entries import EntryLimits, RegistrationEntry, validate_entry
from insignia.spiffeid import SpiffeId, TrustDomain
from tests.datastores import Clock

TD = TrustDomain("example.org")
LIMITS = EntryLimits(TD, 86400, 3600)


def entry(path: str) -> RegistrationEntry:
    return validate_entry(
        spiffe_id=f"spiffe://example.org{path}",
        parent_id="spiffe://example.org/insignia/agent/a",
        selectors=["unix:uid:0"],
        limits=LIMITS,
    )


def summary(events: list[ChangeEvent]) -> list[tuple[int, str, str, str]]:
    return [(e.revision, e.kind, e.op, e.subject) for e in events]


def test_each_change_appends_one_event(store: Datastore, clock: Clock) -> None:
    a, b = store.create_entries([entry("/a"), entry("/b")])
    store.update_entry(a)
    store.delete_entry(b.id)
    agent_id = SpiffeId.parse("spiffe://example.org/insignia/agent/a")
    store.put_agent(AgentRecord(agent_id, "join_token", "1", clock.now + timedelta(hours=1)))
    store.set_agent_banned(agent_id, False)  # (a banned agent could not be deleted)
    store.delete_agent(agent_id)
    store.put_bundle(TD, "{}")
    store.delete_bundle(TD)
    store.create_join_token("t", clock.now + timedelta(minutes=1))  # not an event
    assert summary(store.events_since(0)) == [
        (1, "entry", "created", a.id),
        (2, "entry", "created", b.id),
        (3, "entry", "updated", a.id),
        (4, "entry", "deleted", b.id),
        (5, "agent", "created", str(agent_id)),
        (6, "agent", "updated", str(agent_id)),
        (7, "agent", "deleted", str(agent_id)),
        (8, "bundle", "created", "example.org"),
        (9, "bundle", "deleted", "example.org"),
    ]
    assert summary(store.events_since(7)) == summary(store.events_since(0))[7:]
    assert len(store.events_since(2, limit=3)) == 3
    assert store.events_since(0)[0].created_at == clock.now
    assert store.head_revision() == 9


def test_listeners_hear_committed_heads_only(store: Datastore) -> None:
    heads: list[int] = []
    store.add_listener(heads.append)
    first = store.create_entry(entry("/a"))
    with pytest.raises(DuplicateEntry):
        store.create_entry(entry("/a"))
    store.create_entries([entry("/b"), entry("/c")])
    store.remove_listener(heads.append)
    store.delete_entry(first.id)
    assert heads == [1, 3]
    assert store.head_revision() == 4


def test_a_failing_listener_does_not_fail_the_committed_write(store: Datastore) -> None:
    def broken(head: int) -> None:
        raise RuntimeError(f"listener broke at {head}")

    heard: list[int] = []
    store.add_listener(broken)
    store.add_listener(heard.append)
    created = store.create_entry(entry("/a"))
    assert store.get_entry(created.id) == created
    assert heard == [1]


def test_ca_key_changes_are_events(store: Datastore, clock: Clock) -> None:
    key = CaKeyRecord(
        kind="jwt",
        key_id="kid-1",
        slot="A",
        status="active",
        public_key=b"spki",
        not_before=clock.now,
        not_after=clock.now + timedelta(days=1),
    )
    store.put_ca_keys([key])
    store.put_ca_keys([replace(key, tainted=True)])
    store.delete_ca_key("jwt", "kid-1")
    assert [(e.kind, e.op, e.subject) for e in store.events_since(0)] == [
        ("ca_key", "created", "jwt:kid-1"),
        ("ca_key", "updated", "jwt:kid-1"),
        ("ca_key", "deleted", "jwt:kid-1"),
    ]


def test_pruning_keeps_the_newest_and_refuses_stale_resumes(store: Datastore, clock: Clock) -> None:
    for i in range(5):
        store.create_entry(entry(f"/e{i}"))
        clock.now += timedelta(minutes=1)
    assert store.prune_events(before=clock.now - timedelta(minutes=2)) == 3
    assert [e.revision for e in store.events_since(3)] == [4, 5]
    with pytest.raises(RevisionPruned) as caught:
        store.events_since(2)
    assert caught.value.pruned_through == 3
    assert store.prune_events(before=clock.now + timedelta(days=1)) == 1
    assert [e.revision for e in store.events_since(4)] == [5]
    assert store.head_revision() == 5


def test_revisions_are_never_reused_after_pruning_and_reopening(url: str, clock: Clock) -> None:
    with Datastore.open(url, clock=clock) as store:
        for i in range(3):
            store.create_entry(entry(f"/e{i}"))
        clock.now += timedelta(days=1)
        store.prune_events(before=clock.now)
    with Datastore.open(url, clock=clock) as store:
        assert store.head_revision() == 3
        store.create_entry(entry("/next"))
        assert [e.revision for e in store.events_since(3)] == [4]


def test_concurrent_writers_never_make_a_reader_skip_a_revision(store: Datastore) -> None:
    """A reader that resumes after the highest revision it saw must see every event:
    revisions become visible in order even when threads write at once."""
    writers, per_writer = 4, 15
    done = threading.Event()
    seen: list[int] = []

    def read() -> None:
        last = 0
        while True:
            finished = done.is_set()
            for event in store.events_since(last):
                seen.append(event.revision)
                last = event.revision
            if finished:
                return

    def write(n: int) -> None:
        for i in range(per_writer):
            store.create_entry(entry(f"/w{n}/{i}"))

    reader = threading.Thread(target=read)
    reader.start()
    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    done.set()
    reader.join(timeout=60)
    assert seen == list(range(1, writers * per_writer + 1))


def test_time_is_stored_in_utc(store: Datastore) -> None:
    store.create_entry(entry("/a"))
    (event,) = store.events_since(0)
    assert event.created_at.tzinfo is UTC
    assert datetime(2030, 1, 1, tzinfo=UTC) == event.created_at
