"""What a peer's bundle endpoint may make us store (server/federation/acceptance.py)."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from insignia.bundle import Bundle
from insignia.server.federation.acceptance import (
    DEFAULT_REFRESH,
    MAX_BUNDLE_BYTES,
    MAX_REFRESH,
    MIN_REFRESH,
    BundleRefused,
    accept_bundle,
    refresh_interval,
)
from insignia.spiffeid import TrustDomain
from tests.unit.common import make_ca

PEER = TrustDomain.parse("peer.test")


def peer_bundle(sequence: int = 3, hint: int | None = 60) -> Bundle:
    ca = make_ca(PEER)
    return Bundle(PEER, (ca.certificate,), sequence=sequence, refresh_hint=hint)


def test_a_good_bundle_is_accepted() -> None:
    bundle = peer_bundle()
    assert accept_bundle(PEER, bundle.to_spiffe(), None) == bundle


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "not a SPIFFE bundle: not JSON"),
        (b'{"keys": []}', "bundle has no x509-svid or jwt-svid keys"),
        (b'{"keys": [{"use": "x509-svid", "kty": "EC", "crv": "P-256"}]}', "not a SPIFFE"),
        (b" " * (MAX_BUNDLE_BYTES + 1), "over 1048576 bytes"),
    ],
)
def test_a_bad_body_is_refused_with_its_cause(body: bytes, reason: str) -> None:
    with pytest.raises(BundleRefused, match=reason):
        accept_bundle(PEER, body, None)


def test_authorities_of_another_trust_domain_are_refused() -> None:
    other = Bundle(PEER, (make_ca(TrustDomain.parse("evil.test")).certificate,))
    with pytest.raises(BundleRefused, match=r"for trust domain evil\.test"):
        accept_bundle(PEER, other.to_spiffe(), None)


def test_an_older_sequence_is_refused() -> None:
    held = peer_bundle(sequence=5)
    with pytest.raises(BundleRefused, match="spiffe_sequence 4 is older than the held 5"):
        accept_bundle(PEER, peer_bundle(sequence=4).to_spiffe(), held)


def test_keys_of_an_unknown_use_are_ignored() -> None:
    doc = json.loads(peer_bundle().to_spiffe())
    doc["keys"].append({"use": "x-future-svid", "kty": "EC"})
    assert len(accept_bundle(PEER, json.dumps(doc).encode(), None).x509_authorities) == 1


def test_the_refresh_hint_is_bounded() -> None:
    assert refresh_interval(peer_bundle(hint=1)) == MIN_REFRESH
    assert refresh_interval(peer_bundle(hint=10**7)) == MAX_REFRESH
    assert refresh_interval(peer_bundle(hint=120)) == timedelta(seconds=120)


@pytest.mark.parametrize(
    ("hint", "expected"),
    [
        (None, DEFAULT_REFRESH),
        (29, MIN_REFRESH),
        (30, timedelta(seconds=30)),
        (86400, timedelta(days=1)),
        (86401, MAX_REFRESH),
    ],
)
def test_the_refresh_hint_bounds_are_inclusive(hint: int | None, expected: timedelta) -> None:
    assert refresh_interval(peer_bundle(hint=hint)) == expected
    assert refresh_interval(None) == DEFAULT_REFRESH
