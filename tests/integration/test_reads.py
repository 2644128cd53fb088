"""Who may read what (api/access.py, domain/reads.py): private reads need an enrolled operator's read token for
exactly that request; what a regulator needs is public. Every GET route of the real app is checked, so a new
route is caught whichever side it lands on."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from sqlalchemy import func, select

from appliance.api import access
from appliance.domain import jose, reads
from appliance.services import auth
from appliance.store import audit_repo
from appliance.store.tables import seen_tokens
from tests.helpers import Harness, metric

PUBLIC = {"/healthz", "/readyz", "/metrics", "/.well-known/jwks.json", "/openapi.json", "/v1/audit/checkpoint",
          "/v1/audit/verifier-key", "/v1/audit/entries", "/v1/audit/proof/inclusion", "/v1/audit/proof/consistency",
          "/v1/attestations", "/v1/attestations/latest", "/v1/attestations/<int:seq>"}
PRIVATE = {"/v1/mint-requests", "/v1/mint-requests/<request_id>", "/v1/mint-requests/<request_id>/authorization",
           "/v1/policy", "/v1/policy/history", "/v1/security-keys/registrations"}


def _get_rules(h: Harness) -> dict[str, Any]:
    return {r.rule: r for r in h.flask.url_map.iter_rules()
            if "GET" in (r.methods or ()) and r.endpoint != "static" and not r.rule.startswith("/console")}


def _concrete(rule: str) -> str:
    return re.sub(r"<(?:int:)?[a-z_]+>", lambda m: "1" if "int:" in m.group(0) else "x" * 8, rule)


def test_every_get_route_is_either_public_or_for_operators_and_the_lists_are_complete(h: Harness) -> None:
    rules = _get_rules(h)
    assert set(rules) == PUBLIC | PRIVATE, set(rules) ^ (PUBLIC | PRIVATE)
    for rule, r in rules.items():
        assert access.is_public("GET", r.endpoint.split(".")[0], r.endpoint) == (rule in PUBLIC), rule


@pytest.mark.parametrize("rule", sorted(PRIVATE))
def test_a_private_read_without_a_token_is_401_and_names_what_to_send(h: Harness, rule: str) -> None:
    before = metric("appliance_auth_failures_total", reason="missing")
    response = h.anonymous().get(_concrete(rule))
    assert response.status_code == 401 and response.headers["WWW-Authenticate"].startswith("Bearer")
    body = response.get_json()
    assert body["type"].endswith(":unauthenticated") and "read token" in body["detail"]
    assert metric("appliance_auth_failures_total", reason="missing") == before + 1


@pytest.mark.parametrize("rule", sorted(PUBLIC))
def test_a_public_read_needs_no_token(h: Harness, rule: str) -> None:
    status = h.anonymous().get(_concrete(rule)).status_code
    assert status != 401 and status < 500, (rule, status)


def test_an_operators_read_token_reads_exactly_that_request(h: Harness) -> None:
    created = h.request().get_json()
    path = f"/v1/mint-requests/{created['id']}"
    for reader in ("grace", "alice", "heidi", "erin"):  # any enrolled operator, whatever the role
        got = h.anonymous().get(path, headers={"Authorization": h.read_token(reader, "GET", path)})
        assert got.status_code == 200 and got.get_json()["id"] == created["id"]
    listing = "/v1/mint-requests?status=pending&limit=5"
    assert h.anonymous().get(listing, headers={"Authorization": h.read_token("grace", "GET", listing)}
                             ).status_code == 200


def _refused(h: Harness, path: str, authorization: str) -> str:
    response = h.anonymous().get(path, headers={"Authorization": authorization})
    assert response.status_code == 401, (response.status_code, response.get_json())
    return str(response.get_json()["detail"])


def test_a_read_token_for_anything_else_is_refused(h: Harness) -> None:
    created = h.request().get_json()
    path = f"/v1/mint-requests/{created['id']}"
    assert "htu" in _refused(h, path, h.read_token("grace", "GET", "/v1/policy"))  # another path
    assert "htu" in _refused(h, "/v1/mint-requests?status=pending",
                             h.read_token("grace", "GET", "/v1/mint-requests?status=authorized"))  # another query
    assert "htu" in _refused(h, path, h.read_token("grace", "GET", path + "/authorization"))
    assert "POST" in _refused(h, path, h.read_token("grace", "POST", path))  # another method
    stale = int(h.clock()) - reads.READ_SKEW_SECONDS - 1
    assert "iat" in _refused(h, path, h.read_token("grace", "GET", path, iat=stale))
    future = int(h.clock()) + reads.READ_SKEW_SECONDS + 1
    assert "iat" in _refused(h, path, h.read_token("grace", "GET", path, iat=future))
    # a signed write is not a read token, nor is a read token for the right request under another typ
    write = h.jws("alice", auth.TYP_MINT_REQUEST, {"htm": "GET", "htu": path})
    assert "typ" in _refused(h, path, f"Bearer {write}")
    # a key nobody enrolled; a token with one byte of its signature changed; not a JWS at all; another scheme
    signer = h.signer("grace")
    head = {"alg": signer.alg, "kid": "not-an-enrolled-key", "typ": reads.TYP_READ}
    unknown = jose.sign_compact(head, json.dumps(reads.claims("GET", path, int(h.clock()))).encode(), signer.sign)
    assert "kid" in _refused(h, path, f"Bearer {unknown}")
    good = h.read_token("grace", "GET", path).removeprefix("Bearer ")
    flipped = good[:-3] + ("A" if good[-3] != "A" else "B") + good[-2:]
    assert "verify" in _refused(h, path, f"Bearer {flipped}")
    for junk in ("Bearer", "Bearer not.a.jws.token", "Bearer " + "x" * 5000, "Basic Z3JhY2U6cGFzcw==",
                 'Bearer {"webauthn": 1}'):
        _refused(h, path, junk)


def test_a_read_token_of_an_operator_the_policy_disabled_is_refused(h: Harness) -> None:
    from tests.integration.test_policy_changes import enact, tables  # the governance quorum changes the policy

    policy, operators = tables(h)
    for op in operators["operators"]:
        op["enabled"] = op["enabled"] and op["name"] != "grace"
    enact(h, policy, operators)
    refused = h.anonymous().get("/v1/policy", headers={"Authorization": h.read_token("grace", "GET", "/v1/policy")})
    assert refused.status_code == 403 and "disabled" in refused.get_json()["detail"]
    assert h.anonymous().get("/v1/policy", headers={"Authorization": h.read_token("alice", "GET", "/v1/policy")}
                             ).status_code == 200


def test_reads_write_nothing_and_refused_reads_are_audited_in_bounded_form(h: Harness) -> None:
    with h.app_ctx.db.read() as conn:
        size, tokens = audit_repo.head(conn).size, conn.execute(select(func.count()).select_from(seen_tokens)).scalar()
    for _ in range(5):
        assert h.client.get("/v1/policy").status_code == 200
        assert h.client.get("/v1/policy").status_code == 200  # the same token twice: reads record no jti
    with h.app_ctx.db.read() as conn:
        assert audit_repo.head(conn).size == size
        assert conn.execute(select(func.count()).select_from(seen_tokens)).scalar() == tokens
    h.anonymous().get("/v1/policy", headers={"Authorization": "Bearer " + "y" * 6000})
    with h.app_ctx.db.read() as conn:
        entries = audit_repo.entries(conn, size, size + 10)
    assert len(entries) == 1
    entry = json.loads(entries[0])
    assert entry["action"] == "auth.failed" and entry["subject"] == "/v1/policy" and len(entries[0]) < 1000


def test_the_openapi_document_names_the_read_token_on_exactly_the_private_reads(h: Harness) -> None:
    paths = h.anonymous().get("/openapi.json").get_json()["paths"]
    secured = {path for path, ops in paths.items() if "security" in ops.get("get", {})}
    assert secured == {re.sub(r"<(?:int:)?[a-z_]+>", "{id}", rule) for rule in PRIVATE}, secured
