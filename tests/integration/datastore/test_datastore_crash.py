"""kill -9 during writes: every reported commit survives whole, no entry or batch is partial."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest

from devtools.harness.postgres import BACKEND_PARAMS, Backend, database_url
from insignia.server.datastore import Datastore
from tests.integration.datastore.datastore_crash_writer import batch_size, expected

ROOT = Path(__file__).resolve().parents[3]
ROUNDS = 3
COMMITS_PER_ROUND = 25


def run_until_killed(url: str, round_: str) -> list[str]:
    """Start the writer, SIGKILL it once it reported enough commits; return every id it
    reported (lines still in the pipe after the kill were committed too)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.datastore.datastore_crash_writer", url, round_],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    reported: list[str] = []
    deadline = time.monotonic() + 60
    try:
        while len(reported) < COMMITS_PER_ROUND:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            assert line is not None, f"writer exited early with {proc.wait()}"
            reported.append(line)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    reader.join(timeout=30)
    proc.stdout.close()
    while (line := lines.get_nowait()) is not None:  # the pump ends with None at EOF
        reported.append(line)
    assert proc.returncode == -signal.SIGKILL
    return [i for line in reported for i in line.strip().split(",")]


@pytest.mark.slow
@pytest.mark.timeout(400)  # ~4 s when idle; each writer start is slow on a loaded machine
@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_kill_9_loses_no_commit_and_leaves_nothing_half_written(
    backend: Backend, tmp_path: Path
) -> None:
    with database_url(backend, tmp_path) as url:
        Datastore.open(url).close()
        reported: list[str] = []
        for round_ in range(ROUNDS):
            reported += run_until_killed(url, f"r{round_}")

        with Datastore.open(url) as store:
            stored = {e.id: e for e in store.list_entries()}
            created_events = [e for e in store.events_since(0) if e.op == "created"]

    missing = [i for i in reported if i not in stored]
    assert missing == []
    for entry_id, entry in stored.items():
        assert entry == expected(entry_id), f"entry {entry_id} is not complete"
    batches: defaultdict[str, set[str]] = defaultdict(set)
    for entry_id in stored:
        batches[entry_id.rsplit("-", 1)[0]].add(entry_id)
    for key, members in batches.items():
        assert len(members) == batch_size(int(key.split("-")[1])), f"batch {key} is partial"
    assert sorted(e.subject for e in created_events) == sorted(stored)
    assert len(stored) >= ROUNDS * COMMITS_PER_ROUND
