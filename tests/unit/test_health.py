import socket

import trio
from prometheus_client import CollectorRegistry, Counter

from insignia.health import serve_health


async def get(address: str, path: str) -> tuple[int, bytes]:
    host, port = address.rsplit(":", 1)

    def fetch() -> bytes:
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks)

    raw = await trio.to_thread.run_sync(fetch)
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def test_live_ready_metrics() -> None:
    registry = CollectorRegistry()
    Counter("insignia_test_things", "things", registry=registry).inc(3)
    reason: list[str | None] = ["datastore unreachable"]
    async with trio.open_nursery() as nursery:
        address = await nursery.start(serve_health, "127.0.0.1:0", registry, lambda: reason[0])
        assert not address.endswith(":0")
        assert await get(address, "/live") == (200, b"live\n")
        assert await get(address, "/ready") == (503, b"not ready: datastore unreachable\n")
        reason[0] = None
        assert await get(address, "/ready") == (200, b"ready\n")
        status, body = await get(address, "/metrics")
        assert status == 200
        assert b"insignia_test_things_total 3.0" in body
        assert (await get(address, "/nope"))[0] == 404
        nursery.cancel_scope.cancel()
