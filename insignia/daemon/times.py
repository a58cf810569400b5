"""Moments as the CLIs show and take them: RFC 3339 in UTC, with the time relative to now.

One format for every printed time (`2026-12-04T09:00:00Z (in 23h)`), so an operator never
meets a raw epoch; and one parser for every time the CLIs accept: RFC 3339, a duration from
now ("+2h", "90m", as `insignia.durations` reads it), or Unix seconds (SPIRE's -entryExpiry).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from insignia.durations import InvalidDuration, parse_duration

_EXPECTED = (
    "expected RFC 3339 (2026-12-04T09:00:00Z), a duration from now (+2h, 90m) or Unix seconds"
)


def _now() -> datetime:
    return datetime.now(UTC)


def relative(delta: timedelta) -> str:
    """ "in 23h", "5m ago", "now": the largest unit and the next, so the figure stays short."""
    seconds = round(delta.total_seconds())
    if seconds == 0:
        return "now"
    left = abs(seconds)
    units = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
    first = next(i for i, (_, size) in enumerate(units) if left >= size)
    parts = []
    for unit, size in units[first : first + 2]:
        count, left = divmod(left, size)
        if count:
            parts.append(f"{count}{unit}")
    text = "".join(parts)
    return f"in {text}" if seconds > 0 else f"{text} ago"


def format_time(moment: datetime | int, now: datetime | None = None) -> str:
    """`2026-12-04T09:00:00Z (in 23h)`; an int is Unix seconds (as the admin API sends them)."""
    when = datetime.fromtimestamp(moment, UTC) if isinstance(moment, int) else moment
    when = when.astimezone(UTC)
    stamp = when.replace(microsecond=0).isoformat().replace("+00:00", "Z")
    return f"{stamp} ({relative(when - (now or _now()))})"


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """A moment from RFC 3339, "+<duration>"/"<duration>" from now, or Unix seconds.

    Raises ValueError naming the text and the accepted forms. A time without a zone is
    refused rather than guessed.
    """
    value = text.strip()
    if re.fullmatch(r"\d{9,}", value):  # Unix seconds (nine digits and more: 1973 onwards)
        try:
            return datetime.fromtimestamp(int(value), UTC)
        except (OverflowError, OSError):
            raise ValueError(
                f"{text[:64]!r}: Unix seconds out of range (expected 1..253402300799)"
            ) from None
    if re.match(r"\d{4}-\d{2}-\d{2}", value):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"invalid time {text!r}: {_EXPECTED}") from None
        if moment.tzinfo is None:
            raise ValueError(f"invalid time {text!r}: give a zone (Z or +01:00); {_EXPECTED}")
        return moment.astimezone(UTC)
    try:
        return (now or _now()) + parse_duration(value.removeprefix("+"))
    except InvalidDuration:
        raise ValueError(f"invalid time {text!r}: {_EXPECTED}") from None
