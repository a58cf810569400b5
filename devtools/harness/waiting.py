"""Waiting for an event in tests: poll a predicate against a deadline, never a bare sleep."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

FIRST_POLL = 0.005  # seconds; doubles up to LAST_POLL so quick events are seen quickly
LAST_POLL = 0.1


def wait_for(predicate: Callable[[], T], timeout: float, what: str) -> T:
    """The first truthy value of `predicate()`; TimeoutError naming `what` after `timeout`
    seconds. Exceptions from `predicate` propagate, so it can fail fast (a process died)."""
    deadline = time.monotonic() + timeout
    delay = FIRST_POLL
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, LAST_POLL)
    return value
