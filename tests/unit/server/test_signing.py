import re
from datetime import timedelta

import pytest
from cryptography import x509

from devtools.harness.agent_api_client import make_csr
from insignia.bundle import load_der_certificates
from insignia.jwtsvid import AudienceLimits, InvalidAudience
from insignia.keys import KeyType, generate_key
from insignia.server.ca.signing import NoActiveAuthority, SigningRefused, sign_jwt, sign_x509_svid
from insignia.spiffeid import SpiffeId
from tests.unit.common import WALL_NOW, make_ca

WEB = SpiffeId.parse("spiffe://example.org/web")


@pytest.fixture(scope="module")
def authority():  # type: ignore[no-untyped-def]
    return make_ca(now=WALL_NOW, ttl=timedelta(hours=1))


def test_signs_and_clamps_to_the_ca(authority) -> None:  # type: ignore[no-untyped-def]
    key = generate_key(KeyType.EC_P256)
    signed = sign_x509_svid(
        authority, make_csr(key, [str(WEB)]), WEB, timedelta(days=9), ["web.example.org"], WALL_NOW
    )
    leaf = load_der_certificates(signed.chain_der)[0]
    assert leaf.not_valid_after_utc == authority.not_after
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["web.example.org"]
    assert signed.serial_number == leaf.serial_number


@pytest.mark.parametrize(
    ("uris", "kwargs", "reason"),
    [
        ([], {}, "URI SANs []"),
        (["spiffe://example.org/other"], {}, "URI SANs"),
        ([str(WEB), "spiffe://example.org/x"], {}, "URI SANs"),
        ([str(WEB)], {"dns": ["evil.example.org"]}, "extra DNS SANs"),
        ([str(WEB)], {"ca": True}, "CA certificate"),
    ],
)
def test_refusals(authority, uris, kwargs, reason) -> None:  # type: ignore[no-untyped-def]
    csr = make_csr(generate_key(KeyType.EC_P256), uris, **kwargs)
    with pytest.raises(SigningRefused, match=re.escape(reason)):
        sign_x509_svid(authority, csr, WEB, timedelta(minutes=5), now=WALL_NOW)


def test_the_servers_tls_name_is_never_signed(authority) -> None:  # type: ignore[no-untyped-def]
    csr = make_csr(generate_key(KeyType.EC_P256), [str(WEB)])
    with pytest.raises(SigningRefused, match="reserved"):
        sign_x509_svid(authority, csr, WEB, timedelta(minutes=5), ["INSIGNIA-SERVER"], WALL_NOW)


def test_bad_signature_and_garbage(authority) -> None:  # type: ignore[no-untyped-def]
    csr = bytearray(make_csr(generate_key(KeyType.EC_P256), [str(WEB)]))
    csr[-3] ^= 0x55
    with pytest.raises(SigningRefused, match="CSR refused"):
        sign_x509_svid(authority, bytes(csr), WEB, timedelta(minutes=5), now=WALL_NOW)
    with pytest.raises(SigningRefused, match="not a DER"):
        sign_x509_svid(authority, b"junk", WEB, timedelta(minutes=5), now=WALL_NOW)


def test_agent_csr_may_omit_the_id(authority) -> None:  # type: ignore[no-untyped-def]
    csr = make_csr(generate_key(KeyType.EC_P256))
    agent = SpiffeId.parse("spiffe://example.org/insignia/agent/x")
    signed = sign_x509_svid(
        authority, csr, agent, timedelta(minutes=5), now=WALL_NOW, id_optional=True
    )
    assert signed.chain_der
    with pytest.raises(NoActiveAuthority):
        sign_x509_svid(None, csr, agent, timedelta(minutes=5), now=WALL_NOW)


def test_jwt_expiry_never_passes_the_key() -> None:
    key = generate_key(KeyType.EC_P256)
    limits = AudienceLimits()
    signed = sign_jwt(
        ("kid1", key),
        WALL_NOW + timedelta(seconds=30),
        WEB,
        ["aud"],
        timedelta(minutes=5),
        WALL_NOW,
        limits,
    )
    assert signed.expires_at - signed.issued_at == 30
    with pytest.raises(InvalidAudience, match="audience must be specified"):
        sign_jwt(
            ("kid1", key),
            WALL_NOW + timedelta(hours=1),
            WEB,
            [],
            timedelta(minutes=5),
            WALL_NOW,
            limits,
        )
    with pytest.raises(InvalidAudience, match="jwt_max_audiences"):
        sign_jwt(None, None, WEB, ["a"] * 17, timedelta(minutes=5), WALL_NOW, limits)
    with pytest.raises(NoActiveAuthority):
        sign_jwt(None, None, WEB, ["a"], timedelta(minutes=5), WALL_NOW, limits)


def test_an_id_without_a_path_is_never_signed(authority) -> None:  # type: ignore[no-untyped-def]
    """X509-SVID §3.1: a leaf's SPIFFE ID MUST have a path; the trust domain's own ID is not
    a workload's. Entry creation refuses it with the same rule."""
    td_id = SpiffeId.parse("spiffe://example.org")
    csr = make_csr(generate_key(KeyType.EC_P256), [str(td_id)])
    with pytest.raises(SigningRefused, match="expected a path after the trust domain"):
        sign_x509_svid(authority, csr, td_id, timedelta(minutes=5), now=WALL_NOW)
    with pytest.raises(SigningRefused, match="expected a path after the trust domain"):
        sign_jwt(("k", generate_key(KeyType.EC_P256)), WALL_NOW + timedelta(hours=1), td_id, ["a"],
                 timedelta(minutes=5), WALL_NOW, AudienceLimits())  # fmt: skip


def test_a_too_short_jwt_ttl_says_so() -> None:
    key = generate_key(KeyType.EC_P256)
    with pytest.raises(SigningRefused, match="ttl 1 s is too short for a JWT-SVID"):
        sign_jwt(
            ("k", key),
            WALL_NOW + timedelta(hours=1),
            WEB,
            ["a"],
            timedelta(seconds=1),
            WALL_NOW,
            AudienceLimits(),
        )
    with pytest.raises(NoActiveAuthority):  # the key itself expires within a second
        sign_jwt(
            ("k", key),
            WALL_NOW + timedelta(seconds=1),
            WEB,
            ["a"],
            timedelta(minutes=5),
            WALL_NOW,
            AudienceLimits(),
        )
