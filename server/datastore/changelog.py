"""The change log: every write appends events in its own transaction, so readers can resume
from a revision and fetch only what changed since."""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from datetime import datetime
from typing import Final, cast

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from insignia.server.datastore.bulk import insert_rows
from insignia.server.datastore.errors import RevisionPruned
from insignia.server.datastore.meta import claim, get_meta, set_meta
from insignia.server.datastore.records import ChangeEvent, ChangeKind, ChangeOp
from insignia.server.datastore.schema import change_events

PRUNED_THROUGH: Final = "events_pruned_through"
STORE_ID: Final = "store_id"


def append(
    conn: Connection, kind: ChangeKind, op: ChangeOp, subjects: Iterable[str], now: datetime
) -> None:
    rows = [{"kind": kind, "op": op, "subject": s, "created_at": now} for s in subjects]
    insert_rows(conn, change_events, rows)


def head_revision(conn: Connection) -> int:
    """The newest revision ever committed, still known after its event was pruned."""
    newest = conn.execute(sa.select(sa.func.max(change_events.c.revision))).scalar_one()
    return int(newest) if newest is not None else pruned_through(conn)


def pruned_through(conn: Connection) -> int:
    value = get_meta(conn, PRUNED_THROUGH)
    return int(value) if value is not None else 0


def events_since(conn: Connection, revision: int, limit: int | None) -> list[ChangeEvent]:
    horizon = pruned_through(conn)
    if revision < horizon:
        raise RevisionPruned(revision, horizon)
    query = (
        sa.select(change_events)
        .where(change_events.c.revision > revision)
        .order_by(change_events.c.revision)
    )
    if limit is not None:
        query = query.limit(limit)
    return [
        ChangeEvent(
            revision=int(row.revision),
            kind=cast(ChangeKind, row.kind),
            op=cast(ChangeOp, row.op),
            subject=row.subject,
            created_at=row.created_at,
        )
        for row in conn.execute(query)
    ]


def prune(conn: Connection, before: datetime) -> int:
    """Delete events older than `before`, but never the newest: it anchors `head_revision`."""
    newest = conn.execute(sa.select(sa.func.max(change_events.c.revision))).scalar_one()
    if newest is None:
        return 0
    cut = conn.execute(
        sa.select(sa.func.max(change_events.c.revision)).where(
            change_events.c.created_at < before, change_events.c.revision < newest
        )
    ).scalar_one()
    if cut is None:
        return 0
    deleted = conn.execute(change_events.delete().where(change_events.c.revision <= cut))
    set_meta(conn, PRUNED_THROUGH, str(max(int(cut), pruned_through(conn))))
    return deleted.rowcount


def store_id(conn: Connection) -> str:
    """This database's name for Sync resume points, made on first use: every server sharing
    the database reports it, so an agent resumes its revision on any of them."""
    return claim(conn, STORE_ID, secrets.token_hex(16))
