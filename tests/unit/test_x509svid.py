"""X509-SVID issuing and verification: the SPIFFE leaf profile, every rejection rule, and the
verdicts of independent implementations (openssl verify, py-spiffe in its own process)."""

from __future__ import annotations

import ipaddress
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from insignia.bundle import Bundle, BundleSet
from insignia.keys import InvalidKey, KeyType, PrivateKey, generate_key, private_key_to_der
from insignia.server.ca.x509_leaf import InvalidCsr, InvalidDnsName, build_leaf, parse_csr
from insignia.server.ca.x509ca import (
    BACKDATE,
    InvalidAuthority,
    SigningAuthority,
    build_intermediate_ca,
    build_root_ca,
)
from insignia.spiffeid import SpiffeId, TrustDomain
from insignia.x509svid import (
    ChainVerificationFailed,
    ExpiredCertificate,
    InvalidLeafKeyUsage,
    InvalidUriSan,
    InvalidX509Svid,
    LeafIsCa,
    MalformedChain,
    NotYetValidCertificate,
    UntrustedTrustDomain,
    X509Svid,
    parse_chain_der,
    verify_chain,
)
from tests.unit.common import TD, WALL_NOW, make_ca, openssl_verify

OTHER_TD = TrustDomain("other.test")
SID = SpiffeId.parse("spiffe://example.org/ns/prod/sa/web")
HOUR = timedelta(hours=1)
DER = serialization.Encoding.DER
PEM = serialization.Encoding.PEM


@dataclass(frozen=True)
class Pki:
    root: SigningAuthority
    inter: SigningAuthority
    bundle: Bundle


def make_pki(td: TrustDomain = TD, kt: KeyType = KeyType.EC_P256) -> Pki:
    root = make_ca(td, WALL_NOW, 24 * HOUR, kt)
    key = generate_key(kt)
    cert = build_intermediate_ca(root, key.public_key(), td, 12 * HOUR, WALL_NOW)
    return Pki(
        root, SigningAuthority(cert, key, (cert, *root.chain)), Bundle(td, (root.certificate,))
    )


@pytest.fixture(scope="module")
def pki() -> Pki:
    return make_pki()


@pytest.fixture(scope="module")
def leaf_key() -> PrivateKey:
    return generate_key(KeyType.EC_P256)


def leaf_for(
    authority: SigningAuthority, key: PrivateKey, **kw: object
) -> tuple[x509.Certificate, ...]:
    leaf = build_leaf(key.public_key(), SID, HOUR, authority, now=WALL_NOW, **kw)  # type: ignore[arg-type]
    return (leaf, *authority.chain)


def ext_value(cert: x509.Certificate, cls: type[x509.ExtensionType]) -> x509.ExtensionType:
    return cert.extensions.get_extension_for_class(cls).value


# ----------------------------------------------------------------------------- issuing


@pytest.mark.parametrize("kt", list(KeyType))
def test_leaf_profile(pki: Pki, kt: KeyType) -> None:
    key = generate_key(kt) if kt.value.startswith("ec") else generate_key(KeyType.RSA_2048)
    leaf = build_leaf(key.public_key(), SID, HOUR, pki.inter, now=WALL_NOW)
    san = ext_value(leaf, x509.SubjectAlternativeName)
    assert isinstance(san, x509.SubjectAlternativeName)
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [str(SID)]
    bc = leaf.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    ku = leaf.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature
    assert not ku.value.key_cert_sign and not ku.value.crl_sign
    assert ku.value.key_encipherment == kt.value.startswith("rsa")
    eku = ext_value(leaf, x509.ExtendedKeyUsage)
    assert isinstance(eku, x509.ExtendedKeyUsage)
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert ext_value(leaf, x509.SubjectKeyIdentifier) == (
        x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    )
    aki = ext_value(leaf, x509.AuthorityKeyIdentifier)
    inter_ski = ext_value(pki.inter.certificate, x509.SubjectKeyIdentifier)
    assert isinstance(aki, x509.AuthorityKeyIdentifier)
    assert isinstance(inter_ski, x509.SubjectKeyIdentifier)
    assert aki.key_identifier == inter_ski.digest
    assert leaf.not_valid_before_utc == WALL_NOW - BACKDATE
    assert leaf.not_valid_after_utc == WALL_NOW + HOUR
    leaf.verify_directly_issued_by(pki.inter.certificate)


