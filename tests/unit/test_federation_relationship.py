"""Relationships as the admin API takes them, as the datastore keeps them, which are in force,
and which bundle authenticates an https_spiffe endpoint (server/federation/relationship.py,
refresher.trust_anchors)."""

from __future__ import annotations

import pytest

from insignia.bundle import Bundle
from insignia.server.federation.refresher import trust_anchors
from insignia.server.federation.relationship import (
    Relationship,
    relationships_in_force,
    requested_relationship,
)
from insignia.server.federation.stored import relationship_record, stored_relationship
from insignia.spiffeid import SpiffeId, TrustDomain
from tests.unit.common import make_ca

OWN = TrustDomain.parse("own.test")
PEER = TrustDomain.parse("peer.test")
URL = "https://peer.test:8443/bundle"
ENDPOINT = "spiffe://peer.test/insignia/server"


def pem(td: TrustDomain) -> bytes:
    return Bundle(td, (make_ca(td).certificate,)).x509_pem()


PEER_PEM = pem(PEER)


def request(**changes: object) -> Relationship:
    fields: dict[str, object] = {
        "trust_domain": "peer.test",
        "url": URL,
        "profile": "https_spiffe",
        "endpoint_spiffe_id": ENDPOINT,
        "bundle": PEER_PEM,
        "bundle_format": "pem",
    }
    fields.update(changes)
    return requested_relationship(OWN, **fields)  # type: ignore[arg-type]


def test_a_good_request_and_its_stored_form_round_trip() -> None:
    relationship = request()
    assert relationship.trust_domain == PEER
    assert relationship.endpoint_id == SpiffeId.parse(ENDPOINT)
    assert relationship.bootstrap is not None and relationship.bootstrap.x509_pem() == PEER_PEM
    assert stored_relationship(relationship_record(relationship)) == relationship
    web = request(profile="https_web", endpoint_spiffe_id="", bundle=b"")
    assert web.endpoint_id is None and web.bootstrap is None
    assert stored_relationship(relationship_record(web)) == web


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"trust_domain": "own.test"}, "this server's own"),
        ({"trust_domain": "Peer.test"}, "trust domain"),
        ({"url": "http://peer.test/"}, "expected https://host[:port]/path"),
        ({"url": "https://user@peer.test/"}, "no user info"),
        ({"url": "https://peer.test:0x/"}, "bundle endpoint URL"),
        ({"profile": "https_other"}, "expected https_spiffe or https_web"),
        ({"endpoint_spiffe_id": ""}, "needs the endpoint's SPIFFE ID"),
        ({"profile": "https_web"}, "for https_spiffe only"),
        ({"profile": "https_web", "endpoint_spiffe_id": ""}, "bootstraps https_spiffe only"),
        ({"bundle_format": "der"}, "expected spiffe or pem"),
        ({"bundle_format": "spiffe"}, "trust domain bundle:"),
        ({"bundle": b'{"keys": []}', "bundle_format": "spiffe"}, "has no keys"),
        ({"bundle": pem(TrustDomain.parse("third.test"))}, "for trust domain third.test"),
        ({"endpoint_spiffe_id": "spiffe://own.test/bundles"}, "this server's own trust domain"),
    ],
)
def test_bad_requests_name_the_first_bad_field(changes: dict[str, object], reason: str) -> None:
    with pytest.raises(ValueError, match=reason.replace("[", r"\[").replace("]", r"\]")):
        request(**changes)


def test_the_config_file_wins_over_the_datastore() -> None:
    stored = [
        request(),
        request(trust_domain="other.test", bundle=b"", endpoint_spiffe_id="spiffe://other.test/s"),
    ]
    configured = Relationship(PEER, "https://config.test/", "https_web", from_config=True)
    in_force = relationships_in_force([configured], stored)
    assert in_force[PEER] is configured
    assert in_force[TrustDomain.parse("other.test")] == stored[1]
    assert relationships_in_force([], stored)[PEER] == stored[0]


def test_the_stored_bundle_authenticates_once_there_is_one() -> None:
    relationship = request()
    assert trust_anchors(relationship, None) == relationship.bootstrap
    fetched = Bundle(PEER, (make_ca(PEER).certificate,), sequence=2)
    assert trust_anchors(relationship, fetched) is fetched
    # An endpoint of another trust domain is authenticated by that domain's bundle.
    elsewhere = request(
        endpoint_spiffe_id="spiffe://hub.test/bundles", bundle=pem(TrustDomain.parse("hub.test"))
    )
    assert elsewhere.anchor_trust_domain == TrustDomain.parse("hub.test")


def test_a_bundle_file_over_a_mebibyte_is_refused() -> None:
    with pytest.raises(ValueError, match="over 1048576 bytes"):
        request(bundle=b" " * (1024 * 1024 + 1))
