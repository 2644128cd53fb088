"""Audit log persistence: entries, the tree head (compact range) and signed checkpoints.

`append` runs inside the caller's write transaction, so a state change and its audit entry commit together
or not at all. The head row is locked (`FOR UPDATE` on PostgreSQL; SQLite's `BEGIN IMMEDIATE` already holds
the write lock), which makes the index sequence gap-free across instances.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, func, insert, select, update

from appliance.domain.merkle import CompactRange, leaf_hash
from appliance.store.tables import audit_checkpoints, audit_entries, audit_head


@dataclass(frozen=True)
class TreeHead:
    size: int
    root: bytes
    compact: str = ""


@dataclass(frozen=True)
class StoredCheckpoint:
    size: int
    root: bytes
    note: str
    created_at: int


def ensure_head(conn: Connection) -> None:
    """Create the empty tree head if the log has none yet."""
    if conn.execute(select(audit_head.c.id).where(audit_head.c.id == 1)).first() is None:
        empty = CompactRange.empty()
        conn.execute(insert(audit_head).values(id=1, size=0, compact=empty.encode(), root=empty.root()))


def append(conn: Connection, action: str, entry: bytes, now: int, locked: TreeHead | None = None) -> TreeHead:
    """Append one canonical-JSON entry (already carrying its index `head.size`); returns the new head.

    `locked` is the head the caller read with lock_head() in this transaction (saves a round trip).
    """
    if locked is None:
        locked = lock_head(conn)
    compact = CompactRange.decode(locked.compact)
    leaf = leaf_hash(entry)
    grown = compact.append(leaf)
    conn.execute(insert(audit_entries).values(idx=locked.size, action=action, entry=entry.decode("utf-8"),
                                              leaf_hash=leaf, created_at=now))
    root = grown.root()
    conn.execute(update(audit_head).where(audit_head.c.id == 1).values(size=grown.size, compact=grown.encode(),
                                                                         root=root))
    return TreeHead(grown.size, root)


def lock_head(conn: Connection) -> TreeHead:
    """Read the head under the write lock (the index the next entry will get is `size`)."""
    row = conn.execute(select(audit_head.c.size, audit_head.c.root, audit_head.c.compact)
                       .where(audit_head.c.id == 1).with_for_update()).one()
    return TreeHead(row.size, row.root, row.compact)


def head(conn: Connection) -> TreeHead:
    row = conn.execute(select(audit_head.c.size, audit_head.c.root).where(audit_head.c.id == 1)).first()
    if row is None:
        empty = CompactRange.empty()
        return TreeHead(0, empty.root())
    return TreeHead(row.size, row.root)


def entries(conn: Connection, start: int, end: int) -> list[str]:
    """Entries with index in [start, end), in order, as the canonical JSON text that was hashed."""
    rows = conn.execute(select(audit_entries.c.entry).where(audit_entries.c.idx >= start,
                                                             audit_entries.c.idx < end)
                        .order_by(audit_entries.c.idx))
    return [r.entry for r in rows]


def leaf_hashes(conn: Connection, size: int) -> list[bytes]:
    """The first `size` leaf hashes, in order (for proofs)."""
    rows = conn.execute(select(audit_entries.c.leaf_hash).where(audit_entries.c.idx < size)
                        .order_by(audit_entries.c.idx))
    return [bytes(r.leaf_hash) for r in rows]


def count_actions(conn: Connection) -> dict[str, int]:
    rows = conn.execute(select(audit_entries.c.action, func.count()).group_by(audit_entries.c.action))
    return {r[0]: int(r[1]) for r in rows}


def save_checkpoint(conn: Connection, size: int, root: bytes, note: str, now: int) -> None:
    """Store a signed checkpoint unless one for this size exists already."""
    exists = conn.execute(select(audit_checkpoints.c.size).where(audit_checkpoints.c.size == size)).first()
    if exists is None:
        conn.execute(insert(audit_checkpoints).values(size=size, root=root, note=note, created_at=now))


def latest_checkpoint(conn: Connection) -> StoredCheckpoint | None:
    row = conn.execute(select(audit_checkpoints).order_by(audit_checkpoints.c.size.desc()).limit(1)).first()
    if row is None:
        return None
    return StoredCheckpoint(row.size, bytes(row.root), row.note, row.created_at)


def checkpoints(conn: Connection, limit: int = 100) -> Sequence[StoredCheckpoint]:
    rows = conn.execute(select(audit_checkpoints).order_by(audit_checkpoints.c.size.desc()).limit(limit))
    return [StoredCheckpoint(r.size, bytes(r.root), r.note, r.created_at) for r in rows]
