"""Signing JWT-SVIDs: compact JWS tokens with the server's active JWT key.

The per-key work (algorithm, encoded header, signing function) and encoded audience lists
are cached: this is the hot path of the agent API's BatchNewJWTSVID. Validation is the SDK's
(`insignia.jwtsvid.parse_and_validate`); the tests check every token against PyJWT, joserfc
and py-spiffe.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Final

from insignia._bytecache import ByteLru
from insignia._clock import utc_now
from insignia._jws import b64, jws_signature
from insignia.durations import InvalidDuration
from insignia.keys import PrivateKey, jwt_algorithm
from insignia.server.ca.x509ca import check_ttl
from insignia.spiffeid import SpiffeId

# Encoded audience lists kept for reuse; a typical one is tens of bytes.
_AUDIENCE_CACHE_BYTES: Final = 256 * 1024


@dataclass(frozen=True)
class JwsSigner:
    alg: str
    header: bytes  # encoded header and the "." that follows it
    sign: Callable[[bytes], bytes]

    def token(self, claims: str) -> str:
        """The compact JWS of `claims` (JSON text)."""
        signing_input = self.header + b64(claims.encode())
        return (signing_input + b"." + b64(self.sign(signing_input))).decode("ascii")


@lru_cache(maxsize=16)
def jws_signer(private_key: PrivateKey, kid: str, alg: str | None, typ: str = "JWT") -> JwsSigner:
    """Per-key work done once: the algorithm, the encoded header {alg, kid, typ} and the
    signing function. Keyed by the key object's identity; the server holds a few key slots
    (JWT and WIT) at a time. The WIT-SVID signer (`wit_signing`) shares it."""
    if not kid:
        raise ValueError("kid must be a non-empty string: verifiers select the key by it")
    alg = jwt_algorithm(private_key, alg)
    header = json.dumps({"alg": alg, "kid": kid, "typ": typ}, separators=(",", ":"))
    return JwsSigner(alg, b64(header.encode()) + b".", jws_signature(alg, private_key))


_audience_cache: ByteLru[tuple[str, ...], str] = ByteLru(_AUDIENCE_CACHE_BYTES)


def _encode_audience(audience: tuple[str, ...]) -> str:
    if not audience or not all(isinstance(a, str) and a for a in audience):
        raise ValueError(
            f"audience {audience!r:.80}: expected a non-empty list of non-empty strings"
        )
    return json.dumps(list(audience), separators=(",", ":"), ensure_ascii=False)


def _audience_json(audience: tuple[str, ...]) -> str:
    """The `aud` claim, as UTF-8 JSON (non-ASCII is not expanded to \\u escapes).

    Charged twice the audience's length: the key holds the same text again."""
    size = 2 * sum(len(a) for a in audience if isinstance(a, str)) + 64
    return _audience_cache.get_or_make(audience, _encode_audience, size)


def sign_jwt_svid(
    spiffe_id: SpiffeId,
    audience: Sequence[str],
    ttl: timedelta,
    private_key: PrivateKey,
    kid: str,
    alg: str | None = None,
    now: datetime | None = None,
    issuer: str | None = None,
) -> str:
    """A compact JWT-SVID: header {alg, kid, typ}, claims sub, aud (always a list), exp, iat.

    `alg` defaults to the key's natural algorithm (ES256/ES384/RS256); PS* may be chosen for
    RSA keys. `issuer`, when given, becomes the `iss` claim (SPIRE's `jwt_issuer`).
    """
    if isinstance(audience, str):
        raise ValueError(f"audience {audience!r}: expected a list of strings, not a string")
    signer = jws_signer(private_key, kid, alg)
    iat = int(time.time() if now is None else utc_now(now).timestamp())
    seconds = int(check_ttl(ttl).total_seconds())
    if seconds < 1:
        raise InvalidDuration(ttl, "a JWT-SVID TTL must be at least 1s (exp has 1s resolution)")
    exp = iat + seconds
    # A SPIFFE ID never needs JSON escaping (its grammar has no quotes, backslashes or
    # controls), so the claims are formatted directly; the audience is JSON-encoded.
    iss = "" if issuer is None else f',"iss":{json.dumps(issuer)}'
    aud = _audience_json(tuple(audience))
    return signer.token(f'{{"sub":"{spiffe_id}","aud":{aud},"exp":{exp},"iat":{iat}{iss}}}')
