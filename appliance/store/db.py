"""The database port: engine set-up, durable transactions with bounded waits, and error wrapping.

SQLite (the embedded default) runs in WAL mode with `synchronous=FULL`, foreign keys on, and write
transactions that take the write lock up front (`BEGIN IMMEDIATE`) so that read-modify-write sequences such
as an audit append are serialized. PostgreSQL (several instances) gets lock and statement timeouts, and
write transactions are retried on serialization failures and deadlocks. Every driver error other than a
constraint violation becomes `StorageUnavailable`.

The durability contract of `Database.write(fn)`:
- **Returned means committed.** When write() returns, everything fn wrote (its rows, and the audit entries and
  head its repositories buffered) is committed with `synchronous=FULL` (SQLite) or a synchronous commit
  (PostgreSQL): it survives a crash of the process or the machine. When write() raises, nothing of fn is
  committed. There is no third outcome visible to the caller, except that a StorageUnavailable raised by the
  commit itself may hide a commit that did happen (the database's usual ambiguity): the mint path is built for
  it (a reservation without a signature is taken over; see services.mint).
- **Group commit.** Concurrent callers are batched: one leads and runs every waiting fn in one transaction,
  each in its own savepoint, then commits once; callers who queue while the batch's fns run join it (late
  joiners: up to `max_batch`, and only if their deadline is not earlier than the batch's). A caller's
  savepoint is sent just before its first statement, so one that only appends buffered rows costs none; the
  buffers are marked when its fn starts. A caller's own error (an ApplianceError, an IntegrityError) rolls
  back its savepoint, if it was sent, and resets the buffers to its mark, and reaches only that caller; the
  others commit. A failure of the store (a driver error, a failed savepoint or commit, any error while the
  buffers are written) fails every caller of the batch: none of them commits. So a concurrent caller's failure
  can never undo what write() told another caller was committed, and it can make another caller fail (503)
  only by breaking the store itself. A PostgreSQL serialization retry reruns the whole batch, late joiners
  included, once per attempt.
- **Bounded waits.** A caller whose fn has not started within the timeout fails (its fn never runs); a batch
  waits for locks only until the earliest deadline of its callers, and callers with time left are queued again.
- **Write-behind buffers.** Repositories may collect rows during the transaction (`add_buffer`) and write them
  in one statement just before the commit; reads through the same connection flush them first (audit_repo).
  They change the number of statements, never what commits together.
- **A deterministic seam.** `write_batch(fns)` runs exactly the batch write() forms from waiting callers, in the
  given order and without threads, and returns each caller's outcome; the cases above are tested through it
  one by one (tests/integration/test_store.py), and once more with real concurrent callers. Which queued
  callers join a running batch is the pure `joinable`, tested table-driven; the statements each caller sends
  (its deferred savepoint) are counted case by case through the seam.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any, Generic, Protocol, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy import exc as sa_exc

from appliance.domain.rate import Recent
from appliance.errors import StorageUnavailable

T = TypeVar("T")

_RETRYABLE_PG = {"40001", "40P01"}  # serialization_failure, deadlock_detected
_MIN_LEFT = 0.01  # seconds: a caller with less time left fails on its own instead of joining or leading a batch
PING = "ping"


PROBE_SECONDS = 1.0


def _owner_only(database: str | None) -> None:
    """The SQLite file and its WAL and shared-memory files readable and writable by their owner only (0600):
    the store holds every request, approval and audit entry. Files created later follow the process umask,
    which `appliance` sets to 077."""
    if not database or database == ":memory:":
        return
    for suffix in ("", "-wal", "-shm"):
        try:
            os.chmod(database + suffix, 0o600)
        except FileNotFoundError:
            pass


class Database:
    """One engine per process; `write()` for durable transactions, `read()` for consistent reads."""

    def __init__(self, url: str, timeout_seconds: float = 5.0) -> None:
        self.url = url
        self.timeout = timeout_seconds
        self.is_sqlite = url.startswith("sqlite")
        self.engine = self._create_engine()
        _listen_for_savepoints(self.engine)
        #: called with the operation name when a write fails; metrics hook in here.
        self.on_failure: Callable[[str], None] | None = None
        self.max_batch = 64
        self._cv = threading.Condition()
        self._queue: list[_Pending[Any]] = []
        self._leading = False
        #: the result of the last probe write (readiness, metrics), reused for a second: see services.status
        self.probe: Recent[dict[str, Any]] = Recent(PROBE_SECONDS)

    def _create_engine(self) -> Engine:
        if self.is_sqlite:
            engine = create_engine(
                self.url,
                connect_args={"timeout": self.timeout, "check_same_thread": False, "isolation_level": None},
                # Pooled: opening a connection (and its pragmas) and closing the last one (a WAL checkpoint) cost
                # more than a durable commit. The engine is created after the server forks its workers.
                pool_size=4, max_overflow=28, pool_timeout=self.timeout,
            )

            @event.listens_for(engine, "connect")
            def _pragmas(dbapi_conn: Any, _record: Any) -> None:
                cursor = dbapi_conn.cursor()
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA synchronous=FULL")
                cursor.execute("PRAGMA foreign_keys=ON")
                cursor.execute(f"PRAGMA busy_timeout={int(self.timeout * 1000)}")
                cursor.close()
                _owner_only(engine.url.database)

            @event.listens_for(engine, "begin")
            def _begin(conn: Connection) -> None:
                immediate = conn.get_execution_options().get("immediate", False)
                conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

            return engine
        ms = int(self.timeout * 1000)
        url = self.url.replace("postgresql://", "postgresql+psycopg://", 1) if self.url.startswith(
            "postgresql://") else self.url
        return create_engine(
            url,
            pool_pre_ping=True,
            pool_size=10,
            max_overflow=40,
            pool_timeout=self.timeout,
            connect_args={"connect_timeout": max(1, int(self.timeout)),
                          "options": f"-c lock_timeout={ms} -c statement_timeout={ms}"},
        )

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read-only transaction."""
        try:
            with self.engine.connect() as conn, conn.begin():
                yield conn
        except sa_exc.IntegrityError:
            raise
        except sa_exc.SQLAlchemyError as exc:
            raise StorageUnavailable(f"storage read failed: {_reason(exc)}") from exc

    def write(self, fn: Callable[[Connection], T], operation: str = "write", attempts: int = 5) -> T:
        """Run fn in a durable transaction (committed when this returns), retrying PostgreSQL conflicts.

        Concurrent callers are group-committed: one of them leads, runs every waiting fn in one transaction
        (each in its own savepoint, so one caller's error leaves the others intact) and commits once.
        A caller whose fn has not started within the timeout gets StorageUnavailable and its fn never runs.
        Exceptions of fn (IntegrityError, ApplianceError) reach only its own caller.
        """
        item = _Pending(fn, operation, time.monotonic() + self.timeout)
        with self._cv:
            self._queue.append(item)
        while True:
            with self._cv:
                while True:
                    if item.done:
                        if not item.retry:
                            return item.outcome()
                        item.reset()  # its batch ran out of an earlier caller's time, not of this one's
                        self._queue.append(item)
                    if not item.started and not self._leading and item.deadline - time.monotonic() > _MIN_LEFT:
                        # Lead a batch of the callers with time left: the batch waits for locks only until the
                        # earliest of their deadlines, so one nearly expired caller must not cut others short.
                        self._leading = True
                        now = time.monotonic()
                        batch = [item] + [p for p in self._queue
                                          if p is not item and p.deadline - now > _MIN_LEFT][:self.max_batch - 1]
                        for p in batch:
                            p.started = True
                            self._queue.remove(p)
                        break
                    if not item.started:
                        remaining = item.deadline - time.monotonic()
                        if remaining <= _MIN_LEFT:
                            self._queue.remove(item)
                            self._failed(operation)
                            raise StorageUnavailable(f"storage {operation} failed: timed out waiting for the store")
                        self._cv.wait(remaining)
                    else:
                        self._cv.wait()
            try:
                self._run(batch, attempts)
            finally:
                with self._cv:
                    self._leading = False
                    for p in batch:
                        p.done = True
                    self._cv.notify_all()

    def write_batch(self, fns: list[Callable[[Connection], Any]], operation: str = "write",
                    attempts: int = 5) -> list[object]:
        """Run fns as one group commit, in this order, and return each one's outcome: its result, or the
        exception its own caller of write() would have received.

        This is the group commit's seam, exactly the batch write() forms when callers are waiting: it waits
        for the leader's seat like any caller, then runs the batch itself (no threads, no timing), so its
        semantics can be tested case by case. A caller the batch could not serve in its time fails with
        StorageUnavailable, as write() would after its own timeout."""
        deadline = time.monotonic() + self.timeout
        batch = [_Pending(fn, operation, deadline) for fn in fns]
        with self._cv:
            while self._leading:
                if not self._cv.wait(deadline - time.monotonic()):
                    raise StorageUnavailable(f"storage {operation} failed: timed out waiting for the store")
            self._leading = True
        try:
            self._run(batch, attempts)
        finally:
            with self._cv:
                self._leading = False
                for p in batch[len(fns):]:  # callers of write() who joined this batch late
                    p.done = True
                self._cv.notify_all()
        outcomes: list[object] = []
        for p in batch[:len(fns)]:
            if p.retry:
                self._failed(p.operation)
                outcomes.append(StorageUnavailable(f"storage {operation} failed: timed out waiting for the store"))
            else:
                outcomes.append(p.error if p.error is not None else p.result)
        return outcomes

    def _run(self, batch: list[_Pending[Any]], attempts: int) -> None:
        """Execute a batch in one transaction; every item ends with a result or an exception."""
        # Every caller was promised an answer within the timeout of its own call: the batch waits for locks
        # only until the earliest of their deadlines (not a fresh timeout on top of the time spent queued).
        deadline = min(p.deadline for p in batch)
        for attempt in range(1, attempts + 1):
            for p in batch:
                p.result, p.error = None, None
            try:
                with self.engine.connect() as conn:
                    remaining_ms = int((deadline - time.monotonic()) * 1000)  # after the pool's own wait
                    if remaining_ms <= 0:
                        self._fail_all(batch, StorageUnavailable("timed out waiting for the store"), deadline)
                        return
                    conn = conn.execution_options(immediate=True)
                    conn.info[_BUFFERS] = _Buffers()
                    if self.is_sqlite:  # the lock wait of BEGIN IMMEDIATE (set on the driver: no autobegin)
                        driver = conn.connection.driver_connection
                        assert driver is not None  # a checked-out connection
                        driver.execute(f"PRAGMA busy_timeout={remaining_ms}")
                    try:
                        with conn.begin():
                            if not self.is_sqlite:  # one round trip: both limits, for this transaction only
                                conn.exec_driver_sql(f"SELECT set_config('lock_timeout', '{remaining_ms}', true), "
                                                     f"set_config('statement_timeout', '{remaining_ms}', true)")
                            self._run_fns(conn, batch, deadline)
                            try:
                                flush_buffers(conn)
                            except sa_exc.IntegrityError as exc:  # not a caller's conflict: fail them all
                                raise _FlushFailed from exc
                    finally:
                        conn.info.pop(_BUFFERS, None)  # info outlives the checkout: never leak into the next one
                        if self.is_sqlite:  # back to the default for whoever checks this connection out next
                            with suppress(Exception):  # a broken connection is discarded by the pool anyway
                                driver = conn.connection.driver_connection
                                if driver is not None:
                                    driver.execute(f"PRAGMA busy_timeout={int(self.timeout * 1000)}")
                return
            except sa_exc.DBAPIError as exc:
                if isinstance(exc, sa_exc.IntegrityError) and len(batch) == 1:
                    batch[0].error = exc
                    return
                code = getattr(getattr(exc, "orig", None), "sqlstate", None)
                if code in _RETRYABLE_PG and attempt < attempts and time.monotonic() < deadline:
                    time.sleep(0.005 * attempt)
                    continue
                self._fail_all(batch, exc, deadline)
                return
            except sa_exc.SQLAlchemyError as exc:
                self._fail_all(batch, exc, deadline)
                return
            except _FlushFailed as exc:
                self._fail_all(batch, exc.__cause__ or exc)
                return
            except Exception as exc:
                if len(batch) == 1:  # fn's own error (it ran without a savepoint): it reaches its caller alone
                    batch[0].error = exc
                else:  # every fn ran in its own savepoint: this came from the flush or the commit
                    self._fail_all(batch, exc)
                return

    def _run_fns(self, conn: Connection, batch: list[_Pending[Any]], deadline: float) -> None:
        """Run the batch's fns in order, then those of callers who queued meanwhile (late joiners), until none
        is waiting or the batch is full. A lone caller runs without a savepoint (its error rolls back the whole
        transaction); every other fn runs in its own. A joiner is taken only if its deadline is not earlier
        than the batch's, so the batch's lock wait stays within its promise; it becomes part of `batch` and is
        rerun with it on a retry."""
        if len(batch) == 1:
            batch[0].result = batch[0].fn(conn)
            done = 1
        else:
            done = 0
        while True:
            for p in batch[done:]:
                _run_in_savepoint(conn, p)
            done = len(batch)
            if not self._take_joiners(batch, deadline):
                return

    def _take_joiners(self, batch: list[_Pending[Any]], deadline: float) -> bool:
        with self._cv:
            joiners = joinable(self._queue, deadline, self.max_batch - len(batch))
            for p in joiners:
                p.started = True
                self._queue.remove(p)
        batch.extend(joiners)
        return bool(joiners)

    def _fail_all(self, batch: list[_Pending[Any]], exc: BaseException, deadline: float | None = None) -> None:
        """Every item fails with StorageUnavailable, except (when the failure came as the batch's lock wait ran
        out at `deadline`) callers with time of their own left: they are queued again (retry)."""
        now = time.monotonic()
        out_of_time = deadline is not None and now >= deadline - _MIN_LEFT
        for p in batch:
            store_failed = p.error is None or isinstance(p.error, sa_exc.SQLAlchemyError) or p.result is not None
            if store_failed and out_of_time and p.deadline - now > _MIN_LEFT:
                p.result, p.error, p.retry = None, None, True
                continue
            if store_failed:
                self._failed(p.operation)
                p.error = StorageUnavailable(f"storage {p.operation} failed: {_reason(exc)}")
                p.error.__cause__ = exc
            p.result = None

    def _failed(self, operation: str) -> None:
        if operation != PING:
            self.probe.forget()  # a write failed: the next readiness probe tries one itself
        if self.on_failure is not None and operation != PING:
            self.on_failure(operation)

    def ping(self, probe: Callable[[Connection], object] | None = None) -> None:
        """Raise StorageUnavailable unless a write transaction running `probe` commits right now.

        Give a probe that writes (a no-op update) to also catch a read-only file or a full disk; the default
        only checks that the write lock can be taken. A failed ping is not counted as a failed write."""
        def select_one(conn: Connection) -> None:
            conn.exec_driver_sql("SELECT 1")
        self.write(probe or select_one, PING)

    def dispose(self) -> None:
        self.engine.dispose()


