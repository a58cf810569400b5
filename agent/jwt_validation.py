"""ValidateJWTSVID without re-verifying a signature the agent has already verified.

Services validate the same caller's token again and again for its whole lifetime, and the
signature check is most of the cost. A token that verified once against a given bundle
object is only re-checked for what can change: the time (`exp`) and the audience asked for.
Bundle objects are replaced, never mutated, when trust changes, so a new or rotated bundle
(a removed key) is a cache miss and the full check runs again.
"""

from __future__ import annotations

from collections import OrderedDict
from datetime import datetime
from typing import Final

from insignia.bundle import Bundle, BundleSet
from insignia.jwtsvid import AudienceMismatch, JwtSvid, TokenExpired, parse_and_validate

DEFAULT_CAPACITY: Final = 4096


class JwtValidator:
    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self._capacity = capacity
        self._verified: OrderedDict[str, tuple[JwtSvid, Bundle]] = OrderedDict()

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
                self._verified.move_to_end(token)
                return jwt
        jwt = parse_and_validate(token, bundles, audience, now)
        verified_with = bundles.get_bundle_for_trust_domain(jwt.spiffe_id.trust_domain)
        assert verified_with is not None  # parse_and_validate found it
        self._verified[token] = (jwt, verified_with)
        if len(self._verified) > self._capacity:
            self._verified.popitem(last=False)
        return jwt
