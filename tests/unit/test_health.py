import os
import socket
import stat
from collections.abc import AsyncIterator, Iterable
from functools import partial
from pathlib import Path

import pytest
import trio
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from structlog.testing import capture_logs

from insignia.daemon.http.endpoint import Limits, serve_http
from insignia.daemon.http.health import HealthApp, ReadyNote, serve_health


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


# The tests below speak HTTP to the real server over real sockets: raw bytes through a small
# reader of our own (so malformed input and connection state are visible), and curl as an
# independent client.


class RawClient:
    """One connection: send raw bytes, read whole responses (content-length framing)."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buffer = b""

    async def _fill(self) -> bool:
        chunk = await self.stream.receive_some(65536)
        self.buffer += chunk
        return bool(chunk)

    async def request(
        self, method: str, target: str, extra: str = ""
    ) -> tuple[int, dict[str, str], bytes]:
        await self.stream.send_all(f"{method} {target} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode())
        return await self.response(head=method == "HEAD")

    async def response(self, *, head: bool = False) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buffer:
            assert await self._fill(), f"connection closed mid-response: {self.buffer!r}"
        raw_head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        status_line, *lines = raw_head.decode().split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = 0 if head else int(headers["content-length"])
        while len(self.buffer) < length:
            assert await self._fill(), "connection closed mid-body"
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return int(status_line.split()[1]), headers, body

    async def closed_by_server(self) -> bool:
        """True when the server has closed cleanly: end of stream (recv gives b""), nothing
        unread before it."""
        return not await self._fill() and self.buffer == b""


class Clients:
    """Opens raw client connections and closes them all when the test ends."""

    def __init__(self) -> None:
        self.opened: list[RawClient] = []

    async def connect(self, address: str) -> RawClient:
        stream: trio.abc.Stream
        if address.startswith("unix:"):
            stream = await trio.open_unix_socket(address.removeprefix("unix:"))
        else:
            host, port = address.rsplit(":", 1)
            stream = await trio.open_tcp_stream(host.strip("[]"), int(port))
        self.opened.append(RawClient(stream))
        return self.opened[-1]


@pytest.fixture
async def clients() -> AsyncIterator[Clients]:
    opened = Clients()
    yield opened
    for client in opened.opened:
        await trio.aclose_forcefully(client.stream)


def things_registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    Counter("insignia_test_things", "things", registry=registry).inc(3)
    return registry


async def curl(*args: str) -> str:
    done = await trio.run_process(
        ["curl", "-sS", "-i", "--max-time", "10", *args], capture_stdout=True, capture_stderr=True
    )
    return done.stdout.decode()


async def test_keep_alive_serves_several_requests_on_one_connection(clients: Clients) -> None:
    async with trio.open_nursery() as nursery:
        address = await nursery.start(serve_health, "127.0.0.1:0", things_registry(), lambda: None)
        client = await clients.connect(address)
        status, headers, body = await client.request("GET", "/live")
        assert (status, body) == (200, b"live\n")
        assert headers["content-type"] == "text/plain; charset=utf-8"
        assert headers["cache-control"] == "no-store"
        assert headers["content-length"] == "5"
        assert "connection" not in headers  # stays open
        assert (await client.request("GET", "/ready"))[::2] == (200, b"ready\n")
        # The query string is not part of the route.
        status, headers, body = await client.request("GET", "/metrics?name[]=x&y=1")
        assert status == 200 and b"insignia_test_things_total 3.0" in body
        assert headers["content-type"].startswith("text/plain; version=")
        assert (await client.request("GET", "/live?probe=1"))[::2] == (200, b"live\n")
        # Connection: close is honoured after the response.
        status, headers, body = await client.request("GET", "/live", "Connection: close\r\n")
        assert (status, body) == (200, b"live\n")
        assert headers["connection"] == "close"
        assert await client.closed_by_server()
        nursery.cancel_scope.cancel()


async def test_head_sends_headers_only_and_other_methods_get_405(clients: Clients) -> None:
    async with trio.open_nursery() as nursery:
        address = await nursery.start(serve_health, "127.0.0.1:0", things_registry(), lambda: None)
        client = await clients.connect(address)
        status, headers, body = await client.request("HEAD", "/ready")
        assert (status, body) == (200, b"")
        assert headers["content-length"] == "6"  # as GET would send
        assert headers["cache-control"] == "no-store"
        # Nothing of a body was sent: the next response on the connection parses cleanly.
        status, headers, body = await client.request("POST", "/live", "Content-Length: 0\r\n")
        assert (status, body) == (405, b"method not allowed\n")
        assert headers["allow"] == "GET, HEAD"
        assert (await client.request("DELETE", "/metrics"))[0] == 405
        status, headers, body = await client.request("GET", "/nope")
        assert (status, body) == (404, b"not found\n")
        assert headers["cache-control"] == "no-store"
        assert client.buffer == b""
        nursery.cancel_scope.cancel()


def test_respond_decides_without_a_server() -> None:
    app = HealthApp(things_registry(), lambda: "CA not loaded")
    assert app.respond("GET", "/live") == (200, "text/plain; charset=utf-8", b"live\n")
    assert app.respond("HEAD", "/ready")[::2] == (503, b"not ready: CA not loaded\n")
    assert app.respond("PUT", "/live")[0] == 405
    assert app.respond("GET", "/")[0] == 404
    noted = HealthApp(things_registry(), lambda: ReadyNote("serving from the disk cache"))
    assert noted.respond("GET", "/ready")[::2] == (200, b"ready: serving from the disk cache\n")


async def test_unix_socket_bind_replaces_a_stale_socket(tmp_path: Path, clients: Clients) -> None:
    path = tmp_path / "admin.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))  # left behind as a previous run's socket would be
    stale.close()
    umask = os.umask(0o022)
    os.umask(umask)
    async with trio.open_nursery() as nursery:
        address = await nursery.start(serve_health, f"unix:{path}", things_registry(), lambda: None)
        assert address == f"unix:{path}"
        assert stat.S_IMODE(path.stat().st_mode) == 0o777 & ~umask
        client = await clients.connect(address)
        assert (await client.request("GET", "/live"))[::2] == (200, b"live\n")
        assert (await client.request("GET", "/ready"))[::2] == (200, b"ready\n")
        output = await curl("--unix-socket", str(path), "http://localhost/ready")
        assert output.startswith("HTTP/1.1 200 ")
        assert output.endswith("\r\n\r\nready\n")
        nursery.cancel_scope.cancel()


async def test_curl_over_tcp() -> None:
    async with trio.open_nursery() as nursery:
        address = await nursery.start(serve_health, "localhost:0", things_registry(), lambda: None)
        assert address.startswith("127.0.0.1:") and not address.endswith(":0")
        output = await curl(f"http://{address}/live")
        head, _, body = output.partition("\r\n\r\n")
        assert head.splitlines()[0] == "HTTP/1.1 200 "
        assert "cache-control: no-store" in head.lower().splitlines()
        assert "content-length: 5" in head.lower().splitlines()
        assert body == "live\n"
        # Two URLs in one curl run reuse the connection (curl reports it on stderr with -v).
        urls = [f"http://{address}/live", f"http://{address}/metrics?x=1"]
        done = await trio.run_process(
            ["curl", "-sS", "-v", "-o", "/dev/null", "-o", "/dev/null", *urls],
            capture_stdout=True,
            capture_stderr=True,
        )
        assert "Re-using existing connection" in done.stderr.decode()
        head_only = await curl("-I", f"http://{address}/metrics")
        assert head_only.startswith("HTTP/1.1 200 ")
        nursery.cancel_scope.cancel()


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here")
async def test_ipv6_bind(clients: Clients) -> None:
    async with trio.open_nursery() as nursery:
        address = await nursery.start(serve_health, "[::1]:0", things_registry(), lambda: None)
        assert address.startswith("[::1]:") and not address.endswith(":0")
        client = await clients.connect(address)
        assert (await client.request("GET", "/live"))[::2] == (200, b"live\n")
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("bind", ["example.org:80", "127.0.0.1", "127.0.0.1:http", "[::1]:99999"])
async def test_refuses_bad_binds(bind: str) -> None:
    with pytest.raises(ValueError, match="bad bind address"):
        await serve_health(bind, things_registry(), lambda: None)


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /live HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host
        b"GET /live HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n",
        b"GET /live HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
    ],
)
async def test_malformed_request_gets_400_and_close(request_bytes: bytes, clients: Clients) -> None:
    async with trio.open_nursery() as nursery:
        address = await nursery.start(serve_health, "127.0.0.1:0", things_registry(), lambda: None)
        client = await clients.connect(address)
        await client.stream.send_all(request_bytes)
        status, headers, body = await client.response()
        assert status == 400 and body.startswith(b"bad request: ")
        assert headers["connection"] == "close"
        assert await client.closed_by_server()
        # The server is still there for the next client.
        assert (await (await clients.connect(address)).request("GET", "/live"))[0] == 200
        nursery.cancel_scope.cancel()


async def test_large_request_body_gets_413_and_close_small_one_is_ignored(clients: Clients) -> None:
    async with trio.open_nursery() as nursery:
        address = await nursery.start(serve_health, "127.0.0.1:0", things_registry(), lambda: None)
        client = await clients.connect(address)
        await client.stream.send_all(
            b"GET /live HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
            b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n"  # pipelined after a small body
        )
        assert (await client.response())[::2] == (200, b"live\n")
        assert (await client.response())[::2] == (200, b"ready\n")
        status, headers, _ = await client.request("GET", "/live", "Content-Length: 70000\r\n")
        assert status == 413 and headers["connection"] == "close"
        assert await client.closed_by_server()
        nursery.cancel_scope.cancel()


async def test_large_chunked_body_gets_413(clients: Clients) -> None:
    app = HealthApp(things_registry(), lambda: None)
    async with trio.open_nursery() as nursery:
        address = await nursery.start(
            partial(serve_http, limits=Limits(max_body_bytes=10)), "127.0.0.1:0", app.handle
        )
        client = await clients.connect(address)
        await client.stream.send_all(
            b"GET /live HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"8\r\n12345678\r\n8\r\n12345678\r\n"
        )
        assert (await client.response())[0] == 413
        assert await client.closed_by_server()
        nursery.cancel_scope.cancel()


async def test_silent_and_slow_clients_are_dropped_after_the_deadline(clients: Clients) -> None:
    app = HealthApp(things_registry(), lambda: None)
    deadline = 0.3
    async with trio.open_nursery() as nursery:
        address = await nursery.start(
            partial(serve_http, limits=Limits(idle_timeout=deadline)), "127.0.0.1:0", app.handle
        )
        silent = await clients.connect(address)
        half = await clients.connect(address)
        await half.stream.send_all(b"GET /live HTTP/1.1\r\nHost: x\r\n")  # never finished
        idle = await clients.connect(address)
        start = trio.current_time()  # before the server starts waiting for idle's 2nd request
        assert (await idle.request("GET", "/live"))[0] == 200  # then keeps the slot, idle
        with trio.fail_after(5):
            assert await silent.closed_by_server()
            assert await half.closed_by_server()
            assert await idle.closed_by_server()
        assert trio.current_time() - start >= deadline
        nursery.cancel_scope.cancel()


async def test_connections_beyond_the_cap_are_closed_at_once(clients: Clients) -> None:
    app = HealthApp(things_registry(), lambda: None)
    async with trio.open_nursery() as nursery:
        address = await nursery.start(
            partial(serve_http, limits=Limits(max_connections=2)), "127.0.0.1:0", app.handle
        )
        first, second = await clients.connect(address), await clients.connect(address)
        # Answered, so both are being served (and counted) before the third arrives.
        assert (await first.request("GET", "/live"))[0] == 200
        assert (await second.request("GET", "/live"))[0] == 200
        third = await clients.connect(address)
        with trio.fail_after(5):  # closed at once, long before the 10 s idle deadline
            assert await third.closed_by_server()
        assert (await first.request("GET", "/ready"))[0] == 200  # the served ones carry on

        async def served() -> bool:
            client = await clients.connect(address)
            await client.stream.send_all(b"GET /live HTTP/1.1\r\nHost: x\r\n\r\n")
            try:
                return not await client.closed_by_server()  # a response, not end of stream
            except trio.BrokenResourceError:  # refused with our request unread: a reset
                return False

        await first.stream.aclose()
        with trio.fail_after(5):  # the server sees the close, then there is room again
            while True:  # poll with a deadline: nothing to wait on from outside the server
                if await served():
                    break
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()


class Broken(Collector):
    def collect(self) -> Iterable[Metric]:
        raise RuntimeError("collector broke")


async def test_failing_readiness_or_metrics_gives_500_and_the_server_keeps_serving(
    clients: Clients,
) -> None:
    def readiness() -> str | None:
        raise RuntimeError("datastore driver crashed")

    registry = things_registry()
    registry.register(Broken())
    with capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            address = await nursery.start(serve_health, "127.0.0.1:0", registry, readiness)
            client = await clients.connect(address)
            assert (await client.request("GET", "/ready"))[::2] == (
                500,
                b"internal server error\n",
            )
            assert (await client.request("GET", "/metrics"))[::2] == (
                500,
                b"internal server error\n",
            )
            # Same connection, still served; and new connections too.
            assert (await client.request("GET", "/live"))[::2] == (200, b"live\n")
            assert (await (await clients.connect(address)).request("GET", "/live"))[0] == 200
            nursery.cancel_scope.cancel()
    failures = [entry for entry in logs if entry["event"] == "http.handler_failed"]
    assert [(entry["path"], entry["log_level"]) for entry in failures] == [
        ("/ready", "error"),
        ("/metrics", "error"),
    ]
    assert all(entry["exc_info"] for entry in failures)
