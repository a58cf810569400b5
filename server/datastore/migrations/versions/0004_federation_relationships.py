"""Federation relationships created through the admin API (`federation create`).

The config file's `[[federation.federates_with]]` stay out of the database: each server
holds its own and they win over a row of the same trust domain.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_TIME = sa.DateTime(timezone=False)


def upgrade() -> None:
    op.create_table(
        "federation_relationships",
        sa.Column("trust_domain", sa.String(255), primary_key=True),
        sa.Column("bundle_endpoint_url", sa.Text, nullable=False),
        sa.Column("profile", sa.String(16), nullable=False),
        sa.Column("endpoint_spiffe_id", sa.Text, nullable=False),
        sa.Column("bootstrap_bundle", sa.Text, nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("updated_at", _TIME, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("federation_relationships")
