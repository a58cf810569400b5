"""FetchX509SVID time to first message for a cached identity, attestation included.

Goal (issue 4): p50 <= 2 ms, p99 <= 10 ms. Printed beside a bare grpc.aio server-stream on a
Unix socket, measured in the same run by the same client: the part of the figure that is
gRPC itself. Each sample opens a new stream on a kept channel (every stream is attested
afresh); the `fresh connection` rows also pay a new Unix connection per sample.

    .venv/bin/python -m benchmarks.agent_x509_latency [--samples 1000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.agent_common import REPO, deployment, percentiles, reference_server

CLIENT = """
import asyncio, json, sys, time, grpc, grpc.aio
sys.path[:0] = [sys.argv[4], sys.argv[4] + "/proto"]
from insignia.workload_wire import SECURITY_HEADER, WorkloadApiStub
from insignia_proto import workload_pb2 as pb
async def one(stub):
    start = time.perf_counter()
    call = stub.FetchX509SVID(pb.X509SVIDRequest(), metadata=SECURITY_HEADER, timeout=10)
    await call.read()
    elapsed = time.perf_counter() - start
    call.cancel()
    return elapsed * 1000
async def main(path, samples, fresh):
    out = []
    if fresh:
        for _ in range(samples):
            async with grpc.aio.insecure_channel("unix:" + path) as channel:
                await channel.channel_ready()
                out.append(await one(WorkloadApiStub(channel)))
    else:
        async with grpc.aio.insecure_channel("unix:" + path) as channel:
            stub = WorkloadApiStub(channel)
            for _ in range(20):
                await one(stub)
            for _ in range(samples):
                out.append(await one(stub))
    print(json.dumps(out))
asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3] == "fresh"))
"""


def measure(path: Path, samples: int, fresh: bool) -> list[float]:
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            CLIENT,
            str(path),
            str(samples),
            "fresh" if fresh else "kept",
            str(REPO),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return list(json.loads(done.stdout))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=1000)
    args = parser.parse_args()
    rows = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        deployment(Path(tmp)) as (_, agent, _entry),
        reference_server() as ref,
    ):
        for fresh in (False, True):
            n = args.samples if not fresh else max(100, args.samples // 5)
            label = "fresh connection" if fresh else "kept channel"
            rows.append((f"bare grpc.aio stream, {label} (reference)", measure(ref, n, fresh)))
            rows.append((f"agent FetchX509SVID, {label}", measure(agent.socket_path, n, fresh)))
    print(f"FetchX509SVID time to first message, {args.samples} samples (goal p50<=2, p99<=10)")
    print(f"{'':52}{'p50 ms':>9}{'p99 ms':>9}")
    for label, samples in rows:
        p50, p99 = percentiles(samples)
        print(f"{label:52}{p50:9.3f}{p99:9.3f}")


if __name__ == "__main__":
    main()
