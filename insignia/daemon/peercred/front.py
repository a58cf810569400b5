"""A trio front that gives grpc.aio handlers their caller's pid/uid/gid (docs/design-notes.md §3).

trio owns the public Unix socket. For each accepted connection it records the peer's
credentials, opens an upstream connection to an internal grpc.aio server (in a 0700
directory) from a socket bound to a fresh abstract name, and splices the two (the byte pump
itself runs as asyncio transports on the shared thread: see ``_Splice``). The handler's
``context.peer()`` is then ``unix-abstract:<that name>``, the key into a ``CallerTable``.

Most callers want ``insignia.daemon.peercred.grpc_server.serve_grpc_with_peercred``, which adds the
internal grpc.aio server and a start-up self-test.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import resource
import secrets
import socket
import stat
import termios
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import trio

from insignia.daemon.accepting import accept_retrying
from insignia.daemon.instance import claim_socket_path
from insignia.daemon.log_throttle import LogThrottle
from insignia.daemon.logs import get_logger
from insignia.daemon.memory_release import MemoryReleaser
from insignia.daemon.peercred.admission import Admission, Verdict
from insignia.daemon.peercred.credentials import (
    NAME_PREFIX,
    CallerTable,
    PeerCredentials,
    ProcessGone,
    peer_ids,
    read_peer_credentials,
)
from insignia.daemon.peercred.http2_guard import ClientFrameGuard, GuardLimits
from insignia.daemon.peercred.unix_diag import ForeignNamespace
from insignia.daemon.runtime import call_asyncio

DEFAULT_MAX_CONNECTIONS = 10_000
# Bytes a side leaves unread for this long end the connection (FrontLimits.stall_timeout).
DEFAULT_STALL_TIMEOUT = 10.0
# The most one read takes from a socket, so the most a side buffers for its peer.
CHUNK_BYTES = 64 * 1024
# One uid may hold at most this many connections, so a hostile or leaky workload cannot take
# every slot from the others: at least ten uids are needed to fill the global limit, while a
# uid that runs many processes (all containers as root, a pre-fork server with a stream per
# worker) still has room for hundreds.
DEFAULT_MAX_CONNECTIONS_PER_UID = 1024
# client socket + upstream socket + pidfd here, plus grpc's end of the upstream connection.
FDS_PER_CONNECTION = 4
_FD_RESERVE = 256
_BACKLOG = 4096

log = get_logger(__name__)


class NotASocket(Exception):
    """The public socket path exists and is something other than a socket."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"{path} exists and is not a Unix socket; expected a socket or nothing")
        self.path = path


