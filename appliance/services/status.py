"""Readiness checks and the scrape-time state gauges."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select

from appliance.errors import ApplianceError
from appliance.metrics import StateCollector, StateSnapshot
from appliance.services.context import Appliance
from appliance.store import attestation_repo, audit_repo, mint_repo
from appliance.store.tables import policy_bundles


def _check(fn: Any) -> dict[str, Any]:
    try:
        fn()
    except ApplianceError as exc:
        return {"ok": False, "detail": exc.detail}
    return {"ok": True}


def _store_check(app: Appliance) -> dict[str, Any]:
    """Whether the store accepts a durable write. Anyone may call /readyz and /metrics, so the write is tried at
    most once per `STORE_PROBE_SECONDS` per process; the probes in between get that result."""
    return app.db.probe.get(lambda: _check(lambda: app.db.ping(audit_repo.touch_head)))


def readiness(app: Appliance) -> dict[str, dict[str, Any]]:
    """HSM session and keys usable; the store accepts a write transaction (so signing would not fail closed);
    and the store's histories reach what the token records (policy, audit log, attestation chain: no rollback)."""
    from appliance.services import keys

    return {"hsm": _check(lambda: keys.check(app)), "store": _store_check(app),
            "integrity": _check(lambda: _integrity(app))}


def _integrity(app: Appliance) -> None:
    from appliance.services import registry

    services = registry.of(app)
    services.policies.active()
    with app.db.read() as conn:
        services.audit.facts(conn)
    services.attestations.check_head()


def snapshot(app: Appliance) -> StateSnapshot:
    hsm_up = _check(app.hsm.ping)["ok"]
    store_up = _store_check(app)["ok"]
    audit_entries = checkpoint_size = pending = 0
    last_time = last_as_of = ratio = None
    under: bool | None = None
    version, digest = "none", "none"
    try:
        with app.db.read() as conn:
            audit_entries = audit_repo.head(conn).size
            latest = audit_repo.latest_checkpoint(conn)
            checkpoint_size = latest.size if latest else 0
            pending = mint_repo.count_pending(conn, app.now())
            row = attestation_repo.latest_signed_attestation(conn)
            if row is not None:
                last_time, last_as_of = float(row.issued_at), float(row.as_of_ts)
                ratio = None if row.coverage_bps is None else row.coverage_bps / 10000
                under = row.status == "UNDER_BACKED"
            bundle = conn.execute(select(policy_bundles.c.hash, policy_bundles.c.bundle)
                                  .where(policy_bundles.c.status == "active")).first()
            if bundle is not None:
                digest = bundle.hash
                version = str(json.loads(bundle.bundle).get("policy", {}).get("version", "unknown"))
    except ApplianceError:
        store_up = False
    return StateSnapshot(hsm_up=hsm_up, store_up=store_up, audit_entries=audit_entries,
                         checkpoint_size=checkpoint_size, pending_requests=int(pending),
                         last_attestation_time=last_time, last_attestation_as_of=last_as_of,
                         coverage_ratio=ratio, under_backed=under,
                         policy_version=version, policy_hash=digest)


def state_collector(app: Appliance) -> StateCollector:
    return StateCollector(lambda: snapshot(app))
