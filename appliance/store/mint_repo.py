"""Mint requests, approvals and nonce reservations: typed rows in, typed rows out.

Every function runs in the caller's transaction (`Database.read()` or `Database.write()`), so the service
decides what commits together. The rows are what the database holds, attacker-writable under the threat
model: the service believes a row only where a signature it verifies vouches for it (services.mint).

The unique constraints are the exactly-once guarantee across threads, processes and instances: one
reservation per request (primary key) and per nonce (unique), one decision per officer and request.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import ColumnElement, Connection, and_, delete, func, insert, not_, or_, select, update
from sqlalchemy import exc as sa_exc

from appliance.store.tables import mint_approvals, mint_authorizations, mint_requests


@dataclass(frozen=True)
class MintRequest:
    """A stored mint request (amount a decimal string, nonce 0x-hex, times in Unix seconds)."""

    id: str
    requester: str
    chain_id: int
    verifying_contract: str
    to_address: str
    amount: str
    nonce: str
    valid_after: int
    valid_before: int
    digest: str
    policy_hash: str
    status: str
    request_jws: str
    created_at: int
    expires_at: int
    closed_by: str | None = None
    closed_at: int | None = None

    def status_at(self, now: int) -> str:
        """The status as of now: a pending request past its TTL is expired (derived, never stored)."""
        return "expired" if self.status == "pending" and now >= self.expires_at else self.status


@dataclass(frozen=True)
class StoredApproval:
    """One officer's decision as stored; `jws` is what counts (the other columns are an index)."""

    request_id: str
    operator: str
    decision: str
    digest: str
    policy_hash: str
    iat: int
    jws: str
    created_at: int


@dataclass(frozen=True)
class Reservation:
    """The nonce reservation of a request: made (committed) before the HSM signs; `signature` once stored."""

    request_id: str
    nonce: str
    digest: str
    chain_id: int
    amount: str
    signer: str
    signature: str | None
    reserved_at: int
    signed_at: int | None
    claimed_at: int | None

    @property
    def last_taken(self) -> int:
        """When a caller last took this reservation to sign it (made, or taken over)."""
        return self.reserved_at if self.claimed_at is None else self.claimed_at


@dataclass(frozen=True)
class RequestSummary:
    id: str
    status: str
    requester: str
    chain_id: int
    to_address: str
    amount: str
    created_at: int
    expires_at: int


class AlreadyDecided(Exception):
    """This officer has a stored decision on this request already (the primary key refused a second one)."""


class NotFoundRow(Exception):
    """No such request."""


def get(conn: Connection, request_id: str, *, lock: bool = False) -> MintRequest:
    query = select(mint_requests).where(mint_requests.c.id == request_id)
    row = conn.execute(query.with_for_update() if lock else query).first()
    if row is None:
        raise NotFoundRow(request_id)
    return MintRequest(**row._asdict())


def insert_request(conn: Connection, request: MintRequest) -> None:
    conn.execute(insert(mint_requests).values(**request.__dict__))


def close(conn: Connection, request_id: str, status: str, by: str, now: int) -> None:
    """Close a pending request (rejected, cancelled, authorized); a closed one stays as it is."""
    conn.execute(update(mint_requests).where(mint_requests.c.id == request_id, mint_requests.c.status == "pending")
                 .values(status=status, closed_by=by, closed_at=now))


def approvals(conn: Connection, request_id: str) -> list[StoredApproval]:
    rows = conn.execute(select(mint_approvals).where(mint_approvals.c.request_id == request_id)
                        .order_by(mint_approvals.c.created_at, mint_approvals.c.operator))
    return [StoredApproval(**r._asdict()) for r in rows]


def insert_approval(conn: Connection, approval: StoredApproval) -> None:
    """AlreadyDecided when the officer decided on this request before (nothing else of the caller's
    transaction is undone: the insert runs in its own savepoint)."""
    try:
        with conn.begin_nested():
            conn.execute(insert(mint_approvals).values(**approval.__dict__))
    except sa_exc.IntegrityError as exc:
        raise AlreadyDecided(approval.operator) from exc


