from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from insignia.server.ca import rotation
from insignia.server.ca.rotation import AuthorityError, AuthorityRecord, AuthorityState, Step

T0 = datetime(2030, 1, 1, tzinfo=UTC)
DAY = timedelta(days=1)


def record(ident: str, state: AuthorityState, start: datetime, life: timedelta) -> AuthorityRecord:
    return AuthorityRecord(ident, state, start, start + life)


def test_bootstrap_prepares_then_activates() -> None:
    assert rotation.next_step([], T0) is Step.PREPARE
    prepared = [record("a", AuthorityState.PREPARED, T0, DAY)]
    assert rotation.next_step(prepared, T0) is Step.ACTIVATE
    assert rotation.next_check([], T0) == T0


def test_spire_schedule_for_a_24h_ca() -> None:
    active = [record("a", AuthorityState.ACTIVE, T0, DAY)]
    assert rotation.next_step(active, T0 + timedelta(hours=11, minutes=59)) is None
    assert rotation.next_check(active, T0) == T0 + timedelta(hours=1)  # capped at one hour
    assert rotation.next_check(active, T0 + timedelta(hours=11, minutes=30)) == T0 + timedelta(
        hours=12
    )
    assert rotation.next_step(active, T0 + timedelta(hours=12)) is Step.PREPARE
    both = [*active, record("b", AuthorityState.PREPARED, T0 + timedelta(hours=12), DAY)]
    assert rotation.next_step(both, T0 + timedelta(hours=19, minutes=59)) is None
    assert rotation.next_step(both, T0 + timedelta(hours=20)) is Step.ACTIVATE  # 24h/6 = 4h left
    swapped = rotation.activated(both)
    assert [(r.authority_id, r.state) for r in swapped] == [
        ("a", AuthorityState.OLD),
        ("b", AuthorityState.ACTIVE),
    ]
    assert rotation.next_step(swapped, T0 + DAY) is Step.DROP_EXPIRED
    assert [r.authority_id for r in rotation.without_expired(swapped, T0 + DAY)] == ["b"]
    # the old authority stays published until it expires; the prepared one is published too
    assert {r.authority_id for r in rotation.published(swapped, T0 + DAY - timedelta(1))} == {
        "a",
        "b",
    }


def test_thresholds_are_capped_for_long_lives() -> None:
    year = timedelta(days=365)
    assert rotation.prepare_threshold(year) == timedelta(days=30)
    assert rotation.activate_threshold(year) == timedelta(days=7)


def test_expired_active_is_replaced_at_once() -> None:
    stale = [record("a", AuthorityState.ACTIVE, T0, DAY)]
    assert rotation.next_step(stale, T0 + 2 * DAY) is Step.PREPARE


def test_manual_transitions_and_their_refusals() -> None:
    records = [record("a", AuthorityState.ACTIVE, T0, DAY)]
    with pytest.raises(AuthorityError, match="no prepared authority"):
        rotation.activated(records)
    with pytest.raises(AuthorityError, match="only an old authority can be tainted"):
        rotation.tainted(records, "a")
    with pytest.raises(AuthorityError, match="no such authority"):
        rotation.tainted(records, "zz")
    records, replaced = rotation.with_prepared(
        records, record("b", AuthorityState.PREPARED, T0, DAY)
    )
    assert replaced is None
    records, replaced = rotation.with_prepared(
        records, record("c", AuthorityState.PREPARED, T0, DAY)
    )
    assert replaced is not None and replaced.authority_id == "b"
    with pytest.raises(AuthorityError, match="not the prepared authority"):
        rotation.activated(records, "b")
    records = rotation.activated(records, "c")
    with pytest.raises(AuthorityError, match="taint it first"):
        rotation.revoked(records, "a")
    records = rotation.tainted(records, "a")
    with pytest.raises(AuthorityError, match="already tainted"):
        rotation.tainted(records, "a")
    assert [r.authority_id for r in rotation.revoked(records, "a")] == ["c"]


def test_another_servers_active_key_can_be_tainted_revoked_and_is_then_replaced() -> None:
    """Its owner cannot be asked to activate a successor from here (and may be dead), so the
    active key of another server's records may be tainted; its owner replaces it."""
    records = [record("a", AuthorityState.ACTIVE, T0, DAY)]
    assert rotation.replacement_step(records) is None
    with pytest.raises(AuthorityError, match="taint it first"):
        rotation.revoked(records, "a", active_too=True)
    prepared = [record("p", AuthorityState.PREPARED, T0, DAY)]
    with pytest.raises(AuthorityError, match="only an old or active authority"):
        rotation.tainted(prepared, "p", active_too=True)
    records = rotation.tainted(records, "a", active_too=True)
    assert rotation.compromised(records)
    assert rotation.replacement_step(records) is Step.PREPARE
    records, _ = rotation.with_prepared(records, prepared[0])
    assert rotation.replacement_step(records) is Step.ACTIVATE
    assert not rotation.compromised(rotation.activated(records))
    assert [r.authority_id for r in rotation.revoked(records, "a", active_too=True)] == ["p"]


@given(st.integers(min_value=60, max_value=400 * 86400), st.floats(min_value=0, max_value=1))
def test_schedule_invariants(life_seconds: int, fraction: float) -> None:
    """Whenever a step is due, next_check never lies in the future; prepare precedes activate."""
    life = timedelta(seconds=life_seconds)
    active = [record("a", AuthorityState.ACTIVE, T0, life)]
    now = T0 + life * fraction
    step = rotation.next_step(active, now)
    assert step in (None, Step.PREPARE)
    if step is not None:
        assert rotation.next_check(active, now) == now
    assert rotation.activate_threshold(life) < rotation.prepare_threshold(life)
