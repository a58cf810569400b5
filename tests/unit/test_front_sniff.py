"""The admin socket tells gRPC from HTTP/1.1 by the client's first bytes, without eating them."""

from __future__ import annotations

import socket

import pytest

from insignia.daemon.peercred.front import HTTP2_PREFACE, speaks_http2


@pytest.mark.parametrize(
    ("first", "http2"),
    [
        (HTTP2_PREFACE, True),
        (b"GET /ready HTTP/1.1\r\n", False),
        (b"PUT /log-level/debug HTTP/1.1\r\n", False),  # a P, like the preface's
        (b"HEAD /live HTTP/1.1\r\n", False),
        (b"", True),  # closed at once: grpc's to drop, as it would anyway
    ],
)
async def test_first_bytes_decide_and_stay_unread(first: bytes, http2: bool) -> None:
    server, client = socket.socketpair()
    with server, client:
        server.setblocking(False)
        if first:
            client.sendall(first)
        else:
            client.shutdown(socket.SHUT_WR)
        assert await speaks_http2(server, 5.0) is http2
        assert server.recv(64) == first[:64]  # peeked, not consumed


async def test_a_client_that_sends_too_little_counts_as_http2() -> None:
    server, client = socket.socketpair()
    with server, client:
        server.setblocking(False)
        client.sendall(b"P")
        assert await speaks_http2(server, 0.2) is True
