"""The heads held in the HSM token (appliance.domain.heads): read cheaply, advanced under one cross-process lock.

Two objects in the token belong to a deployment, both private and non-modifiable:
- `<policy_anchor>`: the first policy bundle's hash, written once by `appliance init`;
- `<policy_anchor>.state`: the heads (policy, checkpoint, attestation), replaced at every advance.

Every advance happens inside `exclusive()`, which holds a thread lock, an OS file lock (`[hsm] state_lock_file`,
shared by every process of the deployment on this host) and, on PostgreSQL, a session advisory lock (shared by
every instance of the deployment), and re-reads the heads from the token before the caller checks and writes
them. So two processes never advance a head from the same old value, and the HSM never signs two checkpoints of
one size or two attestations of one seq. Whoever writes the database takes none of these locks: at worst it
delays an advance.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Connection

from appliance.domain.heads import Heads, HeadsInvalid, newest
from appliance.errors import ApplianceError, HsmUnavailable, StorageUnavailable
from appliance.hsm import Hsm
from appliance.store.db import Database

KNOWN_FOR = 0.25  # seconds: how long heads read or written by this process are used without reading the token


class TokenState:
    def __init__(self, hsm: Hsm, anchor_label: str, lock_file: Path, db: Database, key_label: str = "") -> None:
        self.hsm = hsm
        self.anchor_label = anchor_label
        self.key_label = key_label  # a key the token always holds once `init` ran (see blind)
        self.label = anchor_label + ".state"
        self.lock_file = lock_file
        self.db = db
        self._thread_lock = threading.RLock()
        self._fd: int | None = None
        self._fd_pid = 0
        self._anchor: str | None = None
        self._depth = 0
        self._known: tuple[float, Heads] | None = None  # (monotonic time, heads) last read or written here

    # -- reading ------------------------------------------------------------------------------------------------

    def anchor(self) -> str | None:
        """The first bundle's hash pinned in the token (None before `init`); read once a process (it never
        changes)."""
        if self._anchor is None:
            value = self.hsm.read_data(self.anchor_label)
            self._anchor = None if value is None else value.decode("ascii", "replace")
        return self._anchor

    def read(self, *, fresh: bool = False) -> Heads:
        """The heads as the token holds them (Heads.empty() before `init` wrote any).

        Without `fresh`, heads this process read or wrote less than KNOWN_FOR seconds ago are returned without
        asking the token (reading an object's value from SoftHSM2 costs a file check, ~0.3 ms): they can only
        be older than the token's, never newer, so a check against them is at worst that much less strict.
        Every advance, and so every signature, reads the token afresh inside exclusive()."""
        known = self._known
        if not fresh and known is not None and time.monotonic() - known[0] < KNOWN_FOR:
            return known[1]
        heads = newest(self.hsm.data_values(self.label, fresh=fresh))
        heads = Heads.empty() if heads is None else heads
        self._known = (time.monotonic(), heads) if heads.version else None
        return heads

    def require(self) -> Heads:
        """read(), HeadsInvalid when `init` never wrote the state (the appliance must not run without it), or
        HsmUnavailable when the token shows none of its objects right now (see blind)."""
        heads = self.read()
        if heads.version == 0:
            raise self.missing(f"state object {self.label!r}")
        return heads

    def blind(self) -> bool:
        """Whether the token shows none of the appliance's objects right now, not even its key: its files cannot
        be read, or it is being restored. An object missing from such a token says nothing about the store."""
        if not self.key_label:
            return False
        try:
            return not self.hsm.has_key(self.key_label)
        except ApplianceError:
            return True

    def missing(self, what: str) -> ApplianceError:
        """The error for a token object `what` that is not there: HsmUnavailable while the token is blind,
        HeadsInvalid (run `init`) otherwise."""
        if self.blind():
            return HsmUnavailable(f"the HSM token shows none of its objects right now ({what} not found, nor the "
                                  f"key {self.key_label!r}): are its files readable?")
        return HeadsInvalid(f"the HSM token holds no {what}: run `appliance init`")

    # -- advancing ----------------------------------------------------------------------------------------------

    @contextmanager
    def exclusive(self, *, initializing: bool = False) -> Iterator[Heads]:
        """Hold the deployment's state lock; yields the heads read afresh from the token. Re-entrant.

        HeadsInvalid when the token holds no state object, except for `init` (`initializing`): a token that
        cannot show its objects for a while (its files unreadable, a device half reset) must never have its heads
        started over from nothing."""
        with self._thread_lock:
            if self._depth:
                self._depth += 1
                try:
                    yield self._fresh(initializing)
                finally:
                    self._depth -= 1
                return
            fd = self._lock_fd()
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._depth = 1
            try:
                with self._advisory():
                    yield self._fresh(initializing)
            finally:
                self._depth = 0
                fcntl.flock(fd, fcntl.LOCK_UN)

    def _fresh(self, initializing: bool) -> Heads:
        heads = self.read(fresh=True)
        if heads.version == 0 and not initializing:
            raise self.missing(f"state object {self.label!r}")
        return heads

    def write(self, heads: Heads) -> None:
        """Replace the state object (only inside exclusive(), with heads derived from the ones it yielded)."""
        if not self._depth:
            raise RuntimeError("TokenState.write outside exclusive()")
        self.hsm.replace_data(self.label, heads.to_bytes())
        self._known = (time.monotonic(), heads)

    def _lock_fd(self) -> int:
        # An flock belongs to an open file description, which a forked child shares: open it per process.
        if self._fd is None or self._fd_pid != os.getpid():
            self.lock_file.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o600)
            self._fd_pid = os.getpid()
        return self._fd

    @contextmanager
    def _advisory(self) -> Iterator[None]:
        """A PostgreSQL session advisory lock for the deployment (instances on several hosts); nothing on SQLite."""
        if self.db.is_sqlite:
            yield
            return
        key = int.from_bytes(hashlib.sha256(self.label.encode()).digest()[:8], "big", signed=True)
        try:
            conn: Connection = self.db.engine.connect()
        except Exception as exc:
            raise StorageUnavailable(f"cannot take the state lock: {type(exc).__name__}") from exc
        try:
            try:
                conn.exec_driver_sql(f"SELECT pg_advisory_lock({key})")
                conn.commit()
            except Exception as exc:
                raise StorageUnavailable(f"cannot take the state lock: {type(exc).__name__}") from exc
            try:
                yield
            finally:
                try:
                    conn.exec_driver_sql(f"SELECT pg_advisory_unlock({key})")
                    conn.commit()
                except Exception:  # noqa: BLE001 - the session ends below, which releases the lock too
                    conn.invalidate()
        finally:
            conn.close()
