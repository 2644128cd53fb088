"""Security keys outside the browser: invitations asked for with a security admin's JWS (the first keys, before
anyone can sign in to the console) and the registrations waiting for an enrolment quorum."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from appliance.api.util import services, signed_body

bp = Blueprint("security_keys", __name__, url_prefix="/v1/security-keys")


@bp.post("/invitations")
def invite() -> tuple[Response, int]:
    return jsonify(services().console.invite_signed(signed_body())), 201


@bp.get("/registrations")
def registrations() -> Response:
    return jsonify({"registrations": services().console.registrations()})
