"""Workload attestation latency, beside a bare psutil read of the same process in the same run.

Goals (issue 5): unix attestation of a cached binary under 0.5 ms p50; unix + container +
systemd together under 1 ms p50. Attestation runs the blocking /proc work in a trio worker
thread; the `*_sync` rows show the same work without the thread hop.

    .venv/bin/python -m benchmarks.attestors [iterations]

(Run it as a module: as a script, this file would shadow the `attestors` package.)
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

import psutil  # type: ignore[import-untyped]
import trio

from devtools.callers import caller_of
from insignia.attestors.registry import load_workload_attestors
from insignia.attestors.workload.unix import UnixAttestor, UnixConfig
from insignia.attestors.workload_attestation import attest_workload
from insignia.daemon.peercred.credentials import PeerCredentials


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[int(len(ordered) * 0.99) - 1]


def measure_sync(fn: Callable[[], object], n: int) -> list[float]:
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


async def measure_async(fn: Callable[[], Awaitable[object]], n: int) -> list[float]:
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        await fn()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


async def measure(caller: PeerCredentials, n: int) -> dict[str, list[float]]:
    unix = UnixAttestor(UnixConfig(discover_workload_path=True))
    await unix.attest(caller)  # warm the hash cache: the benchmark is the cached path
    together = load_workload_attestors(
        {"unix": {"discover_workload_path": True}, "container": {}, "systemd": {}}
    )
    await attest_workload(caller, together, 5)
    return {
        "psutil.Process(pid) (reference)": measure_sync(lambda: psutil.Process(caller.pid), n),
        "psutil.Process(pid).uids() (reference)": measure_sync(
            lambda: psutil.Process(caller.pid).uids(), n
        ),
        "unix, cached sha256, sync": measure_sync(lambda: unix.attest_sync(caller), n),
        "unix, cached sha256": await measure_async(lambda: unix.attest(caller), n),
        "unix + container + systemd": await measure_async(
            lambda: attest_workload(caller, together, 5), n
        ),
    }


def main(n: int) -> None:
    workload = subprocess.Popen(["sleep", "600"])
    caller = caller_of(workload.pid)
    try:
        rows = trio.run(measure, caller, n)
    finally:
        workload.kill()
        workload.wait()
        caller.pidfd.close()
    reference = statistics.median(rows["psutil.Process(pid) (reference)"])
    print(f"workload attestation of a sleeping child, {n} iterations each")
    print(f"{'':42} {'p50 ms':>8} {'p99 ms':>8} {'p50 / psutil':>13}")
    for name, samples in rows.items():
        p50, p99 = percentiles(samples)
        print(f"{name:42} {p50:8.3f} {p99:8.3f} {p50 / reference:12.1f}x")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)
