"""Batch X.509-SVID signing and JWT-SVID minting through a real server's agent API.

Prints each rate beside the raw rate of the same work done in-process with `cryptography`
(build and sign a leaf) or our JWT signer, measured in the same run on the same machine.
Run: .venv/bin/python benchmarks/server_signing.py [--seconds 5] [--batch 100] [--clients 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path[:0] = [
    str(Path(__file__).resolve().parents[1]),
    str(Path(__file__).resolve().parents[1] / "proto"),
]

from insignia_proto import agent_pb2  # noqa: E402

from devtools.harness.agent_api_client import attest_join_token, make_csr  # noqa: E402
from devtools.harness.server_process import ServerProcess  # noqa: E402
from insignia.keys import KeyType, generate_key  # noqa: E402
from insignia.server.ca.jwt_signing import sign_jwt_svid  # noqa: E402
from insignia.server.ca.x509_leaf import build_leaf, parse_csr  # noqa: E402
from insignia.server.ca.x509ca import build_root_ca  # noqa: E402
from insignia.spiffeid import SpiffeId, TrustDomain  # noqa: E402

WORKLOAD = "spiffe://example.org/bench"


def raw_x509_rate(seconds: float, csr: bytes) -> float:
    """In-process: parse and verify the CSR, then build and sign the leaf (what the server does)."""
    authority = build_root_ca(
        TrustDomain.parse("example.org"), generate_key(KeyType.EC_P256), timedelta(hours=1)
    )
    sid = SpiffeId.parse(WORKLOAD)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        request = parse_csr(csr)
        build_leaf(request.public_key, sid, timedelta(minutes=30), authority)
        count += 1
    return count / (time.perf_counter() - start)


def raw_jwt_rate(seconds: float) -> float:
    key = generate_key(KeyType.EC_P256)
    sid = SpiffeId.parse(WORKLOAD)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        sign_jwt_svid(sid, ["bench"], timedelta(minutes=5), key, "kid", now=datetime.now(UTC))
        count += 1
    return count / (time.perf_counter() - start)


def through_api(agent, request, field: str, seconds: float, clients: int) -> float:  # type: ignore[no-untyped-def]
    done = [0] * clients
    stop = time.perf_counter() + seconds

    def client(i: int) -> None:
        with agent.channel() as channel:
            stub = agent.stub(channel)
            call = getattr(stub, field)
            call(request, timeout=60)  # warm the connection
            while time.perf_counter() < stop:
                results = call(request, timeout=60).results
                assert not results[0].error, results[0].error
                done[i] += len(results)

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--clients", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess(
            Path(tmp),
            extra_config={
                "agent_api": {"x509_signing_rate": 1e9, "jwt_signing_rate": 1e9},
                "log": {"level": "warning"},
            },
        )
        server.start()
        try:
            agent = attest_join_token(server, server.join_token())
            entry_id = server.create_entry(WORKLOAD, agent.agent_id, ["unix:uid:1000"])
            csr = make_csr(generate_key(KeyType.EC_P256), [WORKLOAD])
            x509_request = agent_pb2.BatchNewX509SVIDRequest(
                params=[agent_pb2.X509SVIDParams(entry_id=entry_id, csr=csr)] * args.batch
            )
            jwt_request = agent_pb2.BatchNewJWTSVIDRequest(
                params=[agent_pb2.JWTSVIDParams(entry_id=entry_id, audience=["bench"])] * args.batch
            )
            api_x509 = through_api(
                agent, x509_request, "BatchNewX509SVID", args.seconds, args.clients
            )
            api_jwt = through_api(agent, jwt_request, "BatchNewJWTSVID", args.seconds, args.clients)
        finally:
            server.cleanup()
    raw_x509 = raw_x509_rate(args.seconds, csr)
    raw_jwt = raw_jwt_rate(args.seconds)
    print(f"batch={args.batch} clients={args.clients} seconds={args.seconds}")
    print(f"X509-SVIDs via agent API : {api_x509:8.0f}/s  (target >= 3000)")
    print(f"raw cryptography, 1 core : {raw_x509:8.0f}/s  (CSR check + leaf sign, in-process)")
    print(f"  ratio API/raw          : {api_x509 / raw_x509:8.2f}")
    print(f"JWT-SVIDs via agent API  : {api_jwt:8.0f}/s  (target >= 2000)")
    print(f"raw JWT signing, 1 core  : {raw_jwt:8.0f}/s")
    print(f"  ratio API/raw          : {api_jwt / raw_jwt:8.2f}")


if __name__ == "__main__":
    main()
