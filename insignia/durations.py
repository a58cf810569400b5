"""Durations as operators write them in config and on the command line: "24h", "1h30m", 90.

One parser for every TTL and interval, so "5m" means the same thing in the server config, the
agent config and the CLI, and a typo is refused at the boundary instead of becoming a zero TTL.
"""

from __future__ import annotations

import re
from datetime import timedelta

_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|d|h|m|s)")
_EXPECTED = "expected seconds (e.g. 90) or a duration like 500ms, 90s, 5m, 1h30m, 7d"


class InvalidDuration(ValueError):
    """A duration that cannot be parsed or is negative; carries the offending value."""

    def __init__(self, value: object, reason: str) -> None:
        super().__init__(f"invalid duration {value!r}: {reason}; {_EXPECTED}")
        self.value = value
        self.reason = reason


def parse_duration(value: str | int | float | timedelta) -> timedelta:
    """A non-negative `timedelta` from an int/float of seconds or a string of unit parts.

    Units: ms, s, m, h, d, each at most once and largest first ("1h30m", not "30m1h"), which
    rejects accidental concatenations like "5m5m". A bare number string counts as seconds.
    """
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, bool):
        raise InvalidDuration(value, "a boolean is not a duration")
    elif isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _parse_text(value)
    else:
        raise InvalidDuration(value, f"unsupported type {type(value).__name__}")
    if seconds < 0:
        raise InvalidDuration(value, "negative")
    if seconds != seconds or seconds == float("inf"):
        raise InvalidDuration(value, "not finite")
    return timedelta(seconds=seconds)


def _parse_text(text: str) -> float:
    stripped = text.strip()
    if not stripped:
        raise InvalidDuration(text, "empty")
    if re.fullmatch(r"\d+(?:\.\d+)?", stripped):
        return float(stripped)
    pos = 0
    total = 0.0
    order = list(_UNITS)
    last_rank = -1
    while pos < len(stripped):
        match = _PART.match(stripped, pos)
        if match is None:
            raise InvalidDuration(text, f"unexpected text at {stripped[pos:]!r}")
        rank = order.index(match.group(2))
        if rank <= last_rank:
            raise InvalidDuration(text, f"unit {match.group(2)!r} repeated or out of order")
        last_rank = rank
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    return total
