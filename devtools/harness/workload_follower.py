"""Starting `multinode_workload.py` workloads and following their JSON-lines output.

Shared by the multi-node test and benchmarks/e2e_latency.py. A `Follower` reads a child's
stdout on a thread and keeps every record, so callers wait for an event (a record matching a
predicate) with a deadline instead of sleeping.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from devtools.harness.other_uids import python_as

REPO = Path(__file__).resolve().parents[2]
WORKLOAD = Path(__file__).with_name("multinode_workload.py")

Record = dict[str, Any]


def workload_argv(socket_path: Path, *args: str, uid: int | None = None) -> list[str]:
    """argv running the SDK workload against `socket_path` (as `uid` when given); run it
    with `workload_env(uid)`."""
    python, _ = python_as(uid)
    return [*python, str(WORKLOAD), str(socket_path), *args]


def workload_env(uid: int | None = None) -> dict[str, str]:
    """The environment `workload_argv(..., uid=uid)` needs: where Python finds our packages."""
    return python_as(uid)[1]


class Follower:
    """Every JSON line a child prints, in order; non-JSON lines are kept as {"text": ...}."""

    def __init__(self, proc: subprocess.Popen[bytes], name: str) -> None:
        self.proc = proc
        self.name = name
        self.records: list[Record] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, name=f"follow-{name}", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except ValueError:
                record = {"text": line}
            with self._changed:
                self.records.append(record)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(
        self, predicate: Callable[[Record], bool], timeout: float, what: str, start: int = 0
    ) -> Record:
        """The first record from index `start` on that satisfies `predicate`."""
        deadline = time.monotonic() + timeout
        with self._changed:
            index = start
            while True:
                while index < len(self.records):
                    record = self.records[index]
                    index += 1
                    if predicate(record):
                        return record
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (not self._thread.is_alive() and index >= len(self.records)):
                    raise TimeoutError(
                        f"{self.name}: no record {what} within {timeout}s; "
                        f"exit={self.proc.poll()} last={self.records[-3:]}"
                    )
                self._changed.wait(min(remaining, 0.5))

    def last(self) -> Record:
        with self._changed:
            return self.records[-1]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def follow(argv: Sequence[str], name: str, env: dict[str, str] | None = None) -> Follower:
    """Start `argv` (stderr merged into stdout, so a traceback shows up in the records)."""
    proc = subprocess.Popen(
        list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env or workload_env()
    )
    return Follower(proc, name)
