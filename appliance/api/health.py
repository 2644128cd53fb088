"""Liveness, readiness, metrics, the JWKS and the OpenAPI document."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from appliance import metrics
from appliance.api.openapi import document
from appliance.api.util import appliance
from appliance.services import keys
from appliance.services.status import readiness, state_collector

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Response:
    checks = readiness(appliance())
    ready = all(c["ok"] for c in checks.values())
    response = jsonify({"status": "ready" if ready else "unavailable", "checks": checks})
    response.status_code = 200 if ready else 503
    return response


@bp.get("/metrics")
def metrics_endpoint() -> Response:
    body = metrics.render(state_collector(appliance()))
    return Response(body, mimetype="text/plain", content_type="text/plain; version=0.0.4; charset=utf-8")


@bp.get("/.well-known/jwks.json")
def jwks() -> Response:
    response = jsonify(keys.public_jwks(appliance()))
    response.mimetype = "application/jwk-set+json"
    return response


@bp.get("/openapi.json")
def openapi() -> Response:
    return jsonify(document())

