from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from insignia.daemon.times import format_time, parse_time, relative

NOW = datetime(2026, 12, 3, 10, 0, tzinfo=UTC)


def test_format_is_rfc3339_with_the_relative_time() -> None:
    assert format_time(datetime(2026, 12, 4, 9, 0, tzinfo=UTC), NOW) == (
        "2026-12-04T09:00:00Z (in 23h)"
    )
    assert format_time(int(NOW.timestamp()) - 300, NOW) == "2026-12-03T09:55:00Z (5m ago)"


@pytest.mark.parametrize(
    ("delta", "text"),
    [
        (timedelta(0), "now"),
        (timedelta(seconds=42), "in 42s"),
        (timedelta(minutes=3, seconds=7), "in 3m7s"),
        (timedelta(hours=1, seconds=5), "in 1h"),
        (timedelta(days=2, hours=3, minutes=4), "in 2d3h"),
        (-timedelta(days=1), "1d ago"),
    ],
)
def test_relative_keeps_two_units(delta: timedelta, text: str) -> None:
    assert relative(delta) == text


@pytest.mark.parametrize(
    ("text", "moment"),
    [
        ("2026-12-04T09:00:00Z", datetime(2026, 12, 4, 9, 0, tzinfo=UTC)),
        ("2026-12-04T10:00:00+01:00", datetime(2026, 12, 4, 9, 0, tzinfo=UTC)),
        ("+2h", NOW + timedelta(hours=2)),
        ("90m", NOW + timedelta(minutes=90)),
        ("1800000000", datetime.fromtimestamp(1800000000, UTC)),
    ],
)
def test_parse_accepts_rfc3339_relative_and_unix_seconds(text: str, moment: datetime) -> None:
    assert parse_time(text, NOW) == moment


@pytest.mark.parametrize("text", ["tomorrow", "2026-12-04T09:00:00", "2026-13-01T00:00:00Z", "-1h"])
def test_parse_refuses_with_the_accepted_forms(text: str) -> None:
    with pytest.raises(ValueError, match="expected RFC 3339") as info:
        parse_time(text, NOW)
    assert repr(text) in str(info.value)
