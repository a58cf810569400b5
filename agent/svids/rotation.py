"""When the agent renews an SVID: pure decisions over times and sets, testable without a clock.

WIT-SVIDs follow the X.509 rule (half life, jittered; at once on taint, expiry or a changed
entry): their key pair is made here and each token is pushed to open streams.

X.509-SVIDs renew at half their lifetime, jittered by up to 10% of that half life so a fleet
of agents that synced together does not hit the server in one burst. A tainted signing
authority (the server is retiring a compromised CA) means "now", whatever the schedule says.
JWT-SVIDs renew at half life too, without jitter: they are minted on demand, so they do not
arrive in bursts; and when a fresh one cannot be had, a cached one past half life is still
served until it expires (half life yields to availability; expiry and taint never do). An
entry the server refused to sign is retried on its own backoff, apart from the others.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from insignia.agent.cache.entries import SigningFields
from insignia.backoff import Backoff

MAX_JITTER: Final = 0.1


class InvalidJitter(ValueError):
    def __init__(self, value: float) -> None:
        super().__init__(f"jitter {value!r} outside [-{MAX_JITTER}, {MAX_JITTER}]")
        self.value = value


class RenewReason(enum.Enum):
    """Why an SVID is (re)signed; also the `reason` label of the rotations metric."""

    MISSING = "missing"
    HALF_LIFE = "half_life"
    TAINTED = "tainted"
    ENTRY_CHANGED = "entry_changed"
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class SvidTiming:
    """What the schedule needs to know about one issued SVID."""

    not_before: datetime
    not_after: datetime
    renew_at: datetime
    authority_ids: frozenset[str]  # hex key ids of every CA above the leaf
    signed_for: SigningFields  # the entry's signing fields when it was issued


@dataclass(frozen=True, slots=True)
class WitTiming:
    """What the schedule needs to know about one issued WIT-SVID."""

    expires_at: datetime
    renew_at: datetime
    kid: str  # the WIT key that signed it: tainting it means renew now
    signed_ttl: int  # the entry's wit_svid_ttl when it was signed


def wit_renew_reason(
    timing: WitTiming | None, wit_svid_ttl: int, now: datetime, tainted_kids: frozenset[str]
) -> RenewReason | None:
    """Why an entry's WIT-SVID (and its key pair) must be made again now, or None."""
    if timing is None:
        return RenewReason.MISSING
    if now >= timing.expires_at:
        return RenewReason.EXPIRED
    if timing.kid in tainted_kids:
        return RenewReason.TAINTED
    if timing.signed_ttl != wit_svid_ttl:
        return RenewReason.ENTRY_CHANGED
    if now >= timing.renew_at:
        return RenewReason.HALF_LIFE
    return None


def draw_jitter(rng: random.Random) -> float:
    """A fresh jitter for one SVID, drawn once at issuance so its schedule is stable."""
    return rng.uniform(-MAX_JITTER, MAX_JITTER)


def half_life_renewal(not_before: datetime, not_after: datetime, jitter: float = 0.0) -> datetime:
    """`not_before` plus half the lifetime, moved by `jitter` times that half."""
    if not -MAX_JITTER <= jitter <= MAX_JITTER:
        raise InvalidJitter(jitter)
    half = (not_after - not_before) / 2
    return not_before + half * (1.0 + jitter)


def x509_renew_reason(
    timing: SvidTiming | None,
    signing_fields: SigningFields,
    now: datetime,
    tainted_authorities: frozenset[str],
) -> RenewReason | None:
    """Why the SVID of an entry must be signed again now, or None when it is still good."""
    if timing is None:
        return RenewReason.MISSING
    if now >= timing.not_after:
        return RenewReason.EXPIRED
    if timing.authority_ids & tainted_authorities:
        return RenewReason.TAINTED
    if timing.signed_for != signing_fields:
        return RenewReason.ENTRY_CHANGED
    if now >= timing.renew_at:
        return RenewReason.HALF_LIFE
    return None


def jwt_needs_renewal(
    issued_at: datetime,
    expires_at: datetime,
    now: datetime,
    kid: str,
    tainted_kids: frozenset[str],
) -> bool:
    """A cached JWT-SVID is reused until half its life has passed or its key is tainted."""
    return kid in tainted_kids or now >= half_life_renewal(issued_at, expires_at)


def jwt_servable(
    expires_at: datetime, now: datetime, kid: str, tainted_kids: frozenset[str]
) -> bool:
    """Whether a cached JWT-SVID may be served when no fresh one can be had (the caller's mint
    budget is spent, or the server is unreachable): unexpired and its key not tainted."""
    return expires_at > now and kid not in tainted_kids


@dataclass(frozen=True, slots=True)
class EntryRetry:
    """When an entry the server refused to sign is tried again, after how many refusals."""

    at: datetime
    refusals: int


def retry_after_refusal(
    previous: EntryRetry | None, now: datetime, backoff: Backoff, draw: float
) -> EntryRetry:
    """The next try of a refused entry: each refusal in a row backs off one step further."""
    refusals = (previous.refusals if previous else 0) + 1
    return EntryRetry(now + timedelta(seconds=backoff.delay(refusals, draw)), refusals)


def backing_off(retry: EntryRetry | None, now: datetime) -> bool:
    """Whether a refused entry waits still, whatever rotation asks for it."""
    return retry is not None and now < retry.at


def next_wakeup(renew_times: Iterable[datetime], now: datetime, idle: timedelta) -> datetime:
    """The earliest scheduled renewal, or `now + idle` when nothing is scheduled sooner."""
    return min([now + idle, *renew_times])
