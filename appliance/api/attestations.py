"""Reserve attestation endpoints: sign (operator JWS), list, fetch as application/jose."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from appliance.api.util import json_object, query_int, services
from appliance.services.attestation import MAX_LIST

bp = Blueprint("attestations", __name__, url_prefix="/v1/attestations")
# Holder balances ride inside the signed request; 10 million holders go through the scheduler's inbox instead.
MAX_ATTESTATION_BODY = 64 << 20


@bp.before_request
def _larger_bodies() -> None:
    if request.method == "POST":
        request.max_content_length = MAX_ATTESTATION_BODY


@bp.post("")
def create() -> tuple[Response, int]:
    body = json_object("jws")
    result = services().attestations.request(body["jws"])
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
