"""What the unit tests share: one trust domain, one fixed clock, one way to make a test CA.

`NOW` is a fixed moment for pure decisions (rotation, expiry, diffs). Certificates that a TLS
library or a verifier checks against the real clock are made at `WALL_NOW`, the moment the
test run started.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from insignia.keys import KeyType, generate_key
from insignia.server.ca.x509ca import SigningAuthority, build_root_ca
from insignia.spiffeid import TrustDomain

TD = TrustDomain.parse("example.org")
NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
WALL_NOW = datetime.now(UTC).replace(microsecond=0)


def make_ca(
    td: TrustDomain = TD,
    now: datetime = NOW,
    ttl: timedelta = timedelta(days=1),
    key_type: KeyType = KeyType.EC_P256,
) -> SigningAuthority:
    """A root CA of `td`, valid from `now` for `ttl`."""
    return build_root_ca(td, generate_key(key_type), ttl, now=now)
