"""FetchJWTSVID (cached identity and audience) and ValidateJWTSVID calls per second.

Goal (issue 4): >= 1,000/s each, from 8 client processes. Every call is attested. Printed
beside the same load on a bare grpc.aio server on a Unix socket, in the same run.

    .venv/bin/python -m benchmarks.agent_jwt_throughput [--seconds 5] [--clients 8]
        [--compare /path/to/other/checkout]   # that checkout's agent too, after ours
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.agent_common import REPO, deployment, reference_server

CLIENT = """
import asyncio, json, sys, time, grpc, grpc.aio
sys.path[:0] = [sys.argv[5], sys.argv[5] + "/proto"]
from insignia.workload_wire import SECURITY_HEADER, WorkloadApiStub
from insignia_proto import workload_pb2 as pb
path, method, seconds, token = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
async def worker(stub, deadline, counts):
    while time.monotonic() < deadline:
        if method == "fetch":
            await stub.FetchJWTSVID(pb.JWTSVIDRequest(audience=["bench"]),
                                    metadata=SECURITY_HEADER, timeout=10)
        else:
            await stub.ValidateJWTSVID(pb.ValidateJWTSVIDRequest(audience="bench", svid=token),
                                       metadata=SECURITY_HEADER, timeout=10)
        counts[0] += 1
async def main():
    async with grpc.aio.insecure_channel("unix:" + path) as channel:
        stub = WorkloadApiStub(channel)
        await stub.FetchJWTSVID(pb.JWTSVIDRequest(audience=["bench"]), metadata=SECURITY_HEADER)
        sys.stdout.write("warm\\n"); sys.stdout.flush()
        sys.stdin.readline()
        counts = [0]
        start = time.monotonic()
        await asyncio.gather(*(worker(stub, start + seconds, counts) for _ in range(4)))
        print(json.dumps({"calls": counts[0], "wall": time.monotonic() - start}))
asyncio.run(main())
"""


def run_load(path: Path, method: str, seconds: float, clients: int, token: str) -> float:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CLIENT, str(path), method, str(seconds), token, str(REPO)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(clients)
    ]
    for proc in procs:  # all warmed up and connected before the clock starts
        assert proc.stdout is not None and proc.stdout.readline().strip() == "warm"
    start = time.monotonic()
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    results = [json.loads(proc.communicate()[0].splitlines()[-1]) for proc in procs]
    wall = max(time.monotonic() - start, *(float(r["wall"]) for r in results))
    return sum(int(r["calls"]) for r in results) / wall


def fetch_token(socket_path: Path) -> str:
    out = subprocess.run(
        [
            str(Path(sys.executable).with_name("insignia-agent")),
            "api",
            "fetch",
            "jwt",
            "--socket",
            str(socket_path),
            "--audience",
            "bench",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.splitlines()[1].strip()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--compare", type=Path, help="also measure this checkout's agent")
    args = parser.parse_args()
    trees: list[Path | None] = [None]
    if args.compare is not None:
        trees.append(args.compare.resolve())
    rows = []
    for code in trees:
        with (
            tempfile.TemporaryDirectory() as tmp,
            deployment(Path(tmp), agent_code=code) as (_, agent, _entry),
        ):
            token = fetch_token(agent.socket_path)
            with reference_server() as ref:
                for method, name in (("fetch", "FetchJWTSVID"), ("validate", "ValidateJWTSVID")):
                    reference = run_load(ref, method, args.seconds, args.clients, token)
                    measured = run_load(
                        agent.socket_path, method, args.seconds, args.clients, token
                    )
                    rows.append((f"{name} ({code or 'this tree'})", measured, reference))
    print(f"calls/s from {args.clients} client processes, {args.seconds:g}s each (goal >= 1000)")
    print(f"{'':40}{'agent':>10}{'bare grpc.aio':>15}{'ratio':>8}")
    for name, measured, reference in rows:
        print(f"{name:40}{measured:10.0f}{reference:15.0f}{measured / reference:8.2f}")


if __name__ == "__main__":
    main()
