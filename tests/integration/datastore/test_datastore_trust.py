"""Trust bundles and the CA journal in the datastore, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta

import pytest

from insignia.server.datastore import (
    BundleNotFound,
    CaKeyNotFound,
    CaKeyRecord,
    Datastore,
    InvalidRecord,
)
from insignia.spiffeid import TrustDomain
from tests.datastores import Clock

LOCAL = TrustDomain("example.org")
PARTNER = TrustDomain("partner.org")


def jwks(kid: str) -> str:
    return json.dumps({"keys": [{"kty": "EC", "kid": kid}], "spiffe_sequence": 1})


def test_bundle_sequence_grows_per_write(store: Datastore, clock: Clock) -> None:
    first = store.put_bundle(LOCAL, jwks("a"))
    assert (first.sequence, first.document, first.updated_at) == (1, jwks("a"), clock.now)
    clock.now += timedelta(seconds=1)
    second = store.put_bundle(LOCAL, jwks("b"))
    assert second.sequence == 2
    assert store.get_bundle(LOCAL) == second
    federated = store.put_bundle(PARTNER, jwks("p"))
    assert store.list_bundles() == [second, federated]
    store.delete_bundle(PARTNER)
    with pytest.raises(BundleNotFound):
        store.get_bundle(PARTNER)
    with pytest.raises(BundleNotFound):
        store.delete_bundle(PARTNER)


@pytest.mark.parametrize("document", ["not json", "[1, 2]", ""])
def test_bundle_must_be_a_json_object(store: Datastore, document: str) -> None:
    with pytest.raises(InvalidRecord):
        store.put_bundle(LOCAL, document)
    assert store.list_bundles() == []


def authority(clock: Clock, kind: str = "x509", key_id: str = "k1", **kw: object) -> CaKeyRecord:
    fields: dict[str, object] = {
        "kind": kind,
        "key_id": key_id,
        "slot": "A",
        "status": "prepared",
        "public_key": bytes(range(256)) * 2,
        "certificate": b"\x30\x82" + bytes(500) if kind == "x509" else None,
        "not_before": clock.now,
        "not_after": clock.now + timedelta(days=1),
        "created_at": clock.now,
    }
    fields.update(kw)
    return CaKeyRecord(**fields)  # type: ignore[arg-type]


def test_ca_journal_round_trip_and_rotation(store: Datastore, clock: Clock) -> None:
    x509 = authority(clock)
    jwt = authority(clock, "jwt", "j1")
    store.put_ca_keys([x509, jwt])
    assert store.load_ca_keys() == [jwt, x509]  # same created_at: by key id
    assert store.load_ca_keys("jwt") == [jwt]

    clock.now += timedelta(hours=1)
    successor = authority(clock, key_id="k2", slot="B")
    rotated = [replace(x509, status="old", tainted=True), replace(successor, status="active")]
    store.put_ca_keys(rotated)
    assert store.load_ca_keys("x509") == rotated

    store.delete_ca_key("x509", "k1")
    assert [r.key_id for r in store.load_ca_keys("x509")] == ["k2"]
    with pytest.raises(CaKeyNotFound):
        store.delete_ca_key("x509", "k1")


def test_ca_record_refuses_bad_values(clock: Clock) -> None:
    with pytest.raises(InvalidRecord, match="status"):
        authority(clock, status="retired")
    with pytest.raises(InvalidRecord, match="kind"):
        authority(clock, kind="ssh")
    with pytest.raises(InvalidRecord, match="certificate"):
        authority(clock, certificate=None)
    with pytest.raises(InvalidRecord, match="not_after"):
        authority(clock, not_after=clock.now.replace(tzinfo=None))
