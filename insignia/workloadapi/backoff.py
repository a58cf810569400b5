"""When to try the Workload API again: exponential backoff with jitter, and what not to retry.

A workload usually starts before its agent is ready, or before an operator registers its
entry, and outlives agent restarts. So a watcher keeps retrying, waiting longer each time up
to a ceiling, and jitters the wait so that every workload on a node does not reconnect in the
same instant after an agent restart. Only a refusal that no retry can fix ends a watch.

Pure functions over a frozen policy: the random draw is an argument, so tests are exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

# A missing security header or malformed request: the agent will refuse it again forever.
# Everything else (UNAVAILABLE while the agent restarts, PERMISSION_DENIED "no identity
# issued" until an entry exists, UNAUTHENTICATED, a stream that ended, an undecodable
# answer from a half-upgraded agent) may heal, as in go-spiffe's watcher.
PERMANENT_CODES = frozenset({grpc.StatusCode.INVALID_ARGUMENT})

_MAX_EXPONENT = 64  # past this the delay sits at the ceiling anyway; avoids float overflow


class InvalidBackoff(ValueError):
    def __init__(self, policy: object, reason: str) -> None:
        super().__init__(f"invalid backoff {policy!r}: {reason}")
        self.reason = reason


@dataclass(frozen=True)
class Backoff:
    """Delay before retry number `attempt` (0-based): initial * multiplier**attempt, capped at
    `maximum`, then shortened by up to `jitter` (a fraction) so the ceiling is never exceeded.
    """

    initial: float = 0.5
    maximum: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if not self.initial > 0:
            raise InvalidBackoff(self, "initial must be > 0 seconds")
        if not self.maximum >= self.initial:
            raise InvalidBackoff(self, "maximum must be >= initial")
        if not 1.0 <= self.multiplier <= 10.0:
            raise InvalidBackoff(self, "multiplier must be between 1 and 10")
        if not 0.0 <= self.jitter < 1.0:
            raise InvalidBackoff(self, "jitter must be a fraction in [0, 1)")

    def delay(self, attempt: int, draw: float) -> float:
        """Seconds to wait before retry `attempt`; `draw` is a uniform random number in [0, 1)."""
        if attempt < 0:
            raise ValueError(f"attempt {attempt} must be >= 0")
        if not 0.0 <= draw < 1.0:
            raise ValueError(f"draw {draw} must be in [0, 1)")
        base = min(self.maximum, self.initial * self.multiplier ** min(attempt, _MAX_EXPONENT))
        return base * (1.0 - self.jitter * draw)


DEFAULT_BACKOFF = Backoff()


def is_retryable(code: grpc.StatusCode | None) -> bool:
    """Whether a watch that failed with `code` (None: undecodable answer) should try again."""
    return code not in PERMANENT_CODES
