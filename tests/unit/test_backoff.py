"""The shared retry pacing: bounded exponential backoff with jitter."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from insignia.backoff import Backoff, InvalidBackoff, Retries

policies = st.builds(
    Backoff,
    initial=st.floats(0.001, 10),
    maximum=st.just(60.0),
    multiplier=st.floats(1, 10),
    jitter=st.floats(0, 0.99),
)
draws = st.floats(0, 1, exclude_max=True)


@given(policies, st.integers(0, 10_000), draws)
def test_delay_stays_between_the_jittered_floor_and_the_ceiling(
    policy: Backoff, attempt: int, draw: float
) -> None:
    base = min(policy.maximum, policy.initial * policy.multiplier ** min(attempt, 64))
    delay = policy.delay(attempt, draw)
    assert base * (1 - policy.jitter) <= delay * (1 + 1e-12)
    assert delay <= base * (1 + 1e-12) <= policy.maximum * (1 + 1e-12)


@given(policies, st.integers(0, 200), draws)
def test_delay_never_shrinks_as_attempts_grow(policy: Backoff, attempt: int, draw: float) -> None:
    assert policy.delay(attempt + 1, draw) >= policy.delay(attempt, draw)


def test_doubles_from_initial_up_to_the_ceiling_without_jitter() -> None:
    policy = Backoff(initial=0.5, maximum=4, multiplier=2, jitter=0)
    assert [policy.delay(n, 0.5) for n in range(6)] == [0.5, 1, 2, 4, 4, 4]
    # Jitter only ever shortens the wait, so the ceiling holds.
    assert Backoff(initial=1, maximum=1, jitter=0.5).delay(3, 0.999) == pytest.approx(0.5005)


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"initial": 0}, "initial"),
        ({"initial": 2, "maximum": 1}, "maximum"),
        ({"multiplier": 0.5}, "multiplier"),
        ({"jitter": 1.0}, "jitter"),
    ],
)
def test_nonsense_policies_are_refused(kwargs: dict[str, float], reason: str) -> None:
    with pytest.raises(InvalidBackoff, match=reason):
        Backoff(**kwargs)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="attempt"):
        Backoff().delay(-1, 0.5)
    with pytest.raises(ValueError, match="draw"):
        Backoff().delay(0, 1.0)


def test_half_jitter_draws_between_half_and_all_of_the_step() -> None:
    """The agent's pacing (jitter=0.5): attempt n waits in [step/2, step]."""
    policy = Backoff(0.2, 30.0, jitter=0.5)
    assert policy.delay(2, 0.0) == pytest.approx(0.8)
    assert policy.delay(2, 0.999999) == pytest.approx(0.4, abs=1e-6)
    assert policy.delay(40, 0.5) == pytest.approx(22.5)


def test_retries_grow_with_each_failure_and_start_over_on_success() -> None:
    retries = Retries(Backoff(initial=1.0, maximum=8.0, jitter=0.5), lambda: 0.0)
    assert [retries.failed() for _ in range(5)] == [1.0, 2.0, 4.0, 8.0, 8.0]
    assert retries.attempt == 5
    retries.succeeded()
    assert retries.attempt == 0
    assert retries.failed() == 1.0


def test_retries_take_the_jitter_from_their_draw() -> None:
    draws = iter([0.5, 0.0])
    retries = Retries(Backoff(initial=2.0, maximum=8.0, jitter=0.5), lambda: next(draws))
    assert retries.failed() == 1.5  # 2 s shortened by half the jitter
    assert retries.failed() == 4.0