def test_leaf_never_outlives_its_authority(pki: Pki, leaf_key: PrivateKey) -> None:
    leaf = build_leaf(leaf_key.public_key(), SID, timedelta(days=7), pki.inter, now=WALL_NOW)
    assert leaf.not_valid_after_utc == pki.inter.not_after == WALL_NOW + 12 * HOUR


def test_leaf_dns_names_and_custom_subject(pki: Pki, leaf_key: PrivateKey) -> None:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "web")])
    leaf = build_leaf(
        leaf_key.public_key(),
        SID,
        HOUR,
        pki.inter,
        dns_names=["web.example.org", "*.svc.local"],
        now=WALL_NOW,
        serial=1234,
        subject=subject,
    )
    san = ext_value(leaf, x509.SubjectAlternativeName)
    assert isinstance(san, x509.SubjectAlternativeName)
    assert san.get_values_for_type(x509.DNSName) == ["web.example.org", "*.svc.local"]
    assert leaf.serial_number == 1234 and leaf.subject == subject
    assert verify_chain((leaf, *pki.inter.chain), pki.bundle, WALL_NOW) == SID


@pytest.mark.parametrize("name", ["", "-bad.example", "a..b", "sp ace.example", "x" * 64, "é.fr"])
def test_invalid_dns_name_is_refused(pki: Pki, leaf_key: PrivateKey, name: str) -> None:
    with pytest.raises(InvalidDnsName):
        build_leaf(leaf_key.public_key(), SID, HOUR, pki.inter, dns_names=[name], now=WALL_NOW)


def test_authority_refuses_another_trust_domain(pki: Pki, leaf_key: PrivateKey) -> None:
    foreign = SpiffeId.parse("spiffe://other.test/w")
    with pytest.raises(InvalidAuthority, match=re.escape("not for spiffe://other.test/w")):
        build_leaf(leaf_key.public_key(), foreign, HOUR, pki.inter, now=WALL_NOW)


def test_expired_authority_cannot_sign(pki: Pki, leaf_key: PrivateKey) -> None:
    with pytest.raises(InvalidAuthority, match="expired"):
        build_leaf(leaf_key.public_key(), SID, HOUR, pki.inter, now=WALL_NOW + 13 * HOUR)


# ----------------------------------------------------------------------------- verifying


@pytest.mark.parametrize("kt", [KeyType.EC_P256, KeyType.EC_P384, KeyType.RSA_2048])
def test_verify_accepts_root_and_intermediate_chains(kt: KeyType) -> None:
    p = make_pki(kt=kt)
    key = generate_key(kt)
    assert verify_chain(leaf_for(p.root, key), p.bundle, WALL_NOW) == SID
    assert verify_chain(leaf_for(p.inter, key), p.bundle, WALL_NOW) == SID
    # The bundle may hold several roots (rotation); a BundleSet finds the right one.
    other = make_pki(OTHER_TD)
    bundles = BundleSet.of(
        [Bundle(TD, (make_pki().root.certificate, p.root.certificate)), other.bundle]
    )
    assert verify_chain(leaf_for(p.inter, key), bundles, WALL_NOW) == SID


def test_verify_uses_current_time_by_default(pki: Pki, leaf_key: PrivateKey) -> None:
    assert verify_chain(leaf_for(pki.inter, leaf_key), pki.bundle) == SID


@dataclass(frozen=True)
class Issuer:
    """A certificate and key that may break CA rules (SigningAuthority would refuse them)."""

    certificate: x509.Certificate
    private_key: PrivateKey


def custom_leaf(
    issuer: SigningAuthority | Issuer,
    key: PrivateKey,
    *,
    uris: Sequence[str] = (str(SID),),
    ca: bool | None = False,
    ku: dict[str, bool] | None = None,
    not_before: datetime = WALL_NOW - HOUR,
    not_after: datetime = WALL_NOW + HOUR,
    signer: PrivateKey | None = None,
    critical_extra: x509.ExtensionType | None = None,
) -> x509.Certificate:
    """A leaf built by hand, to break exactly one rule at a time."""
    usage = {"digital_signature": True, "key_cert_sign": False, "crl_sign": False}
    usage.update(ku or {})
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "leaf")]))
        .issuer_name(issuer.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(
            x509.KeyUsage(
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
                **usage,
            ),
            critical=True,
        )
    )
    if uris:
        sans = [x509.UniformResourceIdentifier(u) for u in uris]
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if ca is not None:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=None), True)
    if critical_extra is not None:
        builder = builder.add_extension(critical_extra, critical=True)
    return builder.sign(signer or issuer.private_key, hashes.SHA256())


