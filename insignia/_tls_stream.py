"""A pyOpenSSL connection driven over any trio stream through memory BIOs.

Why hand-rolled: `trio.SSLStream` only accepts the standard library's `ssl.SSLContext`, which
cannot run a Python callback per certificate of the peer's chain, so it cannot apply SPIFFE
verification (bundle chosen by the peer's own trust domain) during the handshake. pyOpenSSL
can, but only does blocking socket I/O itself. So OpenSSL reads and writes two in-memory
BIOs, and this pump moves their bytes over the trio stream: after every OpenSSL call its
output is flushed, and when it wants input, one read from the transport is fed in.

Concurrency, as trio's Stream contract allows one sender and one receiver at once: OpenSSL
calls never await, so they cannot interleave; their output is queued in order and the task
holding the send lock sends the whole queue; when both tasks need input only one reads the
transport, and the other retries with what it brought.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TypeVar

import trio
from OpenSSL import SSL

from insignia.spiffeid import SpiffeId

T = TypeVar("T")

_READ_SIZE = 64 * 1024
_WRITE_CHUNK = 16 * 1024  # one TLS record
#: How long aclose() waits to hand the close_notify alert to a peer that is not reading.
CLOSE_NOTIFY_TIMEOUT = 1.0


class TlsStreamError(trio.BrokenResourceError):
    """OpenSSL failed (alert received or sent, protocol error) or the peer left mid-record."""


class TlsStream(trio.abc.Stream):
    """A TLS connection over `transport_stream`; `peer_id` is the verified peer's SPIFFE ID."""

    def __init__(self, transport_stream: trio.abc.Stream, connection: SSL.Connection) -> None:
        self.transport_stream = transport_stream
        self.connection = connection
        self._peer_id: SpiffeId | None = None
        self._send_lock = trio.Lock()
        self._receive_lock = trio.Lock()
        self._outgoing = bytearray()
        self._transport_reads = 0
        self._transport_eof = False
        self._sending = self._receiving = self._closed = self._broken = False

    @property
    def peer_id(self) -> SpiffeId:
        if self._peer_id is None:
            raise RuntimeError("the peer is not verified: the TLS handshake has not completed")
        return self._peer_id

    async def do_handshake(self, verify_peer: Callable[[], SpiffeId]) -> None:
        """Run the handshake, then take the peer's ID from `verify_peer` (which may refuse)."""
        await self._pump(self.connection.do_handshake)
        self._peer_id = verify_peer()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is already sending on this TLS stream")
        self._sending = True
        try:
            self._check_open()
            view = memoryview(data)
            if not view:
                await trio.lowlevel.checkpoint()
            while view:
                chunk = view[:_WRITE_CHUNK]
                sent = await self._pump(partial(self.connection.send, chunk))
                view = view[sent:]
        finally:
            self._sending = False

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Decrypted bytes; b"" once the peer sent close_notify. A bare TCP close without
        close_notify raises TlsStreamError, since it could be a truncation attack."""
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving on this TLS stream")
        self._receiving = True
        try:
            self._check_open()
            size = max_bytes or _READ_SIZE
            try:
                return await self._pump(partial(self.connection.recv, size))
            except SSL.ZeroReturnError:
                return b""
        finally:
            self._receiving = False

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport_stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        """Send close_notify (bounded by CLOSE_NOTIFY_TIMEOUT), then close the transport."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        try:
            if self._peer_id is not None and not self._broken:
                with trio.move_on_after(CLOSE_NOTIFY_TIMEOUT):
                    self.connection.shutdown()
                    await self._flush()
        except (SSL.Error, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await self.transport_stream.aclose()

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("this TLS stream is closed")
        if self._broken:
            raise trio.BrokenResourceError("an earlier send or receive was cancelled midway")
        if self._peer_id is None:
            raise RuntimeError("send or receive before the TLS handshake completed")

    async def _pump(self, operation: Callable[[], T]) -> T:
        """Call `operation` until OpenSSL stops asking for input; flush its output each time.

        Cancellation is safe while waiting for input (the call is simply retried later). Once
        `operation` has consumed or produced application data, being cancelled would lose it,
        so from then on a cancellation marks the stream broken, as trio.SSLStream does.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            reads_before = self._transport_reads
            try:
                result = operation()
            except SSL.WantReadError:
                await self._flush()
            except SSL.ZeroReturnError:
                await self._flush()
                raise
            except SSL.Error as exc:
                await self._flush()  # the alert OpenSSL queued tells the peer why
                raise TlsStreamError(_describe(exc)) from exc
            else:
                try:
                    await self._flush()
                except BaseException:
                    self._broken = True
                    raise
                return result
            async with self._receive_lock:
                if self._transport_reads != reads_before:
                    continue  # the other task brought input meanwhile: retry with it
                if self._transport_eof:
                    raise TlsStreamError("the peer closed the connection mid-handshake or record")
                data = await self.transport_stream.receive_some(_READ_SIZE)
                self._transport_reads += 1
                if data:
                    self.connection.bio_write(data)
                else:
                    self._transport_eof = True
                    self.connection.bio_shutdown()

    async def _flush(self) -> None:
        """Send what OpenSSL has written; always a checkpoint, cancel-shielded if idle."""
        # OpenSSL's output is drained synchronously, so records queue in the order it made
        # them. Whoever holds the lock keeps sending until the queue is empty, so a task that
        # finds the lock taken leaves its bytes to the holder instead of waiting: a receiver
        # must never wait behind a sender blocked on a full transport, for that sender may be
        # waiting for the peer to read, and the peer for us to read (seen: a full-duplex
        # deadlock over TCP when the receiver queued for the lock).
        while True:
            try:
                self._outgoing += self.connection.bio_read(_READ_SIZE)
            except SSL.WantReadError:
                break
        if not self._outgoing or self._send_lock.locked():
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        async with self._send_lock:
            while self._outgoing:
                data = bytes(self._outgoing)
                self._outgoing.clear()
                try:
                    await self.transport_stream.send_all(data)
                except BaseException:
                    self._broken = True  # a record may have left half-written
                    raise


def _describe(exc: SSL.Error) -> str:
    if isinstance(exc, SSL.SysCallError):
        return "the peer closed the connection without close_notify"
    reasons = [str(item[2]) for item in exc.args[0] if isinstance(item, tuple) and len(item) == 3]
    return "; ".join(reasons) or str(exc)
