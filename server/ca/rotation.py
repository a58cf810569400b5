"""CA and JWT key rotation as a pure state machine over authority records (no I/O, no keys).

Each kind of authority (X.509 CA, JWT signing key) moves through prepared -> active -> old, on
SPIRE's schedule (docs/design-notes.md §6): a successor is prepared, and published in the
bundle, when the active authority's remaining life falls to min(life/2, 30d); it becomes active
when that falls to min(life/6, 7d). An old authority stays in the bundle until it expires,
since SVIDs it signed never outlive it; a revoked one leaves at once. The daemon applies the
steps and persists the records; operators drive the same transitions by hand (prepare,
activate, taint, revoke) through the checks below, so manual and scheduled rotation cannot
disagree.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

MAX_PREPARE_THRESHOLD = timedelta(days=30)
MAX_ACTIVATE_THRESHOLD = timedelta(days=7)


class AuthorityState(enum.Enum):
    PREPARED = "prepared"
    ACTIVE = "active"
    OLD = "old"


@dataclass(frozen=True, slots=True)
class AuthorityRecord:
    """One signing authority as the rotation logic sees it.

    `authority_id` is the hex SubjectKeyIdentifier of an X.509 CA or the `kid` of a JWT key:
    the same name the bundle, the sync stream's taint lists and the CLI use.
    """

    authority_id: str
    state: AuthorityState
    not_before: datetime
    not_after: datetime
    tainted: bool = False

    @property
    def lifetime(self) -> timedelta:
        return self.not_after - self.not_before


class AuthorityError(ValueError):
    """A manual transition that the current records do not allow; says what was expected."""

    def __init__(self, authority_id: str, reason: str) -> None:
        super().__init__(f"authority {authority_id or '(none)'}: {reason}")
        self.authority_id = authority_id
        self.reason = reason


class Step(enum.Enum):
    """What the daemon must do next. PREPARE creates a key (I/O); the rest are record edits."""

    PREPARE = "prepare"
    ACTIVATE = "activate"
    DROP_EXPIRED = "drop_expired"


def prepare_threshold(lifetime: timedelta) -> timedelta:
    return min(lifetime / 2, MAX_PREPARE_THRESHOLD)


def activate_threshold(lifetime: timedelta) -> timedelta:
    return min(lifetime / 6, MAX_ACTIVATE_THRESHOLD)


def guaranteed_svid_ttl(ca_ttl: timedelta) -> timedelta:
    """The longest SVID a CA of `ca_ttl` always signs in full (SPIRE's min(ca_ttl/6, 7d)): a
    CA stays active until that much of its life remains, and no SVID outlives its signer."""
    return activate_threshold(ca_ttl)


def longest_svid_ttl(ca_ttl: timedelta) -> timedelta:
    """The longest TTL an entry may ask for: six guaranteed spans, the CA's ttl capped at 42 d;
    past the guarantee an SVID is cut short at its CA's expiry (the startup warning says so)."""
    return guaranteed_svid_ttl(ca_ttl) * 6


def ttl_beyond_guarantee(name: str, ttl: timedelta, ca_ttl: timedelta) -> str | None:
    """The startup warning for a configured TTL the CA cannot guarantee, or None."""
    guaranteed = guaranteed_svid_ttl(ca_ttl)
    if ttl <= guaranteed:
        return None
    return (
        f"{name} {_seconds(ttl)} s exceeds {_seconds(guaranteed)} s, the longest TTL a CA with "
        f"ttl {_seconds(ca_ttl)} s guarantees; SVIDs will be cut short at the CA's expiry"
    )


def _seconds(value: timedelta) -> int:
    return int(value.total_seconds())


def find(records: Iterable[AuthorityRecord], state: AuthorityState) -> AuthorityRecord | None:
    return next((r for r in records if r.state is state), None)


def _get(records: Sequence[AuthorityRecord], authority_id: str) -> AuthorityRecord:
    for record in records:
        if record.authority_id == authority_id:
            return record
    known = ", ".join(r.authority_id for r in records) or "none"
    raise AuthorityError(authority_id, f"no such authority (known: {known})")


def next_step(records: Sequence[AuthorityRecord], now: datetime) -> Step | None:
    """The one transition due at `now`, or None. Call repeatedly until None."""
    active = find(records, AuthorityState.ACTIVE)
    prepared = find(records, AuthorityState.PREPARED)
    if any(r.state is AuthorityState.OLD and r.not_after <= now for r in records):
        return Step.DROP_EXPIRED
    if active is None or active.not_after <= now:
        # Bootstrap, or the active one ran out (e.g. the server was down): replace it now.
        return Step.ACTIVATE if prepared is not None and prepared.not_after > now else Step.PREPARE
    remaining = active.not_after - now
    if prepared is None:
        if remaining <= prepare_threshold(active.lifetime):
            return Step.PREPARE
        return None
    if remaining <= activate_threshold(active.lifetime):
        return Step.ACTIVATE
    return None


def next_check(records: Sequence[AuthorityRecord], now: datetime) -> datetime:
    """When `next_step` next returns a step (never later than one hour from `now`)."""
    times = [now + timedelta(hours=1)]
    active = find(records, AuthorityState.ACTIVE)
    if active is None:
        return now
    times.append(active.not_after)
    if find(records, AuthorityState.PREPARED) is None:
        times.append(active.not_after - prepare_threshold(active.lifetime))
    else:
        times.append(active.not_after - activate_threshold(active.lifetime))
    times.extend(r.not_after for r in records if r.state is AuthorityState.OLD)
    return max(now, min(times))


def with_prepared(
    records: Sequence[AuthorityRecord], new: AuthorityRecord
) -> tuple[list[AuthorityRecord], AuthorityRecord | None]:
    """Add `new` as the prepared authority; returns the records and the prepared one it
    replaced (whose key the caller deletes). A replaced prepared key never signed anything."""
    if new.state is not AuthorityState.PREPARED:
        raise AuthorityError(new.authority_id, "a new authority must start prepared")
    replaced = find(records, AuthorityState.PREPARED)
    kept = [r for r in records if r.state is not AuthorityState.PREPARED]
    return [*kept, new], replaced


def activated(records: Sequence[AuthorityRecord], authority_id: str = "") -> list[AuthorityRecord]:
    """The prepared authority becomes active and the active one becomes old."""
    prepared = find(records, AuthorityState.PREPARED)
    if prepared is None:
        raise AuthorityError(authority_id, "no prepared authority to activate; prepare one first")
    if authority_id and prepared.authority_id != authority_id:
        raise AuthorityError(
            authority_id, f"is not the prepared authority (that is {prepared.authority_id})"
        )
    result = []
    for record in records:
        if record is prepared:
            result.append(replace(record, state=AuthorityState.ACTIVE))
        elif record.state is AuthorityState.ACTIVE:
            result.append(replace(record, state=AuthorityState.OLD))
        else:
            result.append(record)
    return result


def tainted(
    records: Sequence[AuthorityRecord], authority_id: str, *, active_too: bool = False
) -> list[AuthorityRecord]:
    """Mark an old authority tainted: agents must replace the SVIDs it signed.

    Only an old authority can be tainted, because the active one would keep signing new SVIDs
    with the suspect key; activate a successor first (as SPIRE requires). `active_too`: the
    records are another server's, whose active key an operator cannot replace from here; its
    owner stops signing with a tainted active key and replaces it (`replacement_step`), and a
    dead owner signs nothing.
    """
    record = _get(records, authority_id)
    allowed = (AuthorityState.OLD, AuthorityState.ACTIVE) if active_too else (AuthorityState.OLD,)
    if record.state not in allowed:
        expected = "an old or active" if active_too else "an old"
        raise AuthorityError(
            authority_id, f"is {record.state.value}; only {expected} authority can be tainted"
        )
    if record.tainted:
        raise AuthorityError(authority_id, "is already tainted")
    return [replace(r, tainted=True) if r is record else r for r in records]


def revoked(
    records: Sequence[AuthorityRecord], authority_id: str, *, active_too: bool = False
) -> list[AuthorityRecord]:
    """Remove a tainted old authority from the records (and so from the bundle).
    `active_too`: as for `tainted`, another server's tainted active key may go too."""
    record = _get(records, authority_id)
    allowed = (AuthorityState.OLD, AuthorityState.ACTIVE) if active_too else (AuthorityState.OLD,)
    if record.state not in allowed or not record.tainted:
        raise AuthorityError(
            authority_id, "only a tainted old authority can be revoked; taint it first"
        )
    return [r for r in records if r is not record]


def compromised(records: Sequence[AuthorityRecord]) -> bool:
    """The active authority was tainted (through another server): it must sign nothing more."""
    active = find(records, AuthorityState.ACTIVE)
    return active is not None and active.tainted


def replacement_step(records: Sequence[AuthorityRecord]) -> Step | None:
    """How to replace a tainted active authority: activate the prepared one, which is in the
    bundle already, or prepare one first (the caller lets it reach every bundle, then asks
    again). None when nothing is compromised."""
    if not compromised(records):
        return None
    return Step.ACTIVATE if find(records, AuthorityState.PREPARED) is not None else Step.PREPARE


def without_expired(records: Sequence[AuthorityRecord], now: datetime) -> list[AuthorityRecord]:
    return [r for r in records if not (r.state is AuthorityState.OLD and r.not_after <= now)]


def published(records: Sequence[AuthorityRecord], now: datetime) -> list[AuthorityRecord]:
    """What the bundle carries: every authority not yet expired, prepared ones included."""
    return [r for r in records if r.not_after > now]
