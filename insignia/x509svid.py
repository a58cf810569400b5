"""X509-SVIDs: issuing leaf certificates and verifying presented chains by the SPIFFE rules.

Issuing follows the X509-SVID profile (one URI SAN, CA=false, digitalSignature without
keyCertSign/cRLSign, EKU serverAuth+clientAuth) and never outlives the issuing CA.

Verification first applies the SPIFFE leaf rules and the validity window of every presented
certificate itself, so each rejection has its own exception type; then it lets
`cryptography.x509.verification` (a RFC 5280 path builder) prove the signatures, the CA flags
and keyCertSign of intermediates, and that the path ends at an X.509 authority of the bundle for
the leaf's own trust domain (never another trust domain's).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    Policy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from insignia._dns import is_dns_name
from insignia.bundle import BundleSource, load_der_certificates
from insignia.keys import (
    InvalidKey,
    PrivateKey,
    PublicKey,
    private_key_from_der,
    private_key_to_der,
)
from insignia.spiffeid import InvalidSpiffeId, SpiffeId
from insignia.x509ca import BACKDATE, InvalidAuthority, SigningAuthority, check_ttl, utc_now

MAX_CHAIN_DEPTH = 8
_LEAF_SUBJECT = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "SPIFFE")])
_LEAF_EKU = x509.ExtendedKeyUsage(
    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
)
_LEAF_BC = x509.BasicConstraints(ca=False, path_length=None)


def _key_usage(*, key_encipherment: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


_KU_EC = _key_usage(key_encipherment=False)
_KU_RSA = _key_usage(key_encipherment=True)  # RSA key exchange in TLS 1.2 needs it


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


class InvalidCsr(ValueError):
    """A certificate signing request that cannot be parsed or whose signature is wrong."""


class InvalidDnsName(ValueError):
    def __init__(self, name: str) -> None:
        super().__init__(f"invalid DNS name {name!r}: expected labels of [a-z0-9-], '*.' prefix ok")
        self.name = name


# --------------------------------------------------------------------------- issuing


def build_leaf(
    public_key: PublicKey,
    spiffe_id: SpiffeId,
    ttl: timedelta,
    authority: SigningAuthority,
    dns_names: Sequence[str] = (),
    now: datetime | None = None,
    serial: int | None = None,
    subject: x509.Name | None = None,
) -> x509.Certificate:
    """Sign an X509-SVID leaf for `public_key`; its chain is `(leaf, *authority.chain)`.

    NotBefore is backdated by `BACKDATE` for clock skew; NotAfter is `now + ttl` clamped to the
    authority's NotAfter, so a leaf never outlives its CA.
    """
    now = utc_now(now)
    not_after = min(now + check_ttl(ttl), authority.not_after)
    if not_after <= now:
        raise InvalidAuthority(authority.certificate, "expired: cannot sign")
    if authority.trust_domain is not None and spiffe_id.trust_domain != authority.trust_domain:
        raise InvalidAuthority(
            authority.certificate,
            f"is for trust domain {authority.trust_domain}, not for {spiffe_id}",
        )
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(str(spiffe_id))]
    for name in dns_names:
        if not is_dns_name(name):
            raise InvalidDnsName(name)
        sans.append(x509.DNSName(name))
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject if subject is not None else _LEAF_SUBJECT)
        .issuer_name(authority.certificate.subject)
        .public_key(public_key)
        .serial_number(serial if serial is not None else x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(_LEAF_BC, critical=True)
        .add_extension(
            _KU_RSA if isinstance(public_key, rsa.RSAPublicKey) else _KU_EC, critical=True
        )
        .add_extension(_LEAF_EKU, critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(authority.authority_key_identifier, critical=False)
    )
    return builder.sign(authority.private_key, authority.signature_hash)


@dataclass(frozen=True)
class CsrRequest:
    """What a CSR asks for. Whether to honour it (one URI SAN, no CA) is the signer's call."""

    public_key: PublicKey
    uri_sans: tuple[str, ...]
    dns_names: tuple[str, ...]
    requests_ca: bool
    other_sans: tuple[str, ...] = ()  # IP, e-mail, directory names...: a signer should refuse


def parse_csr(der: bytes) -> CsrRequest:
    """Decode a DER PKCS#10 CSR and prove possession of its key (signature check)."""
    try:
        csr = x509.load_der_x509_csr(der)
    except ValueError as exc:
        raise InvalidCsr(f"not a DER PKCS#10 request: {exc}") from exc
    if not csr.is_signature_valid:
        raise InvalidCsr("CSR signature does not verify with its own public key")
    key = csr.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise InvalidCsr(f"CSR key type {type(key).__name__}; expected EC or RSA")
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = x509.SubjectAlternativeName([])
    uris = tuple(san.get_values_for_type(x509.UniformResourceIdentifier))
    dns = tuple(san.get_values_for_type(x509.DNSName))
    other = tuple(
        str(n.value)
        for n in san
        if not isinstance(n, x509.UniformResourceIdentifier | x509.DNSName)
    )
    try:
        requests_ca = csr.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        requests_ca = False
    return CsrRequest(key, uris, dns, requests_ca, other)


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
