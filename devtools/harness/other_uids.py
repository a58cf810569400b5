"""Running Python workloads under other uids with this checkout's packages, and reading them.

Why `workload_python` exists: the test interpreter may live where other uids cannot reach
it. Here the venv's python is a symlink into /root/.pyenv and /root is 0700; a process
switched to uid 41001 can then neither read that interpreter's standard library nor, on an
ordinary kernel, even exec it. (This sandbox lets the exec through, but the process silently
falls back to Debian's libpython and stdlib, a different patch release.) So rather than
depend on that, `workload_python()` checks that every directory on the way to the
interpreter and its stdlib is traversable by others; if not, it runs the system interpreter
of the same minor version (same ABI as the venv's compiled packages) with the venv's
site-packages and the checkout on PYTHONPATH. No permissions are changed anywhere.
"""

from __future__ import annotations

import os
import select
import stat
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from typing import IO

REPO = Path(__file__).resolve().parents[2]


class NoWorkloadPython(RuntimeError):
    """No interpreter of this Python's minor version is reachable by other uids."""


def reachable_by_others(path: Path) -> bool:
    """Whether a process of another uid (not in our groups) can reach `path`: every
    directory on the way has o+x and the target itself o+r."""
    target = path.resolve()
    for directory in reversed(target.parents):
        if not directory.stat().st_mode & stat.S_IXOTH:
            return False
    return bool(target.stat().st_mode & stat.S_IROTH)


def as_user(uid: int | None) -> list[str]:
    """argv prefix: run under `uid`/gid `uid` with no supplementary groups (root only).

    setpriv, not subprocess's `user=`: the switch happens at exec, so nothing of ours runs
    between changing uid and starting the program.
    """
    return [] if uid is None else ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]


def workload_python() -> tuple[list[str], dict[str, str]]:
    """argv prefix and extra environment that run Python, with the venv's packages and this
    checkout importable, in a process of any uid."""
    paths = sysconfig.get_paths()
    if reachable_by_others(Path(sys.executable)) and reachable_by_others(Path(paths["stdlib"])):
        return [sys.executable], {}
    system = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")
    site_packages = Path(paths["purelib"])
    if not (system.exists() and reachable_by_others(system)):
        raise NoWorkloadPython(
            f"{sys.executable} is not reachable by other uids and there is no {system}"
        )
    if not reachable_by_others(site_packages):
        raise NoWorkloadPython(f"{site_packages} is not reachable by other uids")
    pythonpath = os.pathsep.join(str(p) for p in (site_packages, REPO, REPO / "proto"))
    return [str(system)], {"PYTHONPATH": pythonpath}


def python_as(uid: int | None) -> tuple[list[str], dict[str, str]]:
    """argv prefix and full environment that run Python as `uid` (None: as we are), with the
    venv's packages and this checkout (and its generated stubs) importable."""
    if uid is None:
        checkout = os.pathsep.join(str(p) for p in (REPO, REPO / "proto"))
        return [sys.executable], {**os.environ, "PYTHONPATH": checkout}
    python, extra = workload_python()
    return [*as_user(uid), *python], {**os.environ, **extra}


def workload_argv(uid: int, script: Path, *args: str) -> tuple[list[str], dict[str, str]]:
    """argv and full environment to run `script` as `uid` (and its gid, no other groups)."""
    python, env = python_as(uid)
    return [*python, str(script), *args], env


def run_workload(
    uid: int, script: Path, *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run `script` as `uid` to completion; its output is captured as text."""
    argv, env = workload_argv(uid, script, *args)
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, env=env, cwd="/", check=False
    )


def read_line(pipe: IO[bytes], timeout: float, what: str) -> str:
    """One line from a child's stdout pipe, waiting at most `timeout` seconds."""
    return read_fd_line(pipe.fileno(), timeout, what)


def read_fd_line(fd: int, timeout: float, what: str) -> str:
    """One line from a pipe or FIFO fd, waiting at most `timeout` seconds for it."""
    deadline = time.monotonic() + timeout
    data = b""
    while not data.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no line from {what} within {timeout}s (got {data!r})")
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                raise EOFError(f"{what} closed its output before a full line (got {data!r})")
            data += chunk
    return data.decode().strip()
