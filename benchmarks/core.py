"""Core document throughput on one core: our wrappers beside the raw primitives they use.

    .venv/bin/python benchmarks/core.py [--seconds 3] [--rounds 15]

Every figure is printed next to a reference measured in the same run, with the ratio
(ours / reference; 1.0 means no wrapper overhead). The goals: >= 0.8 for the JWT rows and for
the builder fallback against the raw builder, >= 0.5 for X.509 issuance against a raw sign.
Rows run in short interleaved slices and the ratio is the median of per-slice ratios, so a
noisy neighbour on a shared machine hurts both sides of a ratio alike. This is a measurement,
never a test.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import jwt as pyjwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from insignia.bundle import Bundle
from insignia.jwtsvid import parse_and_validate
from insignia.keys import KeyType, generate_key
from insignia.server.ca.jwt_signing import sign_jwt_svid
from insignia.server.ca.leaf_template import LEAF_SUBJECT
from insignia.server.ca.x509_leaf import build_leaf, issue_leaf
from insignia.server.ca.x509ca import build_root_ca
from insignia.spiffeid import SpiffeId, TrustDomain


def rate(fn: Callable[[], object], seconds: float) -> float:
    """Calls per second of `fn`, timed in batches until `seconds` have passed."""
    calls, batch = 0, 32
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(batch):
            fn()
        calls += batch
    return calls / elapsed


@dataclass
class Row:
    name: str
    fn: Callable[[], object]
    reference: str | None = None  # name of the row this one is compared with
    rates: list[float] = field(default_factory=list)


def measure(rows: list[Row], seconds: float, rounds: int) -> None:
    """Short interleaved slices, so load from other processes hits every row alike."""
    for row in rows:
        row.fn()  # warm caches
    for _ in range(rounds):
        for row in rows:
            row.rates.append(rate(row.fn, seconds / rounds))


def report(title: str, rows: list[Row]) -> None:
    """Median rate per row, and the median of the per-slice ratios to its reference."""
    by_name = {r.name: r for r in rows}
    print(title)
    for row in rows:
        text = f"  {row.name:<44} {statistics.median(row.rates):>9,.0f}/s"
        if row.reference is not None:
            ref = by_name[row.reference]
            ratio = statistics.median(a / b for a, b in zip(row.rates, ref.rates, strict=True))
            text += f"   ratio {ratio:.2f} vs {row.reference}"
        print(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="time per row")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved slices per row")
    args = parser.parse_args()
    cpu = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})

    td = TrustDomain("example.org")
    sid = SpiffeId.parse("spiffe://example.org/ns/default/sa/web")
    now = datetime.now(UTC)
    ca = build_root_ca(td, generate_key(KeyType.EC_P256), timedelta(hours=24), now)
    leaf_pub = generate_key(KeyType.EC_P256).public_key()
    ca_key = ca.private_key
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ecdsa = ec.ECDSA(hashes.SHA256())
    hour = timedelta(hours=1)
    ku = x509.KeyUsage(True, False, False, False, False, False, False, False, False)
    eku = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "SPIFFE")])

    def raw_builder() -> x509.Certificate:
        """The same certificate as build_leaf, written directly against cryptography."""
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca.certificate.subject)
            .public_key(leaf_pub)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(ku, critical=True)
            .add_extension(eku, critical=False)
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(sid))]), False
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(leaf_pub), critical=False)
            .add_extension(ca.authority_key_identifier, critical=False)
            .sign(ca_key, hashes.SHA256())
        )

    tbs = raw_builder().tbs_certificate_bytes
    raw_sign = "raw ECDSA P-256 sign (TBS-sized)"
    x509_rows = [
        Row(raw_sign, lambda: ca_key.sign(tbs, ecdsa)),
        Row("raw CertificateBuilder", raw_builder, raw_sign),
        # The signing path: the template, DER out (server/ca/leaf_template.py).
        Row("issue_leaf (template, DER)", lambda: issue_leaf(leaf_pub, sid, hour, ca), raw_sign),
        # The same plus a parse into x509.Certificate, for callers that read the leaf.
        Row("build_leaf (template + parse)", lambda: build_leaf(leaf_pub, sid, hour, ca), raw_sign),
        # A custom subject takes the CertificateBuilder fallback.
        Row(
            "build_leaf, builder fallback",
            lambda: build_leaf(leaf_pub, sid, hour, ca, subject=LEAF_SUBJECT),
            "raw CertificateBuilder",
        ),
    ]

    jwt_key = generate_key(KeyType.EC_P256)
    assert isinstance(jwt_key, ec.EllipticCurvePrivateKey)
    jwt_pub = jwt_key.public_key()
    bundle = Bundle(td, jwt_authorities={"k1": jwt_pub})
    aud = "spiffe://example.org/backend"
    ttl = timedelta(minutes=5)
    token = sign_jwt_svid(sid, [aud], ttl, jwt_key, "k1")
    msg = token.rpartition(".")[0].encode()
    der_sig = jwt_key.sign(msg, ecdsa)
    claims = {"sub": str(sid), "aud": [aud], "exp": 2**31, "iat": 0}
    pyjwt_token = pyjwt.encode(claims, jwt_key, algorithm="ES256", headers={"kid": "k1"})
    jwt_rows = [
        Row("raw ECDSA P-256 sign", lambda: jwt_key.sign(msg, ecdsa)),
        Row(
            "sign_jwt_svid",
            lambda: sign_jwt_svid(sid, [aud], ttl, jwt_key, "k1"),
            "raw ECDSA P-256 sign",
        ),
        Row(
            "PyJWT encode (for comparison)",
            lambda: pyjwt.encode(claims, jwt_key, algorithm="ES256", headers={"kid": "k1"}),
            "raw ECDSA P-256 sign",
        ),
        Row("raw ECDSA P-256 verify", lambda: jwt_pub.verify(der_sig, msg, ecdsa)),
        Row(
            "parse_and_validate",
            lambda: parse_and_validate(token, bundle, aud),
            "raw ECDSA P-256 verify",
        ),
        Row(
            "PyJWT decode (for comparison)",
            lambda: pyjwt.decode(pyjwt_token, jwt_pub, algorithms=["ES256"], audience=aud),
            "raw ECDSA P-256 verify",
        ),
    ]
    measure(x509_rows, args.seconds, args.rounds)
    measure(jwt_rows, args.seconds, args.rounds)
    print(
        f"one core (cpu {cpu}); {args.rounds} interleaved slices of {args.seconds:.1f}s total/row"
    )
    report("X.509-SVID issuance (P-256 CA, P-256 leaf):", x509_rows)
    report("JWT-SVID (ES256):", jwt_rows)


if __name__ == "__main__":
    main()
