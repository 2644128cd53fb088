"""Repository tests, each on SQLite and on PostgreSQL (under CI=true PostgreSQL must run, not skip)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import event, insert, select, text
from sqlalchemy import exc as sa_exc

from appliance.domain import merkle
from appliance.domain.canonical import canonical_json
from appliance.errors import Conflict, StorageUnavailable
from appliance.store import audit_repo, db, schema
from appliance.store.db import Database
from appliance.store.tables import audit_entries, seen_tokens


@pytest.fixture
def store(db_url: str) -> Database:
    database = Database(db_url, timeout_seconds=2.0)
    schema.upgrade(database)
    schema.upgrade(database)  # idempotent
    database.write(audit_repo.ensure_head)
    yield database
    database.dispose()


def append(database: Database, n: int) -> int:
    def run(conn: object) -> int:
        head = audit_repo.lock_head(conn)  # type: ignore[arg-type]
        entry = canonical_json({"index": head.size, "n": n})
        audit_repo.append(conn, "test", entry, 0)  # type: ignore[arg-type]
        return head.size

    return database.write(run)


def test_schema_is_current(store: Database) -> None:
    assert schema.is_current(store)


def test_appends_from_many_threads_are_gap_free_and_the_head_matches(store: Database) -> None:
    errors: list[BaseException] = []

    def worker(w: int) -> None:
        for i in range(25):
            try:
                append(store, w * 1000 + i)
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with store.read() as conn:
        rows = conn.execute(select(audit_entries.c.idx, audit_entries.c.entry).order_by(audit_entries.c.idx)).all()
        head = audit_repo.head(conn)
    assert [r.idx for r in rows] == list(range(200))
    assert head.size == 200
    leaves = [merkle.leaf_hash(r.entry.encode()) for r in rows]
    assert head.root == merkle.root(leaves)
    assert all(f'"index":{r.idx}' in r.entry for r in rows)


def test_checkpoints_are_stored_once_per_size(store: Database) -> None:
    """The same note twice is one row; another note for the size replaces it (the audit service writes one only
    when the stored note does not verify: a row someone edited)."""
    append(store, 1)
    store.write(lambda c: audit_repo.save_checkpoint(c, 1, b"r" * 32, "note-1", 10))
    store.write(lambda c: audit_repo.save_checkpoint(c, 1, b"r" * 32, "note-1", 11))
    with store.read() as conn:
        latest = audit_repo.latest_checkpoint(conn)
    assert latest == audit_repo.StoredCheckpoint(1, b"r" * 32, "note-1", 10)
    store.write(lambda c: audit_repo.save_checkpoint(c, 1, b"x" * 32, "note-other", 12))
    with store.read() as conn:
        assert audit_repo.checkpoint_at(conn, 1) == audit_repo.StoredCheckpoint(1, b"x" * 32, "note-other", 12)


@pytest.mark.parametrize("same", [True, False], ids=["same-note", "other-note"])
def test_a_checkpoint_stored_by_another_instance_between_look_and_insert_is_no_error(store: Database,
                                                                                    same: bool) -> None:
    """Two instances sign the same size at once: one inserts between the other's look-up and insert. The later
    one finds the row (its own note if identical, replacing it otherwise, as above), instead of a UniqueViolation
    escaping to an officer whose mint was signed."""
    from sqlalchemy import event

    from appliance.store.tables import audit_checkpoints

    append(store, 1)
    theirs = "note-1" if same else "note-of-an-edited-row"
    fired: list[bool] = []

    def meanwhile(conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if not fired and statement.lstrip().upper().startswith("SELECT") and "audit_checkpoints" in statement:
            fired.append(True)  # the other instance's row, in place before this one inserts
            conn.execute(insert(audit_checkpoints).values(size=1, root=b"r" * 32, note=theirs, created_at=9))

    event.listen(store.engine, "after_cursor_execute", meanwhile)
    try:
        store.write(lambda c: audit_repo.save_checkpoint(c, 1, b"r" * 32, "note-1", 10))
    finally:
        event.remove(store.engine, "after_cursor_execute", meanwhile)
    assert fired
    with store.read() as conn:
        stored = audit_repo.checkpoint_at(conn, 1)
    assert stored is not None and stored.note == "note-1"


def test_a_jti_can_be_recorded_once(store: Database) -> None:
    from sqlalchemy import exc

    store.write(lambda c: c.execute(insert(seen_tokens).values(jti="j" * 20, operator="bob", seen_at=1)))
    with pytest.raises(exc.IntegrityError):
        store.write(lambda c: c.execute(insert(seen_tokens).values(jti="j" * 20, operator="eve", seen_at=2)))


def test_a_failed_transaction_leaves_nothing(store: Database) -> None:
    def half(conn: object) -> None:
        audit_repo.append(conn, "test", b'{"index":0}', 0)  # type: ignore[arg-type]
        raise StorageUnavailable("disk full (simulated)")

    with pytest.raises(StorageUnavailable):
        store.write(half)
    with store.read() as conn:
        assert audit_repo.head(conn).size == 0


@contextmanager
def write_lock_held(db_url: str) -> Iterator[None]:
    """Another client holds the store's write lock for the block (SQLite: an exclusive transaction;
    PostgreSQL: the audit head row locked FOR UPDATE)."""
    release, held = threading.Event(), threading.Event()

    def holder() -> None:
        if db_url.startswith("sqlite"):
            import sqlite3

            raw = sqlite3.connect(db_url[len("sqlite:///"):], isolation_level=None)
            raw.execute("BEGIN EXCLUSIVE")
            held.set()
            release.wait(30)
            raw.execute("ROLLBACK")
            raw.close()
            return
        other = Database(db_url, timeout_seconds=5.0)
        try:
            with other.engine.connect() as conn:
                conn.execute(text("SELECT * FROM audit_head FOR UPDATE"))
                held.set()
                release.wait(30)
                conn.rollback()
        finally:
            other.dispose()

    thread = threading.Thread(target=holder)
    thread.start()
    assert held.wait(5)
    try:
        yield
    finally:
        release.set()
        thread.join()


@pytest.mark.slow
def test_a_held_lock_fails_within_the_timeout(store: Database, db_url: str) -> None:
    """A blocked store never hangs a request: the write gives up within the configured bound."""
    with write_lock_held(db_url):
        started = time.monotonic()
        with pytest.raises(StorageUnavailable):
            append(store, 1)
    assert time.monotonic() - started < 2.0 + 1.5


def test_sqlite_is_durable_and_strict(tmp_path: object) -> None:
    database = Database(f"sqlite:///{tmp_path}/s.db")
    with database.read() as conn:
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def test_storage_unreachable_is_storage_unavailable() -> None:
    database = Database("postgresql://postgres@127.0.0.1:1/none", timeout_seconds=1.0)
    with pytest.raises(StorageUnavailable):
        database.ping()


def _entries_and_head(store: Database) -> tuple[list[str], audit_repo.TreeHead]:
    with store.read() as conn:
        rows = audit_repo.entries(conn, 0, 10_000)
        return rows, audit_repo.head(conn)


def _appending_twice(n: int) -> Any:
    def run(conn: object) -> int:
        head = audit_repo.lock_head(conn)  # type: ignore[arg-type]
        for k in range(2):
            audit_repo.append(conn, "test", canonical_json({"index": head.size + k, "n": n}), 0,  # type: ignore[arg-type]
                              audit_repo.lock_head(conn))  # type: ignore[arg-type]
        if n % 3 == 0:
            raise ValueError(f"caller {n} refused after appending")
        return head.size
    return run


def _check_twelve(store: Database, outcomes: list[object]) -> None:
    refused = [n for n in range(12) if isinstance(outcomes[n], ValueError)]
    assert refused == [0, 3, 6, 9]
    entries, head = _entries_and_head(store)
    assert head.size == len(entries) == 2 * 8
    assert [json_index(e) for e in entries] == list(range(16))
    assert sorted(outcomes[n] for n in range(12) if n not in refused) == list(range(0, 16, 2))  # type: ignore[type-var]
    assert {f'"n":{n}' in "".join(entries) for n in refused} == {False}
    assert head.root == merkle.root([merkle.leaf_hash(e.encode()) for e in entries])


def test_a_failing_caller_in_a_group_commit_loses_only_its_own_entries(store: Database) -> None:
    """Appends are buffered and written once per group commit; a caller whose fn fails takes back only its own."""
    _check_twelve(store, store.write_batch([_appending_twice(n) for n in range(12)]))


def test_concurrent_writers_however_they_are_batched_lose_only_their_own_entries(store: Database) -> None:
    """The same twelve callers on threads: however write() happens to group them, the outcome is the same."""
    outcomes: dict[int, object] = {}

    def worker(n: int) -> None:
        try:
            outcomes[n] = store.write(_appending_twice(n))
        except ValueError as exc:
            outcomes[n] = exc

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    _check_twelve(store, [outcomes[n] for n in range(12)])


def json_index(entry: str) -> int:
    import json

    return int(json.loads(entry)["index"])


def test_reads_inside_a_write_transaction_see_its_buffered_entries(store: Database) -> None:
    def run(conn: object) -> tuple[int, list[str]]:
        for k in range(3):
            audit_repo.append(conn, "test", canonical_json({"index": k}), 0)  # type: ignore[arg-type]
        return audit_repo.head(conn).size, audit_repo.entries(conn, 0, 3)  # type: ignore[arg-type]

    size, entries = store.write(run)  # type: ignore[arg-type]
    assert size == 3 and len(entries) == 3
    assert _entries_and_head(store)[1].size == 3


def test_a_conflict_while_writing_buffered_entries_fails_closed_and_leaks_nothing(store: Database) -> None:
    """A constraint violation at flush time is a store fault (503), never mistaken for the caller's conflict."""
    append(store, 1)

    def sneaky(conn: object) -> None:
        audit_repo.append(conn, "test", canonical_json({"index": 1}), 0)  # type: ignore[arg-type]
        conn.execute(insert(audit_entries).values(idx=1, action="x", entry="{}", leaf_hash=b"\0" * 32,  # type: ignore[attr-defined]
                                                  created_at=0))

    with pytest.raises(StorageUnavailable):
        store.write(sneaky)  # type: ignore[arg-type]
    entries, head = _entries_and_head(store)
    assert head.size == len(entries) == 1
    assert append(store, 2) == 1  # the next transaction starts from the stored head, not a stale buffer
    assert _entries_and_head(store)[1].size == 2


