"""A small, bounded HTTP/1.1 server on trio streams, for the daemons' own plain-text endpoints.

Why not hypercorn: the daemons serve three tiny GET routes (/live, /ready, /metrics), and
importing hypercorn for them pulls in h2, hpack, hyperframe, priority, wsproto,
multiprocessing and logging.config: about 3 MB of the agent's RSS (measured with
`import insignia.agent.daemon` and VmRSS), against an 80 MB budget. h11, hypercorn's own HTTP/1.1
parser, does all the parsing and framing here (request line, headers, chunked bodies,
keep-alive, HEAD responses); this module only moves bytes between it and a socket, routes on
(method, path) and keeps every connection bounded:

- one task per connection, with keep-alive (several requests per connection);
- each request must arrive, and its response leave, within `Limits.idle_timeout`, so a
  silent or slow client cannot hold a connection forever;
- at most `Limits.max_connections` at once; further connections are closed at accept;
- request bodies are read up to `Limits.max_body_bytes` (the plain handlers never see them;
  an `App` gets them whole); a larger one gets 413 and the connection is closed;
- a malformed request gets 400 (h11's status hint, e.g. 431 for oversized headers) and close;
- a handler that raises gets 500, is logged, and the server keeps serving;
- a `Streamed` response (server-sent events) leaves the per-request deadline behind: each of
  its chunks must be taken by the client within `Limits.idle_timeout`, the app decides when
  it ends, and the connection closes after it.

`examples.asgi` (hypercorn) stays for the example services' ASGI apps.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import h11
import trio

from insignia.daemon.accepting import accept_retrying
from insignia.daemon.config.addresses import parse_host_port
from insignia.daemon.instance import claim_socket_path
from insignia.daemon.logs import get_logger

log = get_logger(__name__)

_BACKLOG = 100  # hypercorn's default
_RECEIVE_BYTES = 16384


@dataclass(frozen=True)
class Response:
    """A whole response; the server adds content-length (and sends no body for HEAD)."""

    status: int
    body: bytes
    headers: Sequence[tuple[str, str]] = ()


@dataclass(frozen=True)
class Streamed:
    """A response whose body is sent chunk by chunk as `chunks` yields them (server-sent
    events); the connection closes when the iterator ends."""

    status: int
    chunks: Callable[[], AsyncIterator[bytes]]
    headers: Sequence[tuple[str, str]] = ()


@dataclass(frozen=True)
class Request:
    """One whole request: header names are lower case, the body is at most
    `Limits.max_body_bytes`."""

    method: str
    target: str
    headers: Sequence[tuple[str, str]]
    body: bytes = b""

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]

    @property
    def query(self) -> str:
        return self.target.partition("?")[2]

    def header(self, name: str) -> str | None:
        """The first value of header `name` (lower case), None when absent."""
        return next((v for k, v in self.headers if k == name), None)


TlsContext = Callable[[], ssl.SSLContext]
"""The server-side TLS context for the next connection (so a renewed certificate applies at
once); the handshake runs within the first request's `Limits.idle_timeout`."""

Handler = Callable[[str, str], Response]
"""(method, path without the query string) -> the response. Runs in the trio thread: keep it
quick. An exception becomes a logged 500."""

HostCheck = Callable[[str | None], Response | None]
"""The request's Host header as sent (None when absent) -> a refusal, or None to let the
handler answer: for a listener that answers only some names. Runs as the handler does."""

App = Callable[[Request], Awaitable[Response | Streamed]]
"""The whole request -> its response; runs as a trio task within the request's deadline.
An exception becomes a logged 500."""


@dataclass(frozen=True)
class Limits:
    """Bounds on what one client, or many, can make the server hold."""

    idle_timeout: float = 10.0
    """Seconds for each request to arrive whole (from when the server waits for it) and for
    its response to be sent; the connection is closed when they run out."""
    max_connections: int = 64
    """Connections served at once; further ones are closed as soon as they are accepted."""
    max_body_bytes: int = 64 * 1024
    """Request body bytes read and dropped; beyond this the answer is 413 and close."""


DEFAULT_LIMITS = Limits()


class _Close(Exception):
    """This connection is finished (peer gone, protocol error answered, deadline)."""


