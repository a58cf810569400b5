"""WIT-SVIDs and the Workload Proof Token: identity tokens that only their key holder can use.

A WIT-SVID (SPIFFE WIT-SVID profile of the IETF WIMSE Workload Identity Token) binds the
workload's public key in its `cnf` claim. It is never a bearer token: each HTTP request carries
the WIT in `Workload-Identity-Token` and a fresh Workload Proof Token (WPT, typ `wpt+jwt`) in
`Workload-Proof-Token`, signed with the bound key, naming the target URI (`aud`), and hashing
the WIT (`wth`) and any other tokens of the request (`ath`, `tth`, `oth`). Both are incubating
(the SPIFFE spec's experimental WIMSE branch, IETF drafts), so this module follows
draft-ietf-wimse-workload-creds and draft-ietf-wimse-wpt as they stand.

Verification trusts nothing in a request until the WIT's signature checks against a WIT-SVID
key (`use` = "wit-svid") of the subject's own trust domain: a JWT-SVID key never vouches for
a WIT, and a WIT never passes as a JWT-SVID (its typ is refused there). The expected audience
is built from the origin the service was configured with, never from the request's Host.
Every refusal is an `InvalidWit` whose `reason` names the one rule that failed.
"""

from __future__ import annotations

import enum
import hashlib
import heapq
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from types import MappingProxyType
from typing import Any, Final, Self

from insignia._bytecache import ByteLru
from insignia._clock import utc_now
from insignia._jws import b64, jws_signature
from insignia.bundle import BundleSource, JwtPublicKey, b64url_decode, public_key_from_jwk
from insignia.jwtsvid import (
    ALGORITHMS,
    MAX_LEEWAY,
    MAX_TOKEN_BYTES,
    InvalidJwtSvid,
    json_segment,
    numeric_date,
    verify_jws,
)
from insignia.keys import InvalidKey, PrivateKey, jwt_algorithm, private_key_from_jwk
from insignia.spiffeid import InvalidSpiffeId, SpiffeId

__all__ = [
    "ALGORITHMS",
    "WIT_HEADER",
    "WPT_HEADER",
    "InvalidWit",
    "Reason",
    "ReplayCache",
    "WitCredential",
    "WitSvid",
    "confirmation_key",
    "create_wpt",
    "parse_and_validate",
    "token_hash",
    "verify_request",
]

WIT_HEADER: Final = "Workload-Identity-Token"
WPT_HEADER: Final = "Workload-Proof-Token"
WIT_TYP: Final = "wit+jwt"
WPT_TYP: Final = "wpt+jwt"
TXN_TOKEN_HEADER: Final = "Txn-Token"  # noqa: S105 (a header name)
DEFAULT_WPT_TTL: Final = timedelta(seconds=30)
# "WPT lifetimes MUST be short": a proof valid longer than this is refused.
MAX_WPT_TTL: Final = timedelta(minutes=5)
DEFAULT_REPLAY_CACHE_SIZE: Final = 100_000
_PRIVATE_MEMBERS: Final = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


class Reason(enum.Enum):
    """Why a WIT, a WPT or a request carrying them was refused: one rule each."""

    MALFORMED = "malformed"  # not a compact JWS with JSON parts, or a member of the wrong type
    MISSING_WIT = "missing_wit"
    MISSING_WPT = "missing_wpt"
    BEARER = "bearer"  # a WIT in `Authorization`: presented as a bearer token
    ALGORITHM = "algorithm"  # none, HMAC, EdDSA or unknown, or not fitting the key
    TYPE = "type"  # typ is not wit+jwt / wpt+jwt
    SUBJECT = "subject"  # sub is not a SPIFFE ID with a path
    UNTRUSTED_DOMAIN = "untrusted_domain"  # no WIT-SVID keys for the subject's trust domain
    UNKNOWN_KEY = "unknown_key"  # kid names no WIT-SVID key of that trust domain
    SIGNATURE = "signature"  # the WIT's signature does not verify
    AUDIENCE_IN_WIT = "aud_in_wit"  # a WIT never names an audience
    WIT_EXPIRED = "wit_expired"
    WIT_NOT_YET_VALID = "wit_not_yet_valid"
    CONFIRMATION = "confirmation"  # cnf.jwk missing, private, or with no allowed alg
    PROOF_ALGORITHM = "proof_algorithm"  # the WPT's alg is not the cnf key's alg
    PROOF_SIGNATURE = "proof_signature"  # the WPT is not signed by the cnf key
    WIT_HASH = "wit_hash"  # wth is not the hash of the presented WIT
    AUDIENCE = "audience"  # the WPT's aud is not this request's target URI
    METHOD = "method"  # the WPT's htm is not this request's method
    PROOF_EXPIRED = "proof_expired"
    PROOF_LIFETIME = "proof_lifetime"  # exp unreasonably far in the future
    TOKEN_HASH = "token_hash"  # noqa: S105 - ath, tth or oth does not match the request's tokens
    REPLAYED = "replayed"  # this jti was seen within the proof's lifetime
    REPLAY_CACHE_FULL = "replay_cache_full"  # too many live proofs to remember: fail closed