def test_a_read_only_store_fails_the_readiness_probe(tmp_path: Path) -> None:
    """A ping that only takes the write lock passes on a read-only file; the probe that writes does not."""
    path = tmp_path / "ro.db"
    writable = Database(f"sqlite:///{path}")
    schema.upgrade(writable)
    writable.write(audit_repo.ensure_head)
    writable.ping(audit_repo.touch_head)
    writable.dispose()
    failures: list[str] = []
    readonly = Database(f"sqlite:///file:{path}?mode=ro&uri=true", timeout_seconds=1.0)
    readonly.on_failure = failures.append
    try:
        with pytest.raises(StorageUnavailable, match="readonly"):
            readonly.ping(audit_repo.touch_head)
        assert failures == []  # a failed probe is not a failed audit write
    finally:
        readonly.dispose()


def _appending(tag: str, then: Any = None) -> Any:
    def run(conn: object) -> int:
        head = audit_repo.lock_head(conn)  # type: ignore[arg-type]
        audit_repo.append(conn, "test", canonical_json({"index": head.size, "tag": tag}), 0)  # type: ignore[arg-type]
        if then is not None:
            then(conn)
        return head.size
    return run


def _then_read_then_fail(conn: object) -> None:
    audit_repo.head(conn)  # type: ignore[arg-type]  # flushes the entries so far inside this caller's savepoint
    raise ValueError("refused after reading the log")


