"""Cost of the peer-credentials front: unary gRPC calls through it vs a bare grpc.aio socket.

Both servers run in this process with the same handler (which looks the caller up, as the
Workload API does); a client subprocess calls one, then the other, alternating rounds so
both see the same machine load. Reports calls/s, client latency percentiles and server CPU
per call (process time of this process over the round, all threads).

    .venv/bin/python benchmarks/peercred_front.py [--calls 2000] [--fresh 200] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import trio

from insignia.daemon import runtime
from insignia.daemon.peercred.credentials import CallerTable, UnknownPeer
from insignia.daemon.peercred.grpc_server import serve_grpc_with_peercred, start_upstream_server
from insignia.daemon.runtime import call_asyncio

CLIENT = """
import grpc, json, sys, time
target, calls, fresh = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "fresh"
lat = []
channel = None if fresh else grpc.insecure_channel(target)
if channel is not None:
    channel.unary_unary("/Bench/Echo")(b"warm", timeout=10)
start = time.perf_counter()
for _ in range(calls):
    t = time.perf_counter()
    if fresh:
        with grpc.insecure_channel(target) as c:
            c.unary_unary("/Bench/Echo")(b"x" * 64, timeout=10)
    else:
        channel.unary_unary("/Bench/Echo")(b"x" * 64, timeout=10)
    lat.append(time.perf_counter() - t)
print(json.dumps({"wall": time.perf_counter() - start, "lat": lat}))
"""


def echo_handler(table: CallerTable | None) -> grpc.GenericRpcHandler[Any, Any]:
    async def echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        if table is not None:
            try:
                table.lookup(context.peer())
            except UnknownPeer as exc:
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
        return request

    return grpc.method_handlers_generic_handler(
        "Bench", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
    )


async def run_client(target: str, calls: int, fresh: bool) -> dict[str, float]:
    cpu0 = time.process_time()
    done = await trio.run_process(
        [sys.executable, "-c", CLIENT, target, str(calls), "fresh" if fresh else "keep"],
        capture_stdout=True,
    )
    cpu = time.process_time() - cpu0
    out = json.loads(done.stdout)
    lat = sorted(out["lat"])
    return {
        "rate": calls / out["wall"],
        "p50": lat[len(lat) // 2] * 1e3,
        "p99": lat[int(len(lat) * 0.99)] * 1e3,
        "cpu_us": cpu / calls * 1e6,
    }


def merge(results: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(r[key] for r in results) for key in results[0]}


def show(label: str, r: dict[str, float]) -> None:
    print(
        f"  {label:<22} {r['rate']:8.0f} calls/s   p50 {r['p50']:6.3f} ms   "
        f"p99 {r['p99']:6.3f} ms   server CPU {r['cpu_us']:6.0f} us/call"
    )


async def main(calls: int, fresh_calls: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory(prefix="insignia-bench-") as tmp:
        base = Path(tmp)
        table = CallerTable()
        bare = await start_upstream_server(base / "bare" / "grpc.sock", [echo_handler(None)])
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(
                    lambda task_status: serve_grpc_with_peercred(
                        base / "front.sock",
                        [echo_handler(table)],
                        table,
                        private_dir=base / "private",
                        task_status=task_status,
                    )
                )
                targets = {
                    "bare grpc.aio (UDS)": f"unix:{base / 'bare' / 'grpc.sock'}",
                    "through the front": f"unix:{base / 'front.sock'}",
                }
                for fresh, n in ((False, calls), (True, fresh_calls)):
                    results: dict[str, list[dict[str, float]]] = {k: [] for k in targets}
                    for _ in range(rounds):
                        for label, target in targets.items():
                            results[label].append(await run_client(target, n, fresh))
                    kind = "new channel per call" if fresh else "one persistent channel"
                    print(f"unary calls, 1 client, {kind} ({n} calls x {rounds} rounds):")
                    merged = {k: merge(v) for k, v in results.items()}
                    for label, r in merged.items():
                        show(label, r)
                    b, f = merged["bare grpc.aio (UDS)"], merged["through the front"]
                    print(
                        f"  front overhead: {f['p50'] - b['p50']:+.3f} ms p50, "
                        f"{f['cpu_us'] - b['cpu_us']:+.0f} us server CPU/call, "
                        f"throughput x{f['rate'] / b['rate']:.2f}"
                    )
                nursery.cancel_scope.cancel()
        finally:
            await call_asyncio(bare.stop, None)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--fresh", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    runtime.run(main, args.calls, args.fresh, args.rounds)