class InvalidWit(ValueError):
    """A WIT-SVID, a WPT or a request refused; `reason` names the rule, the text says why."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(f"{reason.value}: {message}")
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class WitSvid:
    """A validated WIT-SVID: who it names, the key it binds (`cnf`) and when it ends."""

    spiffe_id: SpiffeId
    token: str
    expiry: datetime
    key: JwtPublicKey
    alg: str
    kid: str
    claims: Mapping[str, Any]


def token_hash(token: str) -> str:
    """base64url(SHA-256(ASCII token)): `wth`, `ath` and `tth` (draft-ietf-wimse-wpt §2)."""
    return b64(hashlib.sha256(token.encode("ascii")).digest()).decode("ascii")


def confirmation_key(jwk: object) -> tuple[JwtPublicKey, str]:
    """The public key and `alg` of a `cnf.jwk`: EC or RSA of our key types, public members
    only, with an `alg` from the WIT-SVID list that fits the key. ValueError naming why."""
    if not isinstance(jwk, Mapping):
        raise ValueError("cnf.jwk must be a JSON object")
    leaked = sorted(_PRIVATE_MEMBERS & jwk.keys())
    if leaked:
        raise ValueError(f"cnf.jwk carries private members {leaked}")
    alg = jwk.get("alg")
    if not isinstance(alg, str) or alg not in ALGORITHMS:
        raise ValueError(f"cnf.jwk alg {alg!r} is not one of {sorted(ALGORITHMS)}")
    key = public_key_from_jwk(jwk)
    try:
        return key, jwt_algorithm(key, alg)
    except InvalidKey as exc:
        raise ValueError(f"cnf.jwk: {exc.reason}") from exc


# --- the WIT-SVID ------------------------------------------------------------------------------


def _split(token: object, what: str) -> list[str]:
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_BYTES:
        raise InvalidWit(Reason.MALFORMED, f"{what} must be a string of 1-{MAX_TOKEN_BYTES} bytes")
    parts = token.split(".")
    if len(parts) != 3:
        raise InvalidWit(Reason.MALFORMED, f"{what} has {len(parts)} parts; expected 3")
    return parts


def _segment(part: str, what: str) -> dict[str, Any]:
    try:
        return json_segment(part, what)
    except InvalidJwtSvid as exc:
        raise InvalidWit(Reason.MALFORMED, exc.reason) from None


def _date(claims: Mapping[str, Any], name: str, what: str) -> float | None:
    try:
        return numeric_date(claims, name)
    except InvalidJwtSvid as exc:
        raise InvalidWit(Reason.MALFORMED, f"{what}: {exc.reason}") from None


def _header(part: str, what: str, typ: str) -> dict[str, Any]:
    header = _segment(part, f"{what} header")
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in ALGORITHMS:
        raise InvalidWit(Reason.ALGORITHM, f"{what} alg {alg!r}; expected one of RS/ES/PS*")
    if header.get("typ") != typ:
        raise InvalidWit(Reason.TYPE, f"{what} typ {header.get('typ')!r}; expected {typ!r}")
    if "crit" in header:
        raise InvalidWit(Reason.MALFORMED, f"{what}: critical header extensions are not supported")
    return header


def _verify(alg: str, key: JwtPublicKey, parts: list[str], reason: Reason, what: str) -> None:
    try:
        signature = b64url_decode(parts[2])
    except ValueError as exc:
        raise InvalidWit(Reason.MALFORMED, f"{what} signature is not base64url: {exc}") from None
    try:
        verify_jws(alg, key, f"{parts[0]}.{parts[1]}".encode("ascii"), signature)
    except InvalidJwtSvid as exc:
        raise InvalidWit(reason, f"{what}: {exc.reason}") from None


def _now(now: datetime | None) -> float:
    return time.time() if now is None else utc_now(now).timestamp()


def _leeway(leeway: timedelta) -> float:
    if not timedelta(0) <= leeway <= MAX_LEEWAY:
        raise ValueError(f"leeway {leeway} must be between 0 and {MAX_LEEWAY}")
    return leeway.total_seconds()


# Tokens already verified against the very key object their bundle holds now: a service sees
# the same WIT on every request of its caller, and checking its signature and parsing its
# cnf key again would double the cost of each request. A bundle update brings new key
# objects, so a revoked or replaced key is never trusted from here. Bounded by bytes.
_verified: ByteLru[str, tuple[JwtPublicKey, WitSvid]] = ByteLru(
    4 * 1024 * 1024, max_item_bytes=4 * MAX_TOKEN_BYTES
)


def parse_and_validate(
    token: str,
    bundle_source: BundleSource,
    now: datetime | None = None,
    leeway: timedelta = timedelta(0),
) -> WitSvid:
    """Validate a WIT-SVID against the `wit-svid` keys of its subject's trust domain.

    Checks typ, alg, kid, the signature, no `aud`, a `cnf.jwk` with an allowed alg, then exp
    and nbf. This alone proves nothing about the presenter: accept a WIT only with a proof of
    possession (`verify_request`).
    """
    slack = _leeway(leeway)
    cached = _verified.get(token) if isinstance(token, str) else None
    if cached is not None:
        signer, svid = cached
        bundle = bundle_source.get_bundle_for_trust_domain(svid.spiffe_id.trust_domain)
        if bundle is None or bundle.wit_authorities.get(svid.kid) is not signer:
            cached = None  # the bundle changed since: judge the token afresh
    if cached is None:
        signer, svid = _verified_signature(token, bundle_source)
        _verified.put(token, (signer, svid), 4 * len(token) + 1024)
    t = _now(now)
    if t > svid.expiry.timestamp() + slack:
        raise InvalidWit(Reason.WIT_EXPIRED, f"WIT expired at {svid.expiry.isoformat()}")
    nbf = _date(svid.claims, "nbf", "WIT")
    if nbf is not None and t + slack < nbf:
        raise InvalidWit(Reason.WIT_NOT_YET_VALID, f"WIT nbf {nbf:.0f} is after now ({t:.0f})")
    return svid


def _verified_signature(token: str, bundle_source: BundleSource) -> tuple[JwtPublicKey, WitSvid]:
    """Everything about a WIT that does not depend on the time, and the key that signed it."""
    parts = _split(token, "WIT")
    header = _header(parts[0], "WIT", WIT_TYP)
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise InvalidWit(Reason.MALFORMED, "WIT header has no kid; WIT-SVIDs must name their key")
    claims = _segment(parts[1], "WIT claims")
    sub = claims.get("sub")
    try:
        spiffe_id = SpiffeId.parse(sub) if isinstance(sub, str) else None
    except InvalidSpiffeId as exc:
        raise InvalidWit(Reason.SUBJECT, f"sub {sub!r} is not a SPIFFE ID: {exc.reason}") from None
    if spiffe_id is None or not spiffe_id.path:
        raise InvalidWit(Reason.SUBJECT, f"sub {sub!r} must be a workload's SPIFFE ID")
    td = spiffe_id.trust_domain
    bundle = bundle_source.get_bundle_for_trust_domain(td)
    if bundle is None or not bundle.wit_authorities:
        raise InvalidWit(Reason.UNTRUSTED_DOMAIN, f"no WIT-SVID keys for trust domain {td}")
    signer = bundle.wit_authorities.get(kid)
    if signer is None:
        other = " (it is a JWT-SVID key)" if kid in bundle.jwt_authorities else ""
        raise InvalidWit(Reason.UNKNOWN_KEY, f"kid {kid!r} is no WIT-SVID key of {td}{other}")
    _verify(header["alg"], signer, parts, Reason.SIGNATURE, "WIT")
    if "aud" in claims:
        raise InvalidWit(Reason.AUDIENCE_IN_WIT, "a WIT-SVID never carries aud")
    exp = _date(claims, "exp", "WIT")
    if exp is None:
        raise InvalidWit(Reason.MALFORMED, "WIT claim 'exp' is required")
    _date(claims, "nbf", "WIT")  # a malformed nbf is refused now, not at each use
    cnf = claims.get("cnf")
    try:
        key, alg = confirmation_key(cnf.get("jwk") if isinstance(cnf, dict) else None)
    except ValueError as exc:
        raise InvalidWit(Reason.CONFIRMATION, str(exc)) from None
    svid = WitSvid(
        spiffe_id, token, datetime.fromtimestamp(exp, UTC), key, alg, kid, MappingProxyType(claims)
    )
    return signer, svid


# --- the Workload Proof Token ------------------------------------------------------------------


def target_uri(uri: str) -> str:
    """A request's target URI as a WPT's `aud` names it: without query or fragment."""
    return uri.split("#", 1)[0].split("?", 1)[0]


def create_wpt(
    wit: str,
    private_key: PrivateKey,
    alg: str,
    audience: str,
    *,
    method: str | None = None,
    ttl: timedelta = DEFAULT_WPT_TTL,
    access_token: str | None = None,
    txn_token: str | None = None,
    other_tokens: Mapping[str, str] | None = None,
    now: datetime | None = None,
) -> str:
    """A WPT for one request to `audience` (its target URI; query and fragment are cut).

    `method` adds `htm` (RFC 9449's registered claim) so the proof cannot be replayed with
    another method. `access_token`, `txn_token` and `other_tokens` (header name -> value) add
    `ath`, `tth` and `oth`, which the draft makes mandatory when those tokens travel too.
    """
    if not timedelta(seconds=1) <= ttl <= MAX_WPT_TTL:
        raise ValueError(f"WPT ttl {ttl} must be between 1 s and {MAX_WPT_TTL}")
    if not audience:
        raise ValueError("a WPT needs the target URI as its audience")
    header, sign = _proof_signer(private_key, alg)
    iat = int(_now(now))
    claims: dict[str, Any] = {
        "aud": target_uri(audience),
        "exp": iat + int(ttl.total_seconds()),
        "iat": iat,
        "jti": secrets.token_urlsafe(16),
        "wth": token_hash(wit),
    }
    if method is not None:
        claims["htm"] = method.upper()
    if access_token is not None:
        claims["ath"] = token_hash(access_token)
    if txn_token is not None:
        claims["tth"] = token_hash(txn_token)
    if other_tokens:
        claims["oth"] = {k.lower(): token_hash(v.strip()) for k, v in other_tokens.items()}
    signing_input = header + b64(json.dumps(claims, separators=(",", ":")).encode())
    return (signing_input + b"." + b64(sign(signing_input))).decode("ascii")


@lru_cache(maxsize=64)
def _proof_signer(key: PrivateKey, alg: str) -> tuple[bytes, Callable[[bytes], bytes]]:
    """Per key, once: the encoded WPT header (and its '.') and the signing function. Keyed by
    the key object; a workload holds one or two WIT keys at a time."""
    alg = jwt_algorithm(key, alg)
    header = json.dumps({"alg": alg, "typ": WPT_TYP}, separators=(",", ":"))
    return b64(header.encode()) + b".", jws_signature(alg, key)


@dataclass(frozen=True)
class WitCredential:
    """A WIT-SVID with its private key, as the Workload API hands it out: what a caller needs
    to sign proofs. `proof` makes the two headers of one request."""

    spiffe_id: SpiffeId
    token: str
    private_key: PrivateKey
    alg: str
    hint: str = ""

    @classmethod
    def from_jwk(cls, spiffe_id: SpiffeId, token: str, jwk_text: str, hint: str = "") -> Self:
        """From FetchWITSVID's `wit_svid` and `wit_svid_key` (a private JWK)."""
        try:
            jwk = json.loads(jwk_text)
        except ValueError as exc:
            raise InvalidKey(f"wit_svid_key is not JSON: {exc}") from exc
        if not isinstance(jwk, dict):
            raise InvalidKey("wit_svid_key is not a JSON object")
        key, alg = private_key_from_jwk(jwk)
        return cls(spiffe_id, token, key, alg, hint)

    def headers(
        self,
        uri: str,
        method: str,
        *,
        ttl: timedelta = DEFAULT_WPT_TTL,
        access_token: str | None = None,
        txn_token: str | None = None,
        now: datetime | None = None,
    ) -> dict[str, str]:
        """`Workload-Identity-Token` and a fresh `Workload-Proof-Token` for one request."""
        wpt = create_wpt(
            self.token,
            self.private_key,
            self.alg,
            uri,
            method=method,
            ttl=ttl,
            access_token=access_token,
            txn_token=txn_token,
            now=now,
        )
        return {WIT_HEADER: self.token, WPT_HEADER: wpt}


class ReplayCache:
    """The jtis of proofs seen, each kept until its proof expires; bounded, and thread-safe.

    When full of live proofs it refuses new ones (fail closed) rather than forget one that
    could then be replayed. Keyed by sender and jti, so one sender's jti never collides with
    another's, and each sender may hold at most `max_per_sender` live proofs, so one caller
    sending proofs as fast as it can sign cannot fill the cache for everyone.
    """

    def __init__(
        self, max_entries: int = DEFAULT_REPLAY_CACHE_SIZE, max_per_sender: int | None = None
    ) -> None:
        if max_entries < 1:
            raise ValueError("a replay cache holds at least one proof")
        self.max_entries = max_entries
        self.max_per_sender = max_per_sender or max(1, max_entries // 10)
        self._per_sender: dict[str, int] = {}
        self._seen: dict[tuple[str, str], float] = {}
        self._expiries: list[tuple[float, tuple[str, str]]] = []  # a heap: soonest first
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._seen)

    def admit(self, sender: str, jti: str, expires: float, now: float) -> Reason | None:
        """Record a proof valid until `expires`; None when fresh, else why it is refused."""
        with self._lock:
            while self._expiries and self._expiries[0][0] <= now:
                _, gone = heapq.heappop(self._expiries)
                del self._seen[gone]
                left = self._per_sender[gone[0]] - 1
                if left:
                    self._per_sender[gone[0]] = left
                else:
                    del self._per_sender[gone[0]]
            key = (sender, jti)
            if key in self._seen:
                return Reason.REPLAYED
            held = self._per_sender.get(sender, 0)
            if len(self._seen) >= self.max_entries or held >= self.max_per_sender:
                return Reason.REPLAY_CACHE_FULL
            self._seen[key] = expires
            self._per_sender[sender] = held + 1
            heapq.heappush(self._expiries, (expires, key))
            return None


@dataclass(frozen=True)
class _Request:
    """The headers of one request by lower-cased name (each with all its values)."""

    fields: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def of(cls, headers: Mapping[str, str] | Iterable[tuple[str | bytes, str | bytes]]) -> _Request:
        pairs = headers.items() if isinstance(headers, Mapping) else headers
        out: dict[str, list[str]] = {}
        for name, value in pairs:
            try:
                key = (name.decode("ascii") if isinstance(name, bytes) else name).lower()
                text = value.decode("ascii") if isinstance(value, bytes) else value
            except UnicodeDecodeError:
                raise InvalidWit(Reason.MALFORMED, "a header is not ASCII") from None
            out.setdefault(key, []).append(text.strip())
        return cls({k: tuple(v) for k, v in out.items()})

    def one(self, name: str, missing: Reason) -> str:
        values = self.fields.get(name.lower(), ())
        if not values:
            raise InvalidWit(missing, f"no {name} header")
        if len(values) > 1:
            raise InvalidWit(Reason.MALFORMED, f"{len(values)} {name} headers; expected one")
        return values[0]

    def optional(self, name: str) -> str | None:
        values = self.fields.get(name.lower(), ())
        if len(values) > 1:
            raise InvalidWit(Reason.MALFORMED, f"{len(values)} {name} headers; expected one")
        return values[0] if values else None


def _is_wit(token: str) -> bool:
    """Whether a bearer token is a WIT (by its header's typ); never trusted beyond that."""
    try:
        return json_segment(token.split(".")[0], "header").get("typ") == WIT_TYP
    except (InvalidJwtSvid, IndexError):
        return False


def _bearer(value: str | None) -> str | None:
    if value is None:
        return None
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() in ("bearer", "dpop") and token.strip() else None


def verify_request(
    method: str,
    uri: str,
    headers: Mapping[str, str] | Iterable[tuple[str | bytes, str | bytes]],
    bundle_source: BundleSource,
    replay_cache: ReplayCache,
    *,
    now: datetime | None = None,
    leeway: timedelta = timedelta(0),
    max_proof_ttl: timedelta = MAX_WPT_TTL,
) -> WitSvid:
    """Authenticate one HTTP request by its WIT and WPT and return the caller's WIT-SVID.

    `uri` is the request's target URI as this service knows itself: its configured origin
    (scheme://host:port, from trusted configuration, never the request's Host header) plus
    the request path. Raises `InvalidWit` naming the failed rule.
    """
    request = _Request.of(headers)
    access_token = _bearer(request.optional("authorization"))
    if access_token is not None and _is_wit(access_token):
        raise InvalidWit(Reason.BEARER, "a WIT-SVID in Authorization: it is never a bearer token")
    wit_token = request.one(WIT_HEADER, Reason.MISSING_WIT)
    wpt_token = request.one(WPT_HEADER, Reason.MISSING_WPT)
    wit = parse_and_validate(wit_token, bundle_source, now, leeway)
    parts = _split(wpt_token, "WPT")
    header = _header(parts[0], "WPT", WPT_TYP)
    if header["alg"] != wit.alg:
        raise InvalidWit(
            Reason.PROOF_ALGORITHM, f"WPT alg {header['alg']!r} is not the cnf alg {wit.alg!r}"
        )
    _verify(wit.alg, wit.key, parts, Reason.PROOF_SIGNATURE, "WPT (not signed by the cnf key)")
    claims = _segment(parts[1], "WPT claims")
    if claims.get("wth") != token_hash(wit_token):
        raise InvalidWit(Reason.WIT_HASH, "WPT wth is not the hash of the presented WIT")
    expected = target_uri(uri)
    if claims.get("aud") != expected:
        raise InvalidWit(Reason.AUDIENCE, f"WPT aud {claims.get('aud')!r} is not {expected!r}")
    htm = claims.get("htm")
    if htm is not None and htm != method.upper():
        raise InvalidWit(Reason.METHOD, f"WPT htm {htm!r} is not this request's {method!r}")
    t = _now(now)
    slack = _leeway(leeway)
    exp = _date(claims, "exp", "WPT")
    if exp is None:
        raise InvalidWit(Reason.MALFORMED, "WPT claim 'exp' is required")
    if t > exp + slack:
        raise InvalidWit(Reason.PROOF_EXPIRED, f"WPT expired at {exp:.0f} (now {t:.0f})")
    if exp - t > max_proof_ttl.total_seconds() + slack:
        raise InvalidWit(Reason.PROOF_LIFETIME, f"WPT exp {exp:.0f} is too far ahead")
    _check_token_hashes(claims, request, access_token)
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti or len(jti) > 256:
        raise InvalidWit(Reason.MALFORMED, "WPT jti must be a string of 1-256 characters")
    refused = replay_cache.admit(str(wit.spiffe_id), jti, exp + slack, t)
    if refused is not None:
        raise InvalidWit(refused, f"WPT jti {jti!r} from {wit.spiffe_id}")
    return wit


def _check_token_hashes(
    claims: Mapping[str, Any], request: _Request, access_token: str | None
) -> None:
    """ath, tth and oth: each required when its token travels, and matching it."""
    for claim, token, what in (
        ("ath", access_token, "access token"),
        ("tth", request.optional(TXN_TOKEN_HEADER), "Txn-Token"),
    ):
        value = claims.get(claim)
        if token is None and value is None:
            continue
        if token is None or value != token_hash(token):
            raise InvalidWit(Reason.TOKEN_HASH, f"WPT {claim} does not match the {what}")
    oth = claims.get("oth")
    if oth is None:
        return
    if not isinstance(oth, dict):
        raise InvalidWit(Reason.MALFORMED, "WPT oth must be a JSON object")
    for name, value in oth.items():
        present = request.optional(name)
        if present is None or value != token_hash(present):
            raise InvalidWit(Reason.TOKEN_HASH, f"WPT oth[{name!r}] does not match the request")
