"""Applies rotation steps and operator commands to the CA state, and persists the journal.

Several servers may share one journal (one PostgreSQL database): each row names the server
holding its private key. A server's `state` holds its own slots; `peers` holds the other
servers' rows, whose public parts join the bundle, and whose taint and revocation any server
may record (the owner adopts them from the journal, see `adopt_journal`), the active key's
too: its owner may be dead, and a live owner replaces it (`replace_compromised`).

Every method here blocks (key generation, SQL): the daemon calls them from a worker thread,
one at a time under its lock, and only then swaps `state`, which readers on the event loop use
without locks. Scheduled rotation and `authority ... prepare|activate|taint|revoke` go through
the same `insignia.server.ca.rotation` checks, so the two cannot disagree.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Literal, Protocol

from cryptography import x509

from insignia.bundle import Bundle, JwtPublicKey
from insignia.keys import public_key_from_der
from insignia.server.ca import rotation
from insignia.server.ca.keymanager import KeyManager
from insignia.server.ca.rotation import AuthorityError, AuthorityRecord, AuthorityState, Step
from insignia.server.ca.state import (
    KEY_KINDS,
    CaSettings,
    CaState,
    KeySlot,
    X509Slot,
    authority_record,
    from_records,
    key_name,
    new_key_slot,
    new_x509_slot,
    to_records,
    x509_certificate,
)
from insignia.server.datastore.records import AuthorityKind, CaKeyRecord


class CaJournal(Protocol):
    """What the datastore offers for the CA journal (blocking calls)."""

    def load_ca_keys(self) -> list[CaKeyRecord]: ...

    def put_ca_keys(self, records: Sequence[CaKeyRecord]) -> None: ...

    def delete_ca_key(self, kind: AuthorityKind, key_id: str) -> None: ...


Slot = X509Slot | KeySlot
KINDS: tuple[AuthorityKind, ...] = ("x509", *KEY_KINDS)


class Authorities:
    def __init__(
        self,
        settings: CaSettings,
        keys: KeyManager,
        journal: CaJournal,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        server_id: str = "",
    ) -> None:
        self.settings = settings
        self.keys = keys
        self.journal = journal
        self.clock = clock
        self.server_id = server_id
        self.state = CaState()
        self.peers: tuple[CaKeyRecord, ...] = ()  # other servers' live (unrevoked) rows

    # --- lifecycle ---------------------------------------------------------------------

    def load(self) -> list[str]:
        """Read the journal (restarts keep the slots), then catch up with the schedule.
        Rows from before schema 0003 (no owner) are adopted; own rows whose key is gone
        and that `from_records` dropped leave the journal (they never signed anything)."""
        journal = self.journal.load_ca_keys()
        own = [r for r in journal if r.server_id in (self.server_id, "")]
        self.state = from_records(own, self.keys)
        self.adopt_peers(journal)
        kept = {(r.kind, r.key_id) for r in to_records(self.state, self.server_id)}
        for r in own:
            if not r.revoked and (r.kind, r.key_id) not in kept:
                self.journal.delete_ca_key(r.kind, r.key_id)
        self._save_all()
        return self.rotate()

    def adopt_journal(self) -> bool:
        """Take in what other servers wrote: their keys (for the bundle), and taint or
        revocation of our own keys done through another server's admin API. True when
        anything changed."""
        journal = self.journal.load_ca_keys()
        before = (self.peers, self.state)
        self.adopt_peers(journal)
        mine = {(r.kind, r.key_id): r for r in journal if r.server_id == self.server_id}
        for kind in KINDS:
            records = self.state.records(kind)
            for record in records:
                row = mine.get((kind, record.authority_id))
                if row is not None and row.revoked:
                    self._set(kind, [r for r in self.state.records(kind) if r is not record])
                    self.keys.delete(key_name(kind, record.authority_id))
                elif row is not None and row.tainted and not record.tainted:
                    self._set(
                        kind,
                        [replace(r, tainted=True) if r is record else r for r in records],
                    )
        return before != (self.peers, self.state)

    def compromised(self) -> bool:
        """Whether an active key of ours was tainted (through another server's admin API)."""
        return any(rotation.compromised(self.state.records(kind)) for kind in KINDS)

    def replace_compromised(self) -> tuple[list[str], bool]:
        """One step towards replacing every tainted active key of ours: activate its prepared
        successor, or prepare one. Returns what happened and whether a key was prepared
        (the caller then lets it reach every bundle before asking again)."""
        done: list[str] = []
        prepared = False
        for kind in KINDS:
            step = rotation.replacement_step(self.state.records(kind))
            if step is not None:
                done.append(f"{kind} {self._apply(kind, step)} (the active key was tainted)")
                prepared = prepared or step is Step.PREPARE
        return done, prepared

    def adopt_peers(self, journal: Sequence[CaKeyRecord]) -> None:
        self.peers = self._peers_in(journal)

    def _peers_in(self, journal: Sequence[CaKeyRecord]) -> tuple[CaKeyRecord, ...]:
        return tuple(
            r for r in journal if r.server_id not in (self.server_id, "") and not r.revoked
        )

    def rotate(self) -> list[str]:
        """Apply every step due now for every kind; returns what happened, for the log."""
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
            else new_key_slot(kind, self.settings, self.keys, now)
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
        if self._peer_row(kind, authority_id) is not None:
            return self._mark_peer(kind, authority_id, "taint")
        records = rotation.tainted(self.state.records(kind), authority_id)
        self._set(kind, records)
        return next(r for r in records if r.authority_id == authority_id)

    def revoke(self, kind: AuthorityKind, authority_id: str) -> AuthorityRecord:
        if self._peer_row(kind, authority_id) is not None:
            return self._mark_peer(kind, authority_id, "revoke")
        before = {r.authority_id: r for r in self.state.records(kind)}
        records = rotation.revoked(self.state.records(kind), authority_id)
        gone = next(
            r
            for r in to_records(self.state, self.server_id)
            if r.kind == kind and r.key_id == authority_id
        )
        self._set(kind, records)
        self.journal.put_ca_keys([replace(gone, revoked=True)])
        self.keys.delete(key_name(kind, authority_id))
        return before[authority_id]

    def _peer_row(self, kind: AuthorityKind, authority_id: str) -> CaKeyRecord | None:
        return next((r for r in self.peers if r.kind == kind and r.key_id == authority_id), None)

    def _mark_peer(
        self, kind: AuthorityKind, authority_id: str, action: Literal["taint", "revoke"]
    ) -> AuthorityRecord:
        """Taint or revoke another server's key, checked by the same rules against that
        server's slots as the journal has them; the owner adopts it (`adopt_journal`)."""
        self.adopt_peers(self.journal.load_ca_keys())  # judge the owner's newest slots
        row = self._peer_row(kind, authority_id)
        if row is None:
            raise AuthorityError(authority_id, "was revoked meanwhile by its server")
        theirs = [
            authority_record(r)
            for r in self.peers
            if r.kind == kind and r.server_id == row.server_id
        ]
        if action == "taint":
            rotation.tainted(theirs, authority_id, active_too=True)  # AuthorityError: refused
            self.journal.put_ca_keys([replace(row, tainted=True)])
            self.peers = tuple(replace(r, tainted=True) if r is row else r for r in self.peers)
            return replace(authority_record(row), tainted=True)
        rotation.revoked(theirs, authority_id, active_too=True)
        self.journal.put_ca_keys([replace(row, revoked=True)])
        self.peers = tuple(r for r in self.peers if r is not row)
        return authority_record(row)

    # --- state plumbing ------------------------------------------------------------------

    def _set(
        self, kind: AuthorityKind, records: Sequence[AuthorityRecord], extra: Slot | None = None
    ) -> None:
        """Rebuild the slots of `kind` from `records` (plus a new slot) and persist them."""
        current: list[Slot] = [*self.state.slots(kind)]
        if extra is not None:
            current.append(extra)
        by_id = {s.record.authority_id: s for s in current}
        new_state = self.state.with_slots(
            kind, [replace(by_id[r.authority_id], record=r) for r in records]
        )
        self.journal.put_ca_keys(
            [r for r in to_records(new_state, self.server_id) if r.kind == kind]
        )
        self.state = new_state

    def _save_all(self) -> None:
        self.journal.put_ca_keys(to_records(self.state, self.server_id))

    # --- what others read ------------------------------------------------------------------

    def by_server(self, kind: AuthorityKind) -> list[tuple[str, AuthorityRecord]]:
        """Every server's live authorities of `kind` with the id of the server holding the
        private key: ours first, then our peers'."""
        ours = [(self.server_id, r) for r in self.state.records(kind)]
        peers = [(r.server_id, authority_record(r)) for r in self.peers if r.kind == kind]
        return [*ours, *peers]

    def all_records(self, kind: AuthorityKind) -> list[AuthorityRecord]:
        """Every server's live authorities of `kind`: ours first, then our peers'."""
        return [record for _, record in self.by_server(kind)]

    def tainted(self, kind: AuthorityKind) -> list[str]:
        """Tainted authorities of every server: agents replace what these signed."""
        return [r.authority_id for r in self.all_records(kind) if r.tainted]

    def bundle(self, sequence: int = 0, journal: Sequence[CaKeyRecord] | None = None) -> Bundle:
        """The trust domain's bundle: the upstream root or every server's CA certs, and every
        server's JWT and WIT keys, including prepared authorities (published before use) and
        old ones until they expire. With an upstream CA, every server must share that upstream.
        `journal`: take the peers from these rows (fresh from the database) instead."""
        now = self.clock()
        known = self.peers if journal is None else self._peers_in(journal)
        peers = [r for r in known if r.not_after > now]
        if self.settings.upstream is not None:
            x509_authorities: tuple[x509.Certificate, ...] = (self.settings.upstream.root,)
        else:
            live = {r.authority_id for r in rotation.published(self.state.records("x509"), now)}
            x509_authorities = tuple(
                s.certificate for s in self.state.x509 if s.record.authority_id in live
            ) + tuple(x509_certificate(r) for r in peers if r.kind == "x509")
        keys: dict[str, dict[str, JwtPublicKey]] = {}
        for kind in KEY_KINDS:
            live = {r.authority_id for r in rotation.published(self.state.records(kind), now)}
            keys[kind] = {
                s.record.authority_id: s.public_key
                for s in self.state.key_slots(kind)
                if s.record.authority_id in live
            }
            keys[kind].update(
                (r.key_id, public_key_from_der(r.public_key)) for r in peers if r.kind == kind
            )
        return Bundle(
            self.settings.trust_domain,
            x509_authorities,
            keys["jwt"],
            sequence,
            refresh_hint=refresh_hint(self.settings.ttl),
            wit_authorities=keys["wit"],
        )


def refresh_hint(ca_ttl: timedelta) -> int:
    """How often relying parties should re-fetch the bundle: a tenth of the CA life, 1 s..5 min."""
    return int(max(1, min(300, ca_ttl.total_seconds() / 10)))
