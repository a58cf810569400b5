"""Federation relationships and federated bundle deletion in the datastore, on SQLite and
PostgreSQL: one transaction each, with the change events other servers follow."""

from __future__ import annotations

import json

import pytest

from insignia.server.datastore import (
    BundleInUse,
    BundleNotFound,
    Datastore,
    DuplicateFederation,
    FederationNotFound,
    FederationRecord,
)
from insignia.server.entries import EntryLimits, RegistrationEntry, validate_entry
from insignia.spiffeid import TrustDomain

PEER = TrustDomain("peer.test")
LIMITS = EntryLimits(TrustDomain("example.org"), 86400, 3600)
DOC = json.dumps({"keys": [{"kty": "EC", "kid": "k"}], "spiffe_sequence": 1})


def relationship(url: str = "https://peer.test/") -> FederationRecord:
    return FederationRecord(PEER, url, "https_web")


def federating(path: str) -> RegistrationEntry:
    return validate_entry(
        spiffe_id=f"spiffe://example.org{path}",
        parent_id="spiffe://example.org/insignia/server",
        selectors=["unix:uid:1000"],
        limits=LIMITS,
        federates_with=["peer.test"],
    )


def events(store: Datastore, since: int) -> list[tuple[str, str, str]]:
    return [(e.kind, e.op, e.subject) for e in store.events_since(since)]


def test_relationships_are_created_updated_and_deleted_with_their_bundle(
    store: Datastore,
) -> None:
    head = store.head_revision()
    created = store.create_federation(relationship())
    assert store.get_federation(PEER) == created and store.list_federations() == [created]
    with pytest.raises(DuplicateFederation):
        store.create_federation(relationship())
    updated = store.update_federation(relationship("https://peer.test/v2"))
    assert updated.bundle_endpoint_url == "https://peer.test/v2"
    assert updated.created_at == created.created_at
    assert store.put_federated_bundle(PEER, DOC, relationship_required=True) is not None
    store.delete_federation(PEER)
    assert store.list_federations() == []
    with pytest.raises(BundleNotFound):
        store.get_bundle(PEER)
    assert events(store, head) == [
        ("federation", "created", "peer.test"),
        ("federation", "updated", "peer.test"),
        ("bundle", "created", "peer.test"),
        ("federation", "deleted", "peer.test"),
        ("bundle", "deleted", "peer.test"),
    ]
    for missing in (store.get_federation, store.delete_federation):
        with pytest.raises(FederationNotFound):
            missing(PEER)
    with pytest.raises(FederationNotFound):
        store.update_federation(relationship())


def test_a_fetch_finishing_after_the_delete_stores_nothing(store: Datastore) -> None:
    assert store.put_federated_bundle(PEER, DOC, relationship_required=True) is None
    assert store.list_bundles() == []
    # The config file's relationships are not in the datastore: their bundles are stored.
    assert store.put_federated_bundle(PEER, DOC, relationship_required=False) is not None


def test_bundle_delete_modes(store: Datastore) -> None:
    store.put_bundle(PEER, DOC)
    one, two = store.create_entries([federating("/one"), federating("/two")])
    with pytest.raises(BundleInUse, match="2 entries federate with it"):
        store.delete_federated_bundle(PEER, "restrict")
    assert store.delete_federated_bundle(PEER, "dissociate") == sorted([one.id, two.id])
    assert all(not e.federates_with and e.revision == 1 for e in store.list_entries())

    store.put_bundle(PEER, DOC)
    three = store.create_entry(federating("/three"))
    assert store.delete_federated_bundle(PEER, "delete") == [three.id]
    assert {e.id for e in store.list_entries()} == {one.id, two.id}
    with pytest.raises(BundleNotFound):
        store.delete_federated_bundle(PEER, "restrict")

    store.put_bundle(PEER, DOC)
    store.create_federation(relationship())
    with pytest.raises(BundleInUse, match="federation delete"):
        store.delete_federated_bundle(PEER, "delete")