def custom_ca(
    parent: SigningAuthority,
    key: PrivateKey,
    *,
    ca: bool = True,
    key_cert_sign: bool = True,
    not_after: datetime = WALL_NOW + HOUR,
) -> Issuer:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"custom ca {ca} {key_cert_sign}")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(parent.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(WALL_NOW - HOUR)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, key_cert_sign, False, False, False),
            critical=True,
        )
        .sign(parent.private_key, hashes.SHA256())
    )
    return Issuer(cert, key)


Case = Callable[[Pki, PrivateKey], tuple[Sequence[x509.Certificate], Bundle | BundleSet]]


def _no_uri(p: Pki, k: PrivateKey) -> tuple[Sequence[x509.Certificate], Bundle]:
    return (custom_leaf(p.root, k, uris=()),), p.bundle


def _two_uris(p: Pki, k: PrivateKey) -> tuple[Sequence[x509.Certificate], Bundle]:
    return (custom_leaf(p.root, k, uris=(str(SID), "spiffe://example.org/two")),), p.bundle


def _non_spiffe_uri(p: Pki, k: PrivateKey) -> tuple[Sequence[x509.Certificate], Bundle]:
    return (custom_leaf(p.root, k, uris=("https://example.org/w",)),), p.bundle


def _ca_leaf(p: Pki, k: PrivateKey) -> tuple[Sequence[x509.Certificate], Bundle]:
    return (custom_leaf(p.root, k, ca=True),), p.bundle


def _key_cert_sign(p: Pki, k: PrivateKey) -> tuple[Sequence[x509.Certificate], Bundle]:
    return (custom_leaf(p.root, k, ku={"key_cert_sign": True}),), p.bundle


def _crl_sign(p: Pki, k: PrivateKey) -> tuple[Sequence[x509.Certificate], Bundle]:
    return (custom_leaf(p.root, k, ku={"crl_sign": True}),), p.bundle


def _no_digital_signature(p: Pki, k: PrivateKey) -> tuple[Sequence[x509.Certificate], Bundle]:
    return (custom_leaf(p.root, k, ku={"digital_signature": False}),), p.bundle


def _unknown_td(p: Pki, k: PrivateKey) -> tuple[Sequence[x509.Certificate], Bundle]:
    return leaf_for(p.inter, k), Bundle(OTHER_TD, (p.root.certificate,))


def _td_without_x509_authorities(
    p: Pki, k: PrivateKey
) -> tuple[Sequence[x509.Certificate], Bundle]:
    return leaf_for(p.inter, k), Bundle(TD, jwt_authorities={"k": k.public_key()})


def _wrong_td(p: Pki, k: PrivateKey) -> tuple[Sequence[x509.Certificate], BundleSet]:
    # A leaf claiming example.org, signed by other.test's CA: other.test's bundle is known,
    # but only example.org's authorities may vouch for an example.org ID.
    other = make_pki(OTHER_TD)
    leaf = custom_leaf(other.root, k)
    return (leaf,), BundleSet.of([p.bundle, other.bundle])


def _expired_leaf(p: Pki, k: PrivateKey) -> tuple[Sequence[x509.Certificate], Bundle]:
    return (custom_leaf(p.root, k, not_after=WALL_NOW - timedelta(seconds=1)),), p.bundle


def _future_leaf(p: Pki, k: PrivateKey) -> tuple[Sequence[x509.Certificate], Bundle]:
    return (custom_leaf(p.root, k, not_before=WALL_NOW + timedelta(minutes=5)),), p.bundle


def _expired_intermediate(p: Pki, k: PrivateKey) -> tuple[Sequence[x509.Certificate], Bundle]:
    inter = custom_ca(
        p.root, generate_key(KeyType.EC_P256), not_after=WALL_NOW - timedelta(seconds=1)
    )
    return (custom_leaf(inter, k), inter.certificate), p.bundle


def _expired_root(p: Pki, k: PrivateKey) -> tuple[Sequence[x509.Certificate], Bundle]:
    old = build_root_ca(TD, generate_key(KeyType.EC_P256), HOUR, WALL_NOW - 2 * HOUR)
    return (custom_leaf(old, k),), Bundle(TD, (old.certificate,))


