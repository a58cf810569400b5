"""The signer's rules apart from its I/O: a refused entry backs off on its own schedule, and a
cached JWT-SVID past half life is still served when no fresh one can be had."""

from __future__ import annotations

from datetime import timedelta

from insignia.agent.svids.rotation import (
    EntryRetry,
    backing_off,
    jwt_needs_renewal,
    jwt_servable,
    retry_after_refusal,
)
from insignia.backoff import Backoff
from tests.unit.common import NOW

BACKOFF = Backoff(initial=1.0, maximum=8.0, jitter=0.5)
SECOND = timedelta(seconds=1)


def test_each_refusal_in_a_row_backs_off_further_up_to_the_ceiling() -> None:
    first = retry_after_refusal(None, NOW, BACKOFF, 0.0)
    assert first == EntryRetry(NOW + 2 * SECOND, 1)
    second = retry_after_refusal(first, NOW, BACKOFF, 0.0)
    assert second == EntryRetry(NOW + 4 * SECOND, 2)
    many = EntryRetry(NOW, 10)
    assert retry_after_refusal(many, NOW, BACKOFF, 0.5).at == NOW + 6 * SECOND  # 8 s, jittered


def test_an_entry_waits_out_its_retry_and_only_that() -> None:
    retry = EntryRetry(NOW + 2 * SECOND, 1)
    assert backing_off(retry, NOW)
    assert not backing_off(retry, NOW + 2 * SECOND)
    assert not backing_off(None, NOW)


def test_half_life_yields_to_availability_but_expiry_and_taint_do_not() -> None:
    issued, expires = NOW - 40 * SECOND, NOW + 20 * SECOND  # past half life
    assert jwt_needs_renewal(issued, expires, NOW, "k1", frozenset())
    assert jwt_servable(expires, NOW, "k1", frozenset())
    assert not jwt_servable(expires, NOW, "k1", frozenset({"k1"}))
    assert not jwt_servable(expires, expires, "k1", frozenset())
