"""Audit log persistence: entries, the tree head (compact range) and signed checkpoints.

`append` runs inside the caller's write transaction, so a state change and its audit entry commit together
or not at all. The head row is locked (`FOR UPDATE` on PostgreSQL; SQLite's `BEGIN IMMEDIATE` already holds
the write lock), which makes the index sequence gap-free across instances.

Inside Database.write() the appended entries and the new head are buffered and written with one multi-row
insert and one update just before the transaction commits: a group commit of 30 appends runs 2 statements for
them instead of 60. They are durable exactly when the caller's write() returns, as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from appliance.domain.merkle import CompactRange, leaf_hash
from appliance.store.db import add_buffer, get_buffer, is_buffered
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

    `locked`, when given, is the head the caller read with lock_head() in this transaction (checked). In a
    Database.write() transaction the entry and the new head are buffered and written with one multi-row insert
    and one update just before it commits; elsewhere they are written at once.
    """
    buffer = _buffer(conn)
    if locked is not None and locked.size != buffer.head.size:
        raise RuntimeError(f"append at {locked.size} but the head is at {buffer.head.size}")
    leaf = leaf_hash(entry)
    grown = buffer.compact.append(leaf)
    buffer.rows.append({"idx": buffer.head.size, "action": action, "entry": entry.decode("utf-8"),
                        "leaf_hash": leaf, "created_at": now})
    buffer.compact, buffer.head = grown, TreeHead(grown.size, grown.root())
    if not is_buffered(conn):
        buffer.flush(conn)
    return buffer.head


def touch_head(conn: Connection) -> None:
    """A durable write that changes nothing: fails on a read-only or full store (readiness probe).

    The head row is changed and changed back in one transaction: SQLite writes nothing for an update to the
    same value (a full disk would then go unnoticed), and a row changed twice is a page it must log."""
    conn.execute(update(audit_head).where(audit_head.c.id == 1).values(size=audit_head.c.size + 1))
    conn.execute(update(audit_head).where(audit_head.c.id == 1).values(size=audit_head.c.size - 1))


def lock_head(conn: Connection) -> TreeHead:
    """Read the head under the write lock (the index the next entry will get is `size`)."""
    return _buffer(conn).head


_KEY = "audit"


class _AuditBuffer:
    """The locked head of one write transaction and the entries appended in it; `rows[written:]` are not in
    the database yet. Marks (savepoints) and resets keep `written` too: a flush inside a savepoint that rolls
    back is undone by the database, so those rows must be written again."""

    def __init__(self, head: TreeHead, compact: CompactRange) -> None:
        self.head, self.compact = head, compact
        self.rows: list[dict[str, object]] = []
        self.written = 0

    def mark(self) -> object:
        return (self.head, self.compact, len(self.rows), self.written)

    def reset(self, mark: object) -> None:
        assert isinstance(mark, tuple)
        self.head, self.compact, count, self.written = mark
        del self.rows[count:]

    def flush(self, conn: Connection) -> None:
        pending = self.rows[self.written:]
        if not pending:
            return
        conn.execute(insert(audit_entries), pending)
        conn.execute(update(audit_head).where(audit_head.c.id == 1)
                     .values(size=self.compact.size, compact=self.compact.encode(), root=self.head.root))
        self.written = len(self.rows)


def _buffer(conn: Connection) -> _AuditBuffer:
    """This transaction's buffer, locking and reading the head row on first use."""
    existing = get_buffer(conn, _KEY)
    if isinstance(existing, _AuditBuffer):
        return existing
    row = conn.execute(select(audit_head.c.size, audit_head.c.root, audit_head.c.compact)
                       .where(audit_head.c.id == 1).with_for_update()).one()
    buffer = _AuditBuffer(TreeHead(row.size, row.root, row.compact), CompactRange.decode(row.compact))
    if is_buffered(conn):
        add_buffer(conn, _KEY, buffer)
    return buffer


