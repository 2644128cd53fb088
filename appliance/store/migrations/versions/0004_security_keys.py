"""Security keys: their last sign counts (webauthn_sign_counts) and registrations waiting for the quorum that
enrols them (webauthn_enrolments).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "webauthn_sign_counts",
        sa.Column("credential_id", sa.String(1400), nullable=False),
        sa.Column("operator", sa.String(64), nullable=False),
        sa.Column("sign_count", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("credential_id", name=op.f("pk_webauthn_sign_counts")),
    )


    op.create_table(
        "webauthn_enrolments",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("operator", sa.String(64), nullable=False),
        sa.Column("credential", sa.Text, nullable=False),
        sa.Column("mac", sa.String(64), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webauthn_enrolments")),
    )


def downgrade() -> None:
    op.drop_table("webauthn_enrolments")
    op.drop_table("webauthn_sign_counts")
