"""Real workload processes for attestor tests, each pinned by a pidfd like the agent does."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from devtools.callers import caller_of
from insignia.daemon.peercred.credentials import PeerCredentials


@contextmanager
def running(
    argv: list[str], uid: int | None = None, gid: int | None = None, **popen: Any
) -> Iterator[tuple[subprocess.Popen[str], PeerCredentials]]:
    """Start `argv` (as `uid`/`gid` if given) and yield it with its credentials, as the front
    would record them; kill and reap it afterwards."""
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        user=uid,
        group=gid,
        **popen,
    )
    caller = caller_of(proc.pid, uid, gid)
    try:
        yield proc, caller
    finally:
        proc.kill()
        proc.wait()
        caller.pidfd.close()


def sleeper(uid: int | None = None, gid: int | None = None, **popen: Any) -> Any:
    return running(["sleep", "300"], uid, gid, **popen)
