"""A peer's bundle endpoint that misbehaves on demand: real HTTPS on a real socket, answering
each GET with whatever `answer` says now (a good bundle, a bad one, a huge body, or nothing),
under whichever TLS context `context` holds now (a trusted or untrusted certificate, the
right or the wrong SPIFFE ID). For the federation refresher's hostile-peer tests.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from dataclasses import dataclass
from types import TracebackType

_HEAD_LIMIT = 65536


@dataclass(frozen=True)
class Answer:
    body: bytes = b""
    content_length: bool = True  # False: the body runs until the connection closes
    stall: bool = False  # accept the request, then never answer


def tls_context(chain_pem: bytes, key_pem: bytes, directory: str) -> ssl.SSLContext:
    """A TLS server context from PEM written under `directory`."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert, key = f"{directory}/cert.pem", f"{directory}/key.pem"
    with open(cert, "wb") as f:
        f.write(chain_pem)
    with open(key, "wb") as f:
        f.write(key_pem)
    context.load_cert_chain(cert, key)
    return context


class BundlePeer:
    """Listens on 127.0.0.1:<port> until closed; one thread per connection."""

    def __init__(self, context: ssl.SSLContext, answer: Answer) -> None:
        self.context, self.answer = context, answer
        self.requests = 0  # GETs that reached the point of answering
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def __enter__(self) -> BundlePeer:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._closed.set()
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                raw, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        context, answer = self.context, self.answer
        with contextlib.suppress(OSError), raw:
            raw.settimeout(30)
            with context.wrap_socket(raw, server_side=True) as conn:
                head = b""
                while b"\r\n\r\n" not in head and len(head) < _HEAD_LIMIT:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    head += chunk
                self.requests += 1
                if answer.stall:
                    conn.settimeout(None)
                    conn.recv(1)  # until the client gives up and closes
                    return
                headers = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                if answer.content_length:
                    headers += b"content-length: %d\r\n" % len(answer.body)
                conn.sendall(headers + b"connection: close\r\n\r\n" + answer.body)
