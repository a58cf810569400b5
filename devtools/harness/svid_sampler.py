"""A workload that checks, every 100 ms, that the agent hands it an unexpired X.509-SVID.

Used by the failover test and benchmarks/failover.py: it records every failed sample and
the longest stretch between two good ones (the time a workload went without a valid SVID).
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from insignia.workloadapi import WorkloadApiClient

INTERVAL = 0.1


class Sampler:
    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self.samples = 0
        self.failures: list[str] = []
        self.longest_gap = 0.0  # seconds between two good samples
        self._last_good: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self, client: WorkloadApiClient) -> None:
        try:
            svid = client.fetch_x509_context().default_svid
        except Exception as exc:
            self.failures.append(f"{time.time():.1f}: {exc}")
            return
        if svid.expires_at <= datetime.now(UTC):
            self.failures.append(f"{time.time():.1f}: expired SVID served")
            return
        now = time.monotonic()
        if self._last_good is not None:
            self.longest_gap = max(self.longest_gap, now - self._last_good)
        self._last_good = now

    def _run(self) -> None:
        with WorkloadApiClient(self.socket_path, timeout=2.0) as client:
            while not self._stop.is_set():
                self._sample(client)
                self.samples += 1
                self._stop.wait(INTERVAL)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