def test_a_read_that_flushed_inside_a_failing_caller_loses_no_one_elses_entry(store: Database) -> None:
    outcomes = store.write_batch([_appending("A"), _appending("B", _then_read_then_fail), _appending("C")])
    assert outcomes[0] == 0 and isinstance(outcomes[1], ValueError) and outcomes[2] == 1
    entries, head = _entries_and_head(store)
    assert [json.loads(e)["tag"] for e in entries] == ["A", "C"] and head.size == 2
    assert head.root == merkle.root([merkle.leaf_hash(e.encode()) for e in entries])


def _then_conflict(conn: object) -> None:
    raise Conflict("refused by its own rule")


def _then_duplicate_jti(conn: Any) -> None:
    conn.execute(insert(seen_tokens).values(jti="dup" * 8, operator="x", seen_at=1))


def _then_break_the_store(conn: Any) -> None:
    conn.exec_driver_sql("SELECT * FROM no_such_table")


def _then_inner_savepoint_fails(conn: Any) -> None:
    try:
        with conn.begin_nested():
            audit_repo.append(conn, "test", canonical_json({"index": -1, "tag": "inner"}), 0)
            raise KeyError("the inner step failed")
    except KeyError:
        pass


def _then_flush_conflicts(conn: Any) -> None:
    """Second in its batch, its entry is buffered as index 1: a row written directly at 1 conflicts at flush."""
    conn.execute(insert(audit_entries).values(idx=1, action="x", entry="{}", leaf_hash=b"\0" * 32, created_at=0))


