"""Several servers on one database: the `servers` registry, and each CA key's owner.

Every server keeps its own signing keys; `ca_keys.server_id` says whose a row is, so a server
loads only its own slots and publishes the union of everyone's public keys. Rows written
before this migration get "" and are adopted by the first server that starts.

Revision ID: 0003
Revises: 0002
Create Date: 2025-03-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_TIME = sa.DateTime(timezone=False)


def upgrade() -> None:
    op.add_column(
        "ca_keys", sa.Column("server_id", sa.String(64), nullable=False, server_default="")
    )
    op.create_table(
        "servers",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("addresses", sa.Text, nullable=False),
        sa.Column("x509_key_id", sa.String(255), nullable=False),
        sa.Column("jwt_key_id", sa.String(255), nullable=False),
        sa.Column("started_at", _TIME, nullable=False),
        sa.Column("heartbeat_at", _TIME, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("servers")
    with op.batch_alter_table("ca_keys") as batch:
        batch.drop_column("server_id")