class _Waiting(Protocol):
    deadline: float


W = TypeVar("W", bound=_Waiting)


def joinable(queue: list[W], deadline: float, room: int) -> list[W]:
    """The queued callers a running batch takes in late, in queue order: only those whose own deadline is not
    earlier than the batch's (its lock wait must not outlast anyone's promise), and at most `room` of them."""
    return [p for p in queue if p.deadline >= deadline][:max(room, 0)]


class _Pending(Generic[T]):
    """One caller's transaction function waiting for (or inside) a group commit."""

    def __init__(self, fn: Callable[[Connection], T], operation: str, deadline: float) -> None:
        self.fn, self.operation, self.deadline = fn, operation, deadline
        self.started = self.done = self.retry = False
        self.result: T | None = None
        self.error: BaseException | None = None

    def reset(self) -> None:
        """Back to waiting (queued again after its batch ran out of another caller's time)."""
        self.started = self.done = self.retry = False
        self.result, self.error = None, None

    def outcome(self) -> T:
        if self.error is not None:
            raise self.error
        return self.result  # type: ignore[return-value]


def _run_in_savepoint(conn: Connection, p: _Pending[Any]) -> None:
    """Run one caller's fn so that its failure rolls back only its own changes, buffered ones included.

    The caller's savepoint is deferred: it is sent just before fn's first statement (see _open_deferred), so a
    caller that only appends to the write buffers costs no round trip. The buffers are marked when fn starts
    and reset to that mark if it fails, whether or not a savepoint was sent."""
    buffers = conn.info[_BUFFERS]
    assert isinstance(buffers, _Buffers)
    start = buffers.mark_all()
    deferred = conn.info[_DEFERRED] = _Deferred()
    try:
        p.result = p.fn(conn)
    except sa_exc.SQLAlchemyError as exc:
        if not isinstance(exc, sa_exc.IntegrityError):
            raise  # the connection or the store failed (a failed SAVEPOINT too): the whole batch fails
        _undo(conn, deferred, buffers, start)
        p.error = exc
    except Exception as exc:  # noqa: BLE001 - the caller's own error (e.g. a 409): it reaches that caller only
        _undo(conn, deferred, buffers, start)
        p.error = exc
    else:
        if deferred.sent:
            conn.exec_driver_sql(f"RELEASE SAVEPOINT {_CALLER_SAVEPOINT}")
    finally:
        conn.info.pop(_DEFERRED, None)


