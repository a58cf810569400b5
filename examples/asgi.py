"""The little ASGI plumbing the example services share, served by hypercorn on trio.

The example services are tiny ASGI apps without a framework; this module holds what each would
otherwise repeat: the lifespan handshake (`HttpApp`), a complete response, and starting
hypercorn so the caller learns the bound address (port 0 picks one). The daemons' own health
endpoint does not use it (see `insignia.daemon.http.endpoint`): hypercorn costs them memory.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


async def _lifespan(receive: Receive, send: Send) -> None:
    """Answer hypercorn's startup and shutdown messages; these apps hold no resources."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


class HttpApp(ABC):
    """An ASGI app that answers HTTP requests; the lifespan handshake is done for it, and
    other protocols (websocket) get no answer."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
        elif scope["type"] == "http":
            await self.handle(scope, send)

    @abstractmethod
    async def handle(self, scope: Scope, send: Send) -> None:
        """Answer one HTTP request (see `respond`)."""


async def respond(
    send: Send,
    status: int,
    body: bytes,
    content_type: str = "text/plain; charset=utf-8",
    headers: Sequence[tuple[bytes, bytes]] = (),
) -> None:
    """Send one whole response: status line, content type and length, then the body."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type.encode()),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def serve_asgi(
    app: App, bind: str, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve `app` on `bind` ("host:port", port 0 picks one) until cancelled.

    Use with `await nursery.start(serve_asgi, app, bind)`: it reports the bound "host:port"
    (the real port when 0 was asked) once the socket is listening.
    """
    config = Config()
    config.bind = [bind]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 1.0
    asgi: Any = app  # hypercorn types ASGI messages as TypedDicts; our apps use dicts

    async def run(*, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
        await serve(asgi, config, task_status=task_status, mode="asgi")

    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(run)
        task_status.started(binds[0].removeprefix("http://"))
