"""The Go interop client (tests/interop/go): built once per source hash, run as a workload.

The program is go-spiffe v2.9.0, go-control-plane's Envoy v1.40.0 types and grpc-go on the
wire against our agent, so it proves what our own client code cannot. Its binary is cached
under `build/interop-go/<hash>/`; a file lock makes concurrent xdist workers build it once.
Under CI=true a missing Go toolchain or a failed module download fails the run with one line;
elsewhere the tests skip, naming it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devtools.harness.other_uids import REPO, as_user, read_line

GO_MODULE = REPO / "tests" / "interop" / "go"
CACHE = REPO / "build" / "interop-go"
# Written beside a fresh binary; the terminal summary reports it (tests/conftest.py).
BUILD_SECONDS = "build-seconds"


def unavailable(reason: str) -> None:
    """Fail under CI (which must run every interop case), skip elsewhere."""
    if os.environ.get("CI") == "true":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def source_hash(go: str) -> str:
    """Hash of the module's files and the toolchain: a change of either rebuilds."""
    digest = hashlib.sha256(subprocess.run([go, "version"], capture_output=True).stdout)
    for path in sorted(GO_MODULE.rglob("*")):
        if path.is_file():
            digest.update(path.relative_to(GO_MODULE).as_posix().encode() + b"\0")
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def build(cache: Path = CACHE, env: dict[str, str] | None = None) -> tuple[Path, float | None]:
    """The cached binary, building it if needed; and the build's seconds (None: cached).
    `env` replaces the environment of `go build` (the failure-path tests use it)."""
    go = shutil.which("go", path=(env or os.environ).get("PATH"))
    if go is None:
        unavailable("Go interop tests need the go toolchain (go not found on PATH)")
        raise AssertionError("unreachable")
    target = cache / source_hash(go)
    binary = target / "interop"
    target.mkdir(parents=True, exist_ok=True)
    with open(target / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if binary.exists():
            return binary, None
        started = time.monotonic()
        result = subprocess.run(
            [go, "build", "-trimpath", "-o", str(binary.with_suffix(".tmp")), "."],
            cwd=GO_MODULE,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
            env=env,
        )
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
            unavailable(f"building the Go interop client failed (go build in {GO_MODULE}): {last}")
        seconds = time.monotonic() - started
        (target / BUILD_SECONDS).write_text(f"{seconds:.1f}\n")
        binary.with_suffix(".tmp").rename(binary)
        return binary, seconds


@dataclass(frozen=True)
class GoClient:
    """The interop binary, copied where any workload uid can execute it."""

    binary: Path

    def argv(self, uid: int | None, *args: str) -> list[str]:
        return [*as_user(uid), str(self.binary), *args]

    def run(self, endpoint: str, *args: str, uid: int | None = None, timeout: float = 90) -> Any:
        """Run one subcommand to completion; its final JSON line, or AssertionError with its
        one-line error."""
        result = subprocess.run(
            self.argv(uid, *args),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env(endpoint),
            cwd="/",
            check=False,
        )
        if result.returncode != 0:
            raise GoFailed(result.stderr.strip())
        return json.loads(result.stdout.strip().splitlines()[-1])

    @staticmethod
    def env(endpoint: str) -> dict[str, str]:
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "SPIFFE_ENDPOINT_SOCKET": endpoint}

    @contextmanager
    def start(
        self, endpoint: str, *args: str, uid: int | None = None
    ) -> Iterator[subprocess.Popen[bytes]]:
        """A long-running subcommand (a server or a watcher); killed on exit."""
        proc = subprocess.Popen(
            self.argv(uid, *args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self.env(endpoint),
            cwd="/",
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(30)
            for pipe in (proc.stdout, proc.stderr):
                assert pipe is not None
                pipe.close()


class GoFailed(AssertionError):
    """The Go client exited non-zero; the message is its one error line."""


def next_json(proc: subprocess.Popen[bytes], timeout: float, what: str) -> Any:
    assert proc.stdout is not None
    return json.loads(read_line(proc.stdout, timeout, what))


def finish(proc: subprocess.Popen[bytes], timeout: float) -> tuple[int, str, str]:
    """Wait for a started subcommand; (exit code, remaining stdout, stderr)."""
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out.decode(), err.decode()


@contextmanager
def go_client() -> Iterator[GoClient]:
    """Build (or reuse) the binary and copy it to a 0755 directory others can traverse:
    the checkout may sit under a 0700 home that workload uids cannot enter."""
    binary, _ = build()
    directory = Path(tempfile.mkdtemp(prefix="insignia-go-"))
    try:
        directory.chmod(0o755)
        runnable = directory / "interop"
        shutil.copy2(binary, runnable)
        runnable.chmod(0o755)
        yield GoClient(runnable)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
