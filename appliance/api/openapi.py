"""The OpenAPI 3.1 document served at /openapi.json."""

from __future__ import annotations

from typing import Any

from appliance.services.mint import MAX_LIST, STATUSES

PROBLEM = {"description": "Problem details (RFC 9457)",
           "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}


def _op(summary: str, ok: str = "OK", ok_type: str = "application/json", errors: tuple[int, ...] = (400,),
        body: str | None = None, params: list[dict[str, Any]] | None = None, read: bool = False,
        ok_codes: tuple[str, ...] = ("200",), links: dict[str, Any] | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary,
                          "responses": {**{code: {"description": ok, "content": {ok_type: {}}} for code in ok_codes},
                                        **{str(code): PROBLEM for code in errors}}}
    if links:
        for code in ok_codes:
            op["responses"][code]["links"] = links
    if read:  # for enrolled operators: a read token (api/access.py)
        op["security"] = [{"readToken": []}]
        op["responses"].update({"401": PROBLEM, "403": PROBLEM, "429": PROBLEM})
    if body:  # every write carries an operator's signature: a JWS or a security key's assertion
        op["requestBody"] = {"required": True, "description": body,
                             "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Signed"}}}}
        op["responses"]["429"] = PROBLEM
    if params:
        op["parameters"] = params
    return op


SIGNED = {
    "description": "An operator's signature over the statement: a compact JWS by their enrolled key, or an enrolled "
                   "security key's WebAuthn assertion whose challenge is SHA-256(JCS({typ, payload}))",
    "oneOf": [
        {"type": "object", "required": ["jws"], "additionalProperties": False,
         "properties": {"jws": {"type": "string"}}},
        {"type": "object", "required": ["webauthn"], "additionalProperties": False, "properties": {"webauthn": {
            "type": "object", "additionalProperties": False,
            "required": ["typ", "payload", "credential_id", "authenticator_data", "client_data_json", "signature"],
            "properties": {"typ": {"type": "string"}, "payload": {"type": "object"},
                           **{m: {"type": "string", "pattern": "^[A-Za-z0-9_-]+$"}
                              for m in ("credential_id", "authenticator_data", "client_data_json", "signature")}}}}},
    ],
}


READ_TOKEN = {
    "type": "http", "scheme": "bearer",
    "bearerFormat": "compact JWS of typ read+jws by an enrolled operator's key, payload {htm, htu, iat}: htu is the "
                    "path and query exactly as sent, iat within 120 s",
}


CREATED = ("201",)


def _q(name: str, required: bool = True, minimum: int = 0, maximum: int | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "integer", "minimum": minimum}
    if maximum is not None:
        schema["maximum"] = maximum
    return {"name": name, "in": "query", "required": required, "schema": schema}


# where a created mint request leads: its own view, and its approvals (stateful testing follows these)
REQUEST_LINKS = {
    "GetRequest": {"operationId": "getMintRequest", "parameters": {"id": "$response.body#/id"}},
    "ApproveRequest": {"operationId": "approveMintRequest", "parameters": {"id": "$response.body#/id"}},
    "GetAuthorization": {"operationId": "getMintAuthorization", "parameters": {"id": "$response.body#/id"}},
}


def _p(name: str, kind: str = "string") -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": kind}}


