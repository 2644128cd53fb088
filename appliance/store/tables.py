"""SQLAlchemy Core tables. Times are integer Unix seconds; amounts are decimal strings (up to 2^256-1)."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData(naming_convention={
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
})

# The audit log: one row per entry, the canonical JSON exactly as hashed.
audit_entries = Table(
    "audit_entries", metadata,
    Column("idx", BigInteger, primary_key=True, autoincrement=False),
    Column("action", String(64), nullable=False),
    Column("entry", Text, nullable=False),
    Column("leaf_hash", LargeBinary(32), nullable=False),
    Column("created_at", BigInteger, nullable=False),
)

# The tree head: one row (id = 1), the compact range of the right edge so appends are O(log n).
audit_head = Table(
    "audit_head", metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("size", BigInteger, nullable=False),
    Column("compact", Text, nullable=False),
    Column("root", LargeBinary(32), nullable=False),
)

audit_checkpoints = Table(
    "audit_checkpoints", metadata,
    Column("size", BigInteger, primary_key=True, autoincrement=False),
    Column("root", LargeBinary(32), nullable=False),
    Column("note", Text, nullable=False),
    Column("created_at", BigInteger, nullable=False),
)

# Every JWS `jti` the appliance accepted: a replayed token is refused across restarts and instances.
seen_tokens = Table(
    "seen_tokens", metadata,
    Column("jti", String(128), primary_key=True),
    Column("operator", String(64), nullable=False),
    Column("seen_at", BigInteger, nullable=False),
)

# The last sign count each security key reported: one that does not increase is refused (a cloned key). Only a
# clone detector: a row edited down weakens that detection, never lets an assertion count without its signature.
webauthn_sign_counts = Table(
    "webauthn_sign_counts", metadata,
    Column("credential_id", String(1400), primary_key=True),
    Column("operator", String(64), nullable=False),
    Column("sign_count", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
)

# A security key an officer registered in the console, waiting for the policy change that enrols it. `mac` is an
# HMAC under the console secret (a file on the appliance host) over operator and credential: a row written by
# someone who holds only the database is never offered for enrolment. Nothing here counts before the quorum.
webauthn_enrolments = Table(
    "webauthn_enrolments", metadata,
    Column("id", String(36), primary_key=True),
    Column("operator", String(64), nullable=False),
    Column("credential", Text, nullable=False),
    Column("mac", String(64), nullable=False),
    Column("created_at", BigInteger, nullable=False),
)

policy_bundles = Table(
    "policy_bundles", metadata,
    Column("id", String(36), primary_key=True),
    Column("hash", String(64), nullable=False, unique=True),
    Column("bundle", Text, nullable=False),
    Column("status", String(16), nullable=False),  # proposed | active | superseded | withdrawn
    Column("proposed_by", String(64), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("activated_seq", Integer, nullable=True, unique=True),
    Column("activated_at", BigInteger, nullable=True),
    Column("proposal_jws", Text, nullable=True),  # the proposer's signed proposal (none for the first bundle)
)

policy_approvals = Table(
    "policy_approvals", metadata,
    Column("bundle_id", String(36), ForeignKey("policy_bundles.id"), primary_key=True),
    Column("operator", String(64), primary_key=True),
    Column("decision", String(8), nullable=False),
    Column("iat", BigInteger, nullable=False),
    Column("jws", Text, nullable=False),
    Column("created_at", BigInteger, nullable=False),
)

mint_requests = Table(
    "mint_requests", metadata,
    Column("id", String(36), primary_key=True),
    Column("requester", String(64), nullable=False),
    Column("chain_id", BigInteger, nullable=False),
    Column("verifying_contract", String(42), nullable=False),
    Column("to_address", String(42), nullable=False),
    Column("amount", String(78), nullable=False),
    Column("nonce", String(66), nullable=False, unique=True),
    Column("valid_after", BigInteger, nullable=False),
    Column("valid_before", BigInteger, nullable=False),
    Column("digest", String(66), nullable=False),
    Column("policy_hash", String(64), nullable=False),
    Column("status", String(16), nullable=False),  # pending | authorized | rejected | cancelled | expired
    Column("request_jws", Text, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    Column("closed_by", String(64), nullable=True),
    Column("closed_at", BigInteger, nullable=True),
)

mint_approvals = Table(
    "mint_approvals", metadata,
    Column("request_id", String(36), ForeignKey("mint_requests.id"), primary_key=True),
    Column("operator", String(64), primary_key=True),
    Column("decision", String(8), nullable=False),
    Column("digest", String(66), nullable=False),
    Column("policy_hash", String(64), nullable=False),
    Column("iat", BigInteger, nullable=False),
    Column("jws", Text, nullable=False),
    Column("created_at", BigInteger, nullable=False),
)

# The nonce reservation: the row exists (committed) before the HSM signs; the unique constraints are the
# exactly-once guarantee across threads, processes and instances.
mint_authorizations = Table(
    "mint_authorizations", metadata,
    Column("request_id", String(36), ForeignKey("mint_requests.id"), primary_key=True),
    Column("nonce", String(66), nullable=False, unique=True),
    Column("digest", String(66), nullable=False),
    Column("chain_id", BigInteger, nullable=False),
    Column("amount", String(78), nullable=False),
    Column("signer", String(42), nullable=False),
    Column("signature", String(132), nullable=True),
    Column("reserved_at", BigInteger, nullable=False),
    Column("signed_at", BigInteger, nullable=True),
    Column("claimed_at", BigInteger, nullable=True),  # a stale reservation taken over by a recovering caller
)

attestations = Table(
    "attestations", metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("as_of", String(32), nullable=False, unique=True),
    Column("as_of_ts", BigInteger, nullable=False),
    Column("figures_digest", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    Column("coverage_bps", BigInteger, nullable=True),
    Column("reserves_total", String(78), nullable=False),
    Column("reserves_decimals", Integer, nullable=False),
    Column("supply_total", String(78), nullable=False),
    Column("supply_decimals", Integer, nullable=False),
    Column("jws", Text, nullable=False),
    Column("issued_at", BigInteger, nullable=False),
    Column("requested_by", String(64), nullable=False),
)
