"""Mint request endpoints. Every write carries an operator's signature: `{"jws": ...}` or `{"webauthn": {...}}`
(api/util.signed_body)."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from appliance.api.util import query_int, services, signed_body
from appliance.services.mint import MAX_LIST, MintService

bp = Blueprint("mint", __name__, url_prefix="/v1/mint-requests")


def _service() -> MintService:
    return services().mint


@bp.post("")
def create() -> tuple[Response, int]:
    token = signed_body()
    created = _service().create(token)
    response = jsonify(created)
    response.headers["Location"] = f"/v1/mint-requests/{created['id']}"
    return response, 201


@bp.get("")
def list_requests() -> Response:
    return jsonify(_service().list(request.args.get("status"), query_int("limit", 50, 1, MAX_LIST),
                                   query_int("offset", 0)))


@bp.get("/<request_id>")
def get(request_id: str) -> Response:
    return jsonify(_service().get(request_id))


@bp.post("/<request_id>/approvals")
def approve(request_id: str) -> tuple[Response, int]:
    token = signed_body()
    return jsonify(_service().approve(request_id, token)), 201


@bp.post("/<request_id>/cancel")
def cancel(request_id: str) -> Response:
    token = signed_body()
    return jsonify(_service().cancel(request_id, token))


@bp.get("/<request_id>/authorization")
def authorization(request_id: str) -> Response:
    return jsonify(_service().authorization(request_id))