def document() -> dict[str, Any]:
    paths: dict[str, Any] = {
        "/healthz": {"get": _op("Process is up", errors=())},
        "/readyz": {"get": _op("HSM, keys and store usable; the store's histories not rolled back", errors=(503,))},
        "/metrics": {"get": _op("Prometheus metrics", ok_type="text/plain", errors=())},
        "/openapi.json": {"get": _op("This document", errors=())},
        "/.well-known/jwks.json": {"get": _op("Public keys (kid = RFC 7638 thumbprint)",
                                               ok_type="application/jwk-set+json", errors=(503,))},
        "/v1/audit/checkpoint": {"get": _op("Latest signed checkpoint (C2SP signed note)", ok_type="text/plain",
                                            errors=(503,))},
        "/v1/audit/verifier-key": {"get": _op("Signed-note verifier key of the audit key", ok_type="text/plain")},
        "/v1/audit/entries": {"get": _op("Entries [start, end); format=canonical: the exact hashed texts",
                                          params=[_q("start", False), _q("end", False),
                                                  {"name": "format", "in": "query", "required": False,
                                                   "schema": {"type": "string", "enum": ["canonical"]}}])},
        "/v1/audit/proof/inclusion": {"get": _op("RFC 9162 inclusion proof", errors=(400, 404),
                                                 params=[_q("index"), _q("size")])},
        "/v1/audit/proof/consistency": {"get": _op("RFC 9162 consistency proof", errors=(400, 404),
                                                   params=[_q("old"), _q("new")])},
        "/v1/mint-requests": {
            "get": _op("List mint requests", read=True,
                       params=[{"name": "status", "in": "query", "required": False,
                                "schema": {"type": "string", "enum": list(STATUSES)}},
                               _q("limit", False, 1, MAX_LIST), _q("offset", False)]),
            "post": _op("Create a mint request", errors=(400, 401, 403, 409, 415, 422, 503), ok_codes=CREATED,
                        body="{\"jws\": compact JWS by the requesting operator}", links=REQUEST_LINKS)},
        "/v1/mint-requests/{id}": {"get": {**_op("One mint request", errors=(400, 404), params=[_p("id")], read=True),
                                            "operationId": "getMintRequest"}},
        "/v1/mint-requests/{id}/approvals": {
            "post": {**_op("Approve or reject", errors=(400, 401, 403, 404, 409, 415, 422, 503), ok_codes=CREATED,
                           body="{\"jws\": compact JWS by the approver}", params=[_p("id")]),
                     "operationId": "approveMintRequest"}},
        "/v1/mint-requests/{id}/cancel": {
            "post": _op("Cancel a pending request", errors=(400, 401, 403, 404, 409, 415),
                        body="{\"jws\": compact JWS by the requester or a security admin}", params=[_p("id")])},
        "/v1/mint-requests/{id}/authorization": {
            "get": {**_op("The EIP-712 authorization once issued", errors=(400, 404, 409, 503), params=[_p("id")],
                          read=True), "operationId": "getMintAuthorization"}},
        "/v1/attestations": {
            "get": _op("Attestations, newest first", params=[_q("limit", False, 1, MAX_LIST), _q("before", False, 1)]),
            "post": _op("Sign a reserve attestation", errors=(400, 401, 403, 409, 415, 422, 503),
                        ok_codes=("201", "200"), body="{\"jws\": compact JWS by an auditor operator over the inputs}")},
        "/v1/attestations/latest": {"get": _op("Latest attestation (compact JWS)", ok_type="application/jose",
                                               errors=(404,))},
        "/v1/attestations/{seq}": {"get": _op("One attestation (compact JWS)", ok_type="application/jose",
                                              errors=(404,), params=[_p("seq", "integer")])},
        "/v1/policy": {"get": _op("Active policy bundle and pending proposals", errors=(503,), read=True)},
        "/v1/policy/history": {"get": _op("The anchored activation history with every proposal and vote JWS, for a "
                                          "client that verifies it from its own pinned trust anchor",
                                          errors=(503,), read=True)},
        "/v1/policy/proposals": {"post": _op("Propose a policy bundle", errors=(400, 401, 403, 409, 415, 422),
                                             ok_codes=CREATED,
                                             body="{\"jws\": compact JWS by a security admin}")},
        "/v1/policy/proposals/{id}/approvals": {
            "post": _op("Approve a policy bundle", errors=(400, 401, 403, 404, 409, 415, 422), ok_codes=CREATED,
                        body="{\"jws\": compact JWS by a security admin}", params=[_p("id")])},
        "/v1/security-keys/invitations": {
            "post": _op("A registration link for an officer (a security admin's JWS naming them)",
                        errors=(400, 401, 403, 409, 415), body="{\"jws\": compact JWS by a security admin}",
                        ok_codes=CREATED)},
        "/v1/security-keys/registrations": {"get": _op("Security keys registered and waiting for enrolment",
                                                         errors=(503,), read=True)},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "Reserve-attestation signing appliance", "version": "1"},
        "paths": paths,
        "components": {"securitySchemes": {"readToken": READ_TOKEN}, "schemas": {"Signed": SIGNED, "Problem": {
            "type": "object",
            "properties": {"type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
                           "detail": {"type": "string"}, "instance": {"type": "string"},
                           "errors": {"type": "array", "items": {"type": "object"}}},
            "required": ["type", "title", "status", "detail"]}}},
    }
