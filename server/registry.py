"""Who this server is among the servers sharing a database, and how `server list` judges the
others: alive while their heartbeat is recent, stale after `cluster.stale_after` without one.

A stale server's keys stay in the bundle until they expire or are revoked: an SVID it signed
just before it died is still good, and it may only be cut off from the database.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta
from pathlib import Path
from typing import Final, Literal

from insignia.daemon.files import atomic_write
from insignia.server.datastore.records import ServerRecord

SERVER_ID_FILE: Final = "server.id"
ServerState = Literal["alive", "stale"]


def load_or_create_server_id(data_dir: Path) -> str:
    """This server's id, kept in data_dir so a restart is the same server (same CA keys)."""
    path = data_dir / SERVER_ID_FILE
    try:
        existing = path.read_text().strip()
    except FileNotFoundError:
        existing = ""
    if existing:
        return existing
    new = secrets.token_hex(8)
    atomic_write(path, f"{new}\n".encode(), mode=0o644)
    return new


def server_state(record: ServerRecord, now: datetime, stale_after: timedelta) -> ServerState:
    return "stale" if now - record.heartbeat_at > stale_after else "alive"