def reservation(conn: Connection, request_id: str) -> Reservation | None:
    row = conn.execute(select(mint_authorizations).where(mint_authorizations.c.request_id == request_id)).first()
    return None if row is None else Reservation(**row._asdict())


def nonce_holder(conn: Connection, nonce: str, request_id: str) -> str | None:
    """The other request whose reservation holds `nonce` (a nonce is signed at most once), or None."""
    return conn.execute(select(mint_authorizations.c.request_id).where(
        mint_authorizations.c.nonce == nonce, mint_authorizations.c.request_id != request_id)).scalar()


def reserve(conn: Connection, request: MintRequest, digest: str, signer: str, now: int) -> None:
    """Insert the nonce reservation (IntegrityError when the request or the nonce is reserved already)."""
    conn.execute(insert(mint_authorizations).values(
        request_id=request.id, nonce=request.nonce, digest=digest, chain_id=request.chain_id,
        amount=request.amount, signer=signer, reserved_at=now))


def claim(conn: Connection, request_id: str, seen_claimed_at: int | None, now: int) -> bool:
    """Take over an unsigned reservation (compare-and-set on claimed_at): True for exactly one caller."""
    unclaimed = (mint_authorizations.c.claimed_at.is_(None) if seen_claimed_at is None
                 else mint_authorizations.c.claimed_at == seen_claimed_at)
    return bool(conn.execute(update(mint_authorizations)
                             .where(mint_authorizations.c.request_id == request_id,
                                    mint_authorizations.c.signature.is_(None), unclaimed)
                             .values(claimed_at=now)).rowcount == 1)


def void(conn: Connection, request_id: str) -> None:
    """Remove an unsigned reservation (a signed one is never removed)."""
    conn.execute(delete(mint_authorizations).where(mint_authorizations.c.request_id == request_id,
                                                   mint_authorizations.c.signature.is_(None)))


def store_signature(conn: Connection, request_id: str, digest: str, signature: str, now: int) -> bool:
    """Store the signature of an unsigned reservation of `digest`; False when one is stored already (or the
    reservation was voided meanwhile): the stored one is the authorization."""
    return bool(conn.execute(update(mint_authorizations)
                             .where(mint_authorizations.c.request_id == request_id,
                                    mint_authorizations.c.digest == digest,
                                    mint_authorizations.c.signature.is_(None))
                             .values(signature=signature, signed_at=now)).rowcount == 1)


def _status_condition(status: str, now: int) -> ColumnElement[bool]:
    stored, open_ = mint_requests.c.status, mint_requests.c.expires_at > now
    if status == "pending":
        return and_(stored == "pending", open_)
    if status == "expired":  # a pending request past its TTL is expired (MintRequest.status_at)
        return or_(stored == "expired", and_(stored == "pending", not_(open_)))
    return stored == status


def summaries(conn: Connection, status: str | None, now: int, limit: int, offset: int
              ) -> tuple[int, Sequence[RequestSummary]]:
    """(how many match, one page of them newest first) for `status` as status_at(now) derives it."""
    columns = [mint_requests.c[f] for f in RequestSummary.__dataclass_fields__]
    query = select(*columns)
    count = select(func.count()).select_from(mint_requests)
    if status is not None:
        query, count = query.where(_status_condition(status, now)), count.where(_status_condition(status, now))
    total = int(conn.execute(count).scalar_one())
    rows = conn.execute(query.order_by(mint_requests.c.created_at.desc(), mint_requests.c.id)
                        .limit(limit).offset(offset))
    return total, [RequestSummary(**r._asdict()) for r in rows]


def count_pending(conn: Connection, now: int) -> int:
    return int(conn.execute(select(func.count()).select_from(mint_requests)
                            .where(_status_condition("pending", now))).scalar_one())
