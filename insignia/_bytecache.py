"""A least-recently-used cache bounded by the bytes it holds, not by how many items.

Caches keyed by what a caller chooses (a JWT audience, a presented token) must not let one
caller pick a few huge keys and make an entry-count bound mean gigabytes: each item is
charged its size, and the oldest go until the total fits.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class ByteLru(Generic[K, V]):
    """At most `max_bytes` of items; an item bigger than `max_item_bytes` is never kept."""

    def __init__(self, max_bytes: int, max_item_bytes: int | None = None) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes {max_bytes}: expected a positive number of bytes")
        self.max_bytes = max_bytes
        self.max_item_bytes = max_bytes if max_item_bytes is None else max_item_bytes
        self.bytes = 0
        self._items: OrderedDict[K, tuple[V, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: K) -> V | None:
        hit = self._items.get(key)
        if hit is None:
            return None
        self._items.move_to_end(key)
        return hit[0]

    def get_or_make(self, key: K, make: Callable[[K], V], size: int) -> V:
        """The value kept for `key`, else `make(key)`, kept at `size` bytes; errors are not."""
        hit = self.get(key)
        if hit is None:
            hit = make(key)
            self.put(key, hit, size)
        return hit

    def put(self, key: K, value: V, size: int) -> None:
        """Keep `value`, charged `size` bytes, evicting the least recently used to fit it."""
        self.pop(key)
        if size > self.max_item_bytes:
            return
        self._items[key] = (value, size)
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, (_, evicted) = self._items.popitem(last=False)
            self.bytes -= evicted

    def pop(self, key: K) -> V | None:
        hit = self._items.pop(key, None)
        if hit is None:
            return None
        self.bytes -= hit[1]
        return hit[0]
