"""X509-SVIDs: holding one, and verifying presented chains by the SPIFFE rules.

Issuing them is the server's (`insignia.server.ca.x509_leaf`). Verification first applies the
SPIFFE leaf rules and the validity window of every presented certificate itself, so each
rejection has its own exception type; then it lets `cryptography.x509.verification` (a RFC
5280 path builder) prove the signatures, the CA flags and keyCertSign of intermediates, and
that the path ends at an X.509 authority of the bundle for the leaf's own trust domain (never
another trust domain's).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    Policy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from insignia._clock import utc_now
from insignia.bundle import BundleSource, load_der_certificates
from insignia.keys import (
    InvalidKey,
    PrivateKey,
    private_key_from_der,
    private_key_to_der,
)
from insignia.spiffeid import InvalidSpiffeId, SpiffeId

MAX_CHAIN_DEPTH = 8


class InvalidX509Svid(ValueError):
    """A certificate chain that is not a valid X509-SVID; subclasses say which rule failed."""

    def __init__(self, reason: str, certificate: x509.Certificate | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.certificate = certificate


class MalformedChain(InvalidX509Svid):
    """Not parseable as certificates, empty, or too long."""


class InvalidUriSan(InvalidX509Svid):
    """The leaf does not carry exactly one URI SAN holding a valid SPIFFE ID."""


class LeafIsCa(InvalidX509Svid):
    """The leaf has BasicConstraints CA=true."""


class InvalidLeafKeyUsage(InvalidX509Svid):
    """The leaf lacks digitalSignature or has keyCertSign/cRLSign."""


class UntrustedTrustDomain(InvalidX509Svid):
    """No X.509 authorities are known for the leaf's trust domain."""


class ExpiredCertificate(InvalidX509Svid):
    """A certificate in the chain is past its NotAfter."""


class NotYetValidCertificate(InvalidX509Svid):
    """A certificate in the chain is before its NotBefore."""


class ChainVerificationFailed(InvalidX509Svid):
    """No valid path to the bundle: broken link, bad signature, or an intermediate that is no CA."""


# --------------------------------------------------------------------------- the SVID


@dataclass(frozen=True)
class X509Svid:
    """An X509-SVID with its private key. `chain` is leaf first, then intermediates."""

    spiffe_id: SpiffeId
    chain: tuple[x509.Certificate, ...]
    private_key: PrivateKey
    hint: str = ""

    def __post_init__(self) -> None:
        if not self.chain:
            raise MalformedChain("an X509-SVID needs at least its leaf certificate")
        leaf_id = leaf_spiffe_id(self.chain[0])
        if leaf_id != self.spiffe_id:
            raise InvalidUriSan(f"leaf is for {leaf_id}, not {self.spiffe_id}", self.chain[0])
        if self.private_key.public_key() != self.chain[0].public_key():
            raise InvalidKey("private key does not match the leaf certificate's public key")

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]

    @property
    def expires_at(self) -> datetime:
        return self.chain[0].not_valid_after_utc

    def chain_der(self) -> bytes:
        """Concatenated DER, leaf first: the Workload API `x509_svid` field."""
        return b"".join(c.public_bytes(serialization.Encoding.DER) for c in self.chain)

    def chain_pem(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.chain)

    def key_der(self) -> bytes:
        """PKCS#8 DER: the Workload API `x509_svid_key` field."""
        return private_key_to_der(self.private_key)

    @classmethod
    def parse_der(cls, chain_der: bytes, key_der: bytes, hint: str = "") -> X509Svid:
        """From Workload API fields; checks the leaf rules and the key match, not the chain."""
        chain = parse_chain_der(chain_der)
        return cls(leaf_spiffe_id(chain[0]), chain, private_key_from_der(key_der), hint)


# --------------------------------------------------------------------------- verifying


def is_ca(certificate: x509.Certificate) -> bool:
    """Whether `certificate` has BasicConstraints CA=true."""
    try:
        bc = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    return bc.ca


def parse_chain_der(data: bytes) -> tuple[x509.Certificate, ...]:
    """Certificates from concatenated DER (leaf first); MalformedChain on garbage or empty."""
    try:
        return load_der_certificates(data)
    except ValueError as exc:
        raise MalformedChain(f"certificate chain: {exc}") from exc


