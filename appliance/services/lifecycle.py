"""Start-up and periodic work of a service process: the start entry, checkpoints, scheduled attestations."""

from __future__ import annotations

import logging
import os

from appliance import metrics
from appliance.domain.canonical import parse_json_strict
from appliance.errors import ApplianceError
from appliance.services import registry
from appliance.services.context import Appliance

log = logging.getLogger("appliance.lifecycle")


def on_start(app: Appliance) -> None:
    """Record the service start in the audit log."""
    audit = registry.of(app).audit
    audit.ensure_head()
    audit.record_standalone(actor="appliance", action="service.start", subject=None,
                            details={"pid": os.getpid()}, policy_hash=None)


class Background:
    """The periodic work of one process: a checkpoint when the interval passed, the attestation schedule."""

    def __init__(self, app: Appliance) -> None:
        self.app = app
        self.last_run: dict[str, float] = {}

    def _due(self, what: str, interval: float) -> bool:
        now = self.app.clock()
        if now - self.last_run.get(what, 0.0) < interval:
            return False
        self.last_run[what] = now
        return True

    def tick(self) -> None:
        """Once a second."""
        record_outage(self.app)
        if self._due("checkpoint", self.app.settings.checkpoint_interval_seconds):
            registry.of(self.app).audit.checkpoint()
        schedule = self.app.settings.attestation_schedule
        if schedule.interval_minutes and self._due("attest", schedule.interval_minutes * 60):
            scheduled_attestation(self.app)


def record_outage(app: Appliance) -> bool:
    """One `store.unavailable` entry for the store writes that failed since the last one, once the store takes a
    write again (until then they are kept: the failure is audited once it can be). True if one was recorded."""
    details = app.store_outage.take()
    if details is None:
        return False
    try:
        registry.of(app).audit.record_standalone(actor="appliance", action="store.unavailable", subject=None,
                                                 details=details, policy_hash=None)
    except ApplianceError:
        app.store_outage.give_back(details)  # still down: this attempt is one more failed write
        return False
    log.warning("the store refused %d writes between %s and %s; recorded in the audit log",
                details["failed_writes"], details["first_failure"], details["last_failure"])
    return True


def scheduled_attestation(app: Appliance) -> dict[str, object] | None:
    """Attest from the configured inbox; a failure is logged, counted and audited, never half-done.

    Every worker may run this: the same as_of with the same figures returns the stored attestation.
    """
    from appliance.services.attestation import AttestationInFlight, read_input

    schedule = app.settings.attestation_schedule
    assert schedule.reserves is not None and schedule.supply is not None
    service = registry.of(app).attestations
    try:
        reserves_path, supply_path = read_input(schedule.reserves), read_input(schedule.supply)
        report = reserves_path.read_text(encoding="ascii").strip()  # the custodian's signed report (a JWS)
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
            service.audit.record_standalone(actor="scheduler", action="attestation.failed", subject=None,
                                            details={"reason": reason}, policy_hash=None)
        except ApplianceError:
            log.error("could not audit the failed scheduled attestation")
        return None
