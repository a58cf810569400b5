"""ValidateJWTSVID without re-verifying a signature the agent has already verified.

Services validate the same caller's token again and again for its whole lifetime, and the
signature check is most of the cost. A token that verified once against a given bundle
object is only re-checked for what can change: the time (`exp`) and the audience asked for.
Bundle objects are replaced, never mutated, when trust changes, so a new or rotated bundle
(a removed key) is a cache miss and the full check runs again.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final

from insignia._bytecache import ByteLru
from insignia.bundle import Bundle, BundleSet
from insignia.jwtsvid import AudienceMismatch, JwtSvid, TokenExpired, parse_and_validate

DEFAULT_MAX_BYTES: Final = 8 * 1024 * 1024
"""Tokens are up to 16 KiB each and callers choose them: the cache is bounded by bytes."""


def cost(token: str) -> int:
    """What keeping a verified token costs: the token, its parsed claims, fixed overhead."""
    return 3 * len(token) + 512


class JwtValidator:
    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self._verified: ByteLru[str, tuple[JwtSvid, Bundle]] = ByteLru(max_bytes)

    def __len__(self) -> int:
        return len(self._verified)

    def validate(self, token: str, bundles: BundleSet, audience: str, now: datetime) -> JwtSvid:
        """As `insignia.jwtsvid.parse_and_validate`, same errors, cached signature checks."""
        hit = self._verified.get(token)
        if hit is not None:
            jwt, bundle = hit
            if bundles.get_bundle_for_trust_domain(jwt.spiffe_id.trust_domain) is bundle:
                if now > jwt.expiry:
                    raise TokenExpired(f"token expired at {jwt.expiry.isoformat()}")
                if audience not in jwt.audience:
                    raise AudienceMismatch(
                        f"aud {list(jwt.audience)!r} names none of the expected audiences "
                        f"{(audience,)!r}"
                    )
                return jwt
        jwt = parse_and_validate(token, bundles, audience, now)
        verified_with = bundles.get_bundle_for_trust_domain(jwt.spiffe_id.trust_domain)
        assert verified_with is not None  # parse_and_validate found it
        self._verified.put(token, (jwt, verified_with), cost(token))
        return jwt