class _BrokenBuffer:
    """A write buffer whose flush fails with an error that is not the database's."""

    def mark(self) -> object:
        return None

    def reset(self, mark: object) -> None:
        pass

    def flush(self, conn: object) -> None:
        raise RuntimeError("the buffer could not be written")


def _then_buffer_breaks_at_flush(conn: Any) -> None:
    db.add_buffer(conn, "broken", _BrokenBuffer())


_OK = "committed"
# (what each caller does after its own append, in batch order; what each caller gets; tags that commit)
_BATCHES: dict[str, tuple[list[Any], list[Any], list[str]]] = {
    "all succeed": ([None, None, None], [_OK, _OK, _OK], ["0", "1", "2"]),
    "one refused by its own rule": ([None, _then_conflict, None], [_OK, Conflict, _OK], ["0", "2"]),
    "the first refused": ([_then_conflict, None, None], [Conflict, _OK, _OK], ["1", "2"]),
    "the last refused": ([None, None, _then_conflict], [_OK, _OK, Conflict], ["0", "1"]),
    "one violates a constraint": ([None, _then_duplicate_jti, _then_duplicate_jti],
                                  [_OK, _OK, sa_exc.IntegrityError], ["0", "1"]),
    "one fails its own inner savepoint": ([_then_inner_savepoint_fails, None], [_OK, _OK], ["0", "1"]),
    "one reads the log then is refused": ([None, _then_read_then_fail, None], [_OK, ValueError, _OK], ["0", "2"]),
    "one breaks the store": ([None, _then_break_the_store, None],
                             [StorageUnavailable, StorageUnavailable, StorageUnavailable], []),
    "the buffered rows conflict at flush": ([None, _then_flush_conflicts],
                                            [StorageUnavailable, StorageUnavailable], []),
    "a buffer fails at flush with no database error": ([None, _then_buffer_breaks_at_flush, None],
                                                         [StorageUnavailable] * 3, []),
    "a single caller refused": ([_then_conflict], [Conflict], []),
    "a single caller breaking the store": ([_then_break_the_store], [StorageUnavailable], []),
}


