"""Giving memory freed after a burst of connections back to the system.

A flood of hostile connections makes grpc-core and the front allocate tens of MB; once
they are closed, glibc keeps the freed pages in its heaps (issue 12: the agent's RSS stayed
20-70 MB above its baseline for as long as it ran). ``malloc_trim(0)`` returns every free
page of every arena. It is glibc-only: elsewhere this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable

import trio

# Closed connections since the last trim that make another worth its cost (a few ms).
TRIM_AFTER_RELEASED = 16
TRIM_INTERVAL = 1.0  # seconds between checks


def _load_malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_malloc_trim = _load_malloc_trim()


class MemoryReleaser:
    """Counts released connections; ``run`` trims the heap once enough of them closed."""

    def __init__(self, threshold: int = TRIM_AFTER_RELEASED) -> None:
        self._threshold = threshold
        self._released = 0
        self.trims = 0

    def released(self) -> None:
        self._released += 1

    async def run(self, interval: float = TRIM_INTERVAL) -> None:
        """Until cancelled: every ``interval`` s, trim if ``threshold`` connections closed."""
        while True:
            await trio.sleep(interval)
            if self._released >= self._threshold and _malloc_trim is not None:
                self._released = 0
                self.trims += 1
                await trio.to_thread.run_sync(_malloc_trim, 0)
