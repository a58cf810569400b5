"""The Broker endpoint's TLS: which certificate it serves, and whose ID a client proved."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from insignia.agent.identity.node_attestation import AgentIdentity
from insignia.agent.workloadapi.broker_tls import (
    PEER_CERTIFICATE,
    NoClientIdentity,
    RotatingServerCertificate,
    presented_spiffe_id,
)
from insignia.bundle import Bundle
from insignia.keys import KeyType, generate_key
from insignia.server.ca.x509_leaf import build_leaf
from insignia.spiffeid import SpiffeId
from insignia.x509svid import X509Svid
from tests.unit.common import NOW, TD, make_ca

AGENT_ID = SpiffeId.parse("spiffe://example.org/insignia/agent/join_token/t")
BROKER_ID = SpiffeId.parse("spiffe://example.org/mesh")


def identity(spiffe_id: SpiffeId = AGENT_ID) -> AgentIdentity:
    ca = make_ca()
    key = generate_key(KeyType.EC_P256)
    leaf = build_leaf(key.public_key(), spiffe_id, timedelta(hours=1), ca, now=NOW)
    return AgentIdentity(
        X509Svid(spiffe_id, (leaf,), key), Bundle(TD, (ca.certificate,)), reattestable=False
    )


def test_the_id_comes_from_the_verified_client_certificate() -> None:
    leaf_pem = identity(BROKER_ID).svid.leaf.public_bytes(Encoding.PEM)
    assert presented_spiffe_id({PEER_CERTIFICATE: [leaf_pem]}) == BROKER_ID


@pytest.mark.parametrize(
    ("auth_context", "cause"),
    [
        ({}, "presented no client certificate"),
        ({PEER_CERTIFICATE: [b"not a certificate"]}, "cannot be read"),
        # A CA certificate has no SPIFFE URI SAN of a leaf: not an X509-SVID.
        ({PEER_CERTIFICATE: [make_ca().certificate.public_bytes(Encoding.PEM)]}, "not an X509"),
    ],
)
def test_no_readable_svid_is_no_identity(auth_context: dict[str, list[bytes]], cause: str) -> None:
    with pytest.raises(NoClientIdentity, match=cause):
        presented_spiffe_id(auth_context)


def test_a_new_configuration_only_when_the_svid_or_the_bundle_changed() -> None:
    current = [identity()]
    fetcher = RotatingServerCertificate(lambda: current[-1])
    assert fetcher.initial() is not None
    assert fetcher() is None  # nothing changed: grpc keeps the one it has
    current.append(replace(current[-1], bundle=Bundle(TD, (make_ca().certificate,))))
    assert fetcher() is not None
    assert fetcher() is None
    current.append(identity())  # a renewed agent SVID
    assert fetcher() is not None