@pytest.mark.parametrize("case", list(_BATCHES))
def test_what_a_group_commit_gives_each_caller_and_what_it_commits(store: Database, case: str) -> None:
    """The group commit case by case, through its deterministic seam (the batch write() forms, run in order)."""
    thens, expected, committed = _BATCHES[case]
    outcomes = store.write_batch([_appending(str(i), then) for i, then in enumerate(thens)])
    assert len(outcomes) == len(expected)
    for outcome, wanted in zip(outcomes, expected, strict=True):
        assert isinstance(outcome, int) if wanted is _OK else isinstance(outcome, wanted), (case, outcomes)
    entries, head = _entries_and_head(store)
    assert [json.loads(e)["tag"] for e in entries] == committed and head.size == len(committed)
    assert head.root == merkle.root([merkle.leaf_hash(e.encode()) for e in entries])
    with store.read() as conn:
        jtis = conn.execute(select(seen_tokens.c.jti)).scalars().all()
    assert len(jtis) == (1 if "constraint" in case else 0)
    assert [o for o in outcomes if isinstance(o, int)] == list(range(len(committed)))


def _then_write_a_row(conn: Any) -> None:
    conn.execute(insert(seen_tokens).values(jti="row" * 8, operator="x", seen_at=1))


def _only_a_row(conn: Any) -> int:
    _then_write_a_row(conn)
    return 0


# (what each caller of a three-caller batch does; the statements the batch sends: the first append reads the
# head row; the buffered entries and the new head are written once, at flush)
_STATEMENTS: dict[str, tuple[list[Any], list[str]]] = {
    "buffered appends after the first: no savepoint": (
        [_appending("0"), _appending("1"), _appending("2")],
        ["SAVEPOINT", "read head", "RELEASE", "entries", "head"]),
    "the first caller's savepoint also holds its later writes": (
        [_appending("0", _then_write_a_row), _appending("1"), _appending("2")],
        ["SAVEPOINT", "read head", "row", "RELEASE", "entries", "head"]),
    "a writer in the middle: its savepoint comes before its first statement": (
        [_appending("0"), _only_a_row, _appending("2")],
        ["SAVEPOINT", "read head", "RELEASE", "SAVEPOINT", "row", "RELEASE", "entries", "head"]),
    "a refused caller that sent nothing: nothing to roll back": (
        [_appending("0"), _appending("1", _then_conflict), _appending("2")],
        ["SAVEPOINT", "read head", "RELEASE", "entries", "head"]),
    "a refused caller that wrote: rolled back to its savepoint": (
        [_appending("0"), _appending("1", lambda c: (_then_write_a_row(c), _then_conflict(c))), _appending("2")],
        ["SAVEPOINT", "read head", "RELEASE", "SAVEPOINT", "row", "ROLLBACK TO", "RELEASE", "entries", "head"]),
}


def _kind(statement: str) -> str:
    for prefix, kind in (("SAVEPOINT", "SAVEPOINT"), ("RELEASE", "RELEASE"), ("ROLLBACK TO", "ROLLBACK TO"),
                         ("INSERT INTO audit_entries", "entries"), ("UPDATE audit_head", "head"),
                         ("SELECT audit_head", "read head"), ("INSERT INTO seen_tokens", "row")):
        if statement.lstrip().upper().startswith(prefix.upper()):
            return kind
    return statement.split()[0].upper()


@pytest.mark.parametrize("case", list(_STATEMENTS))
def test_a_callers_savepoint_is_sent_only_before_its_first_statement(store: Database, case: str) -> None:
    """Deferred savepoints: callers that only buffer appends cost no round trip; one that writes gets its
    savepoint before its first statement, and a refusal rolls back exactly that."""
    fns, expected = _STATEMENTS[case]
    sent: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        sent.append(_kind(statement))

    event.listen(store.engine, "before_cursor_execute", record)
    try:
        outcomes = store.write_batch(fns)
    finally:
        event.remove(store.engine, "before_cursor_execute", record)
    assert [k for k in sent if k not in ("BEGIN", "SELECT", "COMMIT")] == expected, sent
    assert not any(isinstance(o, StorageUnavailable) for o in outcomes)


