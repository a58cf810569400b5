"""Hostile clients on the Workload API socket: does the agent shed them and give it all back?

Starts a real server and agent (benchmarks/agent_common.py), then runs each attack of
issue 12 item 2 in turn, with a well-behaved neighbour (a separate process opening a
FetchX509SVID stream on a kept channel, over and over) running beside it:

- ping flood: connections send the HTTP/2 preface, then PING frames without reading the ACKs;
- stalled: connections open FetchX509SVID calls (--streams each) with a huge window and
  never read;
- continuation flood: a HEADERS frame, then CONTINUATION frames that never end the block;
- idle with preface / idle without preface: connections that send the preface, or nothing,
  and never read (grpc's SETTINGS stay unread: stuck, not idle);
- idle, reading: connections that open as a real client does and read what arrives. They
  are legitimate and kept: the agent should cut none; what counts is that their memory
  comes back once they close.

For each it prints the agent's RSS and fd count before, at the peak during, and 10 s after
the attacker closed everything, how many attack connections the agent hung up on, and the
neighbour's success rate and p99. Goal: after within 5 MB and 5 fds of before.

Each attack runs --rounds times in a row. CPython keeps the memory allocators' arenas it
grew at a peak (a few live objects pin each 1 MiB pymalloc arena), so the first round's
"after" carries that high-water mark; a later round's shows whether anything still grows.
--reference runs the same attacks against the agent code of another checkout (main's, say)
in the same run, for the figures to compare with.

    .venv/bin/python -m benchmarks.attack_workload_front [--seconds 15] [--streams 10]
        [--rounds 2] [--only ping] [--reference /path/to/main]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.agent_common import REPO, deployment, memory_mb, percentiles
from devtools.harness.hostile_http2 import (
    OPENING,
    IdleReader,
    connect,
    continuation_flood,
    hung_up,
    ping_flood,
    stall,
)

NEIGHBOUR = """
import json, sys, time, grpc
sys.path[:0] = [sys.argv[3], sys.argv[3] + "/proto"]
from insignia.workload_wire import SECURITY_HEADER, WorkloadApiSyncStub
from insignia_proto import workload_pb2 as pb
path, seconds = sys.argv[1], float(sys.argv[2])
lat, failures = [], []
with grpc.insecure_channel("unix:" + path) as channel:
    stub = WorkloadApiSyncStub(channel)
    print("ready", flush=True)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        start = time.perf_counter()
        call = stub.FetchX509SVID(pb.X509SVIDRequest(), metadata=SECURITY_HEADER, timeout=5)
        try:
            next(call)
            lat.append((time.perf_counter() - start) * 1000)
        except grpc.RpcError as exc:
            failures.append(str(exc.code()))
        finally:
            call.cancel()
        time.sleep(0.01)
print(json.dumps({"lat": lat, "failures": failures}))
"""

AFTER = 10.0  # seconds after the attack ends at which "after" is measured


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class Peak(threading.Thread):
    """Samples the agent's RSS and fd count every 0.25 s; keeps the highest."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.rss = 0.0
        self.fds = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.25):
            self.rss = max(self.rss, memory_mb(self.pid)[0])
            self.fds = max(self.fds, fd_count(self.pid))


def parallel(count: int, attack: Callable[[], bool]) -> int:
    """Run ``attack`` on ``count`` connections at once; how many the agent hung up on."""
    with ThreadPoolExecutor(max_workers=count) as pool:
        return sum(pool.map(lambda _: attack(), range(count)))


