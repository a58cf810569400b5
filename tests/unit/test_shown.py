from __future__ import annotations

from insignia._shown import SHOWN_CHARS, shown


def test_short_values_are_their_repr() -> None:
    assert shown("abc") == "'abc'"
    assert shown(["a", 1]) == "['a', 1]"


def test_long_values_are_cut_with_an_ellipsis() -> None:
    assert shown("x" * 10**6) == repr("x" * SHOWN_CHARS) + "..."
    assert shown(list(range(1000)), 10) == "[0, 1, 2, ..."
