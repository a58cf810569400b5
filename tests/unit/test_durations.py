from datetime import timedelta

import pytest

from insignia.durations import InvalidDuration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("24h", 86400),
        ("90s", 90),
        ("1h30m", 5400),
        ("5m", 300),
        ("7d", 604800),
        ("500ms", 0.5),
        ("1d2h3m4s", 93784),
        ("3600", 3600),
        (" 2m ", 120),
        (600, 600),
        (1.5, 1.5),
        (0, 0),
    ],
)
def test_parses(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("bad", ["", "h", "-5s", "5x", "30m1h", "5m5m", "1h 30m", True, -1, None])
def test_refuses(bad: object) -> None:
    with pytest.raises(InvalidDuration) as info:
        parse_duration(bad)  # type: ignore[arg-type]
    assert info.value.value == bad
    assert "expected" in str(info.value)