def idle(path: Path, count: int, seconds: float, opening: bytes) -> int:
    """Hold ``count`` connections that sent ``opening`` for ``seconds``; how many were cut."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = connect(path)
            sock.send(opening)
            socks.append(sock)
        time.sleep(seconds)  # the attack itself: hold them
        return sum(hung_up(sock) for sock in socks)
    finally:
        for sock in socks:
            sock.close()


def idle_reading(path: Path, count: int, seconds: float) -> int:
    """Hold ``count`` idle clients that read what arrives; how many the agent cut."""
    clients: list[IdleReader] = []
    cut = 0
    try:
        for _ in range(count):
            clients.append(IdleReader(path))
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(0.5)
            kept = [client for client in clients if client.drain()]
            cut += len(clients) - len(kept)
            for client in set(clients) - set(kept):
                client.close()
            clients = kept
        return cut
    finally:
        for client in clients:
            client.close()


def attacks(path: Path, seconds: float, streams: int) -> dict[str, tuple[int, Callable[[], int]]]:
    """name -> (connections, run it and return how many the agent hung up on)."""
    return {
        "ping flood": (4, lambda: parallel(4, lambda: ping_flood(path, seconds))),
        "stalled": (100, lambda: parallel(100, lambda: stall(path, streams, seconds))),
        "continuation flood": (
            16,
            lambda: parallel(16, lambda: continuation_flood(path, seconds)),
        ),
        "idle with preface": (1000, lambda: idle(path, 1000, seconds, OPENING)),
        "idle without preface": (1000, lambda: idle(path, 1000, seconds, b"")),
        "idle, reading": (1000, lambda: idle_reading(path, 1000, seconds)),
    }


def neighbour(path: Path, seconds: float) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-c", NEIGHBOUR, str(path), str(seconds), str(REPO)],
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
    return proc


def settle(pid: int) -> tuple[float, int]:
    """RSS and fds once two samples a second apart agree within 0.5 MB and 0 fds."""
    last = (memory_mb(pid)[0], fd_count(pid))
    for _ in range(10):
        time.sleep(1.0)
        now = (memory_mb(pid)[0], fd_count(pid))
        if abs(now[0] - last[0]) < 0.5 and now[1] == last[1]:
            return now
        last = now
    return last


def run_attack(pid: int, path: Path, run: Callable[[], int], seconds: float) -> str:
    """One attack with the neighbour beside it; the figures, as the columns of the table."""
    rss0, fds0 = settle(pid)
    peak = Peak(pid)
    peak.start()
    good = neighbour(path, seconds + 2.0)
    cut = run()
    ended = time.monotonic()
    out, _ = good.communicate()
    peak.stop.set()
    peak.join()
    time.sleep(max(0.0, ended + AFTER - time.monotonic()))  # the figure is "10 s after"
    rss1, fds1 = memory_mb(pid)[0], fd_count(pid)
    result = json.loads(out)
    calls = len(result["lat"]) + len(result["failures"])
    ok = 100.0 * len(result["lat"]) / calls if calls else 0.0
    p99 = percentiles(result["lat"])[1] if result["lat"] else float("nan")
    verdict = "ok" if rss1 - rss0 <= 5 and fds1 - fds0 <= 5 else "LEAK"
    return (
        f"{cut:>6}  {rss0:6.1f} /{max(peak.rss, rss0):6.1f} /{rss1:6.1f}  {rss1 - rss0:+6.1f}   "
        f"{fds0:5d} /{max(peak.fds, fds0):5d} /{fds1:5d}   "
        f"{ok:5.1f}% of {calls:<5}{p99:6.1f}  {verdict}"
    )


def attack_all(
    label: str, code: Path | None, seconds: float, streams: int, rounds: int, only: str | None
) -> None:
    with (
        tempfile.TemporaryDirectory(prefix="insignia-attack-") as tmp,
        deployment(Path(tmp), agent_code=code) as (_server, agent, _entry),
    ):
        assert agent.process is not None
        pid = agent.process.pid
        path = agent.socket_path
        warm = neighbour(path, 2.0)  # so first-call allocations land before the baseline
        warm.communicate()
        for name, (conns, run) in attacks(path, seconds, streams).items():
            if only is not None and only not in name:
                continue
            for round_ in range(1, rounds + 1):
                figures = run_attack(pid, path, run, seconds)
                print(f"{name:<22}{label:<10}{round_:>3}{conns:>6}{figures}", flush=True)


def main(
    seconds: float, streams: int, rounds: int, only: str | None, reference: Path | None
) -> None:
    print(
        f"{'attack':<22}{'agent':<10}{'rnd':>3}{'conns':>6}{'cut':>6}  "
        f"{'RSS MB before/peak/after   delta':<35}{'fds before/peak/after':<24}"
        "neighbour ok   p99 ms"
    )
    attack_all("this", None, seconds, streams, rounds, only)
    if reference is not None:
        attack_all("reference", reference, seconds, streams, 1, only)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each attack")
    parser.add_argument(
        "--streams", type=int, default=10, help="FetchX509SVID calls per stalled connection"
    )
    parser.add_argument("--rounds", type=int, default=2, help="times each attack runs in a row")
    parser.add_argument("--only", help="run only the attacks whose name contains this")
    parser.add_argument(
        "--reference", type=Path, help="a checkout whose agent code is attacked the same way"
    )
    args = parser.parse_args()
    main(args.seconds, args.streams, args.rounds, args.only, args.reference)
