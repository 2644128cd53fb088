"""Twenty instances starting at once against an empty PostgreSQL database: `appliance init` in 20 processes at the
same moment (each migrates the store, checks the keys and pins the first policy). One migration, one pinned
policy, no deadlock, every start succeeds."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import time
from pathlib import Path

import psycopg
import pytest

from tests.served import APPLIANCE

pytestmark = pytest.mark.postgres
STARTS = 20


def test_twenty_simultaneous_cold_starts_migrate_once_and_pin_one_policy(pg_admin_dsn: str, tmp_path: Path) -> None:
    database = f"cold_{secrets.token_hex(4)}"
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {database}")
    env = {k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"}
    try:
        made = subprocess.run([*APPLIANCE, "dev-init", str(tmp_path / "dev"), "--json"], capture_output=True,
                              text=True, env=env, timeout=120, check=True)
        config = Path(json.loads(made.stdout)["config"])
        text = config.read_text().replace('url = "sqlite:///appliance.db"',
                                          f'url = "{pg_admin_dsn.rsplit("/", 1)[0]}/{database}"')
        config.write_text(re.sub(r'policy_anchor = "[^"]+"', f'policy_anchor = "cold-{secrets.token_hex(4)}"', text))
        started = time.monotonic()
        procs = [subprocess.Popen([*APPLIANCE, "--config", str(config), "init", "--json"], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=env) for _ in range(STARTS)]
        results = [(p.wait(timeout=240), *p.communicate()) for p in procs]
        took = time.monotonic() - started
        failed = [(code, err[-800:]) for code, _, err in results if code != 0]
        assert not failed, failed
        anchors = {json.loads(out)["trust_anchor"] for _, out, _ in results}
        assert len(anchors) == 1, anchors  # every start pinned, or found, the same first policy
        with psycopg.connect(pg_admin_dsn.rsplit("/", 1)[0] + f"/{database}") as conn:
            assert conn.execute("SELECT COUNT(*) FROM alembic_version").fetchone() == (1,)
            assert conn.execute("SELECT COUNT(*) FROM policy_bundles WHERE status = 'active'").fetchone() == (1,)
            pinned = conn.execute("SELECT COUNT(*) FROM audit_entries WHERE action = 'policy.pinned'").fetchone()
            assert pinned == (1,)
        assert took < 200, took
    finally:
        with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
