"""The services of one process, built once around its Appliance (after any fork) and shared by every request.

Each service owns its caches as instance state (the policy service's verified histories and parsed bundles);
what the audit log has verified lives on the Appliance itself (its tree and facts), so every service sees it.
"""

from __future__ import annotations

from dataclasses import dataclass

from appliance.services.attestation import AttestationService
from appliance.services.audit import AuditLog
from appliance.services.console import ConsoleService
from appliance.services.context import Appliance
from appliance.services.mint import MintService
from appliance.services.policy import PolicyService


@dataclass(frozen=True)
class Services:
    audit: AuditLog
    policies: PolicyService
    mint: MintService
    attestations: AttestationService
    console: ConsoleService

    @staticmethod
    def build(app: Appliance) -> Services:
        audit = AuditLog(app)
        policies = PolicyService(app, audit)
        return Services(audit, policies, MintService(app, audit, policies),
                        AttestationService(app, audit, policies), ConsoleService(app, audit, policies))


def of(app: Appliance) -> Services:
    """The services of `app`, built on first use and kept on it."""
    existing = app.services
    if isinstance(existing, Services):
        return existing
    app.services = built = Services.build(app)
    return built
