"""Initial schema: audit log, policy bundles, mint requests and authorizations, attestations.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_entries",
        sa.Column("idx", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("entry", sa.Text, nullable=False),
        sa.Column("leaf_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("idx", name="pk_audit_entries"),
    )
    op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer, autoincrement=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("compact", sa.Text, nullable=False),
        sa.Column("root", sa.LargeBinary(32), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_head"),
    )
    op.create_table(
        "audit_checkpoints",
        sa.Column("size", sa.BigInteger, autoincrement=False),
        sa.Column("root", sa.LargeBinary(32), nullable=False),
        sa.Column("note", sa.Text, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("size", name="pk_audit_checkpoints"),
    )
    op.create_table(
        "seen_tokens",
        sa.Column("jti", sa.String(128)),
        sa.Column("operator", sa.String(64), nullable=False),
        sa.Column("seen_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("jti", name="pk_seen_tokens"),
    )
    op.create_table(
        "policy_bundles",
        sa.Column("id", sa.String(36)),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("bundle", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("proposed_by", sa.String(64), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("activated_seq", sa.Integer, nullable=True),
        sa.Column("activated_at", sa.BigInteger, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_policy_bundles"),
        sa.UniqueConstraint("hash", name="uq_policy_bundles_hash"),
        sa.UniqueConstraint("activated_seq", name="uq_policy_bundles_activated_seq"),
    )
    op.create_table(
        "policy_approvals",
        sa.Column("bundle_id", sa.String(36), nullable=False),
        sa.Column("operator", sa.String(64), nullable=False),
        sa.Column("decision", sa.String(8), nullable=False),
        sa.Column("iat", sa.BigInteger, nullable=False),
        sa.Column("jws", sa.Text, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("bundle_id", "operator", name="pk_policy_approvals"),
        sa.ForeignKeyConstraint(["bundle_id"], ["policy_bundles.id"],
                                name="fk_policy_approvals_bundle_id_policy_bundles"),
    )
    op.create_table(
        "mint_requests",
        sa.Column("id", sa.String(36)),
        sa.Column("requester", sa.String(64), nullable=False),
        sa.Column("chain_id", sa.BigInteger, nullable=False),
        sa.Column("verifying_contract", sa.String(42), nullable=False),
        sa.Column("to_address", sa.String(42), nullable=False),
        sa.Column("amount", sa.String(78), nullable=False),
        sa.Column("nonce", sa.String(66), nullable=False),
        sa.Column("valid_after", sa.BigInteger, nullable=False),
        sa.Column("valid_before", sa.BigInteger, nullable=False),
        sa.Column("digest", sa.String(66), nullable=False),
        sa.Column("policy_hash", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("request_jws", sa.Text, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("expires_at", sa.BigInteger, nullable=False),
        sa.Column("closed_by", sa.String(64), nullable=True),
        sa.Column("closed_at", sa.BigInteger, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_mint_requests"),
        sa.UniqueConstraint("nonce", name="uq_mint_requests_nonce"),
    )
    op.create_index("ix_mint_requests_status", "mint_requests", ["status", "created_at"])
    op.create_table(
        "mint_approvals",
        sa.Column("request_id", sa.String(36), nullable=False),
        sa.Column("operator", sa.String(64), nullable=False),
        sa.Column("decision", sa.String(8), nullable=False),
        sa.Column("digest", sa.String(66), nullable=False),
        sa.Column("policy_hash", sa.String(64), nullable=False),
        sa.Column("iat", sa.BigInteger, nullable=False),
        sa.Column("jws", sa.Text, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("request_id", "operator", name="pk_mint_approvals"),
        sa.ForeignKeyConstraint(["request_id"], ["mint_requests.id"],
                                name="fk_mint_approvals_request_id_mint_requests"),
    )
    op.create_table(
        "mint_authorizations",
        sa.Column("request_id", sa.String(36), nullable=False),
        sa.Column("nonce", sa.String(66), nullable=False),
        sa.Column("digest", sa.String(66), nullable=False),
        sa.Column("chain_id", sa.BigInteger, nullable=False),
        sa.Column("amount", sa.String(78), nullable=False),
        sa.Column("signer", sa.String(42), nullable=False),
        sa.Column("signature", sa.String(132), nullable=True),
        sa.Column("reserved_at", sa.BigInteger, nullable=False),
        sa.Column("signed_at", sa.BigInteger, nullable=True),
        sa.PrimaryKeyConstraint("request_id", name="pk_mint_authorizations"),
        sa.UniqueConstraint("nonce", name="uq_mint_authorizations_nonce"),
        sa.ForeignKeyConstraint(["request_id"], ["mint_requests.id"],
                                name="fk_mint_authorizations_request_id_mint_requests"),
    )
    op.create_index("ix_mint_authorizations_reserved_at", "mint_authorizations", ["reserved_at"])
    op.create_table(
        "attestations",
        sa.Column("seq", sa.BigInteger, autoincrement=False),
        sa.Column("as_of", sa.String(32), nullable=False),
        sa.Column("as_of_ts", sa.BigInteger, nullable=False),
        sa.Column("figures_digest", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("coverage_bps", sa.BigInteger, nullable=True),
        sa.Column("reserves_total", sa.String(78), nullable=False),
        sa.Column("reserves_decimals", sa.Integer, nullable=False),
        sa.Column("supply_total", sa.String(78), nullable=False),
        sa.Column("supply_decimals", sa.Integer, nullable=False),
        sa.Column("jws", sa.Text, nullable=False),
        sa.Column("issued_at", sa.BigInteger, nullable=False),
        sa.Column("requested_by", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_attestations"),
        sa.UniqueConstraint("as_of", name="uq_attestations_as_of"),
    )


def downgrade() -> None:
    for table in ("attestations", "mint_authorizations", "mint_approvals", "mint_requests", "policy_approvals",
                  "policy_bundles", "seen_tokens", "audit_checkpoints", "audit_head", "audit_entries"):
        op.drop_table(table)