def _missing_intermediate(p: Pki, k: PrivateKey) -> tuple[Sequence[x509.Certificate], Bundle]:
    return leaf_for(p.inter, k)[:1], p.bundle


def _foreign_signature(p: Pki, k: PrivateKey) -> tuple[Sequence[x509.Certificate], Bundle]:
    # Names the root as issuer but is signed by an unrelated key.
    return (custom_leaf(p.root, k, signer=generate_key(KeyType.EC_P256)),), p.bundle


def _tampered_signature(p: Pki, k: PrivateKey) -> tuple[Sequence[x509.Certificate], Bundle]:
    der = bytearray(leaf_for(p.root, k)[0].public_bytes(DER))
    der[-5] ^= 0x01  # inside the ECDSA signature value
    return (x509.load_der_x509_certificate(bytes(der)),), p.bundle


def _intermediate_not_ca(p: Pki, k: PrivateKey) -> tuple[Sequence[x509.Certificate], Bundle]:
    inter = custom_ca(p.root, generate_key(KeyType.EC_P256), ca=False)
    return (custom_leaf(inter, k), inter.certificate), p.bundle


def _intermediate_without_key_cert_sign(
    p: Pki, k: PrivateKey
) -> tuple[Sequence[x509.Certificate], Bundle]:
    inter = custom_ca(p.root, generate_key(KeyType.EC_P256), key_cert_sign=False)
    return (custom_leaf(inter, k), inter.certificate), p.bundle


def _unknown_critical_extension(p: Pki, k: PrivateKey) -> tuple[Sequence[x509.Certificate], Bundle]:
    unknown = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00")
    return (custom_leaf(p.root, k, critical_extra=unknown),), p.bundle


def _empty_chain(p: Pki, k: PrivateKey) -> tuple[Sequence[x509.Certificate], Bundle]:
    return (), p.bundle


def _too_long(p: Pki, k: PrivateKey) -> tuple[Sequence[x509.Certificate], Bundle]:
    return (*leaf_for(p.inter, k), *[p.inter.certificate] * 8), p.bundle


REJECTIONS: list[tuple[str, Case, type[InvalidX509Svid], str]] = [
    ("no URI SAN", _no_uri, InvalidUriSan, "0 URI SANs"),
    ("two URI SANs", _two_uris, InvalidUriSan, "2 URI SANs"),
    ("URI SAN not SPIFFE", _non_spiffe_uri, InvalidUriSan, "not a SPIFFE ID"),
    ("CA leaf", _ca_leaf, LeafIsCa, "CA=true"),
    ("keyCertSign on leaf", _key_cert_sign, InvalidLeafKeyUsage, "keyCertSign"),
    ("cRLSign on leaf", _crl_sign, InvalidLeafKeyUsage, "cRLSign"),
    ("no digitalSignature", _no_digital_signature, InvalidLeafKeyUsage, "digitalSignature"),
    ("unknown trust domain", _unknown_td, UntrustedTrustDomain, "example.org"),
    ("bundle without X.509", _td_without_x509_authorities, UntrustedTrustDomain, "no X.509"),
    ("signed by another trust domain", _wrong_td, ChainVerificationFailed, "no valid path"),
    ("expired leaf", _expired_leaf, ExpiredCertificate, "expired at"),
    ("not yet valid leaf", _future_leaf, NotYetValidCertificate, "not valid before"),
    ("expired intermediate", _expired_intermediate, ExpiredCertificate, "custom ca"),
    ("expired root", _expired_root, ChainVerificationFailed, "not valid at validation time"),
    ("missing intermediate", _missing_intermediate, ChainVerificationFailed, "no valid path"),
    ("foreign signature", _foreign_signature, ChainVerificationFailed, "no valid path"),
    ("tampered signature", _tampered_signature, ChainVerificationFailed, "no valid path"),
    ("intermediate not CA", _intermediate_not_ca, ChainVerificationFailed, "cA must be asserted"),
    (
        "intermediate lacks keyCertSign",
        _intermediate_without_key_cert_sign,
        ChainVerificationFailed,
        "keyCertSign",
    ),
    (
        "unknown critical extension",
        _unknown_critical_extension,
        ChainVerificationFailed,
        "unaccounted-for critical",
    ),
    ("empty chain", _empty_chain, MalformedChain, "empty"),
    ("chain too long", _too_long, MalformedChain, "at most 8"),
]


