"""An HTTP server on a Unix socket that answers like the Docker Engine API, for error cases a
real daemon will not produce on demand (slow, broken, lying)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import h11
import trio

Handler = Callable[[str], Awaitable[tuple[int, bytes]]]


def inspect_document(container_id: str, **overrides: Any) -> dict[str, Any]:
    """A ContainerInspectResponse as the Engine API documents it (trimmed)."""
    doc: dict[str, Any] = {
        "Id": container_id,
        "Created": "2025-01-01T00:00:00.000000000Z",
        "Path": "/app/server",
        "Args": ["--port", "8443"],
        "State": {"Status": "running", "Running": True, "Pid": 4242, "ExitCode": 0},
        "Image": "sha256:" + "5" * 64,
        "Name": "/payments",
        "RestartCount": 0,
        "Driver": "overlay2",
        "Platform": "linux",
        "HostConfig": {"NetworkMode": "bridge"},
        "Config": {
            "Hostname": container_id[:12],
            "Env": ["PATH=/usr/bin:/bin", "APP_ENV=prod", "DB_PASSWORD=hunter2"],
            "Cmd": ["--port", "8443"],
            "Image": "registry.example/payments:1.4",
            "Labels": {"team": "payments", "tier": "backend"},
        },
        "NetworkSettings": {"Networks": {}},
    }
    doc.update(overrides)
    return doc


def json_body(doc: object) -> tuple[int, bytes]:
    return 200, json.dumps(doc).encode()


async def _serve_one(stream: trio.SocketStream, handler: Handler) -> None:
    async with stream:
        conn = h11.Connection(h11.SERVER)
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Request):
                target = event.target.decode()
            elif isinstance(event, h11.EndOfMessage):
                break
        status, body = await handler(target)
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        await stream.send_all(conn.send(h11.Response(status_code=status, headers=headers)))
        await stream.send_all(conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))


@asynccontextmanager
async def engine_api(socket_path: Path, handler: Handler) -> AsyncIterator[list[str]]:
    """Serve `handler` on `socket_path`; yields the list of request targets seen."""
    seen: list[str] = []

    async def recording(target: str) -> tuple[int, bytes]:
        seen.append(target)
        return await handler(target)

    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    await sock.bind(str(socket_path))
    sock.listen(16)
    listener = trio.SocketListener(sock)
    async with trio.open_nursery() as nursery:

        async def serve(stream: trio.SocketStream) -> None:
            await _serve_one(stream, recording)

        await nursery.start(trio.serve_listeners, serve, [listener])
        yield seen
        nursery.cancel_scope.cancel()
