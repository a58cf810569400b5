"""Issuing X509-SVID leaves: the CSRs they answer and the certificates the server signs.

A leaf follows the X509-SVID profile (one URI SAN, CA=false, digitalSignature without
keyCertSign/cRLSign, EKU serverAuth+clientAuth) and never outlives the issuing CA. Checking a
presented chain is the SDK's (`insignia.x509svid`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from insignia._clock import utc_now
from insignia._dns import is_dns_name
from insignia.keys import PublicKey
from insignia.server.ca.x509ca import BACKDATE, InvalidAuthority, SigningAuthority, check_ttl
from insignia.spiffeid import SpiffeId

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


class InvalidCsr(ValueError):
    """A certificate signing request that cannot be parsed or whose signature is wrong."""


class InvalidDnsName(ValueError):
    def __init__(self, name: str) -> None:
        super().__init__(f"invalid DNS name {name!r}: expected labels of [a-z0-9-], '*.' prefix ok")
        self.name = name


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
