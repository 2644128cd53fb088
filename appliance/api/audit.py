"""Audit log endpoints: the signed checkpoint, entries, and RFC 9162 proofs. Read-only for everyone."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from appliance.api.util import query_int, services
from appliance.errors import InvalidInput
from appliance.services.audit import MAX_PAGE

bp = Blueprint("audit", __name__, url_prefix="/v1/audit")


@bp.get("/checkpoint")
def checkpoint() -> Response:
    return Response(services().audit.latest_note(), mimetype="text/plain")


@bp.get("/verifier-key")
def verifier_key() -> Response:
    return Response(services().audit.verifier_key() + "\n", mimetype="text/plain")


@bp.get("/entries")
def entries() -> Response:
    start = query_int("start", 0)
    end = query_int("end", start + MAX_PAGE) if "end" in request.args else None
    fmt = request.args.get("format", "json")
    if fmt not in ("json", "canonical"):
        raise InvalidInput("format must be json (entry objects) or canonical (the exact hashed text)")
    return jsonify({"entries": services().audit.entries(start, end, canonical=fmt == "canonical")})


@bp.get("/proof/inclusion")
def inclusion() -> Response:
    return jsonify(services().audit.inclusion_proof(query_int("index"), query_int("size", minimum=1)))


@bp.get("/proof/consistency")
def consistency() -> Response:
    return jsonify(services().audit.consistency_proof(query_int("old"), query_int("new")))

