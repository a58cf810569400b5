"""X.509 signing authorities: the root and intermediate CA certificates that sign X509-SVIDs.

A CA certificate carries the trust domain's SPIFFE ID as its only URI SAN (as SPIRE's do), is
CA=true with keyCertSign+cRLSign, and never outlives its parent. Subjects carry the serial so
that two CA generations of one trust domain (old and new slots both in the bundle during
rotation) never share a subject name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from insignia._clock import utc_now
from insignia.durations import InvalidDuration
from insignia.keys import PrivateKey, PublicKey, x509_signature_hash
from insignia.server.ca.leaf_template import LeafTemplate, template_for
from insignia.spiffeid import InvalidSpiffeId, SpiffeId, TrustDomain
from insignia.x509svid import is_ca

#: NotBefore is set this far in the past so peers with slightly slow clocks accept new certs.
BACKDATE = timedelta(seconds=10)


class InvalidAuthority(ValueError):
    """A certificate/key pair that cannot act as a signing authority."""

    def __init__(self, certificate: x509.Certificate, reason: str) -> None:
        super().__init__(f"certificate {certificate.subject.rfc4514_string()!r}: {reason}")
        self.certificate = certificate
        self.reason = reason


def check_ttl(ttl: timedelta) -> timedelta:
    """`ttl` if positive; a zero TTL would mint a document that is born expired."""
    if ttl <= timedelta(0):
        raise InvalidDuration(ttl, "a TTL must be positive")
    return ttl


def can_sign_certificates(certificate: x509.Certificate) -> bool:
    """CA=true and, when KeyUsage is present, keyCertSign (RFC 5280 §4.2.1.3)."""
    if not is_ca(certificate):
        return False
    try:
        ku = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return True
    return ku.key_cert_sign


@dataclass(frozen=True)
class SigningAuthority:
    """A CA certificate with its private key, ready to sign leaves or subordinate CAs.

    `chain` is what a relying party needs between a leaf signed here and the bundle: this
    authority's certificate followed by its issuers, up to but EXCLUDING the self-signed
    root (which lives in the bundle). It is empty for a root CA. A signed leaf's full
    chain is `(leaf, *authority.chain)`, and `chain` is the content of "intermediates.pem".
    """

    certificate: x509.Certificate
    private_key: PrivateKey
    chain: tuple[x509.Certificate, ...] = ()
    # Derived once so the signing hot path does not redo them per leaf.
    signature_hash: hashes.SHA256 | hashes.SHA384 = field(init=False, repr=False, compare=False)
    authority_key_identifier: x509.AuthorityKeyIdentifier = field(
        init=False, repr=False, compare=False
    )
    trust_domain: TrustDomain | None = field(init=False, repr=False, compare=False)
    # None: a CA key or hash the template does not cover (leaves take CertificateBuilder).
    leaf_template: LeafTemplate | None = field(init=False, repr=False, compare=False)
    chain_der: bytes = field(init=False, repr=False, compare=False)  # `chain`, concatenated

    def __post_init__(self) -> None:
        cert = self.certificate
        if not can_sign_certificates(cert):
            raise InvalidAuthority(cert, "is not a CA with keyCertSign")
        if self.private_key.public_key() != cert.public_key():
            raise InvalidAuthority(cert, "private key does not match the certificate")
        if self.chain and self.chain[0] != cert:
            raise InvalidAuthority(cert, "chain must start with the authority's own certificate")
        if not self.chain and cert.issuer != cert.subject:
            raise InvalidAuthority(cert, "a non-root authority needs its chain")
        object.__setattr__(self, "signature_hash", x509_signature_hash(self.private_key))
        try:
            ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
            aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
        except x509.ExtensionNotFound:
            aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(self.private_key.public_key())
        object.__setattr__(self, "authority_key_identifier", aki)
        object.__setattr__(self, "trust_domain", uri_trust_domain(cert))
        object.__setattr__(
            self,
            "leaf_template",
            template_for(cert.subject, aki, self.private_key, self.signature_hash),
        )
        der = serialization.Encoding.DER
        object.__setattr__(self, "chain_der", b"".join(c.public_bytes(der) for c in self.chain))

    @property
    def not_after(self) -> datetime:
        return self.certificate.not_valid_after_utc


def uri_trust_domain(cert: x509.Certificate) -> TrustDomain | None:
    """The trust domain named by a CA's single URI SAN, if it has one (upstream CAs may not)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1:
        return None
    try:
        return SpiffeId.parse(uris[0]).trust_domain
    except InvalidSpiffeId:
        return None


def _ca_subject(trust_domain: TrustDomain, serial: int, common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "SPIFFE"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{trust_domain.name} {common_name}"[:64]),
            x509.NameAttribute(NameOID.SERIAL_NUMBER, str(serial)),
        ]
    )


def _ca_builder(
    public_key: PublicKey,
    trust_domain: TrustDomain,
    subject: x509.Name,
    serial: int,
    not_before: datetime,
    not_after: datetime,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(trust_domain.id_string())]),
            critical=False,
        )
    )


def build_root_ca(
    trust_domain: TrustDomain,
    key: PrivateKey,
    ttl: timedelta,
    now: datetime | None = None,
    subject: x509.Name | None = None,
    serial: int | None = None,
) -> SigningAuthority:
    """A self-signed root CA for `trust_domain`, valid from `now - BACKDATE` to `now + ttl`."""
    now = utc_now(now)
    serial = serial if serial is not None else x509.random_serial_number()
    subject = subject if subject is not None else _ca_subject(trust_domain, serial, "root CA")
    builder = _ca_builder(
        key.public_key(), trust_domain, subject, serial, now - BACKDATE, now + check_ttl(ttl)
    ).issuer_name(subject)
    cert = builder.sign(key, x509_signature_hash(key))
    return SigningAuthority(cert, key, ())


def build_intermediate_ca(
    parent: SigningAuthority,
    public_key: PublicKey,
    trust_domain: TrustDomain,
    ttl: timedelta,
    now: datetime | None = None,
    subject: x509.Name | None = None,
    serial: int | None = None,
) -> x509.Certificate:
    """A CA certificate for `public_key` signed by `parent`, never outliving `parent`.

    Returns the certificate only (the caller holds the private key); make the authority with
    `SigningAuthority(cert, key, (cert, *parent.chain))`.
    """
    now = utc_now(now)
    not_after = min(now + check_ttl(ttl), parent.not_after)
    if not_after <= now:
        raise InvalidAuthority(parent.certificate, f"expired at {parent.not_after.isoformat()}")
    serial = serial if serial is not None else x509.random_serial_number()
    subject = subject if subject is not None else _ca_subject(trust_domain, serial, "CA")
    builder = (
        _ca_builder(public_key, trust_domain, subject, serial, now - BACKDATE, not_after)
        .issuer_name(parent.certificate.subject)
        .add_extension(parent.authority_key_identifier, critical=False)
    )
    return builder.sign(parent.private_key, parent.signature_hash)
