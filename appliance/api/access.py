"""Who may read what. Writes carry their own signatures (api/util.signed_body). Reads are for enrolled operators
(a read token, domain/reads.py), except what is meant to be public:

- public: liveness, readiness, metrics, the JWKS, the OpenAPI document, the audit log (checkpoint, verifier key,
  entries, proofs) and the signed attestations, so that a regulator verifies with nothing but standard tools;
- enrolled operators (any role): mint requests and their authorizations, the policy (operators, their keys,
  limits, allowlist) and its history, security-key registrations;
- the console's pages: the console's own signed-in session (console/).

Anything not named public needs a read token (fail closed: a new route is private until it is listed here).
"""

from __future__ import annotations

import time

from flask import current_app, g, request

from appliance.domain import reads
from appliance.services import auth

#: blueprints whose GET routes anyone may call (the console checks its own sessions)
PUBLIC_BLUEPRINTS = frozenset({"health", "audit", "attestations", "console"})
READ_METHODS = frozenset({"GET", "HEAD"})


def is_public(method: str, blueprint: str | None, endpoint: str | None) -> bool:
    """Whether a request may be answered without a read token (POSTs carry their own signatures; an unknown
    route is answered 404 or 405 by the router, which reveals nothing)."""
    return method not in READ_METHODS or endpoint is None or endpoint == "static" or blueprint in PUBLIC_BLUEPRINTS


def require_reader() -> None:
    """Before a private read: the enrolled operator whose read token is for exactly this request (g.reader), or
    401 (429 once the client spent its failed authentications, like a write)."""
    if is_public(request.method, request.blueprint, request.endpoint):
        return
    current_app.extensions["client_limits"].admit_read(request.remote_addr or "unknown", time.monotonic())
    app_ctx = current_app.extensions["appliance"]
    bundle = current_app.extensions["services"].policies.current().active.bundle
    target = reads.target_of(request.path, request.query_string.decode("latin-1"))
    g.reader = auth.authenticate_read(request.headers.get("Authorization"), bundle, method=request.method,
                                      target=target, now=app_ctx.now())
