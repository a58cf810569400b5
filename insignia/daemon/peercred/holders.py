"""Who holds a Workload API connection: the check that closes exec-before-accept theft.

SO_PEERCRED names the process that called connect(), and /proc is read only at accept(). A
process can connect, hand the socket to a helper (fork, or SCM_RIGHTS over a socketpair) and
exec a binary that an entry selects before we accept: we then attest the new binary while
the helper reads the answer. The kernel keeps no record of the executable at connect time,
but it does know who holds the client's end now. So a connection is served only when:

1. the attested process still holds the client's socket (it is CLOEXEC by default, so a
   process that exec'd after connecting no longer does), and
2. every other process of that uid holding it runs the same executable as the attested one
   (forked workers of one binary share a connection legitimately).

What remains (docs/security.md): a holder under another uid is not scanned, and a socket
in flight in an SCM_RIGHTS message is held by nobody until it is received; both need the
attested binary's cooperation (it must clear CLOEXEC), which a selector on uid or sha256
rules out for binaries an attacker can run.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from insignia.daemon.peercred.credentials import (
    ExecutableId,
    PeerCredentials,
    ProcessGone,
    process_executable,
)


@dataclass(frozen=True, slots=True)
class Holder:
    """A process that has the connection's client socket in its fd table."""

    pid: int
    uid: int
    executable: ExecutableId


def _socket_link(inode: int) -> str:
    return f"socket:[{inode}]"


def holds(pid: int, inode: int) -> bool:
    """True if ``pid``'s fd table contains socket ``inode``; ProcessGone if it has exited.

    PermissionError propagates: an agent that may not read the table cannot verify.
    """
    wanted = _socket_link(inode)
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except (FileNotFoundError, ProcessLookupError):
        raise ProcessGone(pid, f"/proc/{pid}/fd vanished") from None
    for name in names:
        try:
            if os.readlink(f"/proc/{pid}/fd/{name}") == wanted:
                return True
        except (FileNotFoundError, ProcessLookupError):
            continue  # that fd was closed while we looked
    return False


def _pids_of_uid(uid: int) -> Iterator[int]:
    """Processes whose /proc directory belongs to ``uid`` (their effective uid)."""
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            if os.stat(f"/proc/{name}").st_uid == uid:
                yield int(name)
        except (FileNotFoundError, ProcessLookupError):
            continue


def other_holders(creds: PeerCredentials, inode: int) -> list[Holder]:
    """Processes of the caller's uid that hold socket ``inode`` and run another executable
    than the caller (the only holders that can make a problem)."""
    found = []
    for pid in _pids_of_uid(creds.uid):
        if pid == creds.pid:
            continue
        try:
            executable = process_executable(pid)
            if executable is not None and executable == creds.executable:
                continue  # a copy of the caller may share it: no need to read its fd table
            if holds(pid, inode):
                found.append(Holder(pid, creds.uid, executable))
        except (ProcessGone, PermissionError):
            continue
    return found


def holder_problem(
    creds: PeerCredentials, caller_holds: bool, others: Iterable[Holder]
) -> str | None:
    """Why this connection must not be served, or None: the rule of the module docstring."""
    if not caller_holds:
        return (
            f"process {creds.pid} no longer holds the connection it opened "
            "(it exec'd or handed the socket to another process before it was accepted)"
        )
    for other in others:
        if other.uid != creds.uid or other.executable != creds.executable:
            return (
                f"the connection of process {creds.pid} is also held by process {other.pid}, "
                "which runs a different executable"
            )
    return None


def connection_problem(creds: PeerCredentials) -> str | None:
    """Check ``creds``' connection against its holders (blocking: scans /proc; use a thread).

    None also when the agent may not read the caller's fd table (an unprivileged agent and a
    caller of another uid): then only the accept-time checks of
    insignia.daemon.peercred.credentials apply.
    """
    try:
        caller_holds = holds(creds.pid, creds.socket_inode)
    except PermissionError:
        return None
    if not caller_holds:
        return holder_problem(creds, False, ())
    return holder_problem(creds, True, other_holders(creds, creds.socket_inode))
