"""The tests' one polling helper: returns what it waited for, or names it in the timeout."""

from __future__ import annotations

import itertools
import time

import pytest

from devtools.harness.waiting import wait_for


def test_returns_the_first_truthy_value() -> None:
    counter = itertools.count()
    assert wait_for(lambda: next(counter) >= 3 and "done", 5, "three polls") == "done"


def test_times_out_naming_what_it_waited_for() -> None:
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="waiting for the impossible"):
        wait_for(lambda: False, 0.05, "the impossible")
    assert 0.05 <= time.monotonic() - start < 2


def test_an_error_in_the_predicate_ends_the_wait_at_once() -> None:
    def dead() -> bool:
        raise RuntimeError("process exited")

    with pytest.raises(RuntimeError, match="process exited"):
        wait_for(dead, 60, "a process that died")
