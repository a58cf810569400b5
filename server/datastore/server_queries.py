"""The `servers` registry in SQL: each server's row, upserted at start and on every heartbeat."""

from __future__ import annotations

import json

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from insignia.server.datastore.records import ServerRecord
from insignia.server.datastore.schema import servers


def put_server(conn: Connection, record: ServerRecord) -> None:
    row = {
        "addresses": json.dumps(record.addresses, sort_keys=True),
        "x509_key_id": record.x509_key_id,
        "jwt_key_id": record.jwt_key_id,
        "started_at": record.started_at,
        "heartbeat_at": record.heartbeat_at,
    }
    updated = conn.execute(servers.update().where(servers.c.id == record.id).values(**row))
    if updated.rowcount == 0:
        conn.execute(servers.insert().values(id=record.id, **row))


def load_servers(conn: Connection) -> list[ServerRecord]:
    return [
        ServerRecord(
            id=r.id,
            addresses=json.loads(r.addresses),
            x509_key_id=r.x509_key_id,
            jwt_key_id=r.jwt_key_id,
            started_at=r.started_at,
            heartbeat_at=r.heartbeat_at,
        )
        for r in conn.execute(sa.select(servers).order_by(servers.c.started_at, servers.c.id))
    ]
