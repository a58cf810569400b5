"""Token buckets per key: the server's per-IP attestation (1/s) and per-agent signing (500/s)
budgets, and the agent's per-uid and per-SPIFFE-ID JWT-SVID mint budgets.

Pure: callers pass the current monotonic time, so the refill arithmetic is tested without
sleeping. Buckets of idle keys are forgotten so the table cannot grow without bound.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """`rate` tokens per second per key, holding at most `burst` (default: one second's worth)."""

    def __init__(self, rate: float, burst: float | None = None, max_keys: int = 65536) -> None:
        if rate <= 0:
            raise ValueError(f"rate {rate}: expected a positive number of events per second")
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate)
        self.max_keys = max_keys
        self._buckets: dict[str, _Bucket] = {}

    def try_acquire(self, key: str, now: float, cost: float = 1.0) -> bool:
        """Take `cost` tokens for `key` if it has them; False means "over the limit"."""
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self._forget_full(now)
            bucket = self._buckets[key] = _Bucket(self.burst, now)
        else:
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
        if bucket.tokens + 1e-9 >= cost:
            bucket.tokens -= cost
            return True
        return False

    def retry_after(self, key: str, cost: float = 1.0) -> float:
        """Seconds until `cost` tokens will be available for `key` (0 if now)."""
        bucket = self._buckets.get(key)
        if bucket is None:
            return 0.0
        return max(0.0, (cost - bucket.tokens) / self.rate)

    def _forget_full(self, now: float) -> None:
        for key, bucket in list(self._buckets.items()):
            if bucket.tokens + (now - bucket.updated) * self.rate >= self.burst:
                del self._buckets[key]
        if len(self._buckets) >= self.max_keys:
            self._buckets.clear()


def peer_ip(peer: str) -> str:
    """The address part of a gRPC peer string ("ipv4:1.2.3.4:5678", "ipv6:[::1]:5678")."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv6":
        return rest.rsplit(":", 1)[0].strip("[]")
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0]
    return peer
