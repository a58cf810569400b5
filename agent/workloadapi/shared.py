"""One encoding of a stream's message per identity set, shared by every stream that sends it.

A rotation wakes every stream whose caller holds the rotated identity; a thousand workloads
of one service hold the same one. Each would otherwise build its own response, compare it
field by field with what it sent last and serialise it again. Here the first stream to wake
builds and serialises it; the others with the same selectors, at the same cache generation,
send the same bytes (`Encoded`, which the Workload API's serializer passes through as is).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from google.protobuf.message import Message

from insignia.selectors import Selector


@dataclass(frozen=True, slots=True)
class Encoded:
    """A serialised stream message; `count` is what the metrics count (SVIDs sent)."""

    data: bytes
    count: int = 0


Build = Callable[[frozenset[Selector], datetime], tuple[Message | None, datetime | None]]


@dataclass(slots=True)
class _Built:
    encoded: Encoded | None
    stale_at: datetime | None


class SharedEncodings:
    """Per method: selectors -> the encoded message built at `generation`, until stale."""

    def __init__(self, build: Build, count: Callable[[Message], int] = lambda _m: 0) -> None:
        self._build = build
        self._count = count
        self._generation = -1
        self._built: dict[frozenset[Selector], _Built] = {}

    def get(
        self, selectors: frozenset[Selector], now: datetime, generation: int
    ) -> tuple[Encoded | None, datetime | None]:
        """The message for `selectors` (None: nothing to send yet) and when it goes stale by
        itself; built once per cache generation, and again once stale. What `build` raises
        (no identity, SVIDs expired) is raised to each caller and never kept."""
        if generation != self._generation:
            self._built.clear()  # only the current generation is ever served
            self._generation = generation
        built = self._built.get(selectors)
        if built is None or (built.stale_at is not None and now >= built.stale_at):
            message, stale_at = self._build(selectors, now)
            encoded = (
                None
                if message is None
                else Encoded(message.SerializeToString(deterministic=True), self._count(message))
            )
            built = self._built[selectors] = _Built(encoded, stale_at)
        return built.encoded, built.stale_at
