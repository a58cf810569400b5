"""Many open FetchX509SVID streams on one agent: memory, and how fast a rotation reaches all.

Goal (issue 4): 1,000 concurrent streams; after a forced rotation every stream has its new
SVID within 2 s; agent RSS reported at 10, 100 and 1,000 streams, <= 80 MB at 100. Each
stream has its own connection (its own channel), as separate workloads would. The rotation
is forced from the server side by changing the entry's TTL, which re-signs its SVID; the
clock starts before that admin call and stops at the last stream's new message.

    .venv/bin/python -m benchmarks.agent_streams [--streams 1000] [--per-process 100]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.agent_common import REPO, deployment, memory_mb

CLIENT = """
import asyncio, json, sys, time, grpc, grpc.aio
sys.path[:0] = [sys.argv[3], sys.argv[3] + "/proto"]
from insignia.workload_wire import SECURITY_HEADER, WorkloadApiStub
from insignia_proto import workload_pb2 as pb
path, count = sys.argv[1], int(sys.argv[2])
async def stream(i, first, rotated):
    channel = grpc.aio.insecure_channel("unix:" + path, options=[("insignia.bench.id", i)])
    call = WorkloadApiStub(channel).FetchX509SVID(pb.X509SVIDRequest(), metadata=SECURITY_HEADER)
    message = await call.read()
    serial = message.svids[0].x509_svid[:64]
    first.append(i)
    while True:
        message = await call.read()
        if message.svids[0].x509_svid[:64] != serial:
            rotated.append(time.time())
            return channel
async def main():
    first, rotated = [], []
    tasks = [asyncio.ensure_future(stream(i, first, rotated)) for i in range(count)]
    while len(first) < count:
        await asyncio.sleep(0.01)
    print("open", flush=True)
    channels = await asyncio.gather(*tasks)
    print(json.dumps({"last": max(rotated), "n": len(rotated)}), flush=True)
    for c in channels:
        await c.close()
asyncio.run(main())
"""


def open_streams(socket_path: Path, count: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", CLIENT, str(socket_path), str(count), str(REPO)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if line != "open":
        raise RuntimeError(f"stream client failed to open its streams: {line!r}")
    return proc


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--per-process", type=int, default=100)
    args = parser.parse_args()
    steps = [n for n in (10, 100, 1000) if n < args.streams] + [args.streams]
    memory: list[tuple[int, tuple[float, float]]] = []
    with tempfile.TemporaryDirectory() as tmp, deployment(Path(tmp)) as (server, agent, entry):
        assert agent.process is not None
        pid = agent.process.pid
        memory.append((0, memory_mb(pid)))
        clients: list[subprocess.Popen[str]] = []
        opened = 0
        for target in steps:
            while opened < target:
                batch = min(args.per_process, target - opened)
                clients.append(open_streams(agent.socket_path, batch))
                opened += batch
            memory.append((opened, memory_mb(pid)))
        started = time.time()
        server.cli("entry", "update", entry, "--x509-svid-ttl", "3599")
        results = []
        for proc in clients:
            out, _ = proc.communicate(timeout=120)
            results.append(json.loads(out.strip().splitlines()[-1]))
        spread = max(r["last"] for r in results) - started
        delivered = sum(r["n"] for r in results)
    print(f"{args.streams} FetchX509SVID streams, one connection each")
    print(f"{'open streams':>14}{'agent RSS MB':>14}{'agent PSS MB':>14}")
    for count, (rss, pss) in memory:
        print(f"{count:14d}{rss:14.1f}{pss:14.1f}")
    print(
        f"forced rotation: {delivered}/{opened} streams got the new SVID, the last after "
        f"{spread:.2f} s (goal <= 2 s; includes the admin call and server push)"
    )


if __name__ == "__main__":
    main()
