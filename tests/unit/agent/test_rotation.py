import random
from datetime import timedelta

import pytest

from insignia.agent.svids.rotation import (
    MAX_JITTER,
    InvalidJitter,
    RenewReason,
    SvidTiming,
    draw_jitter,
    half_life_renewal,
    jwt_needs_renewal,
    next_wakeup,
    x509_renew_reason,
)
from tests.unit.agent.helpers import make_entry
from tests.unit.common import NOW

HOUR = timedelta(hours=1)


def timing(entry_fields, renew_at=None, authorities=frozenset({"aa"})):
    return SvidTiming(NOW, NOW + HOUR, renew_at or NOW + HOUR / 2, authorities, entry_fields)


def test_half_life_without_jitter_is_the_midpoint():
    assert half_life_renewal(NOW, NOW + HOUR) == NOW + timedelta(minutes=30)


@pytest.mark.parametrize("jitter", [-MAX_JITTER, MAX_JITTER])
def test_jitter_moves_renewal_by_at_most_ten_percent_of_half_life(jitter):
    at = half_life_renewal(NOW, NOW + HOUR, jitter)
    assert abs((at - (NOW + HOUR / 2)).total_seconds()) == pytest.approx(180.0)


@pytest.mark.parametrize("jitter", [0.11, -0.2, float("nan")])
def test_jitter_outside_the_range_is_refused(jitter):
    with pytest.raises(InvalidJitter):
        half_life_renewal(NOW, NOW + HOUR, jitter)


def test_drawn_jitter_stays_in_range_and_varies():
    rng = random.Random(7)
    draws = [draw_jitter(rng) for _ in range(500)]
    assert all(-MAX_JITTER <= d <= MAX_JITTER for d in draws)
    assert min(draws) < -0.08 and max(draws) > 0.08


def test_reasons_in_priority_order():
    entry = make_entry("e", "/w", "unix:uid:1")
    fields = entry.signing_fields
    assert x509_renew_reason(None, fields, NOW, frozenset()) is RenewReason.MISSING
    t = timing(fields)
    assert x509_renew_reason(t, fields, NOW + timedelta(minutes=10), frozenset()) is None
    assert (
        x509_renew_reason(t, fields, NOW + timedelta(minutes=31), frozenset())
        is RenewReason.HALF_LIFE
    )
    assert x509_renew_reason(t, fields, NOW + HOUR, frozenset()) is RenewReason.EXPIRED
    assert x509_renew_reason(t, fields, NOW, frozenset({"aa"})) is RenewReason.TAINTED
    changed = make_entry("e", "/w", "unix:uid:1", x509_ttl=60).signing_fields
    assert x509_renew_reason(t, changed, NOW, frozenset()) is RenewReason.ENTRY_CHANGED


def test_untainted_authority_does_not_force_renewal():
    fields = make_entry("e", "/w", "unix:uid:1").signing_fields
    assert x509_renew_reason(timing(fields), fields, NOW, frozenset({"bb"})) is None


def test_jwt_renews_at_half_life_or_when_its_key_is_tainted():
    exp = NOW + timedelta(minutes=5)
    assert not jwt_needs_renewal(NOW, exp, NOW + timedelta(minutes=2), "k1", frozenset())
    assert jwt_needs_renewal(NOW, exp, NOW + timedelta(seconds=150), "k1", frozenset())
    assert jwt_needs_renewal(NOW, exp, NOW, "k1", frozenset({"k1"}))


def test_next_wakeup_is_the_earliest_or_the_idle_bound():
    idle = timedelta(minutes=1)
    assert next_wakeup([], NOW, idle) == NOW + idle
    soon = NOW + timedelta(seconds=5)
    assert next_wakeup([NOW + HOUR, soon], NOW, idle) == soon