def fit_to_fd_limit(max_connections: int) -> int:
    """Raise RLIMIT_NOFILE toward what ``max_connections`` needs; return what fits.

    Each proxied connection costs FDS_PER_CONNECTION descriptors in this process. Without
    this, a flood hits EMFILE and also starves grpc and the datastore of descriptors.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = max_connections * FDS_PER_CONNECTION + _FD_RESERVE
    if hard != resource.RLIM_INFINITY and hard < needed:
        # A privileged agent (CAP_SYS_RESOURCE, as root has) may raise the hard limit too:
        # 10,000 streams need about 40,000 descriptors, above many systems' default hard limit.
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed, needed))
            soft = hard = needed
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        return max_connections
    fitting = max(1, (soft - _FD_RESERVE) // FDS_PER_CONNECTION)
    if fitting < max_connections:
        log.warning(
            "peercred_front.connection_limit_lowered",
            requested=max_connections,
            allowed=fitting,
            rlimit_nofile=soft,
        )
    return min(max_connections, fitting)


async def _bind_public(path: Path, mode: int, gid: int | None) -> trio.socket.SocketType:
    """Listen on ``path`` with ``mode``/``gid`` set before the socket appears at that name."""
    try:
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise NotASocket(path)
    except FileNotFoundError:
        pass
    claim_socket_path(path)  # the rename below would take a live daemon's socket over
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # Short on purpose: a Unix socket path is limited to 107 bytes, and the temporary name must
    # fit wherever the final one does.
    tmp = path.with_name(f".{secrets.token_hex(4)}")
    try:
        await sock.bind(str(tmp))
        os.chmod(tmp, mode)
        if gid is not None:
            os.chown(tmp, -1, gid)
        os.rename(tmp, path)
        sock.listen(_BACKLOG)
    except BaseException:
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return sock


async def _connect_upstream(upstream_path: Path) -> tuple[trio.socket.SocketType, str]:
    """A socket bound to a fresh ``\\0insignia-<128 random bits>`` name, connected upstream."""
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        for _attempt in range(16):
            name = NAME_PREFIX + secrets.token_hex(16)
            try:
                await sock.bind("\0" + name)
                break
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
        else:
            raise OSError(errno.EADDRINUSE, "no free abstract socket name after 16 tries")
        await sock.connect(str(upstream_path))
    except BaseException:
        sock.close()
        raise
    return sock, name


@dataclass(frozen=True)
class FrontLimits:
    """What one proxied connection may cost, and how long it may sit without progress.

    ``stall_timeout``: bytes sent to a side that reads none of them within this time end
    the connection (both sides), as does a close that cannot flush within it.
    Without it a client that stops reading holds its sockets, grpc's buffers and the
    front's forever (issue 12: PING floods and stalled readers, ~1 MB each).
    """

    stall_timeout: float = DEFAULT_STALL_TIMEOUT
    guard: GuardLimits = field(default_factory=GuardLimits)


DEFAULT_LIMITS = FrontLimits()

# One read buffer for every connection: all halves run on the one asyncio thread, and each
# chunk is copied out before the next read, so idle connections cost no buffer of their own.
_READ_BUFFER = memoryview(bytearray(CHUNK_BYTES))


def _unread_by_peer(sock: socket.socket) -> int:
    """Bytes sent on ``sock`` that its peer has not read yet (SIOCOUTQ); 0 once closed."""
    try:
        return int.from_bytes(fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, bytes(4)), "little")
    except (OSError, ValueError):
        return 0


class _Half(asyncio.BufferedProtocol):
    """One side of a proxied connection: forwards what it reads to its peer's transport.

    Backpressure: a side's transport buffers at most one chunk that the kernel did not
    take (high-water mark 0); the moment it holds any, the other side stops reading.

    Stall watch: bytes written to a side start a timer. When it fires, bytes still pending
    (in our buffer or unread in the kernel's, which is where a non-reading peer leaves
    them long before our buffer fills) and none consumed since it started end the
    connection; some consumed re-arm it; none pending stops it until the next write. One
    timer per side per ``stall_timeout`` at most, whatever the traffic.
    """

    def __init__(self, splice: _Splice, name: str, guard: ClientFrameGuard | None) -> None:
        self._splice = splice
        self.name = name
        self._guard = guard  # only on the client's side: it parses client->server frames
        self.peer: _Half
        self.transport: asyncio.Transport
        self._sock: socket.socket
        self.closed = asyncio.get_running_loop().create_future()  # set by connection_lost
        self._stall: asyncio.TimerHandle | None = None
        self._written = 0  # bytes written to this side, ever
        self._mark = (0, 0)  # (written, pending) when the stall timer was armed

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # a stream socket's transport
        self._sock = self.transport.get_extra_info("socket")
        self.transport.pause_reading()  # until the other side exists; see _Splice.run
        self.transport.set_write_buffer_limits(high=0, low=0)

    def get_buffer(self, sizehint: int) -> memoryview:
        return _READ_BUFFER

    def buffer_updated(self, nbytes: int) -> None:
        data = bytes(_READ_BUFFER[:nbytes])
        if self._guard is not None:
            problem = self._guard.feed(data, time.monotonic())
            if problem is not None:
                self._splice.abort(problem)
                return
        self.peer.send(data)

    def send(self, data: bytes) -> None:
        self.transport.write(data)
        self._written += len(data)
        if self._stall is None:
            self._arm_stall()

    def eof_received(self) -> bool:
        if self._guard is None:
            # grpc never half-closes: it is done with this connection (for example a client
            # that never sent a preface hit the handshake timeout). Waiting for the client
            # to close as well would let a silent client hold its slot forever.
            self._splice.finish()
            return False
        if self.peer.transport.can_write_eof():
            self.peer.transport.write_eof()  # the client half-closed; let grpc answer
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None
        if not self.closed.done():
            self.closed.set_result(None)
        self._splice.finish()

    def pause_writing(self) -> None:
        self.peer.transport.pause_reading()  # our buffer holds bytes: stop reading more

    def resume_writing(self) -> None:
        if not self.peer.transport.is_closing():
            self.peer.transport.resume_reading()

    def _pending(self) -> int:
        return self.transport.get_write_buffer_size() + _unread_by_peer(self._sock)

    def _arm_stall(self) -> None:
        self._mark = (self._written, self._pending())
        loop = asyncio.get_running_loop()
        self._stall = loop.call_later(self._splice.limits.stall_timeout, self._stall_check)

    def _stall_check(self) -> None:
        self._stall = None
        pending = self._pending()
        if not pending:
            return  # all read: the next write re-arms
        written, was_pending = self._mark
        if was_pending + (self._written - written) > pending:  # it read some: slow, not stuck
            self._arm_stall()
            return
        timeout = self._splice.limits.stall_timeout
        self._splice.abort(f"the {self.name} read nothing for {timeout:g}s")


class _Splice:
    """Proxies bytes between two connected sockets on asyncio's loop until either side ends.

    asyncio transports, not trio streams: in guest mode every trio I/O wait crosses to trio's
    I/O thread and back, and the bytes pump is the hot path (benchmarks/peercred_front.py:
    this cut the front's cost from ~475 to ~70 us of server CPU per unary call). Both loops
    share one thread either way. Once ``run`` has started it owns and closes both sockets;
    until then ``close_unstarted`` does (a task cancelled before its first step never runs).
    ``run`` returns only once both sockets are closed, so the caller can release the rest.
    """

    def __init__(
        self,
        client: socket.socket,
        upstream: socket.socket,
        before_close: Callable[[], None],
        limits: FrontLimits,
    ) -> None:
        self._sockets: tuple[socket.socket, ...] = (client, upstream)
        self._before_close = before_close
        self.limits = limits
        self.guard = ClientFrameGuard(limits.guard, time.monotonic())
        self.dropped: str | None = None  # why the front cut the connection, if it did
        self._done: asyncio.Future[None] | None = None
        self._halves: tuple[_Half, ...] = ()

    def finish(self) -> None:
        """Either side ended: close both, after flushing what is queued (bounded in time)."""
        if self._done is not None and not self._done.done():
            self._done.set_result(None)

    def abort(self, reason: str) -> None:
        """Cut both sides now, discarding what is queued: the client broke a limit."""
        if self.dropped is None:
            self.dropped = reason
        for half in self._halves:
            half.transport.abort()
        self.finish()

    async def run(self) -> None:
        client, upstream = self._sockets
        self._sockets = ()
        loop = asyncio.get_running_loop()
        self._done = loop.create_future()
        down = _Half(self, "client", self.guard)
        up = _Half(self, "grpc server", None)
        down.peer, up.peer = up, down
        try:
            await loop.connect_accepted_socket(lambda: down, sock=client)
            self._halves = (down,)
            await loop.connect_accepted_socket(lambda: up, sock=upstream)
            self._halves = (down, up)
            down.transport.resume_reading()
            up.transport.resume_reading()
            await self._done
        except BaseException:  # cancelled (shutting down) or a socket refused: no flushing
            self._before_close()
            for half in self._halves:
                half.transport.abort()
            for sock in (client, upstream)[len(self._halves) :]:
                sock.close()
            raise
        self._before_close()
        for half in self._halves:
            half.transport.close()  # flushes what is buffered, then closes the socket
        try:
            await asyncio.wait_for(
                asyncio.gather(down.closed, up.closed), self.limits.stall_timeout
            )
        except TimeoutError:
            pass  # a side that would not take its last bytes: cut below
        finally:
            for half in self._halves:
                half.transport.abort()  # a no-op for a side already closed

    def close_unstarted(self) -> None:
        for sock in self._sockets:
            sock.close()


async def _proxy_connection(
    client: socket.socket,
    upstream_path: Path,
    table: CallerTable,
    warnings: LogThrottle,
    limits: FrontLimits,
) -> None:
    """Record the caller, connect upstream under a fresh name, splice until either side ends.

    Owns ``client``. Cleanup order: forget the peer, then close sockets, then the pidfd.
    """
    creds: PeerCredentials | None = None
    peer: str | None = None
    splice: _Splice | None = None
    try:
        creds = await trio.to_thread.run_sync(read_peer_credentials, client)
        try:
            upstream, name = await _connect_upstream(upstream_path)
        except OSError as exc:
            log.warning(
                "peercred_front.upstream_failed", error=str(exc), upstream=str(upstream_path)
            )
            return
        splice = _Splice(
            client,
            socket.socket(fileno=upstream.detach()),
            lambda: None if peer is None else table.remove(peer),
            limits,
        )
        peer = table.register(name, creds)
        await call_asyncio(splice.run)
        # grpc drops a non-HTTP/2 client without a word, and the front drops a hostile one:
        # these lines are the only trace an operator gets.
        for event, cause in (
            ("peercred_front.bad_preface", splice.guard.preface_problem()),
            ("peercred_front.connection_dropped", splice.dropped),
        ):
            held_back = (
                None if cause is None else warnings.admit((event, creds.uid), time.monotonic())
            )
            if held_back is not None:
                log.warning(event, pid=creds.pid, uid=creds.uid, cause=cause, held_back=held_back)
    except ForeignNamespace as exc:
        # An operator problem (the daemon lacks CAP_SYS_ADMIN for callers in other network
        # namespaces), not a caller's: said at warning level, rate-limited.
        held_back = warnings.admit("foreign-netns", time.monotonic())
        if held_back is not None:
            log.warning("peercred_front.netns_unreadable", error=str(exc), held_back=held_back)
    except (ProcessGone, OSError, ValueError) as exc:
        log.debug("peercred_front.peer_unreadable", error=str(exc))
    finally:
        if peer is not None:
            table.remove(peer)  # no-op when run() already did
        if splice is not None:
            splice.close_unstarted()
        else:
            client.close()
        if creds is not None:
            creds.pidfd.close()


OtherProtocol = Callable[[trio.SocketStream], Awaitable[None]]
"""Serves one connection that is not HTTP/2 (it owns and closes the stream)."""

HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# Enough of the first bytes to tell the preface from an HTTP/1.1 method ("PRI" vs "PUT").
_SNIFF_BYTES = 3


async def speaks_http2(client: socket.socket, within: float) -> bool:
    """Whether the client's first bytes are the HTTP/2 preface, peeked (not consumed), so
    whichever server gets the connection reads it from the start. A client that sends too
    little ``within`` seconds or closes counts as HTTP/2: grpc then drops it as it would."""
    with trio.move_on_after(within):
        while True:
            await trio.lowlevel.wait_readable(client)
            try:
                head = client.recv(_SNIFF_BYTES, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except OSError:
                return True
            if len(head) >= _SNIFF_BYTES or not head:
                return not head or HTTP2_PREFACE.startswith(head)
            await trio.sleep(0.01)  # a byte or two so far: the rest is on its way
    return True


async def serve_peercred_front(
    public_path: Path,
    upstream_path: Path,
    table: CallerTable,
    *,
    mode: int = 0o777,
    gid: int | None = None,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    max_connections_per_uid: int = DEFAULT_MAX_CONNECTIONS_PER_UID,
    limits: FrontLimits = DEFAULT_LIMITS,
    other_protocol: OtherProtocol | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept on ``public_path`` and proxy each caller to ``unix:upstream_path`` until cancelled.

    With ``other_protocol``, a client whose first bytes are not the HTTP/2 preface is handed
    to it instead (the agent's admin socket: HTTP/1.1 health beside gRPC; ``speaks_http2``).

    ``mode`` (and optional group ``gid``) are set before the socket appears. The caller
    creates the parent directory. Connections beyond ``max_connections`` (lowered to fit
    RLIMIT_NOFILE), or beyond ``max_connections_per_uid`` for the connecting uid (counted from
    SO_PEERCRED at accept), are closed at once; resource exhaustion on accept backs off
    100 ms. Each connection is held to ``limits`` (stalls, PING/SETTINGS budget, header block
    size) and dropped when it breaks one. A client that is not speaking HTTP/2, or that was
    dropped, is logged, at most ten lines per uid and kind at once and one a second after.
    Signals ``task_status.started()`` once listening. Removes ``public_path`` on exit.
    """
    warnings = LogThrottle(burst=10, refill=1.0)
    admission = Admission(fit_to_fd_limit(max_connections), max_connections_per_uid)
    sock = await _bind_public(public_path, mode, gid)
    bound_inode = os.stat(public_path).st_ino
    listener = trio.SocketListener(sock)
    releaser = MemoryReleaser()

    async def serve_one(client: socket.socket, uid: int) -> None:
        try:
            if other_protocol is not None and not await speaks_http2(client, limits.stall_timeout):
                await other_protocol(trio.SocketStream(trio.socket.from_stdlib_socket(client)))
                return
            await _proxy_connection(client, upstream_path, table, warnings, limits)
        finally:
            admission.release(uid)
            releaser.released()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(releaser.run)
            task_status.started()
            while True:
                stream = await accept_retrying(listener, "peercred_front.accept_backoff")
                client = socket.socket(fileno=stream.socket.detach())
                try:
                    _pid, uid, _gid = peer_ids(client)  # getsockopt: cheap, never blocks
                except OSError:
                    client.close()
                    continue
                decision = admission.admit(uid)
                if decision.verdict is Verdict.ADMITTED:
                    nursery.start_soon(serve_one, client, uid)
                    continue
                client.close()
                if decision.verdict is Verdict.FULL and decision.warn:
                    log.warning("peercred_front.connections_refused", limit=admission.limit)
                elif decision.warn:
                    log.warning(
                        "peercred_front.uid_connections_refused",
                        uid=uid,
                        limit=admission.per_uid_limit,
                    )
    finally:
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            if os.stat(public_path).st_ino == bound_inode:
                os.unlink(public_path)
