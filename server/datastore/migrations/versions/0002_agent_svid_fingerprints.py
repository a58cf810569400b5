"""Agents: the SHA-256 fingerprints of their current and renewed SVIDs.

The agent API used to recognise an agent's SVID by serial number alone, which another CA
trusted by the bundle (an upstream's sibling) could copy. Existing rows get "" (the serial
alone is checked until the agent next renews).

Revision ID: 0002
Revises: 0001
Create Date: 2025-02-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # NOT NULL with a constant default: an in-place ADD COLUMN on SQLite and PostgreSQL alike.
    for name in ("svid_fingerprint", "new_svid_fingerprint"):
        op.add_column("agents", sa.Column(name, sa.String(64), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("agents") as batch:
        batch.drop_column("new_svid_fingerprint")
        batch.drop_column("svid_fingerprint")
