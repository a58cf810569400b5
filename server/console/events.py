"""Live events for the console: every committed change the server follows (entries, agents,
CA keys, bundles, from this server or another sharing the database) fanned out to the
open server-sent-event streams.

A stream whose client falls behind by `BUFFER` events is closed; the browser's EventSource
reconnects and the page carries on.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Sequence

import trio

from insignia.server.datastore.records import ChangeEvent

BUFFER = 256
MAX_STREAMS = 32
RETRY_MS = 2000  # how soon a browser reconnects a closed stream
KEEPALIVE = 15.0  # seconds between comment lines on an idle stream

_WHAT = {
    ("agent", "created"): "attested",
    ("agent", "updated"): "re-attested, renewed or banned",
    ("agent", "deleted"): "evicted",
    ("ca_key", "created"): "prepared",
    ("ca_key", "updated"): "changed state",
    ("ca_key", "deleted"): "dropped",
}
_NOUN = {
    "entry": "entry",
    "agent": "agent",
    "ca_key": "authority",
    "bundle": "bundle",
    "federation": "federation relationship",
}


def describe(event: ChangeEvent) -> dict[str, object]:
    """What the page shows for one change, as the event's JSON data."""
    what = _WHAT.get((event.kind, event.op), event.op)
    return {
        "revision": event.revision,
        "kind": event.kind,
        "op": event.op,
        "subject": event.subject,
        "at": event.created_at.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "text": f"{_NOUN[event.kind]} {event.subject} {what}",
    }


def sse_message(event: ChangeEvent) -> bytes:
    """One server-sent event (HTML's text/event-stream): id, type and one data line."""
    data = json.dumps(describe(event), separators=(",", ":"))
    return f"id: {event.revision}\nevent: change\ndata: {data}\n\n".encode()


class EventHub:
    """Subscribers are memory channels; `publish` never blocks the follower."""

    def __init__(self) -> None:
        self._subscribers: set[trio.MemorySendChannel[ChangeEvent]] = set()

    @property
    def full(self) -> bool:
        return len(self._subscribers) >= MAX_STREAMS

    def publish(self, events: Sequence[ChangeEvent]) -> None:
        for channel in list(self._subscribers):
            try:
                for event in events:
                    channel.send_nowait(event)
            except trio.WouldBlock:  # too far behind: end its stream
                self._subscribers.discard(channel)
                channel.close()

    async def stream(self, lifetime: float, still_open: Callable[[], bool]) -> AsyncIterator[bytes]:
        """The SSE body: a retry hint, then every event, for at most `lifetime` seconds and
        while `still_open()` (the session: a logout ends its streams at the next event or
        keep-alive), with a comment line as keep-alive."""
        send, receive = trio.open_memory_channel[ChangeEvent](BUFFER)
        self._subscribers.add(send)
        deadline = trio.current_time() + lifetime
        try:
            yield f"retry: {RETRY_MS}\n: live\n\n".encode()
            while (wait := min(KEEPALIVE, deadline - trio.current_time())) > 0 and still_open():
                event: ChangeEvent | None = None
                with trio.move_on_after(wait):  # no yield inside a cancel scope
                    try:
                        event = await receive.receive()
                    except trio.EndOfChannel:  # dropped by publish: too far behind
                        return
                if still_open():
                    yield b": keep-alive\n\n" if event is None else sse_message(event)
        finally:
            self._subscribers.discard(send)
            send.close()
