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
import os
import resource
import secrets
import socket
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

import trio

from insignia.daemon.accepting import accept_retrying
from insignia.daemon.instance import claim_socket_path
from insignia.daemon.log_throttle import LogThrottle
from insignia.daemon.logs import get_logger
from insignia.daemon.peercred.admission import Admission, Verdict
from insignia.daemon.peercred.credentials import (
    NAME_PREFIX,
    CallerTable,
    PeerCredentials,
    ProcessGone,
    peer_ids,
    read_peer_credentials,
)
from insignia.daemon.peercred.unix_diag import ForeignNamespace
from insignia.daemon.runtime import call_asyncio

DEFAULT_MAX_CONNECTIONS = 10_000
# One uid may hold at most this many connections, so a hostile or leaky workload cannot take
# every slot from the others: at least ten uids are needed to fill the global limit, while a
# uid that runs many processes (all containers as root, a pre-fork server with a stream per
# worker) still has room for hundreds.
DEFAULT_MAX_CONNECTIONS_PER_UID = 1024
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
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


class _Half(asyncio.Protocol):
    """One side of a proxied connection: forwards what it reads to its peer's transport."""

    def __init__(self, done: asyncio.Future[None], upstream: bool) -> None:
        self._done = done
        self._upstream = upstream
        self.head = b""  # the first bytes read, up to the length of the HTTP/2 preface
        self.peer: _Half
        self.transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # a stream socket's transport
        self.transport.pause_reading()  # until the other side exists; see _Splice.run

    def data_received(self, data: bytes) -> None:
        if len(self.head) < len(HTTP2_PREFACE):
            self.head += data[: len(HTTP2_PREFACE) - len(self.head)]
        self.peer.transport.write(data)

    def eof_received(self) -> bool:
        if self._upstream:
            # grpc never half-closes: it is done with this connection (for example a client
            # that never sent a preface hit the handshake timeout). Waiting for the client
            # to close as well would let a silent client hold its slot forever.
            self._finish()
            return False
        self.peer.transport.write_eof()  # the client half-closed; let grpc answer, then close
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish()

    def pause_writing(self) -> None:
        self.peer.transport.pause_reading()  # our buffer is full: stop reading what feeds it

    def resume_writing(self) -> None:
        self.peer.transport.resume_reading()

    def _finish(self) -> None:
        if not self._done.done():
            self._done.set_result(None)


class _Splice:
    """Proxies bytes between two connected sockets on asyncio's loop until either side ends.

    asyncio transports, not trio streams: in guest mode every trio I/O wait crosses to trio's
    I/O thread and back, and the bytes pump is the hot path (benchmarks/peercred_front.py:
    this cut the front's cost from ~475 to ~70 us of server CPU per unary call). Both loops
    share one thread either way. Once ``run`` has started it owns and closes both sockets;
    until then ``close_unstarted`` does (a task cancelled before its first step never runs).
    """

    def __init__(
        self, client: socket.socket, upstream: socket.socket, before_close: Callable[[], None]
    ) -> None:
        self._sockets: tuple[socket.socket, ...] = (client, upstream)
        self._before_close = before_close
        self.client_head = b""

    def preface_problem(self) -> str | None:
        """Why the client's first bytes were not an HTTP/2 preface; None if they were.

        Meaningful once ``run`` returned. grpc drops such a connection without a word, so
        this is the only trace an operator gets of a misconfigured or hostile client.
        """
        head = self.client_head
        if head == HTTP2_PREFACE:
            return None
        if HTTP2_PREFACE.startswith(head):
            return f"closed after {len(head)} of the {len(HTTP2_PREFACE)} HTTP/2 preface bytes"
        return f"not an HTTP/2 preface: first bytes {head[:16]!r}"

    async def run(self) -> None:
        client, upstream = self._sockets
        self._sockets = ()
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        down, up = _Half(done, upstream=False), _Half(done, upstream=True)
        down.peer, up.peer = up, down
        try:
            await loop.connect_accepted_socket(lambda: down, sock=client)
            await loop.connect_accepted_socket(lambda: up, sock=upstream)
            down.transport.resume_reading()
            up.transport.resume_reading()
            await done
        finally:
            self.client_head = down.head
            self._before_close()
            for half, sock in ((down, client), (up, upstream)):
                if hasattr(half, "transport"):
                    half.transport.close()  # flushes what is buffered, then closes the socket
                else:
                    sock.close()

    def close_unstarted(self) -> None:
        for sock in self._sockets:
            sock.close()


async def _proxy_connection(
    client: socket.socket, upstream_path: Path, table: CallerTable, warnings: LogThrottle
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
        )
        peer = table.register(name, creds)
        await call_asyncio(splice.run)
        problem = splice.preface_problem()
        held_back = None if problem is None else warnings.admit(creds.uid, time.monotonic())
        if held_back is not None:
            log.warning(
                "peercred_front.bad_preface",
                pid=creds.pid,
                uid=creds.uid,
                cause=problem,
                held_back=held_back,
            )
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


async def serve_peercred_front(
    public_path: Path,
    upstream_path: Path,
    table: CallerTable,
    *,
    mode: int = 0o777,
    gid: int | None = None,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    max_connections_per_uid: int = DEFAULT_MAX_CONNECTIONS_PER_UID,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept on ``public_path`` and proxy each caller to ``unix:upstream_path`` until cancelled.

    ``mode`` (and optional group ``gid``) are set before the socket appears. The caller
    creates the parent directory. Connections beyond ``max_connections`` (lowered to fit
    RLIMIT_NOFILE), or beyond ``max_connections_per_uid`` for the connecting uid (counted from
    SO_PEERCRED at accept), are closed at once; resource exhaustion on accept backs off
    100 ms. A client that is not speaking HTTP/2 is logged, at most ten lines per uid at once
    and one a second after that. Signals ``task_status.started()`` once listening. Removes
    ``public_path`` on exit.
    """
    preface_warnings = LogThrottle(burst=10, refill=1.0)
    admission = Admission(fit_to_fd_limit(max_connections), max_connections_per_uid)
    sock = await _bind_public(public_path, mode, gid)
    bound_inode = os.stat(public_path).st_ino
    listener = trio.SocketListener(sock)

    async def serve_one(client: socket.socket, uid: int) -> None:
        try:
            await _proxy_connection(client, upstream_path, table, preface_warnings)
        finally:
            admission.release(uid)

    try:
        async with trio.open_nursery() as nursery:
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
