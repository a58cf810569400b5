"""Real workload processes for attestor tests, each pinned by a pidfd like the agent does."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from insignia.attestors.interface import Caller


@contextmanager
def running(
    argv: list[str], uid: int | None = None, gid: int | None = None, **popen: Any
) -> Iterator[tuple[subprocess.Popen[str], Caller]]:
    """Start `argv` (as `uid`/`gid` if given) and yield it with its Caller, as SO_PEERCRED
    would describe it; kill and reap it afterwards."""
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        user=uid,
        group=gid,
        **popen,
    )
    pidfd = os.pidfd_open(proc.pid)
    caller = Caller(
        proc.pid,
        os.geteuid() if uid is None else uid,
        os.getegid() if gid is None else gid,
        pidfd,
    )
    try:
        yield proc, caller
    finally:
        proc.kill()
        proc.wait()
        os.close(pidfd)


def sleeper(uid: int | None = None, gid: int | None = None, **popen: Any) -> Any:
    return running(["sleep", "300"], uid, gid, **popen)
