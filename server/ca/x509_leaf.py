"""Issuing X509-SVID leaves: the CSRs they answer and the certificates the server signs.

A leaf follows the X509-SVID profile (one URI SAN, CA=false, digitalSignature without
keyCertSign/cRLSign, EKU serverAuth+clientAuth) and never outlives the issuing CA. Checking a
presented chain is the SDK's (`insignia.x509svid`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from insignia._clock import utc_now
from insignia._dns import is_dns_name
from insignia.keys import PublicKey
from insignia.server.ca.leaf_template import KU_EC, KU_RSA, LEAF_BC, LEAF_EKU, LEAF_SUBJECT
from insignia.server.ca.x509ca import BACKDATE, InvalidAuthority, SigningAuthority, check_ttl
from insignia.spiffeid import SpiffeId

_DER = serialization.Encoding.DER
_SPKI = serialization.PublicFormat.SubjectPublicKeyInfo


class InvalidCsr(ValueError):
    """A certificate signing request that cannot be parsed or whose signature is wrong."""


class InvalidDnsName(ValueError):
    def __init__(self, name: str) -> None:
        super().__init__(f"invalid DNS name {name!r}: expected labels of [a-z0-9-], '*.' prefix ok")
        self.name = name


@dataclass(frozen=True, slots=True)
class IssuedLeaf:
    """A signed leaf as DER, with what the signing path reports about it (no parse needed)."""

    der: bytes
    serial_number: int
    not_after: datetime  # as the certificate carries it: UTC, whole seconds


def issue_leaf(
    public_key: PublicKey,
    spiffe_id: SpiffeId,
    ttl: timedelta,
    authority: SigningAuthority,
    dns_names: Sequence[str] = (),
    now: datetime | None = None,
    serial: int | None = None,
    subject: x509.Name | None = None,
) -> IssuedLeaf:
    """Sign an X509-SVID leaf for `public_key`; its chain is `(leaf, *authority.chain)`.

    NotBefore is backdated by `BACKDATE` for clock skew; NotAfter is `now + ttl` clamped to the
    authority's NotAfter, so a leaf never outlives its CA. The authority's pre-encoded template
    (leaf_template.py) signs it, except for a custom `subject` or a CA key/hash the template
    does not cover: those go through CertificateBuilder, with the same profile.
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
    for name in dns_names:
        if not is_dns_name(name):
            raise InvalidDnsName(name)
    if serial is None:
        serial = x509.random_serial_number()
    template = authority.leaf_template
    if template is None or subject is not None:
        leaf = _builder_leaf(
            public_key, spiffe_id, not_after, authority, dns_names, now, serial, subject
        )
        return IssuedLeaf(leaf.public_bytes(_DER), serial, leaf.not_valid_after_utc)
    der = template.certificate(
        serial,
        now - BACKDATE,
        not_after,
        public_key.public_bytes(_DER, _SPKI),
        isinstance(public_key, rsa.RSAPublicKey),
        str(spiffe_id),
        dns_names,
    )
    return IssuedLeaf(der, serial, not_after.astimezone(UTC).replace(microsecond=0))


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
    """`issue_leaf` as a parsed certificate, for callers that read it."""
    issued = issue_leaf(public_key, spiffe_id, ttl, authority, dns_names, now, serial, subject)
    return x509.load_der_x509_certificate(issued.der)


def _builder_leaf(
    public_key: PublicKey,
    spiffe_id: SpiffeId,
    not_after: datetime,
    authority: SigningAuthority,
    dns_names: Sequence[str],
    now: datetime,
    serial: int,
    subject: x509.Name | None,
) -> x509.Certificate:
    """The same leaf through CertificateBuilder: the fallback, and the template's reference."""
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(str(spiffe_id))]
    sans.extend(x509.DNSName(name) for name in dns_names)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject if subject is not None else LEAF_SUBJECT)
        .issuer_name(authority.certificate.subject)
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(LEAF_BC, critical=True)
        .add_extension(KU_RSA if isinstance(public_key, rsa.RSAPublicKey) else KU_EC, critical=True)
        .add_extension(LEAF_EKU, critical=False)
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
