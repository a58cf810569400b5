"""A Workload API caller without a connection, for attestor tests and benchmarks.

Attestors get the caller as the front records it at accept (`PeerCredentials`). Away from a
socket, this builds the same value for any live process: pinned by a pidfd like the front's,
with SO_PEERCRED's uid/gid taken as given (the effective ids by default).
"""

from __future__ import annotations

import os

from insignia.daemon.peercred.credentials import PeerCredentials, PidFd


def caller_of(
    pid: int, uid: int | None = None, gid: int | None = None, pidfd: PidFd | None = None
) -> PeerCredentials:
    """`pid` as an attestor sees it; the caller closes `pidfd` (opened here when not given).

    Start time, executable and socket inode belong to the Workload API's same-process check,
    which attestors do not make; they are left empty."""
    return PeerCredentials(
        pid=pid,
        uid=os.geteuid() if uid is None else uid,
        gid=os.getegid() if gid is None else gid,
        pidfd=pidfd or PidFd(os.pidfd_open(pid)),
        start_time=0,
        executable=None,
        socket_inode=0,
    )