_DEFERRED = "appliance.deferred_savepoint"
_CALLER_SAVEPOINT = "appliance_caller"


class _Deferred:
    """The savepoint of the caller running now: whether it has been sent yet."""

    sent = False


def _open_deferred(conn: Connection, *_args: object) -> None:
    """Before any statement of a group-commit caller: send its savepoint first, once (engine event)."""
    deferred = conn.info.get(_DEFERRED)
    if isinstance(deferred, _Deferred) and not deferred.sent:
        deferred.sent = True  # first: the SAVEPOINT statement below passes through this hook too
        conn.exec_driver_sql(f"SAVEPOINT {_CALLER_SAVEPOINT}")


def _undo(conn: Connection, deferred: _Deferred, buffers: _Buffers, start: dict[str, object]) -> None:
    """Roll back what the failed caller wrote (its savepoint, if sent) and reset the buffers to its start."""
    if deferred.sent:  # (the hook lets these through: the savepoint is marked sent)
        conn.exec_driver_sql(f"ROLLBACK TO SAVEPOINT {_CALLER_SAVEPOINT}")
        conn.exec_driver_sql(f"RELEASE SAVEPOINT {_CALLER_SAVEPOINT}")
    buffers.reset_all(start)


class _FlushFailed(Exception):
    """Writing the buffered rows violated a constraint: a store fault, not any one caller's conflict."""


