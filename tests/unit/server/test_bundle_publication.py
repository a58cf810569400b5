"""The bundle publishing decision: the sequence grows exactly when the keys change."""

from __future__ import annotations

import json

from insignia.server.ca.bundle_publication import Publication, publication
from insignia.server.datastore.records import BundleRecord
from tests.unit.common import NOW, TD


def document(sequence: int, *kids: str) -> str:
    keys = [{"kty": "EC", "kid": kid, "use": "x509-svid"} for kid in kids]
    return json.dumps({"keys": keys, "spiffe_sequence": sequence})


def stored(sequence: int, *kids: str) -> BundleRecord:
    return BundleRecord(TD, document(sequence, *kids), sequence, NOW)


def test_the_first_bundle_is_stored_as_sequence_one() -> None:
    assert publication(None, document(0, "a")) == Publication(1, store=True)


def test_the_same_keys_keep_the_stored_sequence_whatever_the_document_says() -> None:
    assert publication(stored(7, "a", "b"), document(3, "a", "b")) == Publication(7, store=False)


def test_new_keys_take_the_next_sequence() -> None:
    assert publication(stored(7, "a"), document(7, "a", "b")) == Publication(8, store=True)
    assert publication(stored(8, "a", "b"), document(8, "b")) == Publication(9, store=True)
