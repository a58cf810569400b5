"""`insignia-agent helper` SIGKILLed mid-write, again and again (issue 12, item 8): the key and
certificate on disk always match, and a restart leaves no `.tmp` file or stale version."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509

from devtools.harness.agent_clients import register
from devtools.harness.agent_process import AGENT_BIN, AgentProcess
from devtools.harness.server_process import ServerProcess
from insignia.keys import private_key_from_pem

pytestmark = [pytest.mark.integration, pytest.mark.root]

KILLS = 30


def pair_matches(directory: Path) -> bool:
    key = private_key_from_pem((directory / "svid_key.pem").read_bytes())
    leaf = x509.load_pem_x509_certificate((directory / "svid.pem").read_bytes())
    return key.public_key() == leaf.public_key()


def snapshot(directory: Path) -> set[str]:
    names = set()
    for root, dirs, files in os.walk(directory):
        names.update(os.path.join(root, n) for n in dirs + files)
    return names


def await_first_write(proc: subprocess.Popen[bytes], out: Path, before: set[str]) -> None:
    """Return as soon as the helper creates anything under `out` (or exits). A tight poll
    with a deadline: `devtools.harness.waiting.wait_for` backs off to 100 ms and would miss the
    write."""
    deadline = time.monotonic() + 60
    while proc.poll() is None and snapshot(out) == before:
        if time.monotonic() > deadline:
            raise TimeoutError("the helper wrote nothing within 60 s")


def test_sigkill_mid_write_never_leaves_a_mismatched_pair(
    running_server: ServerProcess, running_agent: AgentProcess, tmp_path: Path
) -> None:
    register(running_server, running_agent, "/helper", "unix:uid:0")
    other = tmp_path / "other"  # a valid pair the agent would never hand out
    running_server.cli(
        "x509", "mint", "--spiffe-id", "spiffe://example.org/o", "--write", str(other)
    )
    out = tmp_path / "out"
    argv = [str(AGENT_BIN), "helper", "--write-dir", str(out), "--once",
            "--socket", str(running_agent.socket_path)]  # fmt: skip
    subprocess.run(argv, check=True, capture_output=True, timeout=60)
    rng = random.Random(12)
    mismatches = interrupted = 0
    for _ in range(KILLS):
        # Someone else's pair on disk (through the configured paths): the helper must
        # replace both files, and a kill between them would show.
        for name, source in (("svid_key.pem", "svid.key"), ("svid.pem", "svid.pem")):
            (out / name).write_bytes((other / source).read_bytes())
        before = snapshot(out)
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Kill within a few ms of the first file the helper creates: mid-write.
        await_first_write(proc, out, before)
        time.sleep(rng.uniform(0, 0.004))  # a kill offset, not synchronisation
        proc.send_signal(signal.SIGKILL)
        interrupted += proc.wait() == -signal.SIGKILL
        mismatches += not pair_matches(out)
    assert mismatches == 0, f"{mismatches} of {KILLS} kills left a mismatched pair"
    assert interrupted > KILLS // 2, f"only {interrupted} helpers were killed before finishing"

    subprocess.run(argv, check=True, capture_output=True, timeout=60)  # a restart
    assert pair_matches(out)
    leftovers = sorted(n for n in snapshot(out) if n.endswith(".tmp"))
    assert leftovers == []
    versions = [p for p in (out / ".insignia-svid").iterdir() if not p.is_symlink()]
    assert len(versions) == 1
    print(f"{KILLS} SIGKILLs mid-write ({interrupted} before exit): {mismatches} mismatched pairs")
