"""Reserve attestation endpoints: sign (operator JWS), list, fetch as application/jose."""

from __future__ import annotations

import threading

from flask import Blueprint, Response, current_app, g, jsonify, request
from flask.blueprints import BlueprintSetupState

from appliance.api.util import query_int, services, signed_body
from appliance.errors import Busy
from appliance.services.attestation import MAX_LIST

bp = Blueprint("attestations", __name__, url_prefix="/v1/attestations")
LARGE = "attestations.large_body"  # app.extensions: the one body above max_body_bytes a process reads at a time


@bp.record_once
def _setup(state: BlueprintSetupState) -> None:
    state.app.extensions[LARGE] = threading.BoundedSemaphore(1)


@bp.before_request
def _larger_bodies() -> None:
    """Holder balances ride inside the signed request (up to `max_attestation_body_bytes`; 10 million holders go
    through the scheduler's inbox instead). A body above the usual limit (or of unknown length) is read only
    while no other is: anyone can send one before their signature is checked, so concurrent large bodies are
    refused (503 busy) rather than held in memory together."""
    if request.method != "POST":
        return
    settings = current_app.extensions["appliance"].settings
    request.max_content_length = settings.max_attestation_body_bytes
    length = request.content_length
    if length is None or length > settings.max_body_bytes:
        if not current_app.extensions[LARGE].acquire(blocking=False):
            raise Busy("another large attestation request is being read: retry")
        g.large_body = True


@bp.teardown_request
def _release(_exc: BaseException | None) -> None:
    if g.pop("large_body", False):
        current_app.extensions[LARGE].release()


@bp.post("")
def create() -> tuple[Response, int]:
    token = signed_body()
    result = services().attestations.request(token)
    response = jsonify({k: v for k, v in result.items() if k != "created"})
    response.headers["Location"] = f"/v1/attestations/{result['seq']}"
    return response, 201 if result["created"] else 200


@bp.get("")
def list_attestations() -> Response:
    before = query_int("before", minimum=1) if "before" in request.args else None
    return jsonify(services().attestations.list(query_int("limit", 50, 1, MAX_LIST), before))


@bp.get("/latest")
def latest() -> Response:
    return Response(services().attestations.latest(), mimetype="application/jose")


@bp.get("/<int:seq>")
def get(seq: int) -> Response:
    return Response(services().attestations.get(seq), mimetype="application/jose")
