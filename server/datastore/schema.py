"""Table definitions used by the queries. Migrations under `migrations/versions` create the same
schema explicitly; a test compares the migrated database against this metadata."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

from insignia.server.datastore.errors import InvalidRecord


class UtcDateTime(sa.types.TypeDecorator[datetime]):
    """Aware datetimes stored as naive UTC, so SQLite and PostgreSQL compare them alike."""

    impl = sa.DateTime(timezone=False)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise InvalidRecord("time", value, "expected a timezone-aware time")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


# SQLite only auto-increments INTEGER PRIMARY KEY; AUTOINCREMENT also forbids reuse.
Revision = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

metadata = sa.MetaData()

entries = sa.Table(
    "entries",
    metadata,
    sa.Column("id", sa.String(255), primary_key=True),
    sa.Column("spiffe_id", sa.Text, nullable=False, index=True),
    sa.Column("parent_id", sa.Text, nullable=False, index=True),
    # sha256 over spiffe_id, parent_id and canonical selectors: a fixed-size unique key,
    # since the texts themselves can exceed an index row.
    sa.Column("identity_digest", sa.String(64), nullable=False),
    sa.Column("x509_svid_ttl", sa.Integer, nullable=False),
    sa.Column("jwt_svid_ttl", sa.Integer, nullable=False),
    sa.Column("wit_svid_ttl", sa.Integer, nullable=False),
    sa.Column("hint", sa.Text, nullable=False),
    sa.Column("admin", sa.Boolean, nullable=False),
    sa.Column("downstream", sa.Boolean, nullable=False),
    sa.Column("expires_at", UtcDateTime, nullable=True, index=True),
    sa.Column("revision", sa.BigInteger, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.UniqueConstraint("identity_digest", name="uq_entries_identity_digest"),
)

entry_selectors = sa.Table(
    "entry_selectors",
    metadata,
    sa.Column(
        "entry_id",
        sa.String(255),
        sa.ForeignKey("entries.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("type", sa.String(255), primary_key=True),
    sa.Column("value", sa.Text, primary_key=True),
    sa.Index("ix_entry_selectors_type_value", "type", "value"),
)

entry_dns_names = sa.Table(
    "entry_dns_names",
    metadata,
    sa.Column(
        "entry_id",
        sa.String(255),
        sa.ForeignKey("entries.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("position", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(255), nullable=False),
)

entry_federates_with = sa.Table(
    "entry_federates_with",
    metadata,
    sa.Column(
        "entry_id",
        sa.String(255),
        sa.ForeignKey("entries.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("trust_domain", sa.String(255), primary_key=True),
)

agents = sa.Table(
    "agents",
    metadata,
    sa.Column("spiffe_id", sa.Text, primary_key=True),
    sa.Column("attestation_type", sa.String(255), nullable=False),
    sa.Column("serial_number", sa.String(255), nullable=False),
    sa.Column("new_serial_number", sa.String(255), nullable=False),
    sa.Column("svid_fingerprint", sa.String(64), nullable=False, server_default=""),
    sa.Column("new_svid_fingerprint", sa.String(64), nullable=False, server_default=""),
    sa.Column("expires_at", UtcDateTime, nullable=False),
    sa.Column("banned", sa.Boolean, nullable=False),
    sa.Column("can_reattest", sa.Boolean, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
)

agent_selectors = sa.Table(
    "agent_selectors",
    metadata,
    sa.Column(
        "agent_id",
        sa.Text,
        sa.ForeignKey("agents.spiffe_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    # Node selectors come from attestors unbounded in bytes, so they stay out of any index.
    sa.Column("position", sa.Integer, primary_key=True),
    sa.Column("type", sa.String(255), nullable=False),
    sa.Column("value", sa.Text, nullable=False),
)

join_tokens = sa.Table(
    "join_tokens",
    metadata,
    sa.Column("token_digest", sa.String(64), primary_key=True),
    sa.Column("expires_at", UtcDateTime, nullable=False, index=True),
    sa.Column("used", sa.Boolean, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
)

bundles = sa.Table(
    "bundles",
    metadata,
    sa.Column("trust_domain", sa.String(255), primary_key=True),
    sa.Column("document", sa.Text, nullable=False),
    sa.Column("sequence", sa.BigInteger, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
)

# Federation relationships created through the admin API (the config file's are held in memory
# and win over a row here): a peer trust domain and how to fetch and authenticate its bundle.
federation_relationships = sa.Table(
    "federation_relationships",
    metadata,
    sa.Column("trust_domain", sa.String(255), primary_key=True),
    sa.Column("bundle_endpoint_url", sa.Text, nullable=False),
    sa.Column("profile", sa.String(16), nullable=False),
    sa.Column("endpoint_spiffe_id", sa.Text, nullable=False),
    sa.Column("bootstrap_bundle", sa.Text, nullable=False),  # SPIFFE JSON; "" = none
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
)

ca_keys = sa.Table(
    "ca_keys",
    metadata,
    sa.Column("kind", sa.String(8), primary_key=True),
    sa.Column("key_id", sa.String(255), primary_key=True),
    sa.Column("slot", sa.String(16), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("public_key", sa.LargeBinary, nullable=False),
    sa.Column("certificate", sa.LargeBinary, nullable=True),
    sa.Column("not_before", UtcDateTime, nullable=False),
    sa.Column("not_after", UtcDateTime, nullable=False),
    sa.Column("tainted", sa.Boolean, nullable=False),
    sa.Column("revoked", sa.Boolean, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    # Which server holds the private key ("" = written before schema 0003, not yet adopted).
    sa.Column("server_id", sa.String(64), nullable=False, server_default=""),
    sa.CheckConstraint("kind IN ('x509', 'jwt', 'wit')", name="ck_ca_keys_kind"),
    sa.CheckConstraint("status IN ('prepared', 'active', 'old')", name="ck_ca_keys_status"),
)

change_events = sa.Table(
    "change_events",
    metadata,
    sa.Column("revision", Revision, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("op", sa.String(16), nullable=False),
    sa.Column("subject", sa.Text, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False, index=True),
    sqlite_autoincrement=True,
)

# One row per server sharing the database: who it is, where it listens, which keys it signs
# with, and when it last said it was alive (`insignia-server server list`).
servers = sa.Table(
    "servers",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("addresses", sa.Text, nullable=False),  # JSON object: listener name -> address
    sa.Column("x509_key_id", sa.String(255), nullable=False),
    sa.Column("jwt_key_id", sa.String(255), nullable=False),
    sa.Column("started_at", UtcDateTime, nullable=False),
    sa.Column("heartbeat_at", UtcDateTime, nullable=False),
)

# Small key/value facts about the store itself, e.g. how far the change log was pruned.
datastore_meta = sa.Table(
    "datastore_meta",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)