def _flushed(conn: Connection) -> Connection:
    """conn, with this transaction's buffered entries written (reads of the log must see them)."""
    existing = get_buffer(conn, _KEY)
    if existing is not None:
        existing.flush(conn)
    return conn


def head(conn: Connection) -> TreeHead:
    row = _flushed(conn).execute(select(audit_head.c.size, audit_head.c.root).where(audit_head.c.id == 1)).first()
    if row is None:
        empty = CompactRange.empty()
        return TreeHead(0, empty.root())
    return TreeHead(row.size, row.root)


def entries(conn: Connection, start: int, end: int) -> list[str]:
    """Entries with index in [start, end), in order, as the canonical JSON text that was hashed."""
    rows = _flushed(conn).execute(select(audit_entries.c.entry).where(audit_entries.c.idx >= start,
                                                             audit_entries.c.idx < end)
                        .order_by(audit_entries.c.idx))
    return [r.entry for r in rows]


def entries_mentioning(conn: Connection, fragment: str, limit: int) -> list[str]:
    """Up to `limit` entries whose canonical JSON contains `fragment` literally, oldest first."""
    pattern = "%" + fragment.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    rows = _flushed(conn).execute(select(audit_entries.c.entry).where(audit_entries.c.entry.like(pattern,
                                                                                                  escape="\\"))
                                  .order_by(audit_entries.c.idx).limit(limit))
    return [r.entry for r in rows]


def leaf_hashes(conn: Connection, size: int, start: int = 0) -> list[bytes]:
    """The leaf hashes with index in [start, size), in order (for proofs)."""
    rows = _flushed(conn).execute(select(audit_entries.c.leaf_hash)
                                  .where(audit_entries.c.idx >= start, audit_entries.c.idx < size)
                                  .order_by(audit_entries.c.idx))
    return [bytes(r.leaf_hash) for r in rows]


def count_below(conn: Connection, size: int) -> int:
    """How many entries have an index below `size` (size of them, unless rows were deleted)."""
    return int(_flushed(conn).execute(select(func.count()).select_from(audit_entries)
                                      .where(audit_entries.c.idx < size)).scalar_one())


def save_checkpoint(conn: Connection, size: int, root: bytes, note: str, now: int) -> None:
    """Store a signed checkpoint, replacing whatever row claims this size (the caller checked it did not verify,
    or it is the same note)."""
    exists = conn.execute(select(audit_checkpoints.c.note).where(audit_checkpoints.c.size == size)).first()
    if exists is None:
        try:
            with conn.begin_nested():  # another instance may store this size at the same moment
                conn.execute(insert(audit_checkpoints).values(size=size, root=root, note=note, created_at=now))
            return
        except IntegrityError:
            exists = conn.execute(select(audit_checkpoints.c.note).where(audit_checkpoints.c.size == size)).one()
    if exists.note != note:
        conn.execute(update(audit_checkpoints).where(audit_checkpoints.c.size == size)
                     .values(root=root, note=note, created_at=now))


def checkpoint_at(conn: Connection, size: int) -> StoredCheckpoint | None:
    row = conn.execute(select(audit_checkpoints).where(audit_checkpoints.c.size == size)).first()
    if row is None:
        return None
    return StoredCheckpoint(row.size, bytes(row.root), row.note, row.created_at)


def latest_checkpoint(conn: Connection) -> StoredCheckpoint | None:
    row = conn.execute(select(audit_checkpoints).order_by(audit_checkpoints.c.size.desc()).limit(1)).first()
    if row is None:
        return None
    return StoredCheckpoint(row.size, bytes(row.root), row.note, row.created_at)


def checkpoints(conn: Connection, limit: int = 100) -> Sequence[StoredCheckpoint]:
    rows = conn.execute(select(audit_checkpoints).order_by(audit_checkpoints.c.size.desc()).limit(limit))
    return [StoredCheckpoint(r.size, bytes(r.root), r.note, r.created_at) for r in rows]
