"""`make quickstart`'s program brings up a working pair and stops it cleanly on Ctrl-C."""

from __future__ import annotations

import getpass
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devtools.harness.waiting import wait_for

BIN = Path(sys.executable).parent

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _read_until(proc: subprocess.Popen[str], marker: str, timeout: float) -> str:
    """Lines of the quickstart's stdout up to `marker`, or fail with what it printed."""
    assert proc.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    os.set_blocking(proc.stdout.fileno(), False)
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line:
            seen.append(line)
            if marker in line:
                return "".join(seen)
            continue
        if proc.poll() is not None:
            break
        time.sleep(0.05)  # polling a pipe for the next line, bounded by the deadline
    pytest.fail(f"quickstart did not print {marker!r}:\n{''.join(seen)}")


def test_quickstart_serves_an_identity_for_the_invoking_user(tmp_path: Path) -> None:
    root = tmp_path / "qs"
    env = {**os.environ, "INSIGNIA_QUICKSTART_DIR": str(root)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "devtools.quickstart"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        banner = _read_until(proc, "Ctrl-C", timeout=120)
        socket_path = root / "run" / "agent" / "public" / "api.sock"
        assert f"export SPIFFE_ENDPOINT_SOCKET=unix://{socket_path}" in banner
        expected = f"spiffe://example.org/quickstart/{getpass.getuser()}"
        assert expected in banner

        fetch_env = {**os.environ, "SPIFFE_ENDPOINT_SOCKET": f"unix://{socket_path}"}
        # The entry reaches the agent through the server's push; the first fetch may race it.
        fetches: list[subprocess.CompletedProcess[str]] = []

        def fetched() -> bool:
            fetches.append(
                subprocess.run(
                    [str(BIN / "insignia-agent"), "api", "fetch", "x509"],
                    capture_output=True,
                    text=True,
                    env=fetch_env,
                    timeout=30,
                )
            )
            return fetches[-1].returncode == 0

        try:
            wait_for(fetched, 30, "the quickstart entry to reach the agent")
        except TimeoutError as exc:
            pytest.fail(f"{exc}: {fetches[-1].stderr}")
        fetch = fetches[-1]
        assert expected in fetch.stdout

        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
        assert proc.stdout is not None
        assert "stopped the server and the agent" in proc.stdout.read()
        assert not socket_path.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_second_quickstart_says_one_is_running_and_leaves_it_alone(tmp_path: Path) -> None:
    root = tmp_path / "qs"
    env = {**os.environ, "INSIGNIA_QUICKSTART_DIR": str(root)}
    command = [sys.executable, "-m", "devtools.quickstart"]
    first = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    try:
        _read_until(first, "Ctrl-C", timeout=120)
        second = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
        assert second.returncode == 1, second.stdout + second.stderr
        assert f"quickstart is already running in {root} (pid {first.pid})" in second.stderr
        assert "Insignia is running" not in second.stdout
        fetch_env = {**env, "SPIFFE_ENDPOINT_SOCKET": f"unix://{root}/run/agent/public/api.sock"}
        wait_for(  # the first one's sockets and state were not wiped (the entry may still race)
            lambda: (
                subprocess.run(
                    [str(BIN / "insignia-agent"), "api", "fetch", "x509"],
                    capture_output=True,
                    env=fetch_env,
                    timeout=30,
                ).returncode
                == 0
            ),
            30,
            "the first quickstart to serve an SVID",
        )
        first.send_signal(signal.SIGINT)
        assert first.wait(60) == 0
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
