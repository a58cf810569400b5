"""Who is calling: kernel-verified credentials of a Unix-socket peer (docs/design-notes.md §3).

grpcio cannot tell a handler the caller's pid or uid, so ``insignia.daemon.peercred.front`` accepts
each connection itself, records the caller here under the unique abstract socket name of its
upstream connection, and the gRPC handler finds it again through ``context.peer()``.

A pid alone is not an identity: it can be reused after the process exits. So each entry holds a
pidfd (the kernel's stable handle to that one process), the process start time and the identity
of its executable, and ``PeerCredentials.still_same_process()`` re-checks them all, plus the
uid/gid, after attestation. The executable matters because exec keeps the pid, start time and
uid: a process that connects, forks a child sharing the socket and then execs another binary of
the same user must not hand that child the other binary's identity.

The executable is read at accept(), not at connect(), and a process may exec in between (the
window is as long as the accept queue: a flood of throw-away connections makes it milliseconds).
``socket_inode`` closes it: ``insignia.daemon.peercred.holders`` then requires that the attested
process still holds the connection and shares it only with copies of itself.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio

from insignia.daemon.peercred.unix_diag import PeerGone, peer_inode

# SO_PEERPIDFD (Linux >= 6.5): a pidfd for the peer taken at connect() time, race-free.
# Python 3.11's socket module does not name it yet.
SO_PEERPIDFD = 77

PEER_PREFIX = "unix-abstract:"  # what grpc's context.peer() shows for an abstract-bound client
NAME_PREFIX = "insignia-"


class UnknownPeer(Exception):
    """A gRPC peer that did not come through the peer-credentials front."""

    def __init__(self, peer: str) -> None:
        super().__init__(
            f"gRPC peer {peer!r} is not a connection accepted by the peer-credentials front; "
            f"expected {PEER_PREFIX}{NAME_PREFIX}<32 hex> registered in the caller table"
        )
        self.peer = peer


class ProcessGone(Exception):
    """The peer process exited (or its /proc entry vanished) while we were reading it."""

    def __init__(self, pid: int, reason: str) -> None:
        super().__init__(f"process {pid} is gone: {reason}")
        self.pid = pid
        self.reason = reason


class PidFd:
    """A pidfd that knows when it was closed, so a recycled fd number is never signalled."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    @property
    def fd(self) -> int:
        """The raw descriptor (for pidfd syscalls); ValueError once the connection has ended."""
        if self._fd is None:
            raise ValueError("pidfd already closed: the caller's connection has ended")
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd is None

    def is_alive(self) -> bool:
        """True while the process exists (zombies count): ``pidfd_send_signal(fd, 0)``."""
        if self._fd is None:
            return False
        try:
            signal.pidfd_send_signal(self._fd, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True  # exists, but we may not signal it (only when not root)
        return True

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


ExecutableId = tuple[int, int] | None
"""(st_dev, st_ino) of the file /proc/<pid>/exe names; None when the kernel refuses to show it
(a non-dumpable process, or another uid's process to a non-root reader)."""


@dataclass(frozen=True)
class PeerCredentials:
    """The caller as the kernel saw it: effective uid/gid and pid at connect(), then at accept()
    its pidfd, start time and executable.

    ``start_time`` is field 22 of /proc/<pid>/stat (clock ticks since boot). ``executable``
    tells an exec apart (see the module docstring). ``socket_inode`` is the inode of the
    client's end of the connection, as the fd tables in /proc name it. The pidfd stays open
    for the life of the connection and is closed by the front when it ends.
    """

    pid: int
    uid: int
    gid: int
    pidfd: PidFd
    start_time: int
    executable: ExecutableId
    socket_inode: int

    def is_alive(self) -> bool:
        """Whether the process that connected still runs (its pidfd, not a reusable pid)."""
        return self.pidfd.is_alive()

    def still_same_process(self) -> bool:
        """True if the process that connected still lives with the same start time, uid/gid and
        executable.

        Call it after attestation, before answering: False means the caller exited, its pid now
        names another process, or it exec'ed another binary, so answer UNAUTHENTICATED. Reads
        /proc (procfs; a few tens of us).
        """
        if not self.pidfd.is_alive():
            return False
        try:
            start_time = process_start_time(self.pid)
            ids = parse_status(_read_proc(self.pid, "status"))
            executable = process_executable(self.pid)
        except (ProcessGone, ValueError):
            return False
        # Read /proc first, then confirm the pidfd is still alive: only then is what we read
        # about the same process the pidfd names.
        return (
            start_time == self.start_time
            and (ids.uid, ids.gid) == (self.uid, self.gid)
            and executable == self.executable
            and self.pidfd.is_alive()
        )


def parse_start_time(stat_line: str) -> int:
    """Field 22 (starttime) of a /proc/<pid>/stat line.

    ``comm`` (field 2) is in parentheses and may itself contain spaces and ')', so count
    fields from the LAST ')': field 3 is the first after it, field 22 the twentieth.
    """
    head, sep, tail = stat_line.rpartition(")")
    fields = tail.split()
    if not sep or "(" not in head or len(fields) < 20:
        raise ValueError(f"not a /proc/<pid>/stat line: {stat_line[:120]!r}")
    return int(fields[19])


@dataclass(frozen=True, slots=True)
class ProcessIds:
    uid: int
    gid: int
    groups: tuple[int, ...]


def parse_status(text: str) -> ProcessIds:
    """Effective uid, gid and supplementary groups from `/proc/<pid>/status` text
    ("Uid:\\treal\\teffective\\tsaved\\tfs"); the one parser for the front and the attestors."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key in ("Uid", "Gid", "Groups"):
            fields[key] = value
    try:
        uids = [int(v) for v in fields["Uid"].split()]
        gids = [int(v) for v in fields["Gid"].split()]
        groups = tuple(int(v) for v in fields.get("Groups", "").split())
    except (KeyError, ValueError) as exc:
        raise ValueError(f"status has no valid Uid/Gid/Groups lines ({exc})") from exc
    if len(uids) != 4 or len(gids) != 4:
        raise ValueError("status Uid/Gid lines do not have 4 fields (real effective saved fs)")
    return ProcessIds(uid=uids[1], gid=gids[1], groups=groups)


def _read_proc(pid: int, name: str) -> str:
    try:
        with open(f"/proc/{pid}/{name}", encoding="utf-8", errors="replace") as f:
            return f.read()
    except (FileNotFoundError, ProcessLookupError) as exc:
        raise ProcessGone(pid, f"/proc/{pid}/{name}: {exc.strerror}") from None


def process_start_time(pid: int) -> int:
    """Start time of ``pid`` (blocking /proc read: call via trio.to_thread from trio)."""
    return parse_start_time(_read_proc(pid, "stat"))


def process_executable(pid: int) -> ExecutableId:
    """(st_dev, st_ino) of the executable ``pid`` runs, None if the kernel will not say.

    Only meaningful when the caller confirms afterwards that the pidfd is still alive (so
    ``pid`` still named the same process while we looked).
    """
    try:
        st = os.stat(f"/proc/{pid}/exe")
    except (FileNotFoundError, ProcessLookupError) as exc:
        raise ProcessGone(pid, f"/proc/{pid}/exe: {exc.strerror}") from None
    except PermissionError:
        return None
    return st.st_dev, st.st_ino


def peer_pidfd(sock: socket.socket, pid: int) -> PidFd:
    """The peer's pidfd: SO_PEERPIDFD when the kernel has it, else pidfd_open(pid).

    The fallback can race with pid reuse if the client already exited; callers take it
    right after accept() and then confirm the start time while the pidfd is alive.
    """
    try:
        return PidFd(sock.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD))
    except OSError as exc:
        if exc.errno not in (errno.ENOPROTOOPT, errno.EINVAL):
            # ESRCH: the peer is already reaped; pidfd_open(pid) could now name another process.
            raise ProcessGone(pid, f"SO_PEERPIDFD failed: {exc.strerror}") from None
    try:
        return PidFd(os.pidfd_open(pid))
    except ProcessLookupError:
        raise ProcessGone(pid, "exited before its pidfd could be opened") from None


def peer_ids(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the connected peer from SO_PEERCRED (credentials at connect())."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


def read_peer_credentials(sock: socket.socket) -> PeerCredentials:
    """Everything about the peer of ``sock`` (blocking: reads /proc; use trio.to_thread).

    The start time and executable are read after the pidfd was taken and accepted only if the
    pidfd is still alive afterwards, so they belong to the very process that connected.
    """
    pid, uid, gid = peer_ids(sock)
    if pid <= 0:
        raise ProcessGone(pid, "peer is in another pid namespace or has no pid")
    pidfd = peer_pidfd(sock, pid)
    try:
        try:
            socket_inode = peer_inode(sock)
        except PeerGone as exc:
            raise ProcessGone(pid, str(exc)) from None
        start_time = process_start_time(pid)
        executable = process_executable(pid)
        if not pidfd.is_alive():
            raise ProcessGone(pid, "exited while its start time was read")
    except BaseException:
        pidfd.close()
        raise
    return PeerCredentials(
        pid=pid,
        uid=uid,
        gid=gid,
        pidfd=pidfd,
        start_time=start_time,
        executable=executable,
        socket_inode=socket_inode,
    )


def process_credentials(pid: int) -> PeerCredentials:
    """A process named by pid alone, pinned like a connected peer (blocking: reads /proc).

    For APIs that act on behalf of a workload named by reference (the Broker and Delegated
    Identity APIs): the pidfd is opened first and the start time, ids and executable are
    accepted only if it is still alive afterwards, so they describe the process it pins;
    ``still_same_process()`` then holds it to that process. No connection, so
    ``socket_inode`` is 0. ProcessGone when no such process exists; the caller closes the pidfd.
    """
    if pid <= 0:
        raise ProcessGone(pid, "a process id is a positive integer")
    try:
        pidfd = PidFd(os.pidfd_open(pid))
    except ProcessLookupError:
        raise ProcessGone(pid, "no such process") from None
    except OSError as exc:  # EINVAL: a thread id, not a process's
        raise ProcessGone(pid, f"not a process: {exc.strerror}") from None
    try:
        start_time = process_start_time(pid)
        ids = parse_status(_read_proc(pid, "status"))
        executable = process_executable(pid)
        if not pidfd.is_alive():
            raise ProcessGone(pid, "exited while it was read")
    except BaseException:
        pidfd.close()
        raise
    return PeerCredentials(
        pid=pid,
        uid=ids.uid,
        gid=ids.gid,
        pidfd=pidfd,
        start_time=start_time,
        executable=executable,
        socket_inode=0,
    )


class CallerTable:
    """Maps grpc ``context.peer()`` strings to the credentials of the connection behind them.

    Written by the front (one entry per proxied connection), read by gRPC handlers. Both run
    on the same thread (runtime.py), so no locking. Whoever keeps something per connection
    registers ``on_remove`` to drop it when the connection ends, so a closed connection
    costs nothing.
    """

    def __init__(self) -> None:
        self._entries: dict[str, PeerCredentials] = {}
        self._on_remove: list[Callable[[PeerCredentials], None]] = []

    def lookup(self, peer: str) -> PeerCredentials:
        """The credentials for ``peer`` (``context.peer()``); raises UnknownPeer if none."""
        try:
            return self._entries[peer]
        except KeyError:
            raise UnknownPeer(peer) from None

    async def caller_or_abort(self, context: grpc.aio.ServicerContext[Any, Any]) -> PeerCredentials:
        """In a grpc.aio handler: the caller's credentials, or abort with UNAUTHENTICATED."""
        try:
            return self.lookup(context.peer())
        except UnknownPeer as exc:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
            raise  # abort() always raises; this keeps the type checker honest

    def register(self, abstract_name: str, creds: PeerCredentials) -> str:
        """Record ``creds`` for an upstream socket bound to ``\\0<abstract_name>``; the peer key."""
        peer = PEER_PREFIX + abstract_name
        if peer in self._entries:
            raise ValueError(f"abstract name {abstract_name!r} is already registered")
        self._entries[peer] = creds
        return peer

    def remove(self, peer: str) -> None:
        """Forget ``peer``: done BEFORE its upstream socket closes, so the name is never stale."""
        creds = self._entries.pop(peer, None)
        if creds is not None:
            for forget in self._on_remove:
                forget(creds)

    def on_remove(self, forget: Callable[[PeerCredentials], None]) -> None:
        """Call ``forget(creds)`` whenever a connection's entry is removed."""
        self._on_remove.append(forget)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, peer: object) -> bool:
        return peer in self._entries
