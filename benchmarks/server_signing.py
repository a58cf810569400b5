"""Batch X.509-SVID signing and JWT-SVID minting through a real server's agent API.

Prints each rate beside the rate of the same work done in-process on one core (the server's
own `sign_chunk`: CSR check and leaf, or our JWT signer), measured in the same run in
interleaved rounds, so load from other processes hits both alike. `--compare DIR` runs a
second server from another checkout (PYTHONPATH=DIR:DIR/proto) in the same rounds, for a
before/after from one run.
Run: .venv/bin/python benchmarks/server_signing.py [--seconds 5] [--batch 100] [--clients 2]
    [--rounds 5] [--compare /path/to/other/checkout]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
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
from insignia.server.ca.signer_pool import SignRequest, sign_chunk  # noqa: E402
from insignia.server.ca.x509ca import build_root_ca  # noqa: E402
from insignia.spiffeid import SpiffeId, TrustDomain  # noqa: E402

WORKLOAD = "spiffe://example.org/bench"


def raw_x509_rate(seconds: float, csr: bytes) -> float:
    """In-process, one core: what a signer worker does per request (CSR check, then the leaf)."""
    authority = build_root_ca(
        TrustDomain.parse("example.org"), generate_key(KeyType.EC_P256), timedelta(hours=1)
    )
    requests = [SignRequest(csr, WORKLOAD, 1800.0, ())] * 25
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for outcome in sign_chunk(authority, requests, datetime.now(UTC)):
            assert not isinstance(outcome, str), outcome
        count += len(requests)
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


@dataclass
class Tree:
    """A server started from one source tree, and its rates per round."""

    name: str
    server: ServerProcess
    x509: list[float] = field(default_factory=list)
    jwt: list[float] = field(default_factory=list)


def start_server(workdir: Path, pythonpath: str | None) -> ServerProcess:
    server = ServerProcess(
        workdir,
        extra_config={
            "agent_api": {"x509_signing_rate": 1e9, "jwt_signing_rate": 1e9},
            "log": {"level": "warning"},
        },
    )
    saved = os.environ.get("PYTHONPATH")
    if pythonpath is not None:  # server_env() passes ours on to the daemon
        os.environ["PYTHONPATH"] = pythonpath
    try:
        server.start()
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0, help="per figure, over all rounds")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--compare", type=Path, help="another checkout to run a server from")
    args = parser.parse_args()
    slot = args.seconds / args.rounds
    csr = make_csr(generate_key(KeyType.EC_P256), [WORKLOAD])
    raw_x509: list[float] = []
    raw_jwt: list[float] = []
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        trees = [Tree("this tree", start_server(Path(tmp) / "this", None))]
        if args.compare is not None:
            other = args.compare.resolve()
            pythonpath = f"{other}:{other / 'proto'}"
            trees.append(Tree(str(other), start_server(Path(tmp) / "other", pythonpath)))
        for tree in trees:
            stack.callback(tree.server.cleanup)
        calls = []
        for tree in trees:
            agent = attest_join_token(tree.server, tree.server.join_token())
            entry_id = tree.server.create_entry(WORKLOAD, agent.agent_id, ["unix:uid:1000"])
            x509_request = agent_pb2.BatchNewX509SVIDRequest(
                params=[agent_pb2.X509SVIDParams(entry_id=entry_id, csr=csr)] * args.batch
            )
            jwt_request = agent_pb2.BatchNewJWTSVIDRequest(
                params=[agent_pb2.JWTSVIDParams(entry_id=entry_id, audience=["bench"])] * args.batch
            )
            calls.append((tree, agent, x509_request, jwt_request))
        for _ in range(args.rounds):
            for tree, agent, x509_request, jwt_request in calls:
                tree.x509.append(
                    through_api(agent, x509_request, "BatchNewX509SVID", slot, args.clients)
                )
                tree.jwt.append(
                    through_api(agent, jwt_request, "BatchNewJWTSVID", slot, args.clients)
                )
            raw_x509.append(raw_x509_rate(slot, csr))
            raw_jwt.append(raw_jwt_rate(slot))
    median = statistics.median
    print(f"batch={args.batch} clients={args.clients} seconds={args.seconds} rounds={args.rounds}")
    print(f"in-process X.509, 1 core : {median(raw_x509):8.0f}/s  (CSR check + leaf, sign_chunk)")
    print(f"in-process JWT, 1 core   : {median(raw_jwt):8.0f}/s")
    for tree in trees:
        x509_ratio = median(a / b for a, b in zip(tree.x509, raw_x509, strict=True))
        jwt_ratio = median(a / b for a, b in zip(tree.jwt, raw_jwt, strict=True))
        print(f"{tree.name}:")
        print(
            f"  X509-SVIDs via agent API : {median(tree.x509):8.0f}/s"
            f"  ratio {x509_ratio:.2f} to in-process"
        )
        print(
            f"  JWT-SVIDs via agent API  : {median(tree.jwt):8.0f}/s"
            f"  ratio {jwt_ratio:.2f} to in-process"
        )


if __name__ == "__main__":
    main()