async def serve_http(
    bind: str,
    handler: Handler,
    *,
    limits: Limits = DEFAULT_LIMITS,
    tls: TlsContext | None = None,
    host_check: HostCheck | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the plain `handler` (method and path only) on `bind`, each request passing
    `host_check` first when one is given: see `serve_app`."""
    app = _plain_app(handler, host_check)
    await serve_app(bind, app, limits=limits, tls=tls, task_status=task_status)


def _plain_app(handler: Handler, host_check: HostCheck | None) -> App:
    async def app(request: Request) -> Response:
        refusal = None if host_check is None else host_check(request.header("host"))
        return handler(request.method, request.path) if refusal is None else refusal

    return app


async def serve_connection(
    stream: trio.abc.Stream, handler: Handler, limits: Limits = DEFAULT_LIMITS
) -> None:
    """Answer requests on one connection of someone else's listener until it closes (the
    agent's admin socket: its gRPC front hands over the connections that are not HTTP/2)."""
    await _serve_connection(stream, _plain_app(handler, None), limits)


async def serve_app(
    bind: str,
    app: App,
    *,
    limits: Limits = DEFAULT_LIMITS,
    tls: TlsContext | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` on `bind` until cancelled (HTTPS when `tls` is given).

    `bind` is "host:port" (an IP address, "[v6]:port" or "localhost"; port 0 picks a free
    one) or "unix:/path" (a stale socket at that path is replaced, a live one refused with
    InstanceConflict; the socket gets the default mode and is removed on exit). Use with
    `await nursery.start(serve_http, bind, handler)`: it reports the bound address once
    listening, "host:port" with the real port ("[v6]:port" for IPv6) or
    "unix:/path".
    """
    sock, address = await _listen(bind)
    path = Path(address.removeprefix("unix:")) if address.startswith("unix:") else None
    bound_inode = os.stat(path).st_ino if path else None
    try:
        await _accept_forever(sock, address, app, limits, tls, task_status)
    finally:
        if path is not None:  # ours only: another process may have replaced it since
            with contextlib.suppress(FileNotFoundError):
                if os.stat(path).st_ino == bound_inode:
                    os.unlink(path)


async def _accept_forever(
    sock: trio.socket.SocketType,
    address: str,
    app: App,
    limits: Limits,
    tls: TlsContext | None,
    task_status: trio.TaskStatus[str],
) -> None:
    listener = trio.SocketListener(sock)
    active = 0
    saturated = False

    async def serve_one(stream: trio.SocketStream) -> None:
        nonlocal active
        try:
            if tls is None:
                await _serve_connection(stream, app, limits)
            else:
                context = tls()
                await _serve_connection(
                    trio.SSLStream(stream, context, server_side=True, https_compatible=True),
                    app,
                    limits,
                )
        finally:
            active -= 1

    async with listener, trio.open_nursery() as nursery:
        task_status.started(address)
        while True:
            stream = await accept_retrying(listener, "http.accept_backoff", bind=address)
            if active >= limits.max_connections:
                await trio.aclose_forcefully(stream)
                if not saturated:  # once per episode, not once per refused connection
                    log.warning(
                        "http.connections_refused", bind=address, limit=limits.max_connections
                    )
                saturated = True
                continue
            saturated = False
            active += 1
            nursery.start_soon(serve_one, stream)


async def _listen(bind: str) -> tuple[trio.socket.SocketType, str]:
    """A listening trio socket for `bind`, and the address to report for it."""
    target: str | tuple[str, int]
    if bind.startswith("unix:"):
        family, target = socket.AF_UNIX, bind.removeprefix("unix:")
        claim_socket_path(Path(target))  # a stale one would make bind fail; a live one stays
    else:
        try:
            family, host, port = parse_host_port(bind)
        except ValueError as exc:
            raise ValueError(f"bad bind address {bind!r}: {exc}, or unix:/path") from None
        target = (host, port)
    sock = trio.socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        await sock.bind(target)
        sock.listen(_BACKLOG)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {bind}: {exc.strerror}") from exc
    except BaseException:
        sock.close()
        raise
    name = sock.getsockname()
    if family == socket.AF_UNIX:
        return sock, f"unix:{name}"
    if family == socket.AF_INET6:
        return sock, f"[{name[0]}]:{name[1]}"
    return sock, f"{name[0]}:{name[1]}"


async def _serve_connection(stream: trio.abc.Stream, app: App, limits: Limits) -> None:
    """Answer requests on one connection until it closes, errs or runs out of time; closes it."""
    conn = h11.Connection(h11.SERVER)
    try:
        while True:
            streamed: Streamed | None = None
            with trio.move_on_after(limits.idle_timeout) as deadline:
                streamed = await _exchange(stream, conn, app, limits)
            if deadline.cancelled_caught:
                return
            if streamed is not None:
                await _send_stream(stream, conn, streamed, limits)
                return
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return  # h11 says this connection must close
            conn.start_next_cycle()
    except _Close:
        pass
    finally:
        await trio.aclose_forcefully(stream)


async def _exchange(
    stream: trio.abc.Stream, conn: h11.Connection, app: App, limits: Limits
) -> Streamed | None:
    """Read one request and send its response (or return the stream to send)."""
    head: h11.Request | None = None
    try:
        event = await _next_event(stream, conn)
        if not isinstance(event, h11.Request):  # ConnectionClosed: the client is done
            raise _Close
        head = event
        body = await _read_body(stream, conn, head, limits.max_body_bytes)
        if body is None:
            await _send(stream, conn, head, Response(413, b"request body too large\n"), True)
            raise _Close
    except h11.RemoteProtocolError as exc:
        if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            answer = Response(exc.error_status_hint, f"bad request: {exc}\n".encode())
            await _send(stream, conn, head, answer, True)
        raise _Close from None
    response = await _respond(app, head, body)
    if isinstance(response, Streamed):
        return response
    await _send(stream, conn, head, response, False)
    return None


async def _respond(app: App, head: h11.Request, body: bytes) -> Response | Streamed:
    """The app's response, or a logged 500 when it raises or answers something unsendable."""
    request = Request(
        head.method.decode("ascii"),
        head.target.decode("ascii"),
        [(k.decode("latin-1"), v.decode("latin-1")) for k, v in head.headers],
        body,
    )
    try:
        response = await app(request)
        if isinstance(response, Response):
            _head(response, close=False)  # a bad status or header fails here, not mid-send
    except Exception:
        log.exception("http.handler_failed", method=request.method, path=request.path)
        return Response(500, b"internal server error\n")
    return response


async def _next_event(stream: trio.abc.Stream, conn: h11.Connection) -> object:
    """h11's next event, receiving more bytes as it needs them (b"" at end of stream)."""
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        try:
            data = await stream.receive_some(_RECEIVE_BYTES)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise _Close from None
        conn.receive_data(bytes(data))


async def _read_body(
    stream: trio.abc.Stream, conn: h11.Connection, request: h11.Request, limit: int
) -> bytes | None:
    """The request's body, or None (left unread) when it exceeds `limit`."""
    for name, value in request.headers:
        if name == b"content-length" and int(value) > limit:  # h11 checked it is digits
            return None
    received = bytearray()
    while True:
        event = await _next_event(stream, conn)
        if isinstance(event, h11.EndOfMessage):
            return bytes(received)
        if not isinstance(event, h11.Data):  # h11 raises on an early close; kept for safety
            raise _Close
        received += event.data
        if len(received) > limit:
            return None


def _head(response: Response, *, close: bool) -> h11.Response:
    """The status line and headers: the handler's, content-length, and close if asked."""
    headers = [*response.headers, ("content-length", str(len(response.body)))]
    if close:
        headers.append(("connection", "close"))
    return h11.Response(status_code=response.status, headers=headers)


async def _send(
    stream: trio.abc.Stream,
    conn: h11.Connection,
    request: h11.Request | None,
    response: Response,
    close: bool,
) -> None:
    """Send `response` whole, without its body when answering HEAD."""
    data = conn.send(_head(response, close=close)) or b""
    if response.body and (request is None or request.method != b"HEAD"):
        data += conn.send(h11.Data(data=response.body)) or b""
    data += conn.send(h11.EndOfMessage()) or b""
    try:
        await stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        raise _Close from None


async def _send_stream(
    stream: trio.abc.Stream, conn: h11.Connection, streamed: Streamed, limits: Limits
) -> None:
    """Send the head, then each chunk as it comes (h11 frames them chunked); a client that
    takes longer than `limits.idle_timeout` over one chunk is dropped."""
    head = h11.Response(
        status_code=streamed.status, headers=[*streamed.headers, ("connection", "close")]
    )
    chunks = streamed.chunks()
    try:
        with trio.fail_after(limits.idle_timeout):
            await stream.send_all(conn.send(head) or b"")
        async for chunk in chunks:
            with trio.fail_after(limits.idle_timeout):
                await stream.send_all(conn.send(h11.Data(data=chunk)) or b"")
        with trio.fail_after(limits.idle_timeout):
            await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
    except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
        raise _Close from None
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            with trio.CancelScope(shield=True):
                await aclose()
