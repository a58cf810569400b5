"""Federation relationships in SQL, and the entry side of deleting a federated bundle."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from insignia.server.datastore.bulk import chunks
from insignia.server.datastore.errors import DuplicateFederation, FederationNotFound
from insignia.server.datastore.records import FederationRecord
from insignia.server.datastore.schema import entries, entry_federates_with, federation_relationships
from insignia.spiffeid import TrustDomain

BundleDeleteMode = Literal["restrict", "delete", "dissociate"]
_T = federation_relationships


def _values(record: FederationRecord, now: datetime) -> dict[str, Any]:
    return {
        "bundle_endpoint_url": record.bundle_endpoint_url,
        "profile": record.profile,
        "endpoint_spiffe_id": record.endpoint_spiffe_id,
        "bootstrap_bundle": record.bootstrap_bundle,
        "updated_at": now,
    }


def insert(conn: Connection, record: FederationRecord, now: datetime) -> FederationRecord:
    key = str(record.trust_domain)
    if conn.execute(sa.select(_T.c.trust_domain).where(_T.c.trust_domain == key)).first():
        raise DuplicateFederation(key)
    conn.execute(_T.insert().values(trust_domain=key, created_at=now, **_values(record, now)))
    return load(conn, record.trust_domain)[0]


def update(conn: Connection, record: FederationRecord, now: datetime) -> FederationRecord:
    key = str(record.trust_domain)
    result = conn.execute(_T.update().where(_T.c.trust_domain == key).values(_values(record, now)))
    if result.rowcount == 0:
        raise FederationNotFound(key)
    return load(conn, record.trust_domain)[0]


def delete(conn: Connection, trust_domain: TrustDomain) -> FederationRecord:
    found = load(conn, trust_domain)[0]
    conn.execute(_T.delete().where(_T.c.trust_domain == str(trust_domain)))
    return found


def exists(conn: Connection, trust_domain: TrustDomain) -> bool:
    query = sa.select(_T.c.trust_domain).where(_T.c.trust_domain == str(trust_domain))
    return conn.execute(query).first() is not None


def load(conn: Connection, trust_domain: TrustDomain | None = None) -> list[FederationRecord]:
    query = sa.select(_T).order_by(_T.c.trust_domain)
    if trust_domain is not None:
        query = query.where(_T.c.trust_domain == str(trust_domain))
    records = [
        FederationRecord(
            TrustDomain(r.trust_domain),
            r.bundle_endpoint_url,
            r.profile,
            r.endpoint_spiffe_id,
            r.bootstrap_bundle,
            r.created_at,
            r.updated_at,
        )
        for r in conn.execute(query)
    ]
    if trust_domain is not None and not records:
        raise FederationNotFound(str(trust_domain))
    return records


def federating_entry_ids(conn: Connection, trust_domain: TrustDomain) -> list[str]:
    """The entries that federate with `trust_domain`, by id."""
    query = (
        sa.select(entry_federates_with.c.entry_id)
        .where(entry_federates_with.c.trust_domain == str(trust_domain))
        .order_by(entry_federates_with.c.entry_id)
    )
    return [row.entry_id for row in conn.execute(query)]


def dissociate(conn: Connection, trust_domain: TrustDomain, ids: list[str], now: datetime) -> None:
    """Take `trust_domain` out of these entries' federates_with; each entry's revision rises."""
    for chunk in chunks(ids):
        conn.execute(
            entry_federates_with.delete().where(
                entry_federates_with.c.trust_domain == str(trust_domain),
                entry_federates_with.c.entry_id.in_(chunk),
            )
        )
        conn.execute(
            entries.update()
            .where(entries.c.id.in_(chunk))
            .values(revision=entries.c.revision + 1, updated_at=now)
        )
