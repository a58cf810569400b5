"""`serve_app`: whole requests (headers, bounded bodies) to an async app, and streamed
responses (server-sent events) bounded per chunk, over real sockets."""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial

import trio

from insignia.daemon.http.endpoint import Limits, Request, Response, Streamed, serve_app
from tests.unit.test_health import Clients, clients  # the fixture

__all__ = ["clients"]
STREAM_ENDED = trio.Event()  # reset by the test that uses it


async def echo(request: Request) -> Response | Streamed:
    if request.path == "/stream":

        async def chunks() -> AsyncIterator[bytes]:
            for i in range(3):
                yield f"data: {i}\n\n".encode()

        return Streamed(200, chunks, [("content-type", "text/event-stream")])
    if request.path == "/forever":

        async def endless() -> AsyncIterator[bytes]:
            try:
                while True:
                    yield b"x" * 65536
            finally:
                STREAM_ENDED.set()

        return Streamed(200, endless)
    text = f"{request.method} {request.path} {request.query} {request.header('x-a')} "
    return Response(200, text.encode() + request.body)


async def test_the_app_gets_the_whole_request(clients: Clients) -> None:
    async with trio.open_nursery() as nursery:
        address = await nursery.start(serve_app, "127.0.0.1:0", echo)
        client = await clients.connect(address)
        extra = "X-A: one\r\nContent-Length: 5\r\n\r\nhello"
        await client.stream.send_all(f"POST /p?q=1 HTTP/1.1\r\nHost: x\r\n{extra}".encode())
        assert (await client.response())[2] == b"POST /p q=1 one hello"
        assert (await client.request("GET", "/again"))[2] == b"GET /again  None "  # keep-alive
        nursery.cancel_scope.cancel()


async def test_a_stream_is_sent_chunked_and_then_closed(clients: Clients) -> None:
    async with trio.open_nursery() as nursery:
        address = await nursery.start(serve_app, "127.0.0.1:0", echo)
        client = await clients.connect(address)
        await client.stream.send_all(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        received = b""
        with trio.fail_after(10):
            while chunk := await client.stream.receive_some(65536):
                received += chunk
        head, _, body = received.partition(b"\r\n\r\n")
        assert b"transfer-encoding: chunked" in head.lower()
        assert b"connection: close" in head.lower()
        assert body == b"9\r\ndata: 0\n\n\r\n9\r\ndata: 1\n\n\r\n9\r\ndata: 2\n\n\r\n0\r\n\r\n"
        nursery.cancel_scope.cancel()


async def test_a_client_that_stops_reading_a_stream_is_dropped(clients: Clients) -> None:
    global STREAM_ENDED
    STREAM_ENDED = trio.Event()
    deadline = 0.5
    async with trio.open_nursery() as nursery:
        address = await nursery.start(
            partial(serve_app, limits=Limits(idle_timeout=deadline)), "127.0.0.1:0", echo
        )
        client = await clients.connect(address)
        await client.stream.send_all(b"GET /forever HTTP/1.1\r\nHost: x\r\n\r\n")
        await client.stream.receive_some(1)  # started; now read nothing more
        with trio.fail_after(10):  # the server gives up on the chunk after `deadline`
            await STREAM_ENDED.wait()
        nursery.cancel_scope.cancel()