# -- write-behind buffers ---------------------------------------------------------------------------------------

_BUFFERS = "appliance.write_buffers"


class WriteBuffer(Protocol):
    """Rows a repository collects during a write transaction and writes in one go just before it commits.

    Only connections of Database.write() carry buffers. Every savepoint (the group commit's per-caller ones
    and any a caller opens itself) takes a mark of each buffer; rolling the savepoint back resets them to it
    and drops a buffer created inside it (on PostgreSQL the row lock its first read took is released too).
    """

    def mark(self) -> object: ...

    def reset(self, mark: object) -> None: ...

    def flush(self, conn: Connection) -> None: ...


class _Buffers:
    """The buffers of one write transaction and a stack of marks, one entry per open savepoint."""

    def __init__(self) -> None:
        self.items: dict[str, WriteBuffer] = {}
        self.marks: list[dict[str, object]] = []

    def mark_all(self) -> dict[str, object]:
        return {key: buf.mark() for key, buf in self.items.items()}

    def reset_all(self, marks: dict[str, object]) -> None:
        """Back to `marks`: each buffer to its mark, a buffer created since then dropped."""
        for key in list(self.items):
            if key in marks:
                self.items[key].reset(marks[key])
            else:
                del self.items[key]


def is_buffered(conn: Connection) -> bool:
    """Whether conn is a Database.write() transaction, whose buffers are flushed before it commits."""
    return isinstance(conn.info.get(_BUFFERS), _Buffers)


