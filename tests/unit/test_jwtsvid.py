"""JWT-SVIDs: token shape, every rejection rule, and agreement with PyJWT, joserfc and
py-spiffe (the last in its own process) in both directions."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from hypothesis import given, settings
from hypothesis import strategies as st
from joserfc import jwt as josejwt
from joserfc.jwk import ECKey, KeySet, RSAKey

from insignia.bundle import Bundle, BundleSet
from insignia.durations import InvalidDuration
from insignia.jwtsvid import (
    MAX_TOKEN_BYTES,
    AudienceLimits,
    AudienceMismatch,
    BadSignature,
    InvalidAudience,
    InvalidJwtSvid,
    InvalidSubject,
    MalformedToken,
    TokenExpired,
    TokenNotYetValid,
    UnknownKeyId,
    UnsupportedAlgorithm,
    UntrustedTrustDomain,
    check_token_fits,
    max_token_bytes,
    parse_and_validate,
)
from insignia.keys import InvalidKey, KeyType, PrivateKey, generate_key
from insignia.server.ca.jwt_signing import sign_jwt_svid
from insignia.spiffeid import MAX_ID_BYTES, SpiffeId, TrustDomain
from tests.unit.common import TD, WALL_NOW

OTHER_TD = TrustDomain("other.test")
SID = SpiffeId.parse("spiffe://example.org/ns/prod/sa/web")
TTL = timedelta(minutes=5)

KEYS: dict[KeyType, PrivateKey] = {
    kt: generate_key(kt) for kt in (KeyType.EC_P256, KeyType.EC_P384, KeyType.RSA_2048)
}
EC = KEYS[KeyType.EC_P256]
OTHER_KEY = generate_key(KeyType.EC_P256)
BUNDLE = Bundle(TD, jwt_authorities={kt.value: k.public_key() for kt, k in KEYS.items()})
OTHER_BUNDLE = Bundle(OTHER_TD, jwt_authorities={"other": OTHER_KEY.public_key()})
BUNDLES = BundleSet.of([BUNDLE, OTHER_BUNDLE])

SIGNING_CASES = [
    (KeyType.EC_P256, None, "ES256"),
    (KeyType.EC_P384, None, "ES384"),
    (KeyType.RSA_2048, None, "RS256"),
    (KeyType.RSA_2048, "RS384", "RS384"),
    (KeyType.RSA_2048, "RS512", "RS512"),
    (KeyType.RSA_2048, "PS256", "PS256"),
    (KeyType.RSA_2048, "PS384", "PS384"),
    (KeyType.RSA_2048, "PS512", "PS512"),
]


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segments(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    h, c, _ = token.split(".")
    return (
        json.loads(base64.urlsafe_b64decode(h + "==")),
        json.loads(base64.urlsafe_b64decode(c + "==")),
    )


def sign(kt: KeyType = KeyType.EC_P256, alg: str | None = None, **kw: Any) -> str:
    args: dict[str, Any] = {"now": WALL_NOW, **kw}
    return sign_jwt_svid(SID, ["aud1", "aud2"], TTL, KEYS[kt], kt.value, alg, **args)


def claims(**changes: Any) -> dict[str, Any]:
    base = {
        "sub": str(SID),
        "aud": ["aud1"],
        "exp": int(WALL_NOW.timestamp()) + 300,
        "iat": int(WALL_NOW.timestamp()),
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def pyjwt_token(
    payload: Mapping[str, Any],
    key: PrivateKey = EC,
    kid: str | None = "ec-p256",
    alg: str = "ES256",
) -> str:
    headers = {"kid": kid} if kid is not None else {}
    return pyjwt.encode(dict(payload), key, algorithm=alg, headers=headers)


def forged(
    header: Mapping[str, Any],
    payload: Mapping[str, Any],
    signer: Callable[[bytes], bytes] | None = None,
) -> str:
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    signature = signer(signing_input.encode()) if signer else b""
    return f"{signing_input}.{b64(signature)}"


def validate(token: str, audience: str | list[str] = "aud1", **kw: Any) -> Any:
    return parse_and_validate(token, BUNDLES, audience, now=kw.pop("now", WALL_NOW), **kw)


# ----------------------------------------------------------------------------- signing


@pytest.mark.parametrize(("kt", "asked", "alg"), SIGNING_CASES)
def test_signed_token_shape_and_round_trip(kt: KeyType, asked: str | None, alg: str) -> None:
    token = sign(kt, asked)
    header, body = segments(token)
    assert header == {"alg": alg, "kid": kt.value, "typ": "JWT"}
    assert set(body) == {"sub", "aud", "exp", "iat"}
    assert body["sub"] == str(SID) and body["aud"] == ["aud1", "aud2"]
    assert body["iat"] == int(WALL_NOW.timestamp()) and body["exp"] - body["iat"] == 300
    svid = validate(token, "aud2")
    assert svid.spiffe_id == SID
    assert svid.audience == ("aud1", "aud2")
    assert svid.expiry == WALL_NOW + TTL
    assert svid.claims["sub"] == str(SID) and svid.token == token
    # PyJWT agrees on the signature and the claims.
    decoded = pyjwt.decode(
        token,
        KEYS[kt].public_key(),
        algorithms=[alg],
        audience="aud1",
        options={"verify_exp": False},
    )
    assert decoded["sub"] == str(SID)


def test_single_audience_is_still_a_list_and_issuer_is_optional() -> None:
    token = sign_jwt_svid(
        SID, ["only"], TTL, EC, "ec-p256", now=WALL_NOW, issuer="https://issuer.example"
    )
    _, body = segments(token)
    assert body["aud"] == ["only"] and body["iss"] == "https://issuer.example"
    assert validate(token, "only").claims["iss"] == "https://issuer.example"


def test_sign_uses_current_time_by_default() -> None:
    token = sign_jwt_svid(SID, ["a"], TTL, EC, "ec-p256")
    assert parse_and_validate(token, BUNDLE, "a").spiffe_id == SID


@pytest.mark.parametrize(
    ("audience", "ttl", "kid", "alg", "error", "message"),
    [
        ([], TTL, "k", None, ValueError, "non-empty list"),
        ("aud1", TTL, "k", None, ValueError, "not a string"),
        ([""], TTL, "k", None, ValueError, "non-empty list of non-empty strings"),
        (["a"], timedelta(0), "k", None, InvalidDuration, "TTL must be positive"),
        (["a"], timedelta(milliseconds=500), "k", None, InvalidDuration, "at least 1s"),
        (["a"], TTL, "", None, ValueError, "kid must be a non-empty string"),
        (["a"], TTL, "k", "ES384", InvalidKey, "does not fit"),
        (["a"], TTL, "k", "HS256", InvalidKey, "does not fit"),
    ],
)
def test_sign_refuses_bad_requests(
    audience: Any, ttl: timedelta, kid: str, alg: str | None, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        sign_jwt_svid(SID, audience, ttl, EC, kid, alg, now=WALL_NOW)


# ----------------------------------------------------------------------------- rejections


def _hs256(msg: bytes) -> bytes:
    secret = EC.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hmac.new(secret, msg, hashlib.sha256).digest()


_ED = ed25519.Ed25519PrivateKey.generate()
_EXP = int(WALL_NOW.timestamp()) + 300


def _tamper(token: str) -> str:
    h, _, s = token.split(".")
    return f"{h}.{b64(json.dumps(claims(aud=['aud1', 'evil'])).encode())}.{s}"


REJECTIONS: list[tuple[str, Callable[[], str], type[InvalidJwtSvid], str]] = [
    (
        "alg none",
        lambda: forged({"alg": "none", "kid": "ec-p256"}, claims()),
        UnsupportedAlgorithm,
        "'none'",
    ),
    (
        "alg HS256 with the public key as secret",
        lambda: forged({"alg": "HS256", "kid": "ec-p256"}, claims(), _hs256),
        UnsupportedAlgorithm,
        "'HS256'",
    ),
    (
        "alg HS512",
        lambda: forged({"alg": "HS512", "kid": "ec-p256"}, claims(), _hs256),
        UnsupportedAlgorithm,
        "'HS512'",
    ),
    (
        "alg EdDSA",
        lambda: forged({"alg": "EdDSA", "kid": "ec-p256"}, claims(), _ED.sign),
        UnsupportedAlgorithm,
        "'EdDSA'",
    ),
    ("alg missing", lambda: forged({"kid": "ec-p256"}, claims()), UnsupportedAlgorithm, "None"),
    (
        "alg does not fit key",
        lambda: pyjwt_token(claims(), KEYS[KeyType.EC_P384], "ec-p256", "ES384"),
        UnsupportedAlgorithm,
        "does not fit a secp256r1 key",
    ),
    (
        "RS256 against an EC key",
        lambda: pyjwt_token(claims(), KEYS[KeyType.RSA_2048], "ec-p256", "RS256"),
        UnsupportedAlgorithm,
        "does not fit",
    ),
    (
        "ES256 against an RSA key",
        lambda: pyjwt_token(claims(), EC, "rsa-2048", "ES256"),
        UnsupportedAlgorithm,
        "does not fit",
    ),
    ("unknown kid", lambda: pyjwt_token(claims(), EC, "nope"), UnknownKeyId, "kid 'nope'"),
    ("missing kid", lambda: pyjwt_token(claims(), EC, None), MalformedToken, "no kid"),
    (
        "key of another trust domain",
        lambda: pyjwt_token(claims(), OTHER_KEY, "other"),
        UnknownKeyId,
        "kid 'other' is not a JWT authority of trust domain example.org",
    ),
    (
        "expired",
        lambda: pyjwt_token(claims(exp=int(WALL_NOW.timestamp()) - 1)),
        TokenExpired,
        "expired at",
    ),
    (
        "not before in the future",
        lambda: pyjwt_token(claims(nbf=int(WALL_NOW.timestamp()) + 60)),
        TokenNotYetValid,
        "'nbf'",
    ),
    (
        "issued in the future",
        lambda: pyjwt_token(claims(iat=int(WALL_NOW.timestamp()) + 60)),
        TokenNotYetValid,
        "'iat'",
    ),
    (
        "alg not a string",
        lambda: forged({"alg": ["ES256"], "kid": "ec-p256"}, claims()),
        UnsupportedAlgorithm,
        "not allowed",
    ),
    (
        "claims nested too deeply",
        lambda: sign().split(".")[0] + "." + b64(b"[" * 12000) + ".sig",
        MalformedToken,
        "claims is not base64url",
    ),
    ("exp NaN", lambda: pyjwt_token(claims(exp=float("nan"))), MalformedToken, "not a date"),
    ("exp past year 9999", lambda: pyjwt_token(claims(exp=10**20)), MalformedToken, "not a date"),
    ("missing exp", lambda: pyjwt_token(claims(exp=None)), MalformedToken, "'exp' is required"),
    ("exp not a number", lambda: pyjwt_token(claims(exp="soon")), MalformedToken, "NumericDate"),
    ("missing aud", lambda: pyjwt_token(claims(aud=None)), AudienceMismatch, "non-empty"),
    ("empty aud", lambda: pyjwt_token(claims(aud=[])), AudienceMismatch, "non-empty"),
    (
        "aud with a non-string",
        lambda: pyjwt_token(claims(aud=["aud1", 5])),
        AudienceMismatch,
        "list of strings",
    ),
    (
        "other audience",
        lambda: pyjwt_token(claims(aud=["someone-else"])),
        AudienceMismatch,
        "none of the expected",
    ),
    (
        "sub not a SPIFFE ID",
        lambda: pyjwt_token(claims(sub="https://example.org/w")),
        InvalidSubject,
        "not a SPIFFE ID",
    ),
    (
        "sub with dot segment",
        lambda: pyjwt_token(claims(sub="spiffe://example.org/a/../b")),
        InvalidSubject,
        "dot segment",
    ),
    ("sub missing", lambda: pyjwt_token(claims(sub=None)), InvalidSubject, "must be a SPIFFE ID"),
    ("sub not a string", lambda: pyjwt_token(claims(sub=7)), InvalidSubject, "must be a SPIFFE ID"),
    (
        "sub trust domain without bundle",
        lambda: pyjwt_token(claims(sub="spiffe://nobody.test/w")),
        UntrustedTrustDomain,
        "nobody.test",
    ),
    ("tampered claims", lambda: _tamper(sign()), BadSignature, "does not verify"),
    (
        "signature of wrong length",
        lambda: sign().rsplit(".", 1)[0] + "." + b64(b"\x01" * 63),
        BadSignature,
        "must be 64 bytes",
    ),
    (
        "signed by a different key with a trusted kid",
        lambda: pyjwt_token(claims(), OTHER_KEY, "ec-p256"),
        BadSignature,
        "does not verify",
    ),
    ("two parts", lambda: "a.b", MalformedToken, "2 parts"),
    ("four parts", lambda: sign() + ".x", MalformedToken, "4 parts"),
    (
        "header not base64url",
        lambda: "!!." + sign().split(".", 1)[1],
        MalformedToken,
        "header is not base64url",
    ),
    (
        "header padded",
        lambda: sign().split(".")[0] + "=." + sign().split(".", 1)[1],
        MalformedToken,
        "header is not base64url",
    ),
    (
        "header not JSON",
        lambda: b64(b"nope") + "." + sign().split(".", 1)[1],
        MalformedToken,
        "header",
    ),
    (
        "header an array",
        lambda: b64(b"[]") + "." + sign().split(".", 1)[1],
        MalformedToken,
        "header is not a JSON object",
    ),
    (
        "claims not JSON",
        lambda: sign().split(".")[0] + "." + b64(b"{") + ".sig",
        MalformedToken,
        "claims is not base64url",
    ),
    (
        "signature not base64url",
        lambda: sign().rsplit(".", 1)[0] + ".*",
        MalformedToken,
        "signature is not base64url",
    ),
    (
        "typ not JWT",
        lambda: pyjwt.encode(
            claims(), EC, algorithm="ES256", headers={"kid": "ec-p256", "typ": "at+jwt"}
        ),
        MalformedToken,
        "typ 'at\\+jwt'",
    ),
    (
        "crit header",
        lambda: forged({"alg": "ES256", "kid": "ec-p256", "crit": ["exp"]}, claims()),
        MalformedToken,
        "critical",
    ),
    ("oversized", lambda: "a" * 20000, MalformedToken, "at most"),
]


@pytest.mark.parametrize(
    ("make", "error", "message"), [r[1:] for r in REJECTIONS], ids=[r[0] for r in REJECTIONS]
)
def test_validate_rejects(
    make: Callable[[], str], error: type[InvalidJwtSvid], message: str
) -> None:
    token = make()
    with pytest.raises(error, match=message) as info:
        validate(token)
    assert type(info.value) is error


def test_leeway_accepts_small_skew_only() -> None:
    token = pyjwt_token(
        claims(exp=int(WALL_NOW.timestamp()) - 10, iat=int(WALL_NOW.timestamp()) - 300)
    )
    with pytest.raises(TokenExpired):
        validate(token)
    assert validate(token, leeway=timedelta(seconds=30)).spiffe_id == SID
    future = pyjwt_token(claims(iat=int(WALL_NOW.timestamp()) + 20))
    assert validate(future, leeway=timedelta(seconds=25)).spiffe_id == SID
    with pytest.raises(ValueError, match="leeway"):
        validate(token, leeway=timedelta(seconds=31))
    with pytest.raises(ValueError, match="leeway"):
        validate(token, leeway=timedelta(seconds=-1))


def test_audience_list_means_any_of_and_string_aud_is_accepted() -> None:
    token = pyjwt_token(claims(aud="single"))
    assert validate(token, "single").audience == ("single",)
    assert validate(sign(), ["nobody", "aud2"]).spiffe_id == SID
    with pytest.raises(ValueError, match="must be non-empty"):
        validate(sign(), [])
    with pytest.raises(ValueError, match="must be non-empty"):
        validate(sign(), "")


def test_every_rejection_is_an_invalid_jwt_svid_value_error() -> None:
    with pytest.raises(ValueError):
        validate("x.y.z")


@given(
    path=st.lists(
        st.text("abcdefghijklmnopqrstuvwxyz0123456789-_.", min_size=1, max_size=8).filter(
            lambda s: s not in (".", "..")
        ),
        max_size=4,
    ),
    audience=st.lists(st.text(min_size=1, max_size=30), min_size=1, max_size=4),
)
@settings(max_examples=60, deadline=None)
def test_any_id_and_audience_round_trip(path: list[str], audience: list[str]) -> None:
    sid = SpiffeId.from_segments(TD, *path)
    token = sign_jwt_svid(sid, audience, TTL, EC, "ec-p256", now=WALL_NOW)
    svid = parse_and_validate(token, BUNDLE, audience[-1], now=WALL_NOW)
    assert svid.spiffe_id == sid and svid.audience == tuple(audience)


# ----------------------------------------------------------------------------- other libraries


@pytest.mark.parametrize(("kt", "asked", "alg"), SIGNING_CASES)
def test_joserfc_verifies_our_tokens_with_our_jwks(
    kt: KeyType, asked: str | None, alg: str
) -> None:
    keyset = KeySet.import_key_set(json.loads(BUNDLE.jwks()))
    token = josejwt.decode(sign(kt, asked), keyset, algorithms=[alg])
    assert token.header["kid"] == kt.value
    registry = josejwt.JWTClaimsRegistry(
        now=int(WALL_NOW.timestamp()),
        aud={"essential": True, "value": "aud1"},
        sub={"essential": True, "value": str(SID)},
    )
    registry.validate(token.claims)


@pytest.mark.parametrize(("kt", "asked", "alg"), SIGNING_CASES)
def test_tokens_signed_by_pyjwt_and_joserfc_are_accepted(
    kt: KeyType, asked: str | None, alg: str
) -> None:
    body = claims()
    ours = validate(pyjwt_token(body, KEYS[kt], kt.value, alg))
    assert ours.spiffe_id == SID
    key = KEYS[kt]
    jose_key = (
        ECKey.import_key(key)
        if isinstance(key, ec.EllipticCurvePrivateKey)
        else RSAKey.import_key(key)
    )
    theirs = josejwt.encode({"alg": alg, "kid": kt.value}, body, jose_key, algorithms=[alg])
    assert validate(theirs).spiffe_id == SID


PY_SPIFFE_VALIDATE = textwrap.dedent(
    """
    import json, sys
    from spiffe import JwtBundle, JwtSvid, TrustDomain
    jwks, tokens = open(sys.argv[1], "rb").read(), json.load(open(sys.argv[2]))
    bundle = JwtBundle.parse(TrustDomain("example.org"), jwks)
    for token in tokens:
        try:
            svid = JwtSvid.parse_and_validate(token, bundle, ["aud1"])
            print("ok", svid.spiffe_id, sorted(svid.audience))
        except Exception as exc:
            print("rejected", type(exc).__name__)
    """
)


def test_py_spiffe_validates_our_tokens_with_our_jwks(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    tokens = [sign(kt, asked, now=now) for kt, asked, _ in SIGNING_CASES]
    tokens.append(sign_jwt_svid(SID, ["aud1"], TTL, OTHER_KEY, "ec-p256", now=now))  # must fail
    (tmp_path / "jwks.json").write_bytes(BUNDLE.jwks())
    (tmp_path / "tokens.json").write_text(json.dumps(tokens))
    out = subprocess.run(
        [sys.executable, "-c", PY_SPIFFE_VALIDATE, "jwks.json", "tokens.json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    expected_ok = f"ok {SID} ['aud1', 'aud2']"
    assert lines[:-1] == [expected_ok] * len(SIGNING_CASES)
    assert re.fullmatch(r"rejected \w+", lines[-1])


# ----------------------------------------------------------------------------- audience limits


@pytest.mark.parametrize(
    ("audience", "message"),
    [
        ([], "audience must be specified"),
        ("aud", "expected a list, not a string"),
        (["a"] * 17, "17 audiences exceed the limit of 16 (jwt_max_audiences)"),
        (
            ["a", "x" * 257],
            "audience 2 is 257 bytes, over the limit of 256 (jwt_max_audience_bytes)",
        ),
        (["é" * 129], "audience 1 is 258 bytes"),  # UTF-8 bytes, not characters
        (["a", ""], "audience 2 is empty"),
        (["a\nb"], "audience 1 contains a control character"),
        (["\ud800"], "audience 1 is not valid UTF-8"),
    ],
)
def test_audience_limits_refuse_with_the_limit_named(audience: Any, message: str) -> None:
    with pytest.raises(InvalidAudience, match=re.escape(message)) as info:
        AudienceLimits().check(audience)
    assert "\n" not in str(info.value)


def test_audience_limits_accept_the_maximum() -> None:
    audience = ["x" * 256] * 15 + ["é" * 128]
    assert AudienceLimits().check(audience) == tuple(audience)


def test_a_maximal_token_fits_what_validators_accept() -> None:
    """Every part at its worst: the longest SPIFFE ID, 16 audiences of 256 quotes (each
    escaped to two bytes), a 64-byte kid, an issuer, RSA-4096 with PS512."""
    key = generate_key(KeyType.RSA_4096)
    sub = SpiffeId.parse(
        "spiffe://example.org/" + "p" * (MAX_ID_BYTES - len("spiffe://example.org/"))
    )
    audience = [f"{i:02}" + '"' * 254 for i in range(16)]
    issuer = "https://issuer.example.org/insignia"
    limits = AudienceLimits()
    check_token_fits(limits, issuer)
    token = sign_jwt_svid(
        sub, limits.check(audience), TTL, key, "k" * 64, "PS512", now=WALL_NOW, issuer=issuer
    )
    assert len(token) <= max_token_bytes(limits, issuer) <= MAX_TOKEN_BYTES
    bundle = BundleSet.of([Bundle(TD, jwt_authorities={"k" * 64: key.public_key()})])
    assert parse_and_validate(token, bundle, audience[7], now=WALL_NOW).audience == tuple(audience)


def test_limits_whose_tokens_would_not_fit_are_refused() -> None:
    with pytest.raises(ValueError, match="jwt_max_audiences = 16 of jwt_max_audience_bytes = 400"):
        check_token_fits(AudienceLimits(16, 400))
    with pytest.raises(ValueError, match="over the 16384"):
        check_token_fits(AudienceLimits(), "https://" + "i" * 2000)


def test_non_ascii_audiences_are_sent_as_utf8_not_escapes() -> None:
    token = sign_jwt_svid(SID, ["ünïcode"], TTL, EC, "ec-p256", now=WALL_NOW)
    claims = base64.urlsafe_b64decode(token.split(".")[1] + "==")
    assert '"aud":["ünïcode"]'.encode() in claims
    assert validate(token, "ünïcode").audience == ("ünïcode",)
