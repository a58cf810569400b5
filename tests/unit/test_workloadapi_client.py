from datetime import timedelta

import pytest
from cryptography.hazmat.primitives import serialization
from insignia_proto import workload_pb2 as pb

from insignia.keys import KeyType, generate_key, private_key_to_der
from insignia.server.ca.x509_leaf import build_leaf
from insignia.spiffeid import SpiffeId, TrustDomain
from insignia.workloadapi._client import (
    WorkloadApiError,
    _jwt_bundles,
    _x509_bundles,
    x509_context_from_response,
)
from tests.unit.common import TD, WALL_NOW, make_ca


def svid_message(spiffe_id="spiffe://example.org/web", claimed=None, hint=""):
    ca = make_ca(now=WALL_NOW, ttl=timedelta(hours=1))
    key = generate_key(KeyType.EC_P256)
    leaf = build_leaf(key.public_key(), SpiffeId.parse(spiffe_id), timedelta(minutes=5), ca)
    return ca, pb.X509SVID(
        spiffe_id=claimed or spiffe_id,
        x509_svid=leaf.public_bytes(serialization.Encoding.DER),
        x509_svid_key=private_key_to_der(key),
        bundle=ca.certificate.public_bytes(serialization.Encoding.DER),
        hint=hint,
    )


def test_decodes_svids_and_bundles():
    ca, msg = svid_message(hint="web")
    fed_ca = make_ca(TrustDomain.parse("partner.org"), WALL_NOW, timedelta(hours=1))
    response = pb.X509SVIDResponse(
        svids=[msg],
        federated_bundles={
            "partner.org": fed_ca.certificate.public_bytes(serialization.Encoding.DER)
        },
    )
    context = x509_context_from_response(response)
    assert str(context.default_svid.spiffe_id) == "spiffe://example.org/web"
    assert context.default_svid.hint == "web"
    assert context.bundles.get_bundle_for_trust_domain(TD).x509_authorities == (ca.certificate,)
    assert len(context.bundles) == 2


@pytest.mark.parametrize("key", ["partner.org", "spiffe://partner.org"])
def test_bundle_maps_are_keyed_by_trust_domain_id_or_name(key):
    """SPIRE (and our agent) key bundles by `spiffe://partner.org`; older agents by the name."""
    partner = TrustDomain.parse("partner.org")
    fed_ca = make_ca(partner, WALL_NOW, timedelta(hours=1))
    der = fed_ca.certificate.public_bytes(serialization.Encoding.DER)
    _, msg = svid_message()
    context = x509_context_from_response(
        pb.X509SVIDResponse(svids=[msg], federated_bundles={key: der})
    )
    assert context.bundles.get_bundle_for_trust_domain(partner).x509_authorities == (
        fed_ca.certificate,
    )
    x509_set = _x509_bundles(pb.X509BundlesResponse(bundles={key: der}))
    assert x509_set.get_bundle_for_trust_domain(partner) is not None
    jwt_set = _jwt_bundles(pb.JWTBundlesResponse(bundles={key: b'{"keys": []}'}))
    assert jwt_set.get_bundle_for_trust_domain(partner) is not None


def test_empty_response_and_inconsistent_ids_are_errors():
    with pytest.raises(WorkloadApiError, match="without SVIDs"):
        x509_context_from_response(pb.X509SVIDResponse())
    _, msg = svid_message(claimed="spiffe://example.org/other")
    with pytest.raises(WorkloadApiError, match="URI SAN"):
        x509_context_from_response(pb.X509SVIDResponse(svids=[msg]))
    _, msg = svid_message()
    msg.x509_svid_key = b"garbage"
    with pytest.raises(WorkloadApiError, match="svid 0"):
        x509_context_from_response(pb.X509SVIDResponse(svids=[msg]))