def leaf_spiffe_id(leaf: x509.Certificate) -> SpiffeId:
    """The SPIFFE ID of a leaf that obeys the X509-SVID leaf rules; InvalidX509Svid otherwise."""
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    if len(uris) != 1:
        raise InvalidUriSan(f"leaf has {len(uris)} URI SANs; expected exactly one", leaf)
    try:
        spiffe_id = SpiffeId.parse(uris[0])
    except InvalidSpiffeId as exc:
        raise InvalidUriSan(f"leaf URI SAN is not a SPIFFE ID: {exc}", leaf) from exc
    try:
        if leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            raise LeafIsCa("leaf certificate has CA=true; expected CA=false", leaf)
    except x509.ExtensionNotFound:
        pass
    try:
        ku = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        raise InvalidLeafKeyUsage("leaf has no KeyUsage; expected digitalSignature", leaf) from None
    if ku.key_cert_sign or ku.crl_sign:
        raise InvalidLeafKeyUsage("leaf has keyCertSign or cRLSign; a leaf must not sign", leaf)
    if not ku.digital_signature:
        raise InvalidLeafKeyUsage("leaf lacks digitalSignature key usage", leaf)
    return spiffe_id


def _check_validity(certs: Iterable[x509.Certificate], now: datetime) -> None:
    for cert in certs:
        if now > cert.not_valid_after_utc:
            raise ExpiredCertificate(
                f"certificate {cert.subject.rfc4514_string()!r} expired at "
                f"{cert.not_valid_after_utc.isoformat()}",
                cert,
            )
        if now < cert.not_valid_before_utc:
            raise NotYetValidCertificate(
                f"certificate {cert.subject.rfc4514_string()!r} is not valid before "
                f"{cert.not_valid_before_utc.isoformat()}",
                cert,
            )


def _ca_key_usage(_policy: Policy, _cert: x509.Certificate, ku: x509.KeyUsage | None) -> None:
    # RFC 5280 §4.2.1.3: a CA whose KeyUsage lacks keyCertSign must not sign certificates.
    if ku is not None and not ku.key_cert_sign:
        raise ValueError("CA certificate's KeyUsage lacks keyCertSign")


# RFC 5280 path rules only: the SPIFFE leaf rules were applied before path building, and SPIFFE
# CAs are not Web PKI CAs (no EKU or subject requirements), so both start from permit_all.
_CA_POLICY = (
    ExtensionPolicy.permit_all()
    .require_present(x509.BasicConstraints, Criticality.AGNOSTIC, None)
    .may_be_present(x509.KeyUsage, Criticality.AGNOSTIC, _ca_key_usage)
)
_EE_POLICY = ExtensionPolicy.permit_all()


def verify_chain(
    chain: Sequence[x509.Certificate],
    bundle_source: BundleSource,
    now: datetime | None = None,
) -> SpiffeId:
    """Verify a presented X509-SVID chain (leaf first) and return its SPIFFE ID.

    The path must end at an X.509 authority of the bundle for the leaf's trust domain.
    """
    if not chain:
        raise MalformedChain("empty certificate chain")
    if len(chain) > MAX_CHAIN_DEPTH:
        raise MalformedChain(f"chain of {len(chain)} certificates; at most {MAX_CHAIN_DEPTH}")
    now = utc_now(now)
    leaf = chain[0]
    spiffe_id = leaf_spiffe_id(leaf)
    bundle = bundle_source.get_bundle_for_trust_domain(spiffe_id.trust_domain)
    if bundle is None or not bundle.x509_authorities:
        raise UntrustedTrustDomain(
            f"no X.509 authorities for trust domain {spiffe_id.trust_domain} of {spiffe_id}", leaf
        )
    _check_validity(chain, now)
    verifier = (
        PolicyBuilder()
        .store(Store(list(bundle.x509_authorities)))
        .time(now)
        .max_chain_depth(MAX_CHAIN_DEPTH)
        .extension_policies(ca_policy=_CA_POLICY, ee_policy=_EE_POLICY)
        .build_client_verifier()
    )
    try:
        # Also checks each trust anchor's own validity window at `now`.
        verifier.verify(leaf, list(chain[1:]))
    except VerificationError as exc:
        raise ChainVerificationFailed(
            f"no valid path from {spiffe_id} to the {spiffe_id.trust_domain} bundle: {exc}", leaf
        ) from exc
    return spiffe_id