@pytest.mark.parametrize(("deadlines", "batch_deadline", "room", "taken"), [
    ([5.0, 6.0, 7.0], 5.0, 10, [5.0, 6.0, 7.0]),  # a deadline equal to the batch's is kept
    ([4.9, 6.0], 5.0, 10, [6.0]),  # an earlier deadline: the batch's lock wait could outlast its promise
    ([6.0, 7.0, 8.0], 5.0, 2, [6.0, 7.0]),  # the batch is full: queue order decides
    ([6.0], 5.0, 0, []),
    ([6.0], 5.0, -3, []),
    ([], 5.0, 10, []),
])
def test_which_queued_callers_join_a_running_batch(deadlines: list[float], batch_deadline: float, room: int,
                                                  taken: list[float]) -> None:
    queue = [SimpleNamespace(deadline=d) for d in deadlines]
    assert [p.deadline for p in db.joinable(queue, batch_deadline, room)] == taken


def test_an_entry_appended_in_a_callers_own_rolled_back_savepoint_is_dropped(store: Database) -> None:
    def inner(conn: Any) -> int:
        try:
            with conn.begin_nested():
                _appending("inner")(conn)
                raise KeyError("the inner step failed")
        except KeyError:
            pass
        return _appending("outer")(conn)

    assert store.write(inner) == 0
    entries, head = _entries_and_head(store)
    assert [json.loads(e)["tag"] for e in entries] == ["outer"] and head.size == 1
    assert head.root == merkle.root([merkle.leaf_hash(e.encode()) for e in entries])


def test_queued_callers_behind_a_held_lock_each_fail_within_their_own_timeout(db_url: str) -> None:
    """Time spent queued for the group commit counts against the bound: no caller waits ~2x the timeout."""
    store = Database(db_url, timeout_seconds=0.5)
    schema.upgrade(store)
    store.write(audit_repo.ensure_head)
    latencies: list[float] = []

    def caller() -> None:
        started = time.monotonic()
        with pytest.raises(StorageUnavailable):
            append(store, 1)
        latencies.append(time.monotonic() - started)

    callers = []
    try:
        with write_lock_held(db_url):
            for _ in range(6):
                callers.append(threading.Thread(target=caller))
                callers[-1].start()
                time.sleep(0.05)
            for t in callers:
                t.join()
    finally:
        store.dispose()
    assert len(latencies) == 6 and max(latencies) < 0.5 + 0.3, latencies  # it was up to 2 x 0.5


def test_callers_who_join_late_get_their_own_time_not_an_earlier_callers(db_url: str) -> None:
    """Two callers queue at once, two more 0.45 s later (timeout 0.5 s); the lock is released at 0.7 s. The
    first two time out at 0.5 s; the late two must not fail with them: they get the lock when it is free."""
    store = Database(db_url, timeout_seconds=0.5)
    schema.upgrade(store)
    store.write(audit_repo.ensure_head)
    outcomes: dict[int, str] = {}

    def caller(i: int) -> None:
        try:
            append(store, i)
            outcomes[i] = "ok"
        except StorageUnavailable:
            outcomes[i] = "timed out"

    callers = []
    try:
        with write_lock_held(db_url):
            started = time.monotonic()
            for i, at in enumerate((0.0, 0.02, 0.45, 0.46)):
                while time.monotonic() - started < at:
                    time.sleep(0.001)
                callers.append(threading.Thread(target=caller, args=(i,)))
                callers[-1].start()
            while time.monotonic() - started < 0.7:
                time.sleep(0.005)
        for t in callers:
            t.join()
    finally:
        store.dispose()
    assert outcomes == {0: "timed out", 1: "timed out", 2: "ok", 3: "ok"}, outcomes
