"""Small key/value facts about the store itself (`datastore_meta`): how far the change log was
pruned, which trust domain the database belongs to, the database's own id."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from insignia.server.datastore.schema import datastore_meta


def get_meta(conn: Connection, key: str) -> str | None:
    value = conn.execute(
        sa.select(datastore_meta.c.value).where(datastore_meta.c.key == key)
    ).scalar_one_or_none()
    return None if value is None else str(value)


def set_meta(conn: Connection, key: str, value: str) -> None:
    updated = conn.execute(
        datastore_meta.update().where(datastore_meta.c.key == key).values(value=value)
    )
    if updated.rowcount == 0:
        conn.execute(datastore_meta.insert().values(key=key, value=value))


def claim(conn: Connection, key: str, value: str) -> str:
    """The value recorded under `key`, recording `value` first if there is none."""
    recorded = get_meta(conn, key)
    if recorded is None:
        set_meta(conn, key, value)
        return value
    return recorded
