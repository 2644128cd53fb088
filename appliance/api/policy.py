"""Policy bundle endpoints: read the active bundle, propose and approve changes (security admins)."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from appliance.api.util import services, signed_body

bp = Blueprint("policy", __name__, url_prefix="/v1/policy")


@bp.get("")
def show() -> Response:
    return jsonify(services().policies.describe())


@bp.get("/history")
def history() -> Response:
    """The anchored activation history, for a client that verifies it from its own pinned trust anchor."""
    return jsonify(services().policies.served_history())


@bp.post("/proposals")
def propose() -> tuple[Response, int]:
    token = signed_body()
    return jsonify(services().policies.propose(token)), 201


@bp.post("/proposals/<proposal_id>/approvals")
def approve(proposal_id: str) -> tuple[Response, int]:
    token = signed_body()
    return jsonify(services().policies.approve(proposal_id, token)), 201
