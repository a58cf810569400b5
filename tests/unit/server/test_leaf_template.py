"""The pre-encoded leaf template against CertificateBuilder: the same leaf both ways.

Passing the profile's own subject (`LEAF_SUBJECT`) takes the builder fallback, so both leaves
come from `build_leaf` with the same serial and clock. Every template leaf is also checked by
`openssl verify` and by the SDK's X509-SVID parse and chain verification.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from insignia.bundle import Bundle
from insignia.keys import KeyType, PrivateKey, generate_key, private_key_to_der
from insignia.server.ca.leaf_template import LEAF_SUBJECT, der_length, der_time
from insignia.server.ca.x509_leaf import build_leaf, issue_leaf
from insignia.server.ca.x509ca import SigningAuthority, build_intermediate_ca, build_root_ca
from insignia.spiffeid import SpiffeId
from insignia.x509svid import X509Svid, verify_chain
from tests.unit.common import TD, openssl_verify

KEY_TYPES = (KeyType.EC_P256, KeyType.EC_P384, KeyType.RSA_2048)
# The CAs' lives straddle 2050, where Time switches from UTCTime to GeneralizedTime.
CA_START = datetime(2049, 12, 1, tzinfo=UTC)
CA_LIFE = timedelta(days=90)


@dataclass(frozen=True)
class Issuer:
    root: SigningAuthority
    authority: SigningAuthority  # the root itself, or an intermediate under it


def _issuers() -> list[Issuer]:
    out = []
    for kt in KEY_TYPES:
        root = build_root_ca(TD, generate_key(kt), CA_LIFE, CA_START)
        out.append(Issuer(root, root))
        key = generate_key(kt)
        cert = build_intermediate_ca(root, key.public_key(), TD, CA_LIFE, CA_START)
        out.append(Issuer(root, SigningAuthority(cert, key, (cert,))))
    return out


ISSUERS = _issuers()
LEAF_KEYS: dict[KeyType, list[PrivateKey]] = {
    kt: [generate_key(kt) for _ in range(3)] for kt in KEY_TYPES
}

_SEGMENT = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_",
    min_size=1,
    max_size=20,
).filter(lambda s: s not in (".", ".."))
_LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)
_DNS_NAME = st.builds(
    lambda wildcard, labels: ("*." if wildcard else "") + ".".join(labels),
    st.booleans(),
    st.lists(_LABEL, min_size=1, max_size=4),
)


@dataclass(frozen=True)
class LeafRequest:
    issuer: Issuer
    key: PrivateKey
    spiffe_id: SpiffeId
    dns_names: list[str]
    now: datetime
    ttl: timedelta
    serial: int


@st.composite
def leaf_requests(draw: st.DrawFn) -> LeafRequest:
    key_type = draw(st.sampled_from(KEY_TYPES))
    offset = draw(st.integers(0, int(CA_LIFE.total_seconds()) - 1))
    return LeafRequest(
        issuer=draw(st.sampled_from(ISSUERS)),
        key=draw(st.sampled_from(LEAF_KEYS[key_type])),
        spiffe_id=SpiffeId.from_segments(TD, *draw(st.lists(_SEGMENT, min_size=1, max_size=6))),
        dns_names=draw(st.lists(_DNS_NAME, max_size=4)),
        # A fraction of a second too: the certificate drops it, both ways alike.
        now=CA_START + timedelta(seconds=offset, microseconds=draw(st.integers(0, 999_999))),
        ttl=timedelta(seconds=draw(st.integers(1, 3 * 24 * 3600))),  # some outlive the CA
        serial=draw(st.integers(1, 2**159 - 1)),
    )


def _extensions(cert: x509.Certificate) -> list[tuple[str, bool, x509.ExtensionType]]:
    return [(e.oid.dotted_string, e.critical, e.value) for e in cert.extensions]


def _both_ways(r: LeafRequest) -> tuple[x509.Certificate, x509.Certificate]:
    """(template leaf, CertificateBuilder leaf) for one request."""
    args = (r.key.public_key(), r.spiffe_id, r.ttl, r.issuer.authority, r.dns_names, r.now)
    return (
        build_leaf(*args, serial=r.serial),
        build_leaf(*args, serial=r.serial, subject=LEAF_SUBJECT),
    )


_TEMPLATE_SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@given(r=leaf_requests())
@_TEMPLATE_SETTINGS
def test_template_leaf_equals_builder_leaf(tmp_path: Path, r: LeafRequest) -> None:
    ours, theirs = _both_ways(r)
    assert ours.tbs_certificate_bytes == theirs.tbs_certificate_bytes
    for field in (
        "version",
        "serial_number",
        "subject",
        "issuer",
        "not_valid_before_utc",
        "not_valid_after_utc",
        "signature_algorithm_oid",
    ):
        assert getattr(ours, field) == getattr(theirs, field), field
    for params in ("signature_hash_algorithm", "signature_algorithm_parameters"):
        assert type(getattr(ours, params)) is type(getattr(theirs, params)), params
    assert ours.public_key() == theirs.public_key() == r.key.public_key()
    assert _extensions(ours) == _extensions(theirs)
    ours.verify_directly_issued_by(r.issuer.authority.certificate)

    chain = (ours, *r.issuer.authority.chain)
    at = ours.not_valid_before_utc + timedelta(seconds=10)
    for purpose in ("sslclient", "sslserver"):
        out = openssl_verify(tmp_path, chain, [r.issuer.root.certificate], purpose, at)
        assert out.returncode == 0, out.stdout + out.stderr
        assert out.stdout.strip() == "leaf.pem: OK"
    der = b"".join(c.public_bytes(serialization.Encoding.DER) for c in chain)
    svid = X509Svid.parse_der(der, private_key_to_der(r.key))
    assert svid.spiffe_id == r.spiffe_id
    assert verify_chain(svid.chain, Bundle(TD, (r.issuer.root.certificate,)), at) == r.spiffe_id


def test_issue_leaf_reports_what_the_certificate_says() -> None:
    issuer = ISSUERS[0].authority
    now = CA_START + timedelta(hours=1, microseconds=654_321)
    pub = LEAF_KEYS[KeyType.EC_P256][0].public_key()
    sid = SpiffeId.parse("spiffe://example.org/w")
    leaf = issue_leaf(pub, sid, timedelta(hours=1), issuer, now=now)
    cert = x509.load_der_x509_certificate(leaf.der)
    assert (leaf.serial_number, leaf.not_after) == (cert.serial_number, cert.not_valid_after_utc)


@pytest.mark.parametrize(
    ("n", "encoded"),
    [(0, "00"), (127, "7f"), (128, "8180"), (255, "81ff"), (256, "820100"), (65536, "83010000")],
)
def test_der_length(n: int, encoded: str) -> None:
    assert der_length(n).hex() == encoded


def test_der_time_switches_to_generalized_time_in_2050() -> None:
    assert der_time(datetime(2049, 12, 31, 23, 59, 59, tzinfo=UTC)) == b"\x17\x0d491231235959Z"
    assert der_time(datetime(2050, 1, 1, tzinfo=UTC)) == b"\x18\x0f20500101000000Z"


def test_serial_out_of_range_is_refused() -> None:
    issuer = ISSUERS[0].authority
    pub = LEAF_KEYS[KeyType.EC_P256][0].public_key()
    sid = SpiffeId.parse("spiffe://example.org/w")
    for serial in (0, 2**159):
        with pytest.raises(ValueError, match="159 bits"):
            issue_leaf(pub, sid, timedelta(hours=1), issuer, now=CA_START, serial=serial)
