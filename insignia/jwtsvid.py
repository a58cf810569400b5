"""JWT-SVIDs: validating presented ones by the JWT-SVID specification (signing them is the
server's, in `insignia.server.ca.jwt_signing`).

Validation never trusts an unverified value beyond choosing the key: the `sub` claim only
selects the bundle of its trust domain and the `kid` must be found in THAT bundle, so a key
from another trust domain can never vouch for a subject it does not own. Only RS/ES/PS
256/384/512 are accepted (no none, HS*, EdDSA).

The JWS primitives (RFC 7518 §3: raw r||s ECDSA signatures, PSS with salt = hash length,
`insignia._jws`) are written against `cryptography` directly, with the per-key and per-header
work cached, because they are the hot path of the agent and the server; the tests check every
token against PyJWT, joserfc and py-spiffe.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    encode_dss_signature,
)

from insignia._bytecache import ByteLru
from insignia._clock import utc_now
from insignia._jws import EC_PARAMS, ECDSA, HASHES, PKCS1, PSS
from insignia.bundle import BundleSource, JwtPublicKey, b64url_decode
from insignia.spiffeid import MAX_ID_BYTES, InvalidSpiffeId, SpiffeId

#: The JWT-SVID algorithm set (JWT-SVID spec §3.1 minus none/HMAC; EdDSA is refused too).
ALGORITHMS: Final = frozenset(
    {"RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512"}
)
MAX_LEEWAY: Final = timedelta(seconds=30)
MAX_TOKEN_BYTES: Final = 16 * 1024
_MAX_NUMERIC_DATE: Final = 253402300799  # 9999-12-31T23:59:59Z
DEFAULT_MAX_AUDIENCES: Final = 16
DEFAULT_MAX_AUDIENCE_BYTES: Final = 256
_MAX_SIGNATURE_BYTES: Final = 512  # RSA-4096, the largest key type (insignia.keys.KeyType)
_MAX_KID_BYTES: Final = 64  # the server's kids are 32 hex digits


class InvalidJwtSvid(ValueError):
    """A token that is not a valid JWT-SVID here; subclasses name the rule that failed."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class MalformedToken(InvalidJwtSvid):
    """Not a compact JWS with JSON header and claims, or a required member is missing."""


class UnsupportedAlgorithm(InvalidJwtSvid):
    """`alg` is none, HMAC, EdDSA, unknown, or does not fit the key."""


class InvalidSubject(InvalidJwtSvid):
    """`sub` is missing or not a valid SPIFFE ID."""


class UntrustedTrustDomain(InvalidJwtSvid):
    """No bundle (or no JWT authorities) for the subject's trust domain."""


class UnknownKeyId(InvalidJwtSvid):
    """`kid` names no JWT authority in the bundle of the subject's trust domain."""


class BadSignature(InvalidJwtSvid):
    """The signature does not verify with the authority named by `kid`."""


class TokenExpired(InvalidJwtSvid):
    """`exp` is in the past (beyond the leeway)."""


class TokenNotYetValid(InvalidJwtSvid):
    """`nbf` or `iat` is in the future (beyond the leeway)."""


class AudienceMismatch(InvalidJwtSvid):
    """`aud` is missing, empty, or names none of the expected audiences."""


class InvalidAudience(ValueError):
    """An audience list asked for that breaks `AudienceLimits`; the message names the limit."""


@dataclass(frozen=True, slots=True)
class AudienceLimits:
    """How many audiences a JWT-SVID request may name, and how long each may be.

    The one rule every boundary applies (Workload API, agent API, admin mint): callers pick
    audiences freely, and each one is signed into a token and cached, so its size is bounded
    before any work is done. Control characters are refused too: JSON escapes each into six
    bytes, and with them out an audience never takes more than twice its size in the token.
    """

    max_audiences: int = DEFAULT_MAX_AUDIENCES
    max_audience_bytes: int = DEFAULT_MAX_AUDIENCE_BYTES

    def check(self, audience: Sequence[str]) -> tuple[str, ...]:
        """`audience` as a tuple, or InvalidAudience naming the first rule it breaks."""
        if isinstance(audience, str):
            raise InvalidAudience(f"audience {audience[:64]!r}: expected a list, not a string")
        values = tuple(audience)
        if not values:
            raise InvalidAudience("audience must be specified: one or more non-empty values")
        if len(values) > self.max_audiences:
            raise InvalidAudience(
                f"{len(values)} audiences exceed the limit of {self.max_audiences} "
                "(jwt_max_audiences)"
            )
        for i, value in enumerate(values):
            if not isinstance(value, str) or not value:
                raise InvalidAudience(f"audience {i + 1} is empty or not a string")
            try:
                size = len(value.encode("utf-8"))
            except UnicodeEncodeError:
                raise InvalidAudience(f"audience {i + 1} is not valid UTF-8") from None
            if size > self.max_audience_bytes:
                raise InvalidAudience(
                    f"audience {i + 1} is {size} bytes, over the limit of "
                    f"{self.max_audience_bytes} (jwt_max_audience_bytes)"
                )
            if any(c < " " or c == "\x7f" for c in value):
                raise InvalidAudience(f"audience {i + 1} contains a control character")
        return values


