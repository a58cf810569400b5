"""How long to wait before trying again: exponential backoff with jitter.

Every reconnecting loop in the tree (the agent's server stream, node attestation and SVID
renewal, the SVID files helper, Workload API watches) uses this one policy. The wait grows to
a ceiling so an outage is not hammered, and is jittered so a fleet of clients does not
reconnect in the same instant after a restart.

A pure function over a frozen policy: the random draw is an argument, so tests are exact.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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


@dataclass
class Retries:
    """One loop's run of consecutive failures: each failure earns the next delay of `backoff`,
    and a success (or progress) starts the run over. `draw` gives the jitter's random number."""

    backoff: Backoff
    draw: Callable[[], float]
    attempt: int = 0

    def failed(self) -> float:
        """Seconds to wait before the next try."""
        delay = self.backoff.delay(self.attempt, self.draw())
        self.attempt += 1
        return delay

    def succeeded(self) -> None:
        self.attempt = 0
