"""Registration entries in the datastore, on SQLite and PostgreSQL."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from insignia.selectors import Selector
from insignia.server.datastore import (
    Datastore,
    DuplicateEntry,
    EntryNotFound,
    EntryRevisionConflict,
    InvalidRecord,
)
from insignia.server.entries import EntryLimits, RegistrationEntry, validate_entry
from insignia.spiffeid import SpiffeId, TrustDomain
from tests.datastores import Clock

TD = TrustDomain("example.org")
LIMITS = EntryLimits(TD, 86400, 3600)
AGENT = "spiffe://example.org/insignia/agent/join_token/t1"


def entry(path: str = "/web", **kw: Any) -> RegistrationEntry:
    fields: dict[str, Any] = {
        "spiffe_id": f"spiffe://example.org{path}",
        "parent_id": AGENT,
        "selectors": ["unix:uid:1000"],
        "limits": LIMITS,
        "now": datetime(2030, 1, 1, tzinfo=UTC),
    }
    fields.update(kw)
    return validate_entry(**fields)


def full_entry() -> RegistrationEntry:
    return entry(
        selectors=["unix:uid:1000", "unix:gid:50", "k8s:pod-label:app:Wéb", "docker:label:a=b"],
        x509_svid_ttl=600,
        jwt_svid_ttl=120,
        dns_names=["web.example.com", "*.web.example.com", "alt.example.net"],
        federates_with=["partner.org", "other.net"],
        hint="internal",
        admin=True,
        downstream=True,
        expires_at=datetime(2031, 2, 3, 4, 5, 6, 789012, tzinfo=UTC),
    )


def test_every_field_round_trips(store: Datastore) -> None:
    original = full_entry()
    assert store.create_entry(original) == original
    assert store.get_entry(original.id) == original
    assert store.list_entries() == [original]
    assert store.count_entries() == 1


def test_longest_ids_and_unicode_selectors_round_trip(store: Datastore) -> None:
    long_path = "/" + "/".join(["s" * 200] * 9)
    long = entry(long_path, selectors=["x:" + "ü" * 512, "y:" + "v" * 1024])
    assert len(str(long.spiffe_id)) > 1800
    store.create_entry(long)
    assert store.get_entry(long.id) == long


def test_duplicate_identity_is_refused_whatever_the_selector_order(store: Datastore) -> None:
    first = store.create_entry(entry(selectors=["a:1", "b:2"]))
    with pytest.raises(DuplicateEntry) as caught:
        store.create_entry(entry(selectors=["b:2", "a:1", "a:1"]))
    assert caught.value.existing_id == first.id
    store.create_entry(entry(selectors=["a:1"]))  # a different set is a different entry
    store.create_entry(entry(selectors=["a:1", "b:2"], parent_id="spiffe://example.org/other"))
    assert store.count_entries() == 3


def test_duplicate_id_is_refused(store: Datastore) -> None:
    store.create_entry(entry(entry_id="fixed"))
    with pytest.raises(DuplicateEntry, match="fixed"):
        store.create_entry(entry("/other", entry_id="fixed"))


def test_batch_is_all_or_nothing(store: Datastore) -> None:
    stored = store.create_entry(entry("/taken"))
    head = store.head_revision()
    batch = [entry(f"/b{i}") for i in range(5)] + [entry("/taken")] + [entry("/after")]
    with pytest.raises(DuplicateEntry) as caught:
        store.create_entries(batch)
    assert caught.value.entry_id == batch[5].id
    assert caught.value.existing_id == stored.id
    assert store.list_entries() == [stored]
    assert store.head_revision() == head

    inside = [entry("/x"), entry("/y"), entry("/x")]
    with pytest.raises(DuplicateEntry, match="in the batch"):
        store.create_entries(inside)
    assert store.count_entries() == 1


def test_large_batch_keeps_order_and_content(store: Datastore) -> None:
    batch = [entry(f"/w{i}", selectors=[f"unix:uid:{i}", "k:v"]) for i in range(1500)]
    assert store.create_entries(batch) == batch
    assert store.get_entries([e.id for e in batch]) == {e.id: e for e in batch}
    assert sorted(store.entries_snapshot().entries, key=lambda e: e.id) == sorted(
        batch, key=lambda e: e.id
    )


def test_update_replaces_everything_and_bumps_the_revision(store: Datastore, clock: Clock) -> None:
    original = store.create_entry(full_entry())
    clock.now += timedelta(minutes=5)
    changed = entry(
        "/web2", selectors=["unix:uid:1"], dns_names=["only.example.com"], entry_id=original.id
    )
    updated = store.update_entry(changed)
    assert updated.revision == 1
    assert updated.created_at == original.created_at
    assert updated == replace(changed, revision=1, created_at=original.created_at)
    assert store.get_entry(original.id) == updated
    assert store.update_entry(changed, expected_revision=1).revision == 2
    with pytest.raises(EntryRevisionConflict) as caught:
        store.update_entry(changed, expected_revision=1)
    assert (caught.value.expected, caught.value.actual) == (1, 2)


def test_update_refuses_missing_and_duplicate(store: Datastore) -> None:
    with pytest.raises(EntryNotFound):
        store.update_entry(entry())
    a = store.create_entry(entry("/a"))
    b = store.create_entry(entry("/b"))
    with pytest.raises(DuplicateEntry) as caught:
        store.update_entry(entry("/a", entry_id=b.id))
    assert caught.value.existing_id == a.id
    assert store.get_entry(b.id) == b


def test_delete_removes_the_entry_and_its_lists(store: Datastore) -> None:
    original = store.create_entry(full_entry())
    assert store.delete_entry(original.id) == original
    with pytest.raises(EntryNotFound):
        store.get_entry(original.id)
    # Same id again with fewer lists: nothing of the deleted entry may linger.
    again = store.create_entry(entry(entry_id=original.id))
    assert store.get_entry(original.id) == again
    with pytest.raises(EntryNotFound):
        store.delete_entry("missing")


def test_batch_delete_is_all_or_nothing(store: Datastore) -> None:
    kept = store.create_entries([entry("/a"), entry("/b")])
    with pytest.raises(EntryNotFound, match="missing"):
        store.delete_entries([kept[0].id, "missing"])
    assert store.count_entries() == 2
    assert store.delete_entries([e.id for e in kept]) == kept
    assert store.count_entries() == 0


def test_list_filters(store: Datastore) -> None:
    web = store.create_entry(entry("/web", selectors=["unix:uid:1", "unix:gid:2"]))
    api = store.create_entry(entry("/api", selectors=["unix:uid:1"]))
    child = store.create_entry(
        entry("/web", parent_id="spiffe://example.org/node", selectors=["unix:gid:2"])
    )
    web_id = SpiffeId.parse("spiffe://example.org/web")

    def listed(**filters: Any) -> set[str]:
        return {e.id for e in store.list_entries(**filters)}

    assert listed(spiffe_id=web_id) == {web.id, child.id}
    assert listed(parent_id=SpiffeId.parse(AGENT)) == {web.id, api.id}
    uid, gid = Selector("unix", "uid:1"), Selector("unix", "gid:2")
    assert listed(selectors=[uid]) == {web.id, api.id}
    assert listed(selectors=[uid, gid]) == {web.id}
    assert listed(selectors=[gid], spiffe_id=web_id) == {web.id, child.id}
    assert listed(selectors=[gid], parent_id=SpiffeId.parse(AGENT)) == {web.id}
    assert listed(selectors=[Selector("unix", "uid:9")]) == set()


def test_expired_entries_are_pruned(store: Datastore, clock: Clock) -> None:
    soon = store.create_entry(entry("/soon", expires_at=clock.now + timedelta(seconds=10)))
    forever = store.create_entry(entry("/forever"))
    assert store.prune_expired_entries() == []
    clock.now += timedelta(seconds=10)
    assert store.prune_expired_entries() == [soon]
    assert store.list_entries() == [forever]


def test_snapshot_carries_the_head_revision(store: Datastore) -> None:
    store.create_entries([entry("/a"), entry("/b")])
    snapshot = store.entries_snapshot()
    assert len(snapshot.entries) == 2
    assert snapshot.revision == store.head_revision() == 2


def test_naive_times_are_refused_before_anything_is_written(store: Datastore) -> None:
    naive = replace(entry(), created_at=datetime(2030, 1, 1))
    with pytest.raises(InvalidRecord, match="timezone-aware"):
        store.create_entry(naive)
    assert store.count_entries() == 0
    assert store.head_revision() == 0


def test_entries_are_paged_by_id_with_every_filter(store: Datastore) -> None:
    made = [
        entry(
            f"/p{i}", selectors=[f"unix:uid:{i % 2}"], federates_with=["partner.org"] * (i % 3 == 0)
        )
        for i in range(7)
    ]
    store.create_entries(made)
    by_id = sorted(made, key=lambda e: (str(e.spiffe_id), e.id))  # ASCII: every collation agrees
    first = store.page_entries(limit=3)
    assert first == by_id[:3]
    cursor = (str(first[-1].spiffe_id), first[-1].id)
    assert store.page_entries(after=cursor, limit=3) == by_id[3:6]
    assert store.page_entries(after=(str(by_id[5].spiffe_id), by_id[5].id), limit=3) == by_id[6:]
    twin = entry("/p0", selectors=["unix:uid:9"])  # the same SPIFFE ID: the id breaks the tie
    store.create_entry(twin)
    pair = sorted([made[0], twin], key=lambda e: e.id)
    assert store.page_entries(limit=1) == pair[:1]
    assert store.page_entries(after=(str(pair[0].spiffe_id), pair[0].id), limit=1) == pair[1:]
    odd = store.page_entries(limit=10, selectors=[Selector("unix", "uid:1")])
    assert {str(e.spiffe_id) for e in odd} == {f"spiffe://example.org/p{i}" for i in (1, 3, 5)}
    federating = store.page_entries(limit=10, federates_with=TrustDomain("partner.org"))
    assert {e.spiffe_id.path for e in federating} == {"/p0", "/p3", "/p6"}
    one = store.page_entries(limit=10, spiffe_id=SpiffeId.parse("spiffe://example.org/p4"))
    assert [e.id for e in one] == [made[4].id]
    assert len(store.page_entries(limit=10, parent_id=SpiffeId.parse(AGENT))) == 8
