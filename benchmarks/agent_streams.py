"""Many open FetchX509SVID streams on one agent: memory, and how fast a rotation reaches all.

Goals (issues 4 and 19): after a forced rotation every one of 1,000 streams has its new SVID
within 1 s, of 10,000 within 5 s; agent RSS reported at 10, 100, 1,000 (and 10,000) streams.
Each stream has its own connection (its own channel), as separate workloads would. The rotation
is forced from the server side by changing the entry's TTL, which re-signs its SVID; the
clock starts before that admin call and stops at the last stream's new message.

    .venv/bin/python -m benchmarks.agent_streams [--streams 1000] [--per-process 100]
        [--compare /path/to/other/checkout]   # the same with that checkout's agent, after
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


def measure(streams: int, per_process: int, agent_code: Path | None) -> None:
    """Open `streams` in steps, recording the agent's memory, then force one rotation."""
    steps = [n for n in (10, 100, 1000) if n < streams] + [streams]
    memory: list[tuple[int, tuple[float, float]]] = []
    # One uid holds every stream here; the per-uid cap would refuse them past 1,024.
    config: dict[str, object] = {"workload": {"max_connections_per_uid": streams + 16}}
    with (
        tempfile.TemporaryDirectory() as tmp,
        deployment(Path(tmp), agent_config=config, agent_code=agent_code) as (server, agent, entry),
    ):
        assert agent.process is not None
        pid = agent.process.pid
        memory.append((0, memory_mb(pid)))
        clients: list[subprocess.Popen[str]] = []
        opened = 0
        for target in steps:
            while opened < target:
                batch = min(per_process, target - opened)
                clients.append(open_streams(agent.socket_path, batch))
                opened += batch
            memory.append((opened, memory_mb(pid)))
        started = time.time()
        server.cli("entry", "update", entry, "--x509-svid-ttl", "3599")
        results = []
        for proc in clients:
            out, _ = proc.communicate(timeout=300)
            results.append(json.loads(out.strip().splitlines()[-1]))
        spread = max(r["last"] for r in results) - started
        delivered = sum(r["n"] for r in results)
    print(
        f"agent from {agent_code or 'this tree'}: {streams} FetchX509SVID streams, one connection"
        " each"
    )
    print(f"{'open streams':>14}{'agent RSS MB':>14}{'agent PSS MB':>14}")
    for count, (rss, pss) in memory:
        print(f"{count:14d}{rss:14.1f}{pss:14.1f}")
    print(
        f"forced rotation: {delivered}/{opened} streams got the new SVID, the last after "
        f"{spread:.2f} s (includes the admin call and server push)"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--per-process", type=int, default=100)
    parser.add_argument("--compare", type=Path, help="also run an agent from this checkout")
    args = parser.parse_args()
    measure(args.streams, args.per_process, None)
    if args.compare is not None:
        measure(args.streams, args.per_process, args.compare.resolve())


if __name__ == "__main__":
    main()
