"""Mint authorizations record when a stale reservation was taken over (claimed_at), keeping reserved_at.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("mint_authorizations") as batch:
        batch.add_column(sa.Column("claimed_at", sa.BigInteger, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("mint_authorizations") as batch:
        batch.drop_column("claimed_at")