@pytest.mark.parametrize(
    ("case", "expected", "message"), [r[1:] for r in REJECTIONS], ids=[r[0] for r in REJECTIONS]
)
def test_verify_rejects(
    pki: Pki, leaf_key: PrivateKey, case: Case, expected: type[InvalidX509Svid], message: str
) -> None:
    chain, source = case(pki, leaf_key)
    with pytest.raises(expected, match=message) as info:
        verify_chain(chain, source, WALL_NOW)
    assert type(info.value) is expected


@given(
    segments=st.lists(
        st.text(
            alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_",
            min_size=1,
            max_size=12,
        ),
        min_size=0,
        max_size=5,
    )
)
@settings(max_examples=40, deadline=None)
def test_any_valid_spiffe_id_round_trips_through_a_leaf(segments: list[str]) -> None:
    p = _PROPERTY_PKI
    sid = SpiffeId.from_segments(TD, *segments)
    leaf = build_leaf(_PROPERTY_KEY.public_key(), sid, HOUR, p.inter, now=WALL_NOW)
    assert verify_chain((leaf, *p.inter.chain), p.bundle, WALL_NOW) == sid


_PROPERTY_PKI = make_pki()
_PROPERTY_KEY = generate_key(KeyType.EC_P256)


# ----------------------------------------------------------------------------- encodings


def test_chain_der_round_trip_and_svid(pki: Pki, leaf_key: PrivateKey) -> None:
    chain = leaf_for(pki.inter, leaf_key)
    svid = X509Svid(SID, chain, leaf_key, hint="internal")
    assert parse_chain_der(svid.chain_der()) == chain
    again = X509Svid.parse_der(svid.chain_der(), svid.key_der(), "internal")
    assert again.spiffe_id == SID and again.chain == chain and again.hint == "internal"
    assert again.expires_at == WALL_NOW + HOUR
    assert svid.leaf is chain[0]
    assert svid.chain_pem().count(b"BEGIN CERTIFICATE") == 2


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "no certificates"),
        (b"garbage", "no DER SEQUENCE at byte 0"),
        (b"\x30\x82\x05", "bad DER length"),
        (b"\x30\x10abc", "truncated"),
        (b"\x30\x03\x02\x01\x00", "not valid X.509"),
    ],
)
def test_parse_chain_der_rejects_garbage(data: bytes, message: str) -> None:
    with pytest.raises(MalformedChain, match=message):
        parse_chain_der(data)


def test_parse_chain_der_names_trailing_garbage_offset(pki: Pki, leaf_key: PrivateKey) -> None:
    der = leaf_for(pki.root, leaf_key)[0].public_bytes(DER)
    with pytest.raises(MalformedChain, match=f"at byte {len(der)}"):
        parse_chain_der(der + b"\x00\x01")


def test_svid_refuses_mismatched_key_or_id(pki: Pki, leaf_key: PrivateKey) -> None:
    chain = leaf_for(pki.inter, leaf_key)
    with pytest.raises(InvalidKey, match="does not match"):
        X509Svid(SID, chain, generate_key(KeyType.EC_P256))
    with pytest.raises(InvalidUriSan, match=re.escape("not spiffe://example.org/other")):
        X509Svid(SpiffeId.parse("spiffe://example.org/other"), chain, leaf_key)
    with pytest.raises(MalformedChain):
        X509Svid(SID, (), leaf_key)


def _csr(key: PrivateKey, uris: Sequence[str], dns: Sequence[str] = (), ca: bool = False) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    sans += [x509.DNSName(d) for d in dns]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
    return builder.sign(key, hashes.SHA256()).public_bytes(DER)


def test_parse_csr_reports_what_is_asked(leaf_key: PrivateKey) -> None:
    req = parse_csr(_csr(leaf_key, [str(SID), "spiffe://example.org/x"], ["a.example"], ca=True))
    assert req.public_key == leaf_key.public_key()
    assert req.uri_sans == (str(SID), "spiffe://example.org/x")
    assert req.dns_names == ("a.example",)
    assert req.requests_ca is True
    assert req.other_sans == ()
    plain = parse_csr(_csr(leaf_key, []))
    assert plain.uri_sans == () and plain.dns_names == () and plain.requests_ca is False


def test_parse_csr_reports_other_san_kinds(leaf_key: PrivateKey) -> None:
    sans = [
        x509.UniformResourceIdentifier(str(SID)),
        x509.IPAddress(ipaddress.ip_address("10.0.0.1")),
        x509.RFC822Name("a@example.org"),
    ]
    der = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(leaf_key, hashes.SHA256())
        .public_bytes(DER)
    )
    req = parse_csr(der)
    assert req.uri_sans == (str(SID),)
    assert req.other_sans == ("10.0.0.1", "a@example.org")


