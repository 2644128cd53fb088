"""Schema migrations with Alembic, run in-process against the appliance's own engine."""

from __future__ import annotations

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


def is_current(db: Database) -> bool:
    """Whether the database is at the newest revision."""
    head = ScriptDirectory.from_config(_config()).get_current_head()
    with db.engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision() == head
