"""Flask app factory: one blueprint per resource, problem+json errors, request metrics."""

from __future__ import annotations

import time
from typing import Any

from flask import Flask, Response, g, request

from appliance import metrics
from appliance.api import access, problems
from appliance.api.limits import ClientLimits
from appliance.domain import reads
from appliance.services.context import Appliance


def create_app(app_ctx: Appliance, test_config: dict[str, Any] | None = None) -> Flask:
    """Build the WSGI app around an already-wired Appliance (one per process)."""
    from appliance.api import attestations, audit, health, mint, policy, security_keys
    from appliance.services import registry

    app = Flask("appliance")
    app.config.update(MAX_CONTENT_LENGTH=app_ctx.settings.max_body_bytes, JSON_SORT_KEYS=False)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    if test_config:
        app.config.update(test_config)
    app.extensions["appliance"] = app_ctx
    app.extensions["services"] = registry.of(app_ctx)  # built once per process
    problems.register(app)
    for blueprint in (health.bp, audit.bp, mint.bp, policy.bp, attestations.bp, security_keys.bp):
        app.register_blueprint(blueprint)
    if app_ctx.settings.console.enabled:
        from appliance import console

        console.install(app)

    limits = ClientLimits.of(app_ctx.settings)
    app.extensions["client_limits"] = limits

    @app.before_request
    def _start() -> None:
        g.started = time.perf_counter()
        if request.method == "POST":
            client = request.remote_addr or "unknown"
            limits.admit(client, time.monotonic())
            limits.enter(client)
            g.in_flight = client
        else:
            access.require_reader()

    @app.teardown_request
    def _finish(_exc: BaseException | None) -> None:
        client = g.pop("in_flight", None)
        if client is not None:
            limits.leave(client)

    @app.after_request
    def _observe(response: Response) -> Response:
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        method = request.method if request.method in _METHODS else "other"  # labels stay bounded
        metrics.HTTP_REQUESTS.labels(route, method, str(response.status_code)).inc()
        metrics.HTTP_LATENCY.labels(route, method).observe(time.perf_counter() - g.get("started", 0.0))
        if request.method == "POST" and not g.get("body_read"):
            # refused before its body was read (or while it trickled in): what is left of the body must not be
            # read as the next request on this connection, which would hold a thread for as long as it trickles
            close = request.environ.get("appliance.close_connection")  # the server's (server.closing_on_request)
            if close is not None:
                close()
        if response.status_code == 401:
            response.headers.setdefault("WWW-Authenticate", f'{reads.SCHEME} realm="appliance"')
        response.headers.setdefault("Cache-Control", "no-store")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    return app


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
