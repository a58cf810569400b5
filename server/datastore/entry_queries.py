"""Registration entries in SQL: one row per entry plus child rows for its lists.

Entries are written whole: an update rewrites the child rows in the same transaction, so a
reader (or a crash) never sees an entry with part of its selectors.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from insignia.selectors import Selector
from insignia.server.datastore.bulk import chunks, insert_rows
from insignia.server.datastore.errors import DuplicateEntry, EntryNotFound, EntryRevisionConflict
from insignia.server.datastore.schema import (
    entries,
    entry_dns_names,
    entry_federates_with,
    entry_selectors,
)
from insignia.server.entries import RegistrationEntry
from insignia.spiffeid import SpiffeId, TrustDomain


def identity_digest(entry: RegistrationEntry) -> str:
    """What makes two entries duplicates: same SPIFFE ID, parent and selector set."""
    text = "\0".join([str(entry.spiffe_id), str(entry.parent_id), *map(str, entry.selectors)])
    return hashlib.sha256(text.encode()).hexdigest()


def insert(conn: Connection, batch: Sequence[RegistrationEntry], now: datetime) -> None:
    """Insert new entries (revision 0), refusing any duplicate inside the batch or stored."""
    digests = _check_batch_unique(batch)
    _check_not_stored(conn, batch, digests)
    insert_rows(conn, entries, [_row(e, d, 0, e.created_at, now) for e, d in digests])
    _insert_children(conn, batch)


def update(
    conn: Connection, entry: RegistrationEntry, expected_revision: int | None, now: datetime
) -> RegistrationEntry:
    current = conn.execute(
        sa.select(entries.c.revision, entries.c.created_at).where(entries.c.id == entry.id)
    ).one_or_none()
    if current is None:
        raise EntryNotFound(entry.id)
    if expected_revision is not None and expected_revision != current.revision:
        raise EntryRevisionConflict(entry.id, expected_revision, int(current.revision))
    digest = identity_digest(entry)
    clash = conn.execute(
        sa.select(entries.c.id).where(entries.c.identity_digest == digest, entries.c.id != entry.id)
    ).scalar_one_or_none()
    if clash is not None:
        raise DuplicateEntry(entry.id, clash, "same spiffe_id, parent_id and selectors")
    stored = replace(entry, revision=int(current.revision) + 1, created_at=current.created_at)
    row = _row(stored, digest, stored.revision, stored.created_at, now)
    conn.execute(entries.update().where(entries.c.id == entry.id).values(**row))
    for child in (entry_selectors, entry_dns_names, entry_federates_with):
        conn.execute(child.delete().where(child.c.entry_id == entry.id))
    _insert_children(conn, [stored])
    return stored


def delete(conn: Connection, ids: Sequence[str]) -> list[RegistrationEntry]:
    """Delete every id or none: a missing id raises `EntryNotFound`."""
    found = {e.id: e for e in load_by_ids(conn, ids)}
    for entry_id in ids:
        if entry_id not in found:
            raise EntryNotFound(entry_id)
    for chunk in chunks(list(found)):
        conn.execute(entries.delete().where(entries.c.id.in_(chunk)))
    return [found[i] for i in dict.fromkeys(ids)]


def expired_ids(conn: Connection, now: datetime) -> list[str]:
    query = sa.select(entries.c.id).where(
        entries.c.expires_at.is_not(None), entries.c.expires_at <= now
    )
    return list(conn.execute(query).scalars())


def load_by_ids(conn: Connection, ids: Iterable[str]) -> list[RegistrationEntry]:
    result: list[RegistrationEntry] = []
    for chunk in chunks(list(dict.fromkeys(ids))):
        result.extend(load(conn, entries.c.id.in_(chunk)))
    return result


def load(conn: Connection, where: sa.ColumnElement[bool] | None = None) -> list[RegistrationEntry]:
    """Entries matching `where` (all when None), oldest first, with their child rows."""
    query = sa.select(entries).order_by(entries.c.created_at, entries.c.id)
    ids = sa.select(entries.c.id)
    if where is not None:
        query, ids = query.where(where), ids.where(where)
    rows = conn.execute(query).all()
    if not rows:
        return []

    def of_matching(table: sa.Table) -> sa.Select[Any]:
        select = sa.select(table)
        return select if where is None else select.where(table.c.entry_id.in_(ids))

    children: dict[str, defaultdict[str, list[Any]]] = {
        "selectors": defaultdict(list),
        "dns": defaultdict(list),
        "federates": defaultdict(list),
    }
    for r in conn.execute(of_matching(entry_selectors)):
        children["selectors"][r.entry_id].append((r.type, r.value))
    dns_query = of_matching(entry_dns_names).order_by(
        entry_dns_names.c.entry_id, entry_dns_names.c.position
    )
    for r in conn.execute(dns_query):
        children["dns"][r.entry_id].append(r.name)
    for r in conn.execute(of_matching(entry_federates_with)):
        children["federates"][r.entry_id].append(r.trust_domain)
    return _Decoder().entries(rows, children)


def having_selectors(selectors: Sequence[Selector]) -> sa.ColumnElement[bool]:
    """Entries whose selectors include every one given."""
    wanted = sa.or_(
        *(
            sa.and_(entry_selectors.c.type == s.type, entry_selectors.c.value == s.value)
            for s in set(selectors)
        )
    )
    matching = (
        sa.select(entry_selectors.c.entry_id)
        .where(wanted)
        .group_by(entry_selectors.c.entry_id)
        .having(sa.func.count() == len(set(selectors)))
    )
    return entries.c.id.in_(matching)


def holding_each(selectors: Sequence[Selector]) -> sa.ColumnElement[bool]:
    """Entries whose selectors include every one given, as one primary-key probe per selector
    and row: a page walked in index order stops after a page of matches, where
    `having_selectors` first groups every entry holding any of them (at 100k entries holding
    the selector: 7 ms against 6.5 s; a selector only the last entry holds costs the whole
    walk, 250 ms: benchmarks/console_entries.py)."""
    return sa.and_(
        *(
            sa.exists().where(
                entry_selectors.c.entry_id == entries.c.id,
                entry_selectors.c.type == s.type,
                entry_selectors.c.value == s.value,
            )
            for s in set(selectors)
        )
    )


def federating_with(trust_domain: TrustDomain) -> sa.ColumnElement[bool]:
    """Entries that federate with `trust_domain` (a primary-key probe per row, as above)."""
    return sa.exists().where(
        entry_federates_with.c.entry_id == entries.c.id,
        entry_federates_with.c.trust_domain == str(trust_domain),
    )


def page(conn: Connection, where: sa.ColumnElement[bool], limit: int) -> list[RegistrationEntry]:
    """The first `limit` entries matching `where` in (SPIFFE ID, id) order, as the database
    collates them (a cursor must compare as the database does)."""
    ids = list(
        conn.execute(
            sa.select(entries.c.id)
            .where(where)
            .order_by(entries.c.spiffe_id, entries.c.id)
            .limit(limit)
        ).scalars()
    )
    position = {entry_id: i for i, entry_id in enumerate(ids)}
    return sorted(load_by_ids(conn, ids), key=lambda e: position[e.id])


class _Decoder:
    """Rebuilds entries from rows, parsing each distinct ID or selector text once."""

    def __init__(self) -> None:
        self._ids: dict[str, SpiffeId] = {}
        self._selectors: dict[tuple[str, str], Selector] = {}
        self._tds: dict[str, TrustDomain] = {}

    def entries(
        self, rows: Sequence[sa.Row[Any]], children: dict[str, defaultdict[str, list[Any]]]
    ) -> list[RegistrationEntry]:
        return [
            RegistrationEntry(
                id=r.id,
                spiffe_id=self._id(r.spiffe_id),
                parent_id=self._id(r.parent_id),
                selectors=tuple(
                    sorted(self._selector(t, v) for t, v in children["selectors"][r.id])
                ),
                x509_svid_ttl=r.x509_svid_ttl,
                jwt_svid_ttl=r.jwt_svid_ttl,
                wit_svid_ttl=r.wit_svid_ttl,
                dns_names=tuple(children["dns"][r.id]),
                federates_with=tuple(
                    sorted((self._td(t) for t in children["federates"][r.id]), key=str)
                ),
                hint=r.hint,
                admin=r.admin,
                downstream=r.downstream,
                expires_at=r.expires_at,
                revision=int(r.revision),
                created_at=r.created_at,
            )
            for r in rows
        ]

    def _id(self, text: str) -> SpiffeId:
        sid = self._ids.get(text)
        if sid is None:
            sid = self._ids[text] = SpiffeId.parse(text)
        return sid

    def _selector(self, type_: str, value: str) -> Selector:
        key = (type_, value)
        sel = self._selectors.get(key)
        if sel is None:
            sel = self._selectors[key] = Selector(type_, value)
        return sel

    def _td(self, name: str) -> TrustDomain:
        td = self._tds.get(name)
        if td is None:
            td = self._tds[name] = TrustDomain(name)
        return td


def _row(
    e: RegistrationEntry, digest: str, revision: int, created_at: datetime, now: datetime
) -> dict[str, Any]:
    return {
        "id": e.id,
        "spiffe_id": str(e.spiffe_id),
        "parent_id": str(e.parent_id),
        "identity_digest": digest,
        "x509_svid_ttl": e.x509_svid_ttl,
        "jwt_svid_ttl": e.jwt_svid_ttl,
        "wit_svid_ttl": e.wit_svid_ttl,
        "hint": e.hint,
        "admin": e.admin,
        "downstream": e.downstream,
        "expires_at": e.expires_at,
        "revision": revision,
        "created_at": created_at,
        "updated_at": now,
    }


def _insert_children(conn: Connection, batch: Sequence[RegistrationEntry]) -> None:
    selectors = [
        {"entry_id": e.id, "type": s.type, "value": s.value} for e in batch for s in e.selectors
    ]
    dns = [
        {"entry_id": e.id, "position": i, "name": n}
        for e in batch
        for i, n in enumerate(e.dns_names)
    ]
    federates = [
        {"entry_id": e.id, "trust_domain": str(td)} for e in batch for td in e.federates_with
    ]
    for table, rows in (
        (entry_selectors, selectors),
        (entry_dns_names, dns),
        (entry_federates_with, federates),
    ):
        insert_rows(conn, table, rows)


def _check_batch_unique(batch: Sequence[RegistrationEntry]) -> list[tuple[RegistrationEntry, str]]:
    by_id: dict[str, str] = {}
    by_digest: dict[str, str] = {}
    result = []
    for entry in batch:
        digest = identity_digest(entry)
        if entry.id in by_id:
            raise DuplicateEntry(entry.id, entry.id, "the batch repeats this id")
        if digest in by_digest:
            raise DuplicateEntry(
                entry.id, by_digest[digest], "same spiffe_id, parent_id and selectors in the batch"
            )
        by_id[entry.id] = digest
        by_digest[digest] = entry.id
        result.append((entry, digest))
    return result


def _check_not_stored(
    conn: Connection,
    batch: Sequence[RegistrationEntry],
    digests: Sequence[tuple[RegistrationEntry, str]],
) -> None:
    for chunk in chunks([e.id for e in batch]):
        taken = conn.execute(sa.select(entries.c.id).where(entries.c.id.in_(chunk))).scalars()
        for entry_id in taken:
            raise DuplicateEntry(entry_id, entry_id, "an entry with this id exists")
    owner = {d: e.id for e, d in digests}
    for chunk in chunks(list(owner)):
        query = sa.select(entries.c.identity_digest, entries.c.id).where(
            entries.c.identity_digest.in_(chunk)
        )
        for digest, existing in conn.execute(query):
            raise DuplicateEntry(owner[digest], existing, "same spiffe_id, parent_id and selectors")
