"""Start-up and periodic work of a service process: the start entry, checkpoints, scheduled attestations."""

from __future__ import annotations

import logging
import os

from appliance import metrics
from appliance.domain.canonical import parse_json_strict
from appliance.errors import ApplianceError
from appliance.services.audit import AuditLog
from appliance.services.context import Appliance

log = logging.getLogger("appliance.lifecycle")
_last_run: dict[tuple[int, str], float] = {}


def on_start(app: Appliance) -> None:
    """Record the service start in the audit log."""
    audit = AuditLog(app)
    audit.ensure_head()
    audit.record_standalone(actor="appliance", action="service.start", subject=None,
                            details={"pid": os.getpid()}, policy_hash=None)


def _due(app: Appliance, what: str, interval: float) -> bool:
    key = (id(app), what)
    now = app.clock()
    if now - _last_run.get(key, 0.0) < interval:
        return False
    _last_run[key] = now
    return True


def tick(app: Appliance) -> None:
    """Once a second: a checkpoint when the log grew and the interval passed; the attestation schedule."""
    if _due(app, "checkpoint", app.settings.checkpoint_interval_seconds):
        AuditLog(app).checkpoint()
    schedule = app.settings.attestation_schedule
    if schedule.interval_minutes and _due(app, "attest", schedule.interval_minutes * 60):
        scheduled_attestation(app)


def scheduled_attestation(app: Appliance) -> dict[str, object] | None:
    """Attest from the configured inbox; a failure is logged, counted and audited, never half-done.

    Every worker may run this: the same as_of with the same figures returns the stored attestation.
    """
    from appliance.services.attestation import AttestationInFlight, AttestationService, read_input

    schedule = app.settings.attestation_schedule
    assert schedule.reserves is not None and schedule.supply is not None
    service = AttestationService(app)
    try:
        reserves_path, supply_path = read_input(schedule.reserves), read_input(schedule.supply)
        report = parse_json_strict(reserves_path.read_bytes(), reserves_path.name)
        supply = parse_json_strict(supply_path.read_bytes(), supply_path.name)
        holders = read_input(schedule.holders).read_text(encoding="utf-8") if schedule.holders else None
        return service.attest(report, supply, holders, requested_by="scheduler", trigger="schedule")
    except AttestationInFlight as exc:  # another worker runs the same schedule tick: not a failure
        log.info("scheduled attestation left to another worker: %s", exc)
        return None
    except (OSError, ValueError, ApplianceError) as exc:
        reason = str(exc).splitlines()[0][:300]
        log.error("scheduled attestation failed: %s", reason)
        metrics.ATTESTATIONS.labels("schedule", "failed").inc()
        try:
            AuditLog(app).record_standalone(actor="scheduler", action="attestation.failed", subject=None,
                                            details={"reason": reason}, policy_hash=None)
        except ApplianceError:
            log.error("could not audit the failed scheduled attestation")
        return None
