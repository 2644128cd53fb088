"""Schema migrations with Alembic, run in-process against the appliance's own engine."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import exc as sa_exc

from appliance.errors import StorageUnavailable
from appliance.store.db import Database

MIGRATIONS = Path(__file__).with_name("migrations")


def _config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def upgrade(db: Database) -> None:
    """Bring the schema to the newest revision (idempotent)."""
    cfg = _config()
    try:
        with db.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
    except sa_exc.SQLAlchemyError as exc:
        raise StorageUnavailable(f"cannot migrate the database: {exc.__class__.__name__}") from exc


# The key of the PostgreSQL advisory lock `init` holds: one start migrates and pins at a time per database.
INIT_LOCK_KEY = int.from_bytes(hashlib.sha256(b"appliance init").digest()[:8], "big", signed=True)


@contextmanager
def init_lock(db: Database) -> Iterator[None]:
    """Held by `appliance init` around migrating, creating the audit head and pinning the first policy, so that
    instances starting together against an empty PostgreSQL database do it once (the others then find it done).
    A session advisory lock on a connection of its own; nothing on SQLite, whose file belongs to one host and
    whose writers the database serializes itself."""
    if db.is_sqlite:
        yield
        return
    try:
        conn = db.engine.connect()
        conn.exec_driver_sql(f"SELECT pg_advisory_lock({INIT_LOCK_KEY})")
        conn.commit()
    except sa_exc.SQLAlchemyError as exc:
        raise StorageUnavailable(f"cannot take the init lock: {exc.__class__.__name__}") from exc
    try:
        yield
    finally:
        try:
            conn.exec_driver_sql(f"SELECT pg_advisory_unlock({INIT_LOCK_KEY})")
            conn.commit()
        except sa_exc.SQLAlchemyError:
            conn.invalidate()  # closing the session releases the lock too
        conn.close()


def is_current(db: Database) -> bool:
    """Whether the database is at the newest revision."""
    head = ScriptDirectory.from_config(_config()).get_current_head()
    with db.engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision() == head
