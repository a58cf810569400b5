import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
)
from envoy.extensions.transport_sockets.tls.v3 import tls_spiffe_validator_config_pb2 as spiffe_pb

from insignia.agent.cache.store import BundleView, SyncDelta
from insignia.agent.workloadapi.sds_secrets import SPIFFE_VALIDATOR, Resolved, resolve
from insignia.agent.workloadapi.sds_service import SdsNames
from insignia.agent.workloadapi.views import x509_bundles, x509_view
from insignia.bundle import Bundle
from insignia.spiffeid import TrustDomain
from insignia.x509svid import leaf_spiffe_id
from tests.unit.agent.helpers import filled_cache, make_entry, sels
from tests.unit.common import NOW, TD, make_ca

CALLER = sels("unix:uid:1000")
OTHER = TrustDomain.parse("other.org")
CA = make_ca()
FED = make_ca(td=OTHER)
DEFAULTS = SdsNames()


def _resolve(requested: list[str], names: SdsNames = DEFAULTS) -> Resolved:
    first = make_entry("a", "/first", "unix:uid:1000", created_at=1, federates_with=("other.org",))
    second = make_entry("b", "/second", "unix:uid:1000", created_at=2)
    theirs = make_entry("t", "/theirs", "unix:uid:2000")
    cache = filled_cache(CA, first, second, theirs)
    view = cache.bundles
    assert view is not None
    bundles = BundleView(view.local, {OTHER: Bundle(OTHER, (FED.certificate,))})
    cache.apply(SyncDelta("store", 2, True, (first, second, theirs), (), bundles))
    response = x509_view(cache, CALLER, NOW).response
    return resolve(requested, response, x509_bundles(cache, CALLER, NOW), TD.id_string(), names)


def _pem_certs(data: bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(data)


def test_a_spiffe_id_and_the_default_name_give_the_callers_chain_and_key():
    resolved = _resolve(["spiffe://example.org/second", "default"])
    assert [s.name for s in resolved.secrets] == ["spiffe://example.org/second", "default"]
    for secret, expected in zip(resolved.secrets, ["/second", "/first"], strict=True):
        tls = secret.tls_certificate
        leaf, *rest = _pem_certs(tls.certificate_chain.inline_bytes)
        assert str(leaf_spiffe_id(leaf)) == f"spiffe://example.org{expected}"
        assert rest == list(CA.chain)
        key = load_pem_private_key(tls.private_key.inline_bytes, None)
        spki = Encoding.DER, PublicFormat.SubjectPublicKeyInfo
        assert key.public_key().public_bytes(*spki) == leaf.public_key().public_bytes(*spki)
    assert resolved.unknown == ()


def test_bundles_by_default_name_and_by_trust_domain_id_federated_included():
    resolved = _resolve(["ROOTCA", "spiffe://other.org"])
    root, other = resolved.secrets
    assert _pem_certs(root.validation_context.trusted_ca.inline_bytes) == [CA.certificate]
    assert _pem_certs(other.validation_context.trusted_ca.inline_bytes) == [FED.certificate]


def test_all_is_the_spiffe_validator_over_every_trusted_domain():
    (secret,) = _resolve(["ALL"]).secrets
    custom = secret.validation_context.custom_validator_config
    assert custom.name == SPIFFE_VALIDATOR == "envoy.tls.cert_validator.spiffe"
    config = spiffe_pb.SPIFFECertValidatorConfig()
    assert custom.typed_config.Unpack(config)
    domains = {td.name: _pem_certs(td.trust_bundle.inline_bytes) for td in config.trust_domains}
    assert domains == {"example.org": [CA.certificate], "other.org": [FED.certificate]}


def test_all_without_spiffe_validation_is_every_ca_as_trusted_ca():
    names = SdsNames(disable_spiffe_cert_validation=True)
    (secret,) = _resolve(["ALL"], names).secrets
    assert not secret.validation_context.HasField("custom_validator_config")
    certs = _pem_certs(secret.validation_context.trusted_ca.inline_bytes)
    assert certs == [CA.certificate, FED.certificate]


def test_configured_names_replace_the_defaults():
    names = SdsNames(default_svid_name="mine", default_bundle_name="roots")
    resolved = _resolve(["mine", "roots", "default", "ROOTCA"], names)
    assert [s.name for s in resolved.secrets] == ["mine", "roots"]
    assert resolved.unknown == ("default", "ROOTCA")


@pytest.mark.parametrize(
    "name", ["spiffe://example.org/theirs", "spiffe://unknown.org", "nonsense", "spiffe://x/y"]
)
def test_a_name_the_caller_is_not_entitled_to_is_left_out_and_reported(name: str):
    resolved = _resolve(["default", name])
    assert [s.name for s in resolved.secrets] == ["default"]
    assert resolved.unknown == (name,)


def test_no_names_is_every_bundle_and_every_svid_by_id():
    resolved = _resolve([])
    assert [s.name for s in resolved.secrets] == [
        "spiffe://example.org",
        "spiffe://other.org",
        "spiffe://example.org/first",
        "spiffe://example.org/second",
    ]
