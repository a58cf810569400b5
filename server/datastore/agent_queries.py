"""Attested agents and their node selectors in SQL."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from insignia.selectors import Selector
from insignia.server.datastore.errors import AgentBanned, AgentNotFound
from insignia.server.datastore.records import AgentRecord
from insignia.server.datastore.schema import agent_selectors, agents
from insignia.spiffeid import SpiffeId


def upsert(conn: Connection, agent: AgentRecord, now: datetime) -> tuple[AgentRecord, bool]:
    """Insert or replace the agent; returns the stored record and whether it was new.
    A replaced agent keeps its original `created_at`, and a ban: a re-attestation racing
    the ban cannot lift it (only `set_banned` changes it)."""
    key = str(agent.spiffe_id)
    existing = conn.execute(
        sa.select(agents.c.created_at, agents.c.banned).where(agents.c.spiffe_id == key)
    ).one_or_none()
    created_at = existing.created_at if existing is not None else None
    stored = replace(
        agent,
        created_at=created_at if created_at is not None else agent.created_at,
        banned=agent.banned or (existing is not None and existing.banned),
        updated_at=now,
    )
    row = _row(stored)
    if created_at is None:
        conn.execute(agents.insert().values(**row))
    else:
        conn.execute(agents.update().where(agents.c.spiffe_id == key).values(**row))
        conn.execute(agent_selectors.delete().where(agent_selectors.c.agent_id == key))
    if stored.selectors:
        conn.execute(
            agent_selectors.insert(),
            [
                {"agent_id": key, "position": i, "type": s.type, "value": s.value}
                for i, s in enumerate(stored.selectors)
            ],
        )
    return stored, created_at is None


def set_banned(conn: Connection, agent_id: SpiffeId, banned: bool, now: datetime) -> None:
    result = conn.execute(
        agents.update()
        .where(agents.c.spiffe_id == str(agent_id))
        .values(banned=banned, updated_at=now)
    )
    if result.rowcount == 0:
        raise AgentNotFound(str(agent_id))


def delete(conn: Connection, agent_id: SpiffeId) -> AgentRecord:
    agent = load_one(conn, agent_id)
    if agent.banned:
        raise AgentBanned(str(agent_id))
    conn.execute(agents.delete().where(agents.c.spiffe_id == str(agent_id)))
    return agent


def load_one(conn: Connection, agent_id: SpiffeId) -> AgentRecord:
    found = load(conn, agents.c.spiffe_id == str(agent_id))
    if not found:
        raise AgentNotFound(str(agent_id))
    return found[0]


def load(conn: Connection, where: sa.ColumnElement[bool] | None = None) -> list[AgentRecord]:
    query = sa.select(agents).order_by(agents.c.created_at, agents.c.spiffe_id)
    selectors_query = sa.select(agent_selectors).order_by(
        agent_selectors.c.agent_id, agent_selectors.c.position
    )
    if where is not None:
        query = query.where(where)
        selectors_query = selectors_query.where(
            agent_selectors.c.agent_id.in_(sa.select(agents.c.spiffe_id).where(where))
        )
    rows = conn.execute(query).all()
    if not rows:
        return []
    selectors: defaultdict[str, list[Selector]] = defaultdict(list)
    for r in conn.execute(selectors_query):
        selectors[r.agent_id].append(Selector(r.type, r.value))
    return [_record(r, tuple(selectors[r.spiffe_id])) for r in rows]


def _row(agent: AgentRecord) -> dict[str, Any]:
    return {
        "spiffe_id": str(agent.spiffe_id),
        "attestation_type": agent.attestation_type,
        "serial_number": agent.serial_number,
        "new_serial_number": agent.new_serial_number,
        "svid_fingerprint": agent.svid_fingerprint,
        "new_svid_fingerprint": agent.new_svid_fingerprint,
        "expires_at": agent.expires_at,
        "banned": agent.banned,
        "can_reattest": agent.can_reattest,
        "created_at": agent.created_at,
        "updated_at": agent.updated_at,
    }


def _record(r: sa.Row[Any], selectors: tuple[Selector, ...]) -> AgentRecord:
    return AgentRecord(
        spiffe_id=SpiffeId.parse(r.spiffe_id),
        attestation_type=r.attestation_type,
        serial_number=r.serial_number,
        new_serial_number=r.new_serial_number,
        svid_fingerprint=r.svid_fingerprint,
        new_svid_fingerprint=r.new_svid_fingerprint,
        expires_at=r.expires_at,
        selectors=selectors,
        banned=r.banned,
        can_reattest=r.can_reattest,
        created_at=r.created_at,
        updated_at=r.updated_at,
    )