def test_parse_csr_rejects_bad_signature_and_garbage(leaf_key: PrivateKey) -> None:
    der = bytearray(_csr(leaf_key, [str(SID)]))
    der[-5] ^= 0x01
    with pytest.raises(InvalidCsr, match="signature"):
        parse_csr(bytes(der))
    with pytest.raises(InvalidCsr, match="not a DER PKCS#10"):
        parse_csr(b"junk")


# ----------------------------------------------------------------------------- independent checks


@pytest.mark.parametrize(
    "via_intermediate", [False, True], ids=["root-leaf", "root-intermediate-leaf"]
)
@pytest.mark.parametrize("purpose", ["sslclient", "sslserver"])
@pytest.mark.parametrize("kt", [KeyType.EC_P256, KeyType.RSA_2048])
def test_openssl_verifies_issued_svids(
    tmp_path: Path, via_intermediate: bool, purpose: str, kt: KeyType
) -> None:
    now = datetime.now(UTC)
    root = build_root_ca(TD, generate_key(kt), HOUR, now)
    authority = root
    if via_intermediate:
        key = generate_key(kt)
        cert = build_intermediate_ca(root, key.public_key(), TD, HOUR, now)
        authority = SigningAuthority(cert, key, (cert,))
    leaf = build_leaf(generate_key(kt).public_key(), SID, HOUR, authority, now=now)
    chain = (leaf, *authority.chain)
    out = openssl_verify(tmp_path, chain, [root.certificate], purpose)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip() == "leaf.pem: OK"


def test_openssl_rejects_a_leaf_from_another_root(tmp_path: Path, leaf_key: PrivateKey) -> None:
    now = datetime.now(UTC)
    a = build_root_ca(TD, generate_key(KeyType.EC_P256), HOUR, now)
    b = build_root_ca(TD, generate_key(KeyType.EC_P256), HOUR, now)
    leaf = build_leaf(leaf_key.public_key(), SID, HOUR, a, now=now)
    out = openssl_verify(tmp_path, (leaf,), [b.certificate], "sslclient")
    assert out.returncode != 0


PY_SPIFFE_PARSE = textwrap.dedent(
    """
    import sys
    from spiffe import X509Svid, X509Bundle, TrustDomain
    chain, key, bundle = (open(p, "rb").read() for p in sys.argv[1:4])
    svid = X509Svid.parse_raw(chain, key)
    b = X509Bundle.parse_raw(TrustDomain("example.org"), bundle)
    print(svid.spiffe_id, len(svid.cert_chain), len(b.x509_authorities))
    """
)


@pytest.mark.parametrize(
    "via_intermediate", [False, True], ids=["root-leaf", "root-intermediate-leaf"]
)
def test_py_spiffe_accepts_issued_svid(
    tmp_path: Path, pki: Pki, leaf_key: PrivateKey, via_intermediate: bool
) -> None:
    authority = pki.inter if via_intermediate else pki.root
    svid = X509Svid(SID, leaf_for(authority, leaf_key), leaf_key)
    (tmp_path / "chain.der").write_bytes(svid.chain_der())
    (tmp_path / "key.der").write_bytes(private_key_to_der(leaf_key))
    (tmp_path / "bundle.der").write_bytes(pki.bundle.x509_der())
    out = subprocess.run(
        [sys.executable, "-c", PY_SPIFFE_PARSE, "chain.der", "key.der", "bundle.der"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(SID), str(len(svid.chain)), "1"]


def test_py_spiffe_rejects_a_ca_leaf(tmp_path: Path, pki: Pki, leaf_key: PrivateKey) -> None:
    # Proves the subprocess check above can fail: py-spiffe refuses what we refuse.
    leaf = custom_leaf(pki.root, leaf_key, ca=True)
    (tmp_path / "chain.der").write_bytes(leaf.public_bytes(DER))
    (tmp_path / "key.der").write_bytes(private_key_to_der(leaf_key))
    (tmp_path / "bundle.der").write_bytes(pki.bundle.x509_der())
    out = subprocess.run(
        [sys.executable, "-c", PY_SPIFFE_PARSE, "chain.der", "key.der", "bundle.der"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0
    assert "CA flag" in out.stderr
