"""Policy bundles keep the proposer's signed proposal (proposal_jws): a bundle counts only as its proposer
signed it, on the base it names.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("policy_bundles") as batch:
        batch.add_column(sa.Column("proposal_jws", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("policy_bundles") as batch:
        batch.drop_column("proposal_jws")
