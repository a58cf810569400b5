"""Applies rotation steps and operator commands to the CA state, and persists the journal.

Every method here blocks (key generation, SQL): the daemon calls them from a worker thread,
one at a time under its lock, and only then swaps `state`, which readers on the event loop use
without locks. Scheduled rotation and `authority ... prepare|activate|taint|revoke` go through
the same `insignia.server.ca.rotation` checks, so the two cannot disagree.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Protocol

from cryptography import x509

from insignia.bundle import Bundle, JwtPublicKey
from insignia.server.ca import rotation
from insignia.server.ca.keymanager import KeyManager
from insignia.server.ca.rotation import AuthorityRecord, AuthorityState, Step
from insignia.server.ca.state import (
    CaSettings,
    CaState,
    JwtSlot,
    X509Slot,
    from_records,
    key_name,
    new_jwt_slot,
    new_x509_slot,
    to_records,
)
from insignia.server.datastore.records import AuthorityKind, CaKeyRecord


class CaJournal(Protocol):
    """What the datastore offers for the CA journal (blocking calls)."""

    def load_ca_keys(self) -> list[CaKeyRecord]: ...

    def put_ca_keys(self, records: Sequence[CaKeyRecord]) -> None: ...

    def delete_ca_key(self, kind: AuthorityKind, key_id: str) -> None: ...


Slot = X509Slot | JwtSlot
KINDS: tuple[AuthorityKind, ...] = ("x509", "jwt")


class Authorities:
    def __init__(
        self,
        settings: CaSettings,
        keys: KeyManager,
        journal: CaJournal,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings = settings
        self.keys = keys
        self.journal = journal
        self.clock = clock
        self.state = CaState()

    # --- lifecycle ---------------------------------------------------------------------

    def load(self) -> list[str]:
        """Read the journal (restarts keep the slots), then catch up with the schedule."""
        self.state = from_records(self.journal.load_ca_keys(), self.keys)
        self._save_all()
        return self.rotate()

    def rotate(self) -> list[str]:
        """Apply every step due now for both kinds; returns what happened, for the log."""
        done: list[str] = []
        for kind in KINDS:
            for _ in range(8):  # a bounded loop: each step moves the state forward
                step = rotation.next_step(self.state.records(kind), self.clock())
                if step is None:
                    break
                done.append(f"{kind} {self._apply(kind, step)}")
        return done

    def next_check(self) -> datetime:
        now = self.clock()
        return min(rotation.next_check(self.state.records(k), now) for k in KINDS)

    def _apply(self, kind: AuthorityKind, step: Step) -> str:
        now = self.clock()
        if step is Step.PREPARE:
            return f"prepared {self.prepare(kind).authority_id}"
        if step is Step.ACTIVATE:
            return f"activated {self.activate(kind).authority_id}"
        records = self.state.records(kind)
        expired = [r for r in records if r.state is AuthorityState.OLD and r.not_after <= now]
        self._set(kind, rotation.without_expired(records, now))
        for record in expired:
            self.journal.delete_ca_key(kind, record.authority_id)
            self.keys.delete(key_name(kind, record.authority_id))
        return "dropped expired " + ", ".join(r.authority_id for r in expired)

    # --- operator commands (also used by the schedule) ----------------------------------

    def prepare(self, kind: AuthorityKind) -> AuthorityRecord:
        now = self.clock()
        slot: Slot = (
            new_x509_slot(self.settings, self.keys, now)
            if kind == "x509"
            else new_jwt_slot(self.settings, self.keys, now)
        )
        records, replaced = rotation.with_prepared(self.state.records(kind), slot.record)
        self._set(kind, records, extra=slot)
        if replaced is not None:
            self.journal.delete_ca_key(kind, replaced.authority_id)
            self.keys.delete(key_name(kind, replaced.authority_id))
        return slot.record

    def activate(self, kind: AuthorityKind, authority_id: str = "") -> AuthorityRecord:
        records = rotation.activated(self.state.records(kind), authority_id)
        self._set(kind, records)
        active = rotation.find(records, AuthorityState.ACTIVE)
        assert active is not None
        return active

    def taint(self, kind: AuthorityKind, authority_id: str) -> AuthorityRecord:
        records = rotation.tainted(self.state.records(kind), authority_id)
        self._set(kind, records)
        return next(r for r in records if r.authority_id == authority_id)

    def revoke(self, kind: AuthorityKind, authority_id: str) -> AuthorityRecord:
        before = {r.authority_id: r for r in self.state.records(kind)}
        records = rotation.revoked(self.state.records(kind), authority_id)
        gone = next(
            r for r in to_records(self.state) if r.kind == kind and r.key_id == authority_id
        )
        self._set(kind, records)
        self.journal.put_ca_keys([replace(gone, revoked=True)])
        self.keys.delete(key_name(kind, authority_id))
        return before[authority_id]

    # --- state plumbing ------------------------------------------------------------------

    def _set(
        self, kind: AuthorityKind, records: Sequence[AuthorityRecord], extra: Slot | None = None
    ) -> None:
        """Rebuild the slots of `kind` from `records` (plus a new slot) and persist them."""
        current: list[Slot] = [*(self.state.x509 if kind == "x509" else self.state.jwt)]
        if extra is not None:
            current.append(extra)
        by_id = {s.record.authority_id: s for s in current}
        slots = [replace(by_id[r.authority_id], record=r) for r in records]
        if kind == "x509":
            new_state = CaState(tuple(s for s in slots if isinstance(s, X509Slot)), self.state.jwt)
        else:
            new_state = CaState(self.state.x509, tuple(s for s in slots if isinstance(s, JwtSlot)))
        self.journal.put_ca_keys([r for r in to_records(new_state) if r.kind == kind])
        self.state = new_state

    def _save_all(self) -> None:
        self.journal.put_ca_keys(to_records(self.state))

    # --- what others read ------------------------------------------------------------------

    def bundle(self, sequence: int = 0) -> Bundle:
        """The local trust bundle: upstream root or our CA certs, and the JWT keys, including
        prepared authorities (published before use) and old ones until they expire."""
        now = self.clock()
        if self.settings.upstream is not None:
            x509_authorities: tuple[x509.Certificate, ...] = (self.settings.upstream.root,)
        else:
            live = {r.authority_id for r in rotation.published(self.state.records("x509"), now)}
            x509_authorities = tuple(
                s.certificate for s in self.state.x509 if s.record.authority_id in live
            )
        live_jwt = {r.authority_id for r in rotation.published(self.state.records("jwt"), now)}
        jwt: dict[str, JwtPublicKey] = {
            s.record.authority_id: s.public_key
            for s in self.state.jwt
            if s.record.authority_id in live_jwt
        }
        return Bundle(
            self.settings.trust_domain,
            x509_authorities,
            jwt,
            sequence,
            refresh_hint=refresh_hint(self.settings.ttl),
        )


def refresh_hint(ca_ttl: timedelta) -> int:
    """How often relying parties should re-fetch the bundle: a tenth of the CA life, 1 s..5 min."""
    return int(max(1, min(300, ca_ttl.total_seconds() / 10)))
