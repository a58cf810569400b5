"""Bounding how often one source can make a daemon write the same warning.

A hostile local process can open thousands of connections that each earn a warning (garbage
instead of an HTTP/2 preface, say). Each source (a uid) gets a token bucket: a burst of
lines, then one per `refill` seconds; the next line that gets through says how many were
held back, so the log stays truthful while its size stays bounded.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    stamp: float
    held_back: int = 0


class LogThrottle:
    """Decides, per key, whether an event is logged; pure apart from its own counters."""

    def __init__(self, burst: int = 10, refill: float = 1.0, max_keys: int = 4096) -> None:
        if burst < 1 or refill <= 0 or max_keys < 1:
            raise ValueError("burst and max_keys must be >= 1, refill > 0")
        self._burst = burst
        self._refill = refill
        self._max_keys = max_keys
        self._buckets: OrderedDict[Hashable, _Bucket] = OrderedDict()

    def admit(self, key: Hashable, now: float) -> int | None:
        """None to stay quiet; else how many events of `key` were held back before this one."""
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = _Bucket(tokens=float(self._burst), stamp=now)
            self._buckets[key] = bucket
            if len(self._buckets) > self._max_keys:
                self._buckets.popitem(last=False)  # the least recently seen source
        else:
            self._buckets.move_to_end(key)
            elapsed = max(0.0, now - bucket.stamp)
            bucket.tokens = min(float(self._burst), bucket.tokens + elapsed / self._refill)
            bucket.stamp = now
        if bucket.tokens < 1.0:
            bucket.held_back += 1
            return None
        bucket.tokens -= 1.0
        held_back, bucket.held_back = bucket.held_back, 0
        return held_back