def _b64_length(size: int) -> int:
    return (4 * size + 2) // 3


def max_token_bytes(limits: AudienceLimits, issuer: str = "") -> int:
    """The longest compact JWT-SVID `sign_jwt_svid` can produce within `limits`.

    Every part at its worst: a kid of _MAX_KID_BYTES, a SPIFFE ID of MAX_ID_BYTES, each
    audience all quotes (escaped to two bytes each), dates of 9999, an RSA-4096 signature.
    """
    header = json.dumps(
        {"alg": "ES512", "kid": "k" * _MAX_KID_BYTES, "typ": "JWT"}, separators=(",", ":")
    )
    n, size = limits.max_audiences, limits.max_audience_bytes
    aud = 2 + n * (2 * size + 2) + (n - 1)
    iss = 0 if not issuer else len(',"iss":') + len(json.dumps(issuer).encode())
    date = len(str(_MAX_NUMERIC_DATE))
    claims = len('{"sub":"","aud":,"exp":,"iat":}') + MAX_ID_BYTES + aud + 2 * date + iss
    return (
        _b64_length(len(header)) + 1 + _b64_length(claims) + 1 + _b64_length(_MAX_SIGNATURE_BYTES)
    )


@dataclass(frozen=True)
class JwtSvid:
    """A validated JWT-SVID. `audience` is the token's full `aud`, `claims` all its claims."""

    spiffe_id: SpiffeId
    audience: tuple[str, ...]
    expiry: datetime
    claims: Mapping[str, Any]
    token: str
    hint: str = ""


def check_token_fits(limits: AudienceLimits, issuer: str = "") -> None:
    """ValueError unless every token within `limits` fits MAX_TOKEN_BYTES (config checks)."""
    longest = max_token_bytes(limits, issuer)
    if longest > MAX_TOKEN_BYTES:
        raise ValueError(
            f"jwt_max_audiences = {limits.max_audiences} of jwt_max_audience_bytes = "
            f"{limits.max_audience_bytes} allow tokens of up to {longest} bytes, over the "
            f"{MAX_TOKEN_BYTES} that validators accept: lower one of them"
        )


