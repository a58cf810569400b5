"""WIT-SVID proof of possession: what it costs per request, and what FetchWITSVID costs.

1. Workload Proof Tokens created and requests verified per second (`insignia.wit`), beside
   raw ECDSA P-256 sign and verify with `cryptography` in the same run: a WPT is one
   signature; verifying a request is one check of the WPT's signature plus the replay cache
   (the WIT's own signature is checked once per token and bundle key, then remembered).
2. FetchWITSVID first-message latency on a real agent: cold (the agent makes a key pair and
   the server signs, once per entry) and warm (served from the agent's cache), beside
   FetchJWTSVID (cached audience) on the same agent.

    .venv/bin/python -m benchmarks.wit [--seconds 2] [--samples 200]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from insignia_proto import workload_pb2 as pb

from benchmarks.agent_common import deployment, percentiles
from insignia.bundle import Bundle, BundleSet, public_key_to_jwk
from insignia.keys import KeyType, generate_key
from insignia.server.ca.wit_signing import sign_wit_svid
from insignia.spiffeid import SpiffeId, TrustDomain
from insignia.wit import ReplayCache, WitCredential, create_wpt, verify_request
from insignia.workload_wire import SECURITY_HEADER, WorkloadApiSyncStub
from insignia.workloadapi import grpc_target

TD = TrustDomain("example.org")
URI = "https://service.example.org/api"
POOL = 40_000  # proofs per verify round: more than any round can check


ROUNDS = 7


def rates(seconds: float, steps: dict[str, Callable[[], Callable[[], object]]]) -> dict[str, float]:
    """Calls per second of each step, measured in interleaved rounds (A B C A B C ...) and
    reported as the median round, so load from other processes hits all figures alike.
    Each entry makes the step for one round (a fresh replay cache, for instance)."""
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(ROUNDS):
        for name, make in steps.items():
            step = make()
            count, start = 0, time.perf_counter()
            deadline = start + seconds / ROUNDS
            while time.perf_counter() < deadline:
                step()
                count += 1
            samples[name].append(count / (time.perf_counter() - start))
    return {name: statistics.median(values) for name, values in samples.items()}


def proofs(seconds: float) -> None:
    wit_key, workload_key = generate_key(KeyType.EC_P256), generate_key(KeyType.EC_P256)
    assert isinstance(workload_key, ec.EllipticCurvePrivateKey)
    cnf = {**public_key_to_jwk(workload_key.public_key()), "alg": "ES256"}
    caller = SpiffeId(TD, "/caller")
    now = datetime.now(UTC)
    wit = sign_wit_svid(caller, cnf, timedelta(hours=1), wit_key, "wit-kid", now)
    bundles = BundleSet.of([Bundle(TD, wit_authorities={"wit-kid": wit_key.public_key()})])
    credential = WitCredential(caller, wit, workload_key, "ES256")
    message = b"x" * 200  # about a WPT's signing input
    signature = workload_key.sign(message, ec.ECDSA(hashes.SHA256()))
    public = workload_key.public_key()
    # Each verification needs a proof its cache has not seen: made first, off the clock, and
    # replayed round after round against a fresh cache.
    pool = [credential.headers(URI, "GET") for _ in range(POOL)]

    def verifying() -> Callable[[], object]:
        cache, proofs = ReplayCache(POOL, max_per_sender=POOL), iter(pool)
        return lambda: verify_request("GET", URI, next(proofs), bundles, cache)

    got = rates(
        seconds,
        {
            "sign": lambda: lambda: workload_key.sign(message, ec.ECDSA(hashes.SHA256())),
            "create": lambda: lambda: create_wpt(wit, workload_key, "ES256", URI, method="GET"),
            "verify": lambda: lambda: public.verify(signature, message, ec.ECDSA(hashes.SHA256())),
            "check": verifying,
        },
    )
    sign, create, verify, check = got["sign"], got["create"], got["verify"], got["check"]
    print(f"raw ECDSA P-256 sign            : {sign:10.0f}/s   (reference)")
    print(f"WPT create (one signature)      : {create:10.0f}/s   ({create / sign:.0%} of raw sign)")
    print(f"raw ECDSA P-256 verify          : {verify:10.0f}/s   (reference)")
    print(
        f"request verify (WIT + WPT)      : {check:10.0f}/s   ({check / verify:.0%} of raw "
        "verify: one WPT check per request, the WIT's signature once per token)"
    )


def first_message_ms(stub: WorkloadApiSyncStub, method: str) -> float:
    start = time.perf_counter()
    if method == "wit":
        stream = stub.FetchWITSVID(pb.WITSVIDRequest(), metadata=SECURITY_HEADER, timeout=30)
        next(stream)
        stream.cancel()
    else:
        stub.FetchJWTSVID(
            pb.JWTSVIDRequest(audience=["bench"]), metadata=SECURITY_HEADER, timeout=30
        )
    return (time.perf_counter() - start) * 1000


def latency(samples: int) -> None:
    with (
        tempfile.TemporaryDirectory(prefix="insignia-bench-") as workdir,
        deployment(Path(workdir)) as (_server, agent, _entry),
        grpc.insecure_channel(grpc_target(agent.socket_path)) as channel,
    ):
        stub = WorkloadApiSyncStub(channel)
        cold_wit = first_message_ms(stub, "wit")
        cold_jwt = first_message_ms(stub, "jwt")
        wit = [first_message_ms(stub, "wit") for _ in range(samples)]
        jwt = [first_message_ms(stub, "jwt") for _ in range(samples)]
    (wit_p50, wit_p99), (jwt_p50, jwt_p99) = percentiles(wit), percentiles(jwt)
    print(f"FetchWITSVID first message, cold: {cold_wit:7.2f} ms (key pair + server signing)")
    print(f"FetchJWTSVID, cold              : {cold_jwt:7.2f} ms (server signing; reference)")
    print(f"FetchWITSVID first message, warm: p50 {wit_p50:6.2f} ms  p99 {wit_p99:6.2f} ms")
    print(f"FetchJWTSVID, cached (reference): p50 {jwt_p50:6.2f} ms  p99 {jwt_p99:6.2f} ms")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per throughput figure")
    parser.add_argument("--samples", type=int, default=200, help="latency samples per RPC")
    args = parser.parse_args(argv)
    proofs(args.seconds)
    latency(args.samples)


if __name__ == "__main__":
    main()
