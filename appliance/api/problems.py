"""RFC 9457 problem details for every error the service returns; never a stack trace."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from flask import Flask, Response, json, request
from sqlalchemy import exc as sa_exc
from werkzeug.exceptions import HTTPException

from appliance import metrics
from appliance.domain.rate import TokenBucket
from appliance.errors import (
    PROBLEM_BASE,
    ApplianceError,
    ConfigError,
    HsmUnavailable,
    RateLimited,
    StorageUnavailable,
    StoreInconsistent,
    Unauthenticated,
)
from appliance.services.auth import SignCountRegressed

log = logging.getLogger("appliance.api")


def problem(status: int, slug: str, title: str, detail: str, **extra: Any) -> Response:
    body = {"type": PROBLEM_BASE + slug, "title": title, "status": status, "detail": detail, **extra}
    if request:
        body.setdefault("instance", request.path)
    response = Response(json.dumps(body), status=status, mimetype="application/problem+json")
    if status == 503:
        response.headers["Retry-After"] = "5"
    return response


def register(app: Flask) -> None:
    @app.errorhandler(ApplianceError)
    def _appliance_error(exc: ApplianceError) -> Response:
        status = exc.status
        if status >= 500:
            log.warning("%s: %s", type(exc).__name__, exc)
        extra: dict[str, Any] = {}
        if exc.problems:
            extra["errors"] = [{"location": p.location, "message": p.message} for p in exc.problems]
        slug = exc.slug
        note_refusal(app, exc)
        response = problem(status, slug, exc.title, exc.detail, **extra)
        if isinstance(exc, RateLimited):
            response.headers["Retry-After"] = "5"
        return response

    @app.errorhandler(sa_exc.SQLAlchemyError)
    def _store_error(exc: sa_exc.SQLAlchemyError) -> Response:
        """A store error no service turned into a named problem: a constraint the appliance's own reads said
        could not be violated (rows edited outside it), or a failure outside `Database.write`'s handling."""
        error: ApplianceError
        if isinstance(exc, sa_exc.IntegrityError):
            error = StoreInconsistent(f"the store refused a write ({type(exc.orig).__name__}): its rows were "
                                      "changed outside the appliance; nothing was signed for this call")
        else:
            error = StorageUnavailable(f"storage failed: {type(exc).__name__}")
        log.warning("%s on %s %s: %s", type(error).__name__, request.method, request.path, exc)
        return problem(error.status, error.slug, error.title, error.detail)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        slug = {404: "not-found", 405: "method-not-allowed", 413: "body-too-large",
                415: "unsupported-media-type"}.get(status, f"http-{status}")
        detail = exc.description or exc.name
        if status == 413 and request.max_content_length is not None:
            detail = f"the body is larger than {request.max_content_length} bytes"
        response = problem(status, slug, exc.name, detail)
        if status == 405 and exc.get_response().headers.get("Allow"):
            response.headers["Allow"] = exc.get_response().headers["Allow"]
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.path)
        return problem(500, "internal", "Internal error", "an unexpected error occurred; it has been logged")


# Refusals reach the durable audit log at most this often per process and action (a burst, then a steady rate);
# the rest are counted (appliance_audit_suppressed_total) and the next entry says how many it stands for. Without
# a key, nobody can grow the log faster than this, nor choose more than the route and 200 characters of the reason.
FAILURE_AUDIT_BURST, FAILURE_AUDIT_PER_SECOND = 20, 1.0


def note_refusal(app: Flask, exc: ApplianceError) -> None:
    """What every refusal of a request costs, whichever page or endpoint refused it: a failed authentication
    spends one of its client's budget; it, an HSM fault and a configuration fault are audited (rate-limited)."""
    if isinstance(exc, Unauthenticated):
        app.extensions["client_limits"].failed_authentication(request.remote_addr or "unknown", time.monotonic())
    if isinstance(exc, (Unauthenticated, HsmUnavailable, ConfigError)):
        _audit_failure(app, exc)


def _audit_failure(app: Flask, exc: ApplianceError) -> None:
    """Authentication failures, HSM errors and run-time configuration faults go into the audit log too (best
    effort: never masks the error; rate-limited, see above)."""
    action = ("auth.sign-count-regressed" if isinstance(exc, SignCountRegressed)  # a cloned security key?
              else "auth.failed" if isinstance(exc, Unauthenticated) else "hsm.error" if isinstance(exc, HsmUnavailable)
              else "service.misconfigured")  # a ConfigError at run time: token or key gone, files altered
    # one budget per action: a flood of forged signatures never hides an HSM error's entry
    limiter = app.extensions.setdefault("failure_audit", {}).setdefault(action, _FailureAudit())
    suppressed = limiter.admit(time.monotonic())
    if suppressed is None:
        metrics.AUDIT_SUPPRESSED.labels(action).inc()
        return
    details: dict[str, Any] = {"reason": exc.detail[:200], "method": request.method[:10]}
    if suppressed:
        details["suppressed_before"] = suppressed
    try:
        app.extensions["services"].audit.record_standalone(
            actor="appliance", action=action,
            subject=request.url_rule.rule if request.url_rule is not None else "unmatched",
            details=details, policy_hash=None)
    except ApplianceError:
        log.warning("could not audit %s", action)


class _FailureAudit:
    """The process's budget of audited refusals, and how many were refused an entry since the last one."""

    def __init__(self) -> None:
        self.bucket = TokenBucket(FAILURE_AUDIT_BURST, FAILURE_AUDIT_PER_SECOND)
        self.suppressed = 0
        self.lock = threading.Lock()

    def admit(self, now: float) -> int | None:
        """None: do not audit this one; otherwise how many were not audited before it."""
        with self.lock:
            if not self.bucket.take(now):
                self.suppressed += 1
                return None
            count, self.suppressed = self.suppressed, 0
            return count
