"""Join tokens, trust bundles and the CA journal in SQL."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from insignia.server.datastore.errors import (
    BundleNotFound,
    CaKeyNotFound,
    DuplicateJoinToken,
    InvalidRecord,
    JoinTokenExpired,
    JoinTokenNotFound,
    JoinTokenUsed,
)
from insignia.server.datastore.records import AuthorityKind, BundleRecord, CaKeyRecord
from insignia.server.datastore.schema import bundles, ca_keys, join_tokens
from insignia.spiffeid import TrustDomain


def token_digest(token: str) -> str:
    """Tokens are secrets: only their SHA-256 is stored, and lookups go by digest."""
    if not token:
        raise InvalidRecord("join token", "", "is empty")
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(conn: Connection, token: str, expires_at: datetime, now: datetime) -> None:
    digest = token_digest(token)
    exists = conn.execute(
        sa.select(join_tokens.c.token_digest).where(join_tokens.c.token_digest == digest)
    ).first()
    if exists is not None:
        raise DuplicateJoinToken(digest)
    conn.execute(
        join_tokens.insert().values(
            token_digest=digest, expires_at=expires_at, used=False, created_at=now
        )
    )


def consume_token(conn: Connection, token: str, now: datetime) -> None:
    """Mark the token used, at most once ever: the guarded UPDATE is the single decision."""
    digest = token_digest(token)
    result = conn.execute(
        join_tokens.update()
        .where(
            join_tokens.c.token_digest == digest,
            join_tokens.c.used.is_(False),
            join_tokens.c.expires_at > now,
        )
        .values(used=True)
    )
    if result.rowcount == 1:
        return
    row = conn.execute(
        sa.select(join_tokens.c.used).where(join_tokens.c.token_digest == digest)
    ).first()
    if row is None:
        raise JoinTokenNotFound(digest)
    raise JoinTokenUsed(digest) if row.used else JoinTokenExpired(digest)


def prune_tokens(conn: Connection, now: datetime) -> int:
    return conn.execute(join_tokens.delete().where(join_tokens.c.expires_at <= now)).rowcount


def put_bundle(
    conn: Connection, trust_domain: TrustDomain, document: str, now: datetime
) -> tuple[BundleRecord, bool]:
    try:
        parsed = json.loads(document)
    except ValueError as exc:
        raise InvalidRecord("bundle document", document, f"not JSON: {exc}") from exc
    if not isinstance(parsed, dict):
        raise InvalidRecord("bundle document", document, "expected a JSON object (JWKS)")
    key = str(trust_domain)
    sequence = conn.execute(
        sa.select(bundles.c.sequence).where(bundles.c.trust_domain == key)
    ).scalar_one_or_none()
    record = BundleRecord(trust_domain, document, (sequence or 0) + 1, now)
    values = {"document": document, "sequence": record.sequence, "updated_at": now}
    if sequence is None:
        conn.execute(bundles.insert().values(trust_domain=key, **values))
    else:
        conn.execute(bundles.update().where(bundles.c.trust_domain == key).values(**values))
    return record, sequence is None


def load_bundles(conn: Connection, trust_domain: TrustDomain | None = None) -> list[BundleRecord]:
    query = sa.select(bundles).order_by(bundles.c.trust_domain)
    if trust_domain is not None:
        query = query.where(bundles.c.trust_domain == str(trust_domain))
    records = [
        BundleRecord(TrustDomain(r.trust_domain), r.document, int(r.sequence), r.updated_at)
        for r in conn.execute(query)
    ]
    if trust_domain is not None and not records:
        raise BundleNotFound(str(trust_domain))
    return records


def bundle_exists(conn: Connection, trust_domain: TrustDomain) -> bool:
    query = sa.select(bundles.c.trust_domain).where(bundles.c.trust_domain == str(trust_domain))
    return conn.execute(query).first() is not None


def delete_bundle(conn: Connection, trust_domain: TrustDomain) -> None:
    result = conn.execute(bundles.delete().where(bundles.c.trust_domain == str(trust_domain)))
    if result.rowcount == 0:
        raise BundleNotFound(str(trust_domain))


def put_ca_keys(
    conn: Connection, records: Sequence[CaKeyRecord], now: datetime
) -> list[tuple[CaKeyRecord, bool]]:
    result = []
    for record in records:
        where = sa.and_(ca_keys.c.kind == record.kind, ca_keys.c.key_id == record.key_id)
        existing = conn.execute(
            sa.select(ca_keys.c.tainted, ca_keys.c.revoked).where(where)
        ).first()
        row = _ca_row(record, now)
        if existing is not None:
            del row["created_at"]
            row["tainted"] = record.tainted or existing.tainted  # one-way: see CaKeyRecord
            row["revoked"] = record.revoked or existing.revoked
            conn.execute(ca_keys.update().where(where).values(**row))
        else:
            conn.execute(ca_keys.insert().values(**row))
        result.append((record, existing is None))
    return result


def load_ca_keys(conn: Connection, kind: AuthorityKind | None = None) -> list[CaKeyRecord]:
    query = sa.select(ca_keys).order_by(ca_keys.c.created_at, ca_keys.c.key_id)
    if kind is not None:
        query = query.where(ca_keys.c.kind == kind)
    return [
        CaKeyRecord(
            kind=r.kind,
            key_id=r.key_id,
            slot=r.slot,
            status=r.status,
            public_key=r.public_key,
            certificate=r.certificate,
            not_before=r.not_before,
            not_after=r.not_after,
            tainted=r.tainted,
            revoked=r.revoked,
            created_at=r.created_at,
            server_id=r.server_id,
        )
        for r in conn.execute(query)
    ]


def delete_ca_key(conn: Connection, kind: AuthorityKind, key_id: str) -> None:
    result = conn.execute(
        ca_keys.delete().where(ca_keys.c.kind == kind, ca_keys.c.key_id == key_id)
    )
    if result.rowcount == 0:
        raise CaKeyNotFound(kind, key_id)


def _ca_row(record: CaKeyRecord, now: datetime) -> dict[str, Any]:
    return {
        "kind": record.kind,
        "key_id": record.key_id,
        "slot": record.slot,
        "status": record.status,
        "public_key": record.public_key,
        "certificate": record.certificate,
        "not_before": record.not_before,
        "not_after": record.not_after,
        "tainted": record.tainted,
        "revoked": record.revoked,
        "created_at": record.created_at,
        "updated_at": now,
        "server_id": record.server_id,
    }
