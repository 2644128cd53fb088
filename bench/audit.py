"""Durable audit appends (SQLite synchronous=FULL, PostgreSQL) and verification of a large log."""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
import uuid
from typing import Any

from appliance.domain import merkle
from appliance.domain.canonical import canonical_json
from appliance.store import audit_repo, schema
from appliance.store.db import Database
from bench.common import Result, rate, run_concurrently


def _append(db: Database, i: int) -> None:
    def run(conn: Any) -> None:
        head = audit_repo.lock_head(conn)
        entry = canonical_json({"index": head.size, "time": "2026-11-25T00:00:00Z", "actor": "bench",
                                "action": "bench.append", "subject": str(i), "details": {"n": i}, "policy": None})
        audit_repo.append(conn, "bench.append", entry, 0, head)

    db.write(run, "bench")


def appends(quick: bool) -> list[Result]:
    results = []
    n = 300 if quick else 2000
    targets: list[tuple[str, str]] = []
    tmp = tempfile.mkdtemp(prefix="bench-audit-")
    targets.append(("SQLite synchronous=FULL", f"sqlite:///{tmp}/audit.db"))
    dsn = os.environ.get("APPLIANCE_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
    pg_name = None
    try:
        import psycopg

        pg_name = "bench_" + uuid.uuid4().hex[:8]
        with psycopg.connect(dsn, autocommit=True, connect_timeout=3) as admin:
            admin.execute(f'CREATE DATABASE "{pg_name}"')
        targets.append(("PostgreSQL", dsn.rsplit("/", 1)[0] + "/" + pg_name))
    except Exception as exc:  # noqa: BLE001 - the benchmark reports what it could not measure
        print(f"  (PostgreSQL not measured: {exc})")
    for name, url in targets:
        db = Database(url, timeout_seconds=30)
        schema.upgrade(db)
        db.write(audit_repo.ensure_head)
        for level in (1, 32):
            seconds, _ = run_concurrently(lambda i, db=db: _append(db, i), n, level)
            value = rate(n, seconds)
            results.append(Result(f"durable audit appends/s, {name}, concurrency {level}", value, "append/s",
                                  goal=">= 5000/s at concurrency 32" if level == 32 else "",
                                  met=(value >= 5000) if level == 32 else None))
        db.dispose()
    if pg_name:
        import psycopg

        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)')
    return results


def verification(quick: bool) -> list[Result]:
    """Recompute the root of an n-entry log from its entries, against bare SHA-256 over the same bytes."""
    from appliance.verify import verify_log

    n = 50_000 if quick else 1_000_000
    entries = [{"index": i, "time": "2026-11-25T00:00:00Z", "actor": "bench", "action": "bench.append",
                "subject": str(i), "details": {"n": i}, "policy": None} for i in range(n)]
    raw = [canonical_json(e) for e in entries]
    texts = [r.decode() for r in raw]
    leaves = [merkle.leaf_hash(r) for r in raw]
    root = merkle.root(leaves)

    class Source:
        def verifier_key(self) -> str:
            return key

        def checkpoint(self) -> str:
            return note

        def audit_entries(self, start: int, end: int) -> list[str]:
            return texts[start:end]  # as the HTTP client receives them (?format=canonical), already parsed

        def consistency(self, old: int, new: int) -> dict[str, Any]:
            return {"proof": []}

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from appliance.domain import checkpoint as notes

    private = ed25519.Ed25519PrivateKey.generate()
    public = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    key = notes.verifier_key("bench", public)
    note = notes.sign_checkpoint(notes.Checkpoint("bench", n, root), "bench", public, private.sign)
    started = time.perf_counter()
    verify_log(Source(), {}, key)  # pinned: an auditor who has the key
    seconds = time.perf_counter() - started
    started = time.perf_counter()
    sha = hashlib.sha256
    for r in raw:
        sha(b"\x00" + r).digest()
    for _ in range(n - 1):
        sha(b"\x01" + bytes(64)).digest()
    bare = time.perf_counter() - started
    value = rate(n, seconds)
    return [Result(f"verify a {n:,}-entry audit log", value, "entry/s", rate(n, bare),
                   "bare SHA-256 of the same bytes (leaves + nodes)", goal=">= 50% of bare hashing",
                   met=value >= 0.5 * rate(n, bare))]
