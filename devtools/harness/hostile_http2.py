"""Hostile HTTP/2 clients for the Workload API socket, written byte by byte (issue 12).

Shared by tests/integration/test_agent_hostile_clients.py, tests/unit/test_http2_guard.py and
benchmarks/attack_workload_front.py. None of them reads what the agent sends: whether the
agent hung up is seen with poll(2) (POLLHUP), which consumes nothing. The one exception is
``IdleReader``: the idle client a real one is, for contrast.
"""

from __future__ import annotations

import os
import select
import socket
import time
from collections.abc import Callable
from pathlib import Path

from insignia.daemon.peercred.http2_guard import HTTP2_PREFACE

DATA, HEADERS, SETTINGS, PING, WINDOW_UPDATE, CONTINUATION = 0x0, 0x1, 0x4, 0x6, 0x8, 0x9
ACK, END_STREAM, END_HEADERS = 0x1, 0x1, 0x4
MAX_FRAME_PAYLOAD = 16_384  # SETTINGS_MAX_FRAME_SIZE's initial value


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return (
        len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload
    )


def literal(name: bytes, value: bytes) -> bytes:
    """An HPACK literal header field without indexing (names and values under 127 bytes)."""
    assert len(name) < 127 and len(value) < 127
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


OPENING = HTTP2_PREFACE + frame(SETTINGS, 0, 0)
SETTINGS_ACK = frame(SETTINGS, ACK, 0)


def fetch_x509_request(stream: int) -> bytes:
    """HEADERS + DATA of one FetchX509SVID call (with the security header)."""
    block = b"".join(
        literal(name, value)
        for name, value in (
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", b"/SpiffeWorkloadAPI/FetchX509SVID"),
            (b":authority", b"localhost"),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
            (b"workload.spiffe.io", b"true"),
        )
    )
    empty_message = b"\x00" + (0).to_bytes(4, "big")
    return frame(HEADERS, END_HEADERS, stream, block) + frame(
        DATA, END_STREAM, stream, empty_message
    )


def connect(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(path))
    sock.setblocking(False)
    return sock


def hung_up(sock: socket.socket) -> bool:
    """Whether the agent closed its end (never reads from ``sock``)."""
    poller = select.poll()
    poller.register(sock, select.POLLHUP)
    return any(event & (select.POLLHUP | select.POLLERR) for _fd, event in poller.poll(0))


def readable(sock: socket.socket) -> bool:
    """Whether the agent has sent something (not read here)."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


def pump(sock: socket.socket, next_bytes: Callable[[], bytes], seconds: float) -> bool:
    """Send ``next_bytes()`` over and over, frames kept whole, for up to ``seconds`` or
    until it returns nothing. True as soon as the agent hangs up, False if it still holds
    the connection."""
    deadline = time.monotonic() + seconds
    pending = b""
    while time.monotonic() < deadline:
        if hung_up(sock):
            return True
        pending = pending or next_bytes()
        if not pending:
            break
        try:
            pending = pending[sock.send(pending) :]
        except BlockingIOError:
            select.select([], [sock], [], 0.05)
        except (BrokenPipeError, ConnectionResetError):
            return True
    return hung_up(sock)


def wait_hung_up(sock: socket.socket, seconds: float) -> bool:
    """Hold ``sock`` without sending or reading until the agent hangs up, or ``seconds``."""
    poller = select.poll()
    poller.register(sock, select.POLLHUP)
    return bool(poller.poll(seconds * 1000))


def ping_flood(path: Path, seconds: float) -> bool:
    """Preface, then PING frames without reading the ACKs; True if the agent hung up."""
    pings = frame(PING, 0, 0, os.urandom(8)) * 256
    with connect(path) as sock:
        return pump(sock, _once(OPENING, pings), seconds)


def stall(path: Path, streams: int, seconds: float) -> bool:
    """Open ``streams`` FetchX509SVID calls with a huge window, never read the answers."""
    window = frame(WINDOW_UPDATE, 0, 0, (2**31 - 1 - 65_535).to_bytes(4, "big"))
    requests = b"".join(fetch_x509_request(2 * i + 1) for i in range(streams))
    with connect(path) as sock:
        started = time.monotonic()
        if pump(sock, _once(OPENING + window + requests, b""), seconds):
            return True
        return wait_hung_up(sock, max(0.0, seconds - (time.monotonic() - started)))


def continuation_flood(path: Path, seconds: float) -> bool:
    """A HEADERS frame without END_HEADERS, then CONTINUATION frames that never end it."""
    entry = literal(b"x-flood", b"v" * 100)
    block = entry * (MAX_FRAME_PAYLOAD // len(entry))
    start = OPENING + frame(HEADERS, 0, 1, literal(b":method", b"POST"))
    with connect(path) as sock:
        return pump(sock, _once(start, frame(CONTINUATION, 0, 1, block) * 4), seconds)


class IdleReader:
    """A client that opens the connection as a real one does (preface, SETTINGS, the ACK of
    the server's SETTINGS), then sends nothing but reads whatever arrives: idle, not stuck."""

    def __init__(self, path: Path) -> None:
        self.sock = connect(path)
        self.sock.send(OPENING + SETTINGS_ACK)

    def drain(self) -> bool:
        """Read what has arrived; False once the agent has closed the connection."""
        while True:
            try:
                if not self.sock.recv(65536):
                    return False
            except BlockingIOError:
                return True
            except ConnectionResetError:
                return False

    def close(self) -> None:
        self.sock.close()


def _once(first: bytes, then: bytes) -> Callable[[], bytes]:
    """``first`` on the first call, ``then`` on every later one."""
    sent = False

    def next_bytes() -> bytes:
        nonlocal sent
        if sent:
            return then
        sent = True
        return first

    return next_bytes
