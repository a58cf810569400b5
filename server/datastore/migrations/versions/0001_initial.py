"""Initial schema: entries, agents, join tokens, bundles, CA journal and the change log.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Frozen copies of the column types: a migration must not change when schema.py does.
_TIME = sa.DateTime(timezone=False)
_REVISION = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _entry_fk() -> sa.Column[str]:
    return sa.Column(
        "entry_id",
        sa.String(255),
        sa.ForeignKey("entries.id", ondelete="CASCADE"),
        primary_key=True,
    )


def upgrade() -> None:
    op.create_table(
        "entries",
        sa.Column("id", sa.String(255), primary_key=True),
        sa.Column("spiffe_id", sa.Text, nullable=False),
        sa.Column("parent_id", sa.Text, nullable=False),
        sa.Column("identity_digest", sa.String(64), nullable=False),
        sa.Column("x509_svid_ttl", sa.Integer, nullable=False),
        sa.Column("jwt_svid_ttl", sa.Integer, nullable=False),
        sa.Column("hint", sa.Text, nullable=False),
        sa.Column("admin", sa.Boolean, nullable=False),
        sa.Column("downstream", sa.Boolean, nullable=False),
        sa.Column("expires_at", _TIME, nullable=True),
        sa.Column("revision", sa.BigInteger, nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("updated_at", _TIME, nullable=False),
        sa.UniqueConstraint("identity_digest", name="uq_entries_identity_digest"),
    )
    op.create_index("ix_entries_spiffe_id", "entries", ["spiffe_id"])
    op.create_index("ix_entries_parent_id", "entries", ["parent_id"])
    op.create_index("ix_entries_expires_at", "entries", ["expires_at"])
    op.create_table(
        "entry_selectors",
        _entry_fk(),
        sa.Column("type", sa.String(255), primary_key=True),
        sa.Column("value", sa.Text, primary_key=True),
    )
    op.create_index("ix_entry_selectors_type_value", "entry_selectors", ["type", "value"])
    op.create_table(
        "entry_dns_names",
        _entry_fk(),
        sa.Column("position", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(255), nullable=False),
    )
    op.create_table(
        "entry_federates_with",
        _entry_fk(),
        sa.Column("trust_domain", sa.String(255), primary_key=True),
    )
    op.create_table(
        "agents",
        sa.Column("spiffe_id", sa.Text, primary_key=True),
        sa.Column("attestation_type", sa.String(255), nullable=False),
        sa.Column("serial_number", sa.String(255), nullable=False),
        sa.Column("new_serial_number", sa.String(255), nullable=False),
        sa.Column("expires_at", _TIME, nullable=False),
        sa.Column("banned", sa.Boolean, nullable=False),
        sa.Column("can_reattest", sa.Boolean, nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("updated_at", _TIME, nullable=False),
    )
    op.create_table(
        "agent_selectors",
        sa.Column(
            "agent_id",
            sa.Text,
            sa.ForeignKey("agents.spiffe_id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("position", sa.Integer, primary_key=True),
        sa.Column("type", sa.String(255), nullable=False),
        sa.Column("value", sa.Text, nullable=False),
    )
    op.create_table(
        "join_tokens",
        sa.Column("token_digest", sa.String(64), primary_key=True),
        sa.Column("expires_at", _TIME, nullable=False),
        sa.Column("used", sa.Boolean, nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
    )
    op.create_index("ix_join_tokens_expires_at", "join_tokens", ["expires_at"])
    op.create_table(
        "bundles",
        sa.Column("trust_domain", sa.String(255), primary_key=True),
        sa.Column("document", sa.Text, nullable=False),
        sa.Column("sequence", sa.BigInteger, nullable=False),
        sa.Column("updated_at", _TIME, nullable=False),
    )
    op.create_table(
        "ca_keys",
        sa.Column("kind", sa.String(8), primary_key=True),
        sa.Column("key_id", sa.String(255), primary_key=True),
        sa.Column("slot", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("public_key", sa.LargeBinary, nullable=False),
        sa.Column("certificate", sa.LargeBinary, nullable=True),
        sa.Column("not_before", _TIME, nullable=False),
        sa.Column("not_after", _TIME, nullable=False),
        sa.Column("tainted", sa.Boolean, nullable=False),
        sa.Column("revoked", sa.Boolean, nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("updated_at", _TIME, nullable=False),
        sa.CheckConstraint("kind IN ('x509', 'jwt')", name="ck_ca_keys_kind"),
        sa.CheckConstraint("status IN ('prepared', 'active', 'old')", name="ck_ca_keys_status"),
    )
    op.create_table(
        "change_events",
        sa.Column("revision", _REVISION, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("op", sa.String(16), nullable=False),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_change_events_created_at", "change_events", ["created_at"])
    op.create_table(
        "datastore_meta",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )


def downgrade() -> None:
    for table in (
        "datastore_meta",
        "change_events",
        "ca_keys",
        "bundles",
        "join_tokens",
        "agent_selectors",
        "agents",
        "entry_federates_with",
        "entry_dns_names",
        "entry_selectors",
        "entries",
    ):
        op.drop_table(table)