def get_buffer(conn: Connection, key: str) -> WriteBuffer | None:
    """The buffer under key in this write transaction, or None (also when conn does not buffer at all)."""
    buffers = conn.info.get(_BUFFERS)
    return buffers.items.get(key) if isinstance(buffers, _Buffers) else None


def add_buffer(conn: Connection, key: str, buffer: WriteBuffer) -> None:
    """Register a buffer to be flushed before commit (conn must be buffered: see is_buffered)."""
    buffers = conn.info[_BUFFERS]
    assert isinstance(buffers, _Buffers)
    buffers.items[key] = buffer


def flush_buffers(conn: Connection) -> None:
    """Write every buffered row now (before commit)."""
    buffers = conn.info.get(_BUFFERS)
    if isinstance(buffers, _Buffers):
        for buf in list(buffers.items.values()):
            buf.flush(conn)


def _listen_for_savepoints(engine: Engine) -> None:
    """Keep the write buffers in step with savepoints (SQLAlchemy nests them strictly: a stack suffices), and
    send a group-commit caller's deferred savepoint before its first statement."""

    event.listen(engine, "before_execute", _open_deferred)

    @event.listens_for(engine, "savepoint")
    def _savepoint(conn: Connection, _name: str | None) -> None:
        buffers = conn.info.get(_BUFFERS)
        if isinstance(buffers, _Buffers):
            buffers.marks.append(buffers.mark_all())

    @event.listens_for(engine, "rollback_savepoint")
    def _rollback(conn: Connection, _name: str, _context: object) -> None:
        buffers = conn.info.get(_BUFFERS)
        if isinstance(buffers, _Buffers) and buffers.marks:
            buffers.reset_all(buffers.marks.pop())

    @event.listens_for(engine, "release_savepoint")
    def _release(conn: Connection, _name: str, _context: object) -> None:
        buffers = conn.info.get(_BUFFERS)
        if isinstance(buffers, _Buffers) and buffers.marks:
            buffers.marks.pop()


def _reason(exc: BaseException) -> str:
    """A one-line reason without SQL text or parameters (they may hold operator data)."""
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
    return text[:200]
