"""The front's view of the client's HTTP/2 frames: preface, PING/SETTINGS budget, header blocks."""

from __future__ import annotations

from devtools.harness.hostile_http2 import (
    ACK,
    CONTINUATION,
    END_HEADERS,
    HEADERS,
    PING,
    SETTINGS,
    frame,
)
from insignia.daemon.peercred.http2_guard import (
    HTTP2_PREFACE,
    ClientFrameGuard,
    ControlFrameBudget,
    GuardLimits,
)

LIMITS = GuardLimits(
    control=ControlFrameBudget(burst=5, per_second=2.0, per_request=1.0),
    max_header_block_bytes=1000,
)
PING_FRAME = frame(PING, 0, 0, bytes(8))


def opened(now: float = 0.0) -> ClientFrameGuard:
    guard = ClientFrameGuard(LIMITS, now)
    assert guard.feed(HTTP2_PREFACE + frame(SETTINGS, 0, 0), now) is None
    return guard


def test_the_preface_is_checked_and_a_wrong_one_named() -> None:
    guard = ClientFrameGuard(LIMITS, 0.0)
    assert guard.preface_problem() == "closed after 0 of the 24 HTTP/2 preface bytes"
    guard.feed(HTTP2_PREFACE[:10], 0.0)
    assert guard.preface_problem() == "closed after 10 of the 24 HTTP/2 preface bytes"
    guard.feed(HTTP2_PREFACE[10:], 0.0)
    assert guard.preface_problem() is None

    http1 = ClientFrameGuard(LIMITS, 0.0)
    assert http1.feed(b"GET / HTTP/1.1\r\n\r\n" + PING_FRAME * 100, 0.0) is None  # grpc's job
    assert http1.preface_problem() == "not an HTTP/2 preface: first bytes b'GET / HTTP/1.1\\r\\n'"


def test_pings_beyond_the_burst_break_the_budget_and_acks_are_free() -> None:
    guard = opened()  # the client's SETTINGS spent one token
    assert guard.feed(frame(PING, ACK, 0, bytes(8)) * 50, 0.0) is None
    assert guard.feed(frame(SETTINGS, ACK, 0) * 50, 0.0) is None
    assert guard.feed(PING_FRAME * 4, 0.0) is None
    assert guard.feed(PING_FRAME, 0.0) == "more than 5 PING/SETTINGS frames at once (then 2/s)"


def test_the_budget_refills_with_time_and_with_requests() -> None:
    guard = opened()
    assert guard.feed(PING_FRAME * 4, 0.0) is None
    assert guard.feed(PING_FRAME, 0.5) is None  # half a second: one token back
    assert guard.feed(PING_FRAME, 0.5) is not None

    busy = opened()
    assert busy.feed(PING_FRAME * 4, 0.0) is None
    assert busy.feed(frame(HEADERS, END_HEADERS, 1, b"x" * 10) * 2, 0.0) is None
    assert busy.feed(PING_FRAME * 2, 0.0) is None  # two calls started: two pings' worth
    assert busy.feed(PING_FRAME, 0.0) is not None


def test_frames_split_across_reads_are_followed() -> None:
    guard = opened()
    stream = PING_FRAME * 6
    problems = [guard.feed(stream[i : i + 5], 0.0) for i in range(0, len(stream), 5)]
    assert [p for p in problems if p is not None] == [
        "more than 5 PING/SETTINGS frames at once (then 2/s)"
    ]


def test_a_header_block_is_bounded_however_it_is_split() -> None:
    guard = opened()
    assert guard.feed(frame(HEADERS, 0, 1, b"h" * 400), 0.0) is None
    assert guard.feed(frame(CONTINUATION, 0, 1, b"c" * 400), 0.0) is None
    problem = guard.feed(frame(CONTINUATION, 0, 1, b"c" * 400), 0.0)
    assert problem == "header block over 1000 bytes (CONTINUATION flood)"

    empty = opened()  # empty CONTINUATION frames cost their 9-byte header
    assert empty.feed(frame(HEADERS, 0, 1), 0.0) is None
    assert empty.feed(frame(CONTINUATION, 0, 1) * 110, 0.0) is None  # 999 bytes
    assert empty.feed(frame(CONTINUATION, 0, 1), 0.0) is not None


def test_a_block_that_ends_starts_the_count_again() -> None:
    guard = opened()
    for stream in range(1, 20, 2):
        assert guard.feed(frame(HEADERS, 0, stream, b"h" * 400), 0.0) is None
        assert guard.feed(frame(CONTINUATION, END_HEADERS, stream, b"c" * 400), 0.0) is None
