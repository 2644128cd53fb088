"""`appliance init`: migrate the store, create and check the HSM keys, pin the first policy bundle."""

from __future__ import annotations

from typing import Any

from appliance.config import Settings
from appliance.services import context, keys
from appliance.services.audit import AuditLog
from appliance.services.policy import PolicyService, load_bundle_files
from appliance.store import schema


def init(settings: Settings) -> dict[str, Any]:
    """Idempotent: safe to run again; never replaces a key or an active policy."""
    bundle = load_bundle_files(settings.policy_file, settings.operators_file)  # validate before touching anything
    app = context.build(settings)
    try:
        with schema.init_lock(app.db):  # instances starting together: one migrates and pins, the others find it
            schema.upgrade(app.db)
            statuses = keys.ensure_keys(app)
            log = AuditLog(app)
            log.ensure_head()
            policies = PolicyService(app)
            digest, pinned = policies.pin_initial(bundle)
            anchor = policies.pin_anchor()
        created = [s.label for s in statuses if s.created]
        if created:
            log.record_standalone(actor="init", action="keys.created", subject=None,
                                  details={"labels": created, "kids": [s.key_id for s in app.signers]},
                                  policy_hash=digest)
        note = log.checkpoint()
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        return {"keys": [{"purpose": s.purpose, "label": s.label, "created": s.created} for s in statuses],
                "jwks": keys.public_jwks(app), "policy_hash": digest, "policy_pinned_now": pinned,
                "trust_anchor": anchor,
                "mint_signer": app.mint_signer.address, "checkpoint": note}
    finally:
        app.hsm.close()
        app.db.dispose()
