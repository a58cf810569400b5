"""Root and intermediate signing authorities: profile, lifetimes, and checks on loading."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from insignia.durations import InvalidDuration
from insignia.keys import KeyType, generate_key
from insignia.server.ca.x509ca import (
    BACKDATE,
    InvalidAuthority,
    SigningAuthority,
    build_intermediate_ca,
    build_root_ca,
)
from tests.unit.common import NOW, TD

E = TypeVar("E", bound=x509.ExtensionType)


def ext(cert: x509.Certificate, cls: type[E]) -> x509.Extension[E]:
    return cert.extensions.get_extension_for_class(cls)


def intermediate(parent: SigningAuthority, ttl: timedelta, now: datetime = NOW) -> SigningAuthority:
    key = generate_key(KeyType.EC_P256)
    cert = build_intermediate_ca(parent, key.public_key(), TD, ttl, now)
    return SigningAuthority(cert, key, (cert, *parent.chain))


@pytest.mark.parametrize("kt", [KeyType.EC_P256, KeyType.EC_P384, KeyType.RSA_2048])
def test_root_ca_profile(kt: KeyType) -> None:
    root = build_root_ca(TD, generate_key(kt), timedelta(hours=24), NOW)
    cert = root.certificate
    assert cert.issuer == cert.subject
    cert.verify_directly_issued_by(cert)
    bc = ext(cert, x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    ku = ext(cert, x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
    assert not ku.value.digital_signature
    san = ext(cert, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://example.org"]
    ski = ext(cert, x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(root.private_key.public_key())
    assert cert.not_valid_before_utc == NOW - BACKDATE
    assert cert.not_valid_after_utc == NOW + timedelta(hours=24)
    assert root.chain == ()
    assert root.trust_domain == TD
    expected_hash = hashes.SHA384 if kt is KeyType.EC_P384 else hashes.SHA256
    assert isinstance(cert.signature_hash_algorithm, expected_hash)


def test_two_roots_of_one_trust_domain_have_distinct_subjects() -> None:
    # Both sit in the bundle during rotation; equal subjects would confuse path building.
    a = build_root_ca(TD, generate_key(KeyType.EC_P256), timedelta(hours=1), NOW)
    b = build_root_ca(TD, generate_key(KeyType.EC_P256), timedelta(hours=1), NOW)
    assert a.certificate.subject != b.certificate.subject


def test_custom_subject_and_serial() -> None:
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Acme")])
    root = build_root_ca(
        TD, generate_key(KeyType.EC_P256), timedelta(hours=1), NOW, subject=subject, serial=42
    )
    assert root.certificate.subject == subject
    assert root.certificate.serial_number == 42


def test_intermediate_is_signed_by_parent_and_links_key_ids() -> None:
    root = build_root_ca(TD, generate_key(KeyType.EC_P384), timedelta(hours=24), NOW)
    inter = intermediate(root, timedelta(hours=12))
    cert = inter.certificate
    cert.verify_directly_issued_by(root.certificate)
    assert cert.issuer == root.certificate.subject
    aki = ext(cert, x509.AuthorityKeyIdentifier).value
    root_ski = ext(root.certificate, x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == root_ski.digest
    assert ext(cert, x509.BasicConstraints).value.ca
    assert ext(cert, x509.KeyUsage).value.key_cert_sign
    assert cert.not_valid_after_utc == NOW + timedelta(hours=12)
    assert inter.chain == (cert,)
    assert inter.trust_domain == TD
    # A second level carries both intermediates, still without the root.
    deeper = intermediate(inter, timedelta(hours=1))
    assert deeper.chain == (deeper.certificate, cert)


def test_intermediate_never_outlives_its_parent() -> None:
    root = build_root_ca(TD, generate_key(KeyType.EC_P256), timedelta(hours=2), NOW)
    inter = intermediate(root, timedelta(days=30))
    assert inter.certificate.not_valid_after_utc == root.not_after == NOW + timedelta(hours=2)


def test_expired_parent_cannot_sign() -> None:
    root = build_root_ca(TD, generate_key(KeyType.EC_P256), timedelta(hours=1), NOW)
    with pytest.raises(InvalidAuthority, match="expired"):
        intermediate(root, timedelta(hours=1), now=NOW + timedelta(hours=2))


@pytest.mark.parametrize("ttl", [timedelta(0), timedelta(seconds=-5)])
def test_non_positive_ttl_is_refused(ttl: timedelta) -> None:
    with pytest.raises(InvalidDuration, match="TTL must be positive"):
        build_root_ca(TD, generate_key(KeyType.EC_P256), ttl, NOW)


def test_naive_time_is_refused() -> None:
    with pytest.raises(ValueError, match="no timezone"):
        build_root_ca(TD, generate_key(KeyType.EC_P256), timedelta(hours=1), datetime(2030, 1, 1))


def test_signing_authority_refuses_inconsistent_material() -> None:
    root = build_root_ca(TD, generate_key(KeyType.EC_P256), timedelta(hours=1), NOW)
    inter = intermediate(root, timedelta(hours=1))
    with pytest.raises(InvalidAuthority, match="does not match"):
        SigningAuthority(root.certificate, generate_key(KeyType.EC_P256))
    with pytest.raises(InvalidAuthority, match="needs its chain"):
        SigningAuthority(inter.certificate, inter.private_key, ())
    with pytest.raises(InvalidAuthority, match="must start with"):
        SigningAuthority(inter.certificate, inter.private_key, (root.certificate,))


def test_signing_authority_refuses_a_non_ca_certificate() -> None:
    key = generate_key(KeyType.EC_P256)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "not a ca")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW)
        .not_valid_after(NOW + timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    with pytest.raises(InvalidAuthority, match="not a CA"):
        SigningAuthority(cert, key)


def test_openssl_accepts_root_and_intermediate(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    root = build_root_ca(TD, generate_key(KeyType.EC_P256), timedelta(hours=1), now)
    inter = intermediate(root, timedelta(hours=1), now=now)
    pem = serialization.Encoding.PEM
    (tmp_path / "root.pem").write_bytes(root.certificate.public_bytes(pem))
    (tmp_path / "inter.pem").write_bytes(inter.certificate.public_bytes(pem))
    out = subprocess.run(
        ["openssl", "verify", "-x509_strict", "-CAfile", "root.pem", "inter.pem"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip() == "inter.pem: OK"
