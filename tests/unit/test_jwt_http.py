"""JWT-SVIDs in HTTP Authorization headers: attaching them and validating incoming ones."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from insignia.authorize import NotAuthorized, one_of
from insignia.bundle import Bundle
from insignia.jwt_http import (
    InvalidAuthorizationHeader,
    attach,
    authorization_header,
    bearer_token,
    validate_authorization,
)
from insignia.jwtsvid import AudienceMismatch, BadSignature, TokenExpired, UnknownKeyId
from insignia.keys import KeyType, PrivateKey, generate_key
from insignia.server.ca.jwt_signing import sign_jwt_svid
from insignia.sources import StaticSource
from insignia.spiffeid import SpiffeId
from tests.unit.common import TD

CALLER = SpiffeId.parse("spiffe://example.org/service/b")
AUDIENCE = "spiffe://example.org/service/a"


@pytest.fixture(scope="module")
def key() -> PrivateKey:
    return generate_key(KeyType.EC_P256)


def jwt_bundle(**keys: PrivateKey) -> Bundle:
    return Bundle(TD, jwt_authorities={kid: k.public_key() for kid, k in keys.items()})


def token(
    key: PrivateKey,
    kid: str = "k1",
    audience: tuple[str, ...] = (AUDIENCE,),
    now: datetime | None = None,
) -> str:
    return sign_jwt_svid(CALLER, audience, timedelta(minutes=5), key, kid, now=now)


def test_attach_then_validate_round_trip(key: PrivateKey) -> None:
    headers: dict[str, str] = {"Accept": "application/json"}
    attach(headers, token(key))
    assert headers["Authorization"].startswith("Bearer ey")
    svid = validate_authorization(
        headers["Authorization"], StaticSource(bundles=[jwt_bundle(k1=key)]), AUDIENCE
    )
    assert svid.spiffe_id == CALLER
    assert svid.audience == (AUDIENCE,)
    assert headers["Accept"] == "application/json"


def test_header_may_arrive_as_bytes_and_with_any_scheme_case(key: PrivateKey) -> None:
    source = StaticSource(bundles=[jwt_bundle(k1=key)])
    raw = f"bEaReR   {token(key)}".encode()
    assert validate_authorization(raw, source, AUDIENCE).spiffe_id == CALLER


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "missing"),
        ("", "missing"),
        ("Basic dXNlcjpwYXNz", "not the Bearer scheme"),
        ("Bearer", "not the Bearer scheme"),
        ("Bearer a.b.c d.e.f", "not the Bearer scheme"),
        (b"Bearer \xff", "not ASCII"),
    ],
)
def test_malformed_headers_are_refused_before_any_crypto(
    value: str | bytes | None, reason: str
) -> None:
    with pytest.raises(InvalidAuthorizationHeader, match=reason):
        bearer_token(value)


def test_error_shows_only_the_start_of_a_long_header(key: PrivateKey) -> None:
    secret = token(key)
    with pytest.raises(InvalidAuthorizationHeader) as info:
        bearer_token(f"Token {secret}")
    assert secret not in str(info.value)
    assert info.value.value is not None and info.value.value.endswith("...")


@pytest.mark.parametrize("bad", ["a.b.c\r\nX-Admin: 1", "a.b", "a b.c.d", ""])
def test_attach_refuses_what_is_not_a_compact_jws(bad: str) -> None:
    headers: dict[str, str] = {}
    with pytest.raises(InvalidAuthorizationHeader, match="not a compact JWS"):
        attach(headers, bad)
    assert headers == {}
    assert authorization_header("a.b.c") == "Bearer a.b.c"


def test_wrong_audience_is_refused(key: PrivateKey) -> None:
    source = StaticSource(bundles=[jwt_bundle(k1=key)])
    header = authorization_header(token(key, audience=("spiffe://example.org/other",)))
    with pytest.raises(AudienceMismatch):
        validate_authorization(header, source, AUDIENCE)


def test_expired_token_is_refused(key: PrivateKey) -> None:
    source = StaticSource(bundles=[jwt_bundle(k1=key)])
    old = datetime.now(UTC) - timedelta(hours=1)
    with pytest.raises(TokenExpired):
        validate_authorization(authorization_header(token(key, now=old)), source, AUDIENCE)


def test_token_signed_by_an_unknown_key_is_refused(key: PrivateKey) -> None:
    other = generate_key(KeyType.EC_P256)
    source = StaticSource(bundles=[jwt_bundle(k1=key)])
    with pytest.raises(BadSignature):
        validate_authorization(authorization_header(token(other)), source, AUDIENCE)


def test_authorizer_refuses_a_valid_token_from_the_wrong_caller(key: PrivateKey) -> None:
    source = StaticSource(bundles=[jwt_bundle(k1=key)])
    policy = one_of("spiffe://example.org/service/c")
    with pytest.raises(NotAuthorized) as info:
        validate_authorization(authorization_header(token(key)), source, AUDIENCE, authorize=policy)
    assert info.value.peer_id == CALLER
    allowed = one_of(CALLER)
    svid = validate_authorization(
        authorization_header(token(key)), source, AUDIENCE, authorize=allowed
    )
    assert svid.spiffe_id == CALLER


def test_rotated_jwt_authority_applies_on_the_next_call(key: PrivateKey) -> None:
    source = StaticSource(bundles=[jwt_bundle(k1=key)])
    new_key = generate_key(KeyType.EC_P384)
    header = authorization_header(token(new_key, kid="k2"))
    with pytest.raises(UnknownKeyId):
        validate_authorization(header, source, AUDIENCE)
    source.set_bundle(jwt_bundle(k1=key, k2=new_key))
    assert validate_authorization(header, source, AUDIENCE).spiffe_id == CALLER
