"""The moment an SDK check runs: a caller's aware datetime, or the current UTC time."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_now(now: datetime | None) -> datetime:
    """`now`, checked to be timezone-aware, or the current UTC time."""
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        raise ValueError(f"time {now.isoformat()} has no timezone; expected an aware UTC datetime")
    return now