def json_segment(segment: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(b64url_decode(segment).decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # binascii.Error is a ValueError
        raise MalformedToken(f"{what} is not base64url-encoded JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise MalformedToken(f"{what} is not a JSON object")
    return value


def _header(segment: str) -> tuple[str, str]:
    header = json_segment(segment, "header")
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in ALGORITHMS:
        raise UnsupportedAlgorithm(f"alg {alg!r} is not allowed; expected one of RS/ES/PS*")
    if header.get("typ", "JWT") not in ("JWT", "JOSE"):
        raise MalformedToken(f"typ {header.get('typ')!r}; expected JWT or JOSE")
    if "crit" in header:
        raise MalformedToken("critical header extensions are not supported")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise MalformedToken("header has no kid; JWT-SVIDs name their signing key")
    return alg, kid


# Presented tokens choose these keys, so both caches are bounded by bytes. A header is ~100
# bytes; one of a hostile size is parsed, never kept.
_headers: ByteLru[str, tuple[str, str]] = ByteLru(256 * 1024, max_item_bytes=2048)
_subjects: ByteLru[str, SpiffeId] = ByteLru(1024 * 1024)


def _parse_header(segment: str) -> tuple[str, str]:
    """(alg, kid) of an encoded header. Cached: every token of one signing key shares it."""
    return _headers.get_or_make(segment, _header, 2 * len(segment) + 128)


def _parse_subject(sub: str) -> SpiffeId:
    """Subjects repeat across tokens; SpiffeId is immutable, and failures are never cached."""
    return _subjects.get_or_make(sub, SpiffeId.parse, 3 * len(sub) + 256)


def numeric_date(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MalformedToken(f"claim {name!r} must be a NumericDate, got {value!r}")
    if not 0 <= value <= _MAX_NUMERIC_DATE:  # also false for NaN
        raise MalformedToken(f"claim {name!r} = {value!r} is not a date between 1970 and 9999")
    return float(value)


def verify_jws(alg: str, key: JwtPublicKey, msg: bytes, sig: bytes) -> None:
    """Check `sig` over `msg`; UnsupportedAlgorithm if `alg` does not fit `key`."""
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            curve, size = EC_PARAMS.get(alg, ("", 0))
            if key.curve.name != curve:
                raise UnsupportedAlgorithm(f"alg {alg!r} does not fit a {key.curve.name} key")
            if len(sig) != 2 * size:
                raise BadSignature(f"{alg} signature must be {2 * size} bytes, got {len(sig)}")
            der = encode_dss_signature(
                int.from_bytes(sig[:size], "big"), int.from_bytes(sig[size:], "big")
            )
            key.verify(der, msg, ECDSA[alg])
        elif isinstance(key, rsa.RSAPublicKey) and alg[:2] in ("RS", "PS"):
            key.verify(sig, msg, PSS[alg] if alg[0] == "P" else PKCS1, HASHES[alg[2:]])
        else:
            raise UnsupportedAlgorithm(f"alg {alg!r} does not fit a {type(key).__name__}")
    except InvalidSignature:
        raise BadSignature(f"{alg} signature does not verify") from None


def parse_and_validate(
    token: str,
    bundle_source: BundleSource,
    audience: str | Sequence[str],
    now: datetime | None = None,
    leeway: timedelta = timedelta(0),
) -> JwtSvid:
    """Verify a JWT-SVID and return it; InvalidJwtSvid (a subclass naming the rule) otherwise.

    `audience`: the token's `aud` must contain it, or at least one of them if a list.
    `leeway` absorbs clock skew on exp/nbf/iat and is capped at `MAX_LEEWAY`.
    """
    expected = (audience,) if isinstance(audience, str) else tuple(audience)
    if not expected or not all(expected):
        raise ValueError(f"expected audience {audience!r} must be non-empty")
    if not timedelta(0) <= leeway <= MAX_LEEWAY:
        raise ValueError(f"leeway {leeway} must be between 0 and {MAX_LEEWAY}")
    if not isinstance(token, str) or len(token) > MAX_TOKEN_BYTES:
        raise MalformedToken(f"token must be a string of at most {MAX_TOKEN_BYTES} bytes")
    parts = token.split(".")
    if len(parts) != 3:
        raise MalformedToken(f"compact JWS has {len(parts)} parts; expected 3")
    alg, kid = _parse_header(parts[0])
    claims = json_segment(parts[1], "claims")
    sub = claims.get("sub")
    if not isinstance(sub, str):
        raise InvalidSubject(f"sub {sub!r} must be a SPIFFE ID string")
    try:
        spiffe_id = _parse_subject(sub)
    except InvalidSpiffeId as exc:
        raise InvalidSubject(f"sub {sub!r} is not a SPIFFE ID: {exc.reason}") from exc
    td = spiffe_id.trust_domain
    bundle = bundle_source.get_bundle_for_trust_domain(td)
    if bundle is None or not bundle.jwt_authorities:
        raise UntrustedTrustDomain(f"no JWT authorities for trust domain {td}")
    key = bundle.jwt_authorities.get(kid)
    if key is None:
        raise UnknownKeyId(f"kid {kid!r} is not a JWT authority of trust domain {td}")
    try:
        signature = b64url_decode(parts[2])
    except ValueError as exc:  # binascii.Error included
        raise MalformedToken(f"signature is not base64url: {exc}") from exc
    verify_jws(alg, key, f"{parts[0]}.{parts[1]}".encode("ascii"), signature)

    t = time.time() if now is None else utc_now(now).timestamp()
    slack = leeway.total_seconds()
    exp = numeric_date(claims, "exp")
    if exp is None:
        raise MalformedToken("claim 'exp' is required: a JWT-SVID must expire")
    if t > exp + slack:
        raise TokenExpired(f"token expired at {datetime.fromtimestamp(exp, UTC).isoformat()}")
    for name in ("nbf", "iat"):
        when = numeric_date(claims, name)
        if when is not None and t + slack < when:
            raise TokenNotYetValid(f"claim {name!r} is in the future ({when}); now is {t:.0f}")
    aud = claims.get("aud")
    token_aud = (aud,) if isinstance(aud, str) else aud
    if (
        not isinstance(token_aud, list | tuple)
        or not token_aud
        or not all(isinstance(a, str) for a in token_aud)
    ):
        raise AudienceMismatch(f"aud {aud!r} must be a non-empty string or list of strings")
    if not any(a in token_aud for a in expected):
        raise AudienceMismatch(f"aud {aud!r} names none of the expected audiences {expected!r}")
    return JwtSvid(
        spiffe_id,
        tuple(token_aud),
        datetime.fromtimestamp(exp, UTC),
        MappingProxyType(claims),
        token,
    )
