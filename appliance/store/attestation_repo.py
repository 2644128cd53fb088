"""Stored attestations: the reservation of the next seq, its signed JWS, and the reads of the chain.

A row with `jws == ""` is a reservation whose signature is not stored (yet, or ever). Every figure in a row is
attacker-writable: the services believe the JWS, verified under the attestation key, and the token's head.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, delete, func, insert, select, update

from appliance.store.tables import attestations


@dataclass(frozen=True)
class StoredAttestation:
    seq: int
    as_of: str
    as_of_ts: int
    figures_digest: str
    status: str
    coverage_bps: int | None
    reserves_total: str
    reserves_decimals: int
    supply_total: str
    supply_decimals: int
    jws: str
    issued_at: int
    requested_by: str

    @property
    def signed(self) -> bool:
        return self.jws != ""


def _one(row: object) -> StoredAttestation | None:
    return None if row is None else StoredAttestation(**row._asdict())  # type: ignore[attr-defined]


_SIGNED = attestations.c.jws != ""


def latest_signed_attestation(conn: Connection) -> StoredAttestation | None:
    """The signed attestation with the highest seq, or None before the first."""
    return _one(conn.execute(select(attestations).where(_SIGNED).order_by(attestations.c.seq.desc())
                             .limit(1)).first())


def signed_at(conn: Connection, seq: int) -> StoredAttestation | None:
    return _one(conn.execute(select(attestations).where(attestations.c.seq == seq, _SIGNED)).first())


def signed_from(conn: Connection, seq: int) -> list[StoredAttestation]:
    """The signed attestations with seq >= `seq`, in order."""
    rows = conn.execute(select(attestations).where(_SIGNED, attestations.c.seq >= seq).order_by(attestations.c.seq))
    return [StoredAttestation(**r._asdict()) for r in rows]


def by_as_of(conn: Connection, as_of: str) -> StoredAttestation | None:
    """The attestation (signed or only reserved) for `as_of`."""
    return _one(conn.execute(select(attestations).where(attestations.c.as_of == as_of)).first())


def page(conn: Connection, limit: int, before: int | None) -> tuple[int, Sequence[StoredAttestation]]:
    """(how many are signed, the signed ones newest first, below `before` when given)."""
    query = select(attestations).where(_SIGNED)
    if before is not None:
        query = query.where(attestations.c.seq < before)
    total = int(conn.execute(select(func.count()).select_from(attestations).where(_SIGNED)).scalar_one())
    rows = conn.execute(query.order_by(attestations.c.seq.desc()).limit(limit))
    return total, [StoredAttestation(**r._asdict()) for r in rows]


def reserve(conn: Connection, reservation: StoredAttestation) -> None:
    """Insert the reservation of a seq (IntegrityError when the seq or the as_of is taken)."""
    conn.execute(insert(attestations).values(**reservation.__dict__))


def abandoned(conn: Connection, cutoff: int) -> list[int]:
    """The seqs of reservations made at or before `cutoff` whose signature was never stored."""
    rows = conn.execute(select(attestations.c.seq).where(attestations.c.jws == "",
                                                         attestations.c.issued_at <= cutoff))
    return [int(r.seq) for r in rows]


def unreserve(conn: Connection, seq: int, reserved_at: int | None = None) -> bool:
    """Remove the unsigned reservation of `seq` (made at `reserved_at`, when given); whether one was removed."""
    condition = [attestations.c.seq == seq, attestations.c.jws == ""]
    if reserved_at is not None:
        condition.append(attestations.c.issued_at == reserved_at)
    return bool(conn.execute(delete(attestations).where(*condition)).rowcount == 1)


def store_signature(conn: Connection, seq: int, reserved_at: int, figures_digest: str, jws: str) -> bool:
    """Store the JWS of this exact reservation; False when it was dropped (abandoned) meanwhile."""
    return bool(conn.execute(update(attestations).where(
        attestations.c.seq == seq, attestations.c.jws == "", attestations.c.issued_at == reserved_at,
        attestations.c.figures_digest == figures_digest).values(jws=jws)).rowcount == 1)
