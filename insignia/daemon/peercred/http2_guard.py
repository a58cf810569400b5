"""What the front checks in the client's half of an HTTP/2 connection, before grpc sees it.

grpc-core answers every PING and SETTINGS frame with an ACK and queues those ACKs even when
the client never reads them, and it keeps accepting CONTINUATION frames of a header block
it will refuse anyway (issue 12: both kept connections and memory forever). The front
parses only the 9-byte frame headers of the client->server byte stream (payloads are
skipped, never copied) and names the first violation, so the connection can be dropped:

- frames that demand an ACK (PING, SETTINGS without the ACK flag) beyond a token bucket:
  a burst, a steady refill, and a few extra per request (HEADERS) so that a busy channel's
  BDP pings never run dry;
- a header block (HEADERS or PUSH_PROMISE plus its CONTINUATIONs) larger than a bound,
  counting 9 bytes per frame so that empty CONTINUATION frames count too.

Pure: no I/O, the caller passes the clock.
"""

from __future__ import annotations

from dataclasses import dataclass

HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FRAME_HEADER_BYTES = 9

_HEADERS, _SETTINGS, _PUSH_PROMISE, _PING, _CONTINUATION = 0x1, 0x4, 0x5, 0x6, 0x9
_ACK = 0x1  # PING and SETTINGS
_END_HEADERS = 0x4  # HEADERS, PUSH_PROMISE, CONTINUATION


@dataclass(frozen=True)
class ControlFrameBudget:
    """How many PING/SETTINGS frames (not ACKs) one connection may send.

    grpc clients send a SETTINGS or two at start, keepalive pings every few seconds at most,
    and BDP pings about once per response received: far below these figures.
    """

    burst: int = 100
    per_second: float = 10.0
    per_request: float = 2.0  # a HEADERS frame starts a call: real work, a few pings' worth


@dataclass(frozen=True)
class GuardLimits:
    control: ControlFrameBudget = ControlFrameBudget()
    # grpc refuses metadata over 16 KiB by default; HPACK never expands what it encodes,
    # so a block four times that is refused whatever it holds.
    max_header_block_bytes: int = 64 * 1024


class ClientFrameGuard:
    """Follows the client's byte stream frame by frame; ``feed`` names the first violation.

    Also keeps the first bytes, so that a client that is not speaking HTTP/2 can be logged.
    After a bad preface it stops parsing: grpc drops such a connection by itself.
    """

    def __init__(self, limits: GuardLimits, now: float) -> None:
        self._limits = limits
        self.head = b""  # the first bytes read, up to the length of the HTTP/2 preface
        self._header = b""  # a frame header split across reads
        self._skip = 0  # payload bytes of the current frame still to come
        self._tokens = float(limits.control.burst)
        self._stamp = now
        self._block: int | None = None  # bytes of the header block being received, if any
        self._inert = False

    def preface_problem(self) -> str | None:
        """Why the client's first bytes were not an HTTP/2 preface; None if they were."""
        head = self.head
        if head == HTTP2_PREFACE:
            return None
        if HTTP2_PREFACE.startswith(head):
            return f"closed after {len(head)} of the {len(HTTP2_PREFACE)} HTTP/2 preface bytes"
        return f"not an HTTP/2 preface: first bytes {head[:16]!r}"

    def feed(self, data: bytes, now: float) -> str | None:
        """Account for ``data``; the reason to drop the connection, or None."""
        if self._inert:
            return None
        pos = 0
        if len(self.head) < len(HTTP2_PREFACE):
            pos = len(HTTP2_PREFACE) - len(self.head)
            self.head += data[:pos]
            if not HTTP2_PREFACE.startswith(self.head):
                self._inert = True
                return None
        end = len(data)
        while pos < end:
            if self._skip:
                step = min(self._skip, end - pos)
                self._skip -= step
                pos += step
                continue
            take = FRAME_HEADER_BYTES - len(self._header)
            self._header += data[pos : pos + take]
            pos += take
            if len(self._header) < FRAME_HEADER_BYTES:
                break
            header, self._header = self._header, b""
            length = int.from_bytes(header[0:3], "big")
            problem = self._frame(length, header[3], header[4], now)
            if problem is not None:
                return problem
            self._skip = length
        return None

    def _frame(self, length: int, kind: int, flags: int, now: float) -> str | None:
        if kind in (_PING, _SETTINGS) and not flags & _ACK:
            return self._spend(now)
        if kind in (_HEADERS, _PUSH_PROMISE):
            budget = self._limits.control
            self._tokens = min(float(budget.burst), self._tokens + budget.per_request)
            self._block = None if flags & _END_HEADERS else 0
        elif kind != _CONTINUATION or self._block is None:
            self._block = None  # anything else ends a block: grpc calls that a protocol error
            return None
        if self._block is not None:
            self._block += FRAME_HEADER_BYTES + length
            limit = self._limits.max_header_block_bytes
            if self._block > limit:
                return f"header block over {limit} bytes (CONTINUATION flood)"
            if flags & _END_HEADERS:
                self._block = None
        return None

    def _spend(self, now: float) -> str | None:
        budget = self._limits.control
        elapsed = max(0.0, now - self._stamp)
        self._tokens = min(float(budget.burst), self._tokens + elapsed * budget.per_second)
        self._stamp = now
        if self._tokens < 1.0:
            return (
                f"more than {budget.burst} PING/SETTINGS frames at once "
                f"(then {budget.per_second:g}/s)"
            )
        self._tokens -= 1.0
        return None
