"""What the unit tests share: one trust domain, one fixed clock, one way to make a test CA.

`NOW` is a fixed moment for pure decisions (rotation, expiry, diffs). Certificates that a TLS
library or a verifier checks against the real clock are made at `WALL_NOW`, the moment the
test run started.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

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


def openssl_verify(
    tmp_path: Path,
    chain: Sequence[x509.Certificate],
    roots: Sequence[x509.Certificate],
    purpose: str,
    at: datetime | None = None,
) -> subprocess.CompletedProcess[str]:
    """`openssl verify -x509_strict` of `chain` (leaf first) against `roots`, at `at` if given."""
    pem = serialization.Encoding.PEM
    (tmp_path / "leaf.pem").write_bytes(chain[0].public_bytes(pem))
    (tmp_path / "bundle.pem").write_bytes(b"".join(c.public_bytes(pem) for c in roots))
    args = ["openssl", "verify", "-x509_strict", "-purpose", purpose, "-CAfile", "bundle.pem"]
    if at is not None:
        args += ["-attime", str(int(at.timestamp()))]
    if len(chain) > 1:
        (tmp_path / "intermediates.pem").write_bytes(
            b"".join(c.public_bytes(pem) for c in chain[1:])
        )
        args += ["-untrusted", "intermediates.pem"]
    return subprocess.run([*args, "leaf.pem"], cwd=tmp_path, capture_output=True, text=True)
