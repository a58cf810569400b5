import pytest
from hypothesis import given
from hypothesis import strategies as st

from insignia.daemon.log_throttle import LogThrottle


def test_a_burst_then_one_per_refill_and_the_count_of_what_was_held_back() -> None:
    throttle = LogThrottle(burst=3, refill=1.0)
    assert [throttle.admit("uid0", 0.0) for _ in range(5)] == [0, 0, 0, None, None]
    assert throttle.admit("uid0", 0.5) is None
    assert throttle.admit("uid0", 1.0) == 3  # the three held back since the last line
    assert throttle.admit("uid0", 1.0) is None


def test_sources_have_their_own_budget() -> None:
    throttle = LogThrottle(burst=1, refill=10.0)
    assert throttle.admit(1000, 0.0) == 0
    assert throttle.admit(1000, 0.0) is None
    assert throttle.admit(1001, 0.0) == 0  # a noisy uid does not silence another


def test_the_table_of_sources_is_bounded() -> None:
    throttle = LogThrottle(burst=1, refill=10.0, max_keys=2)
    throttle.admit("a", 0.0)
    throttle.admit("b", 0.0)
    throttle.admit("c", 0.0)  # evicts "a", the least recently seen
    assert throttle.admit("a", 0.0) == 0
    assert throttle.admit("c", 0.0) is None


def test_a_clock_that_steps_back_grants_nothing() -> None:
    throttle = LogThrottle(burst=1, refill=1.0)
    assert throttle.admit("k", 100.0) == 0
    assert throttle.admit("k", 50.0) is None


@pytest.mark.parametrize("args", [(0, 1.0, 1), (1, 0.0, 1), (1, 1.0, 0)])
def test_bad_settings_are_refused(args: tuple[int, float, int]) -> None:
    with pytest.raises(ValueError, match="burst"):
        LogThrottle(*args)


@given(st.lists(st.floats(min_value=0, max_value=0.5), min_size=1, max_size=300))
def test_lines_never_exceed_the_budget_and_every_event_is_counted(gaps: list[float]) -> None:
    throttle = LogThrottle(burst=5, refill=1.0)
    now, logged, counted = 0.0, 0, 0
    for gap in gaps:
        now += gap
        held_back = throttle.admit("k", now)
        if held_back is not None:
            logged += 1
            counted += 1 + held_back
    assert logged <= 5 + now / 1.0 + 1e-9
    # Every event is a line or counted by a later one: a line long after reports the rest.
    assert counted + (throttle.admit("k", now + 100.0) or 0) == len(gaps)
