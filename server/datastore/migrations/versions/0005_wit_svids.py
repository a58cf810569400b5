"""WIT-SVIDs: a TTL per entry, and WIT signing keys in the CA journal.

Existing entries get 0 (the server's default); `ca_keys.kind` may now be "wit".

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "entries", sa.Column("wit_svid_ttl", sa.Integer, nullable=False, server_default="0")
    )
    with op.batch_alter_table("ca_keys") as batch:
        batch.drop_constraint("ck_ca_keys_kind", type_="check")
        batch.create_check_constraint("ck_ca_keys_kind", "kind IN ('x509', 'jwt', 'wit')")


def downgrade() -> None:
    op.execute("DELETE FROM ca_keys WHERE kind = 'wit'")
    with op.batch_alter_table("ca_keys") as batch:
        batch.drop_constraint("ck_ca_keys_kind", type_="check")
        batch.create_check_constraint("ck_ca_keys_kind", "kind IN ('x509', 'jwt')")
    with op.batch_alter_table("entries") as batch:
        batch.drop_column("wit_svid_ttl")
