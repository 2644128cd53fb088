"""T1 (the database writer) and T1+T2 (with one officer's key) against an appliance on SQLite and PostgreSQL.

Each test is an attack from issue 10's review, made with raw SQL on a connection of the attacker's own, and
each ends by counting the HSM's signatures: the promise is that none is made that the anchored,
quorum-approved policy did not allow, and that a rollback is refused (503 rollback-detected), never served.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import Engine, text

from appliance.domain import jose
from appliance.domain.canonical import canonical_json
from appliance.domain.policy import PolicyBundle
from appliance.errors import VerificationFailed
from appliance.operator import SoftwareSigner, check_requester_signed, check_within_policy
from appliance.services import auth
from appliance.services.mint import RECOVERY_AFTER_SECONDS
from tests.helpers import Harness, digest_of, metric

ELSEWHERE = "0x000000000000000000000000000000000000dEaD"  # on no allowlist


def created(h: Harness, **kw: Any) -> dict[str, Any]:
    response = h.request(**kw)
    assert response.status_code == 201, response.get_json()
    return response.get_json()  # type: ignore[no-any-return]


def shown(h: Harness, request_id: str) -> dict[str, Any]:
    """The request as an approver's client fetches it (and would sign it)."""
    return h.client.get(f"/v1/mint-requests/{request_id}").get_json()  # type: ignore[no-any-return]


def sql(attacker: Engine, statement: str, **params: Any) -> list[Any]:
    with attacker.begin() as conn:
        result = conn.execute(text(statement), params)
        return list(result) if result.returns_rows else []


def recompute_digest(h: Harness, attacker: Engine, request_id: str) -> None:
    """What a careful attacker does after editing a request's fields: the digest column matches them again."""
    row = sql(attacker, "SELECT * FROM mint_requests WHERE id = :id", id=request_id)[0]
    s = h.app_ctx.settings
    digest = digest_of(s, row.chain_id, row.verifying_contract, row.to_address,
                        row.amount, row.nonce, row.valid_after, row.valid_before)
    sql(attacker, "UPDATE mint_requests SET digest = :d WHERE id = :id", d=digest, id=request_id)


def audit_actions(attacker: Engine, subject: str) -> list[str]:
    rows = sql(attacker, "SELECT entry FROM audit_entries ORDER BY idx")
    return [e["action"] for e in map(json.loads, (r.entry for r in rows)) if e.get("subject") == subject]


def refused(response: Any) -> None:
    """A refusal the caller can read: 4xx (or 503 for a detected rollback) with a problem, never a 500."""
    assert response.status_code in (403, 404, 409, 422, 503), (response.status_code, response.get_json())
    assert response.get_json()["type"].startswith("urn:appliance:problem:")


# -- a pending request redirected -------------------------------------------------------------------------

def test_a_pending_request_redirected_in_the_database_is_never_signed(h: Harness, attacker: Engine,
                                                                     hsm_signs: Counter[str]) -> None:
    req = created(h)
    sql(attacker, "UPDATE mint_requests SET to_address = :to, amount = :amount WHERE id = :id",
        to=ELSEWHERE, amount=str(4 * int(req["amount"])), id=req["id"])
    recompute_digest(h, attacker, req["id"])
    seen = shown(h, req["id"])
    assert seen["to"] == ELSEWHERE  # the approvers are shown the attacker's figures and sign them
    assert h.approve("bob", seen).status_code == 201
    final = h.approve("carol", seen)
    refused(final)
    assert "requester" in json.dumps(final.get_json())  # what alice signed is not what is stored
    assert hsm_signs["mint"] == 0
    refused(h.client.get(f"/v1/mint-requests/{req['id']}/authorization"))
    assert hsm_signs["mint"] == 0
    assert "mint.authorization.refused" in audit_actions(attacker, req["id"])


@pytest.mark.parametrize("edit", [
    "UPDATE mint_requests SET chain_id = chain_id + 1 WHERE id = :id",
    "UPDATE mint_requests SET to_address = :elsewhere WHERE id = :id",
    "UPDATE mint_authorizations SET signature = (SELECT signature FROM mint_authorizations WHERE request_id <> :id"
    " LIMIT 1) WHERE request_id = :id",
    "UPDATE mint_authorizations SET signer = :elsewhere WHERE request_id = :id",
])
def test_a_signed_request_edited_afterwards_is_never_served_as_its_authorization(
        h: Harness, attacker: Engine, hsm_signs: Counter[str], edit: str) -> None:
    """Found by the served every-row sweep: a request's terms (or its stored signature) edited after signing were
    served as an `authorization` whose typed data the signature does not cover. Now each served authorization is
    verified over the typed data it is served with, under the mint key, or refused (503 store-inconsistent)."""
    for _ in range(2):
        req = created(h)
        h.approve("bob", req)
        assert h.approve("carol", req).status_code == 201
    assert hsm_signs["mint"] == 2
    before = metric("appliance_integrity_failures_total", history="mint")
    sql(attacker, edit, id=req["id"], elsewhere=ELSEWHERE)
    recompute_digest(h, attacker, req["id"])
    for path in (f"/v1/mint-requests/{req['id']}", f"/v1/mint-requests/{req['id']}/authorization"):
        response = h.client.get(path)
        assert response.status_code == 503, response.get_json()
        assert response.get_json()["type"].endswith("store-inconsistent")
    assert metric("appliance_integrity_failures_total", history="mint") == before + 2
    assert hsm_signs["mint"] == 2


def test_a_validity_window_stretched_in_the_database_is_never_signed(h: Harness, attacker: Engine,
                                                                    hsm_signs: Counter[str]) -> None:
    req = created(h)
    year = 365 * 86400
    sql(attacker, "UPDATE mint_requests SET valid_before = valid_before + :y, expires_at = expires_at + :y "
        "WHERE id = :id", y=year, id=req["id"])
    recompute_digest(h, attacker, req["id"])
    seen = shown(h, req["id"])
    h.approve("bob", seen)
    refused(h.approve("carol", seen))
    assert hsm_signs["mint"] == 0


def test_a_nonce_changed_in_the_database_is_never_signed(h: Harness, attacker: Engine,
                                                        hsm_signs: Counter[str]) -> None:
    """The nonce is the one term the requester does not type; it is derived from their JWS, so a row with another
    (say, to make a second authorization of the same terms) is not what they signed, even with approvers who sign
    the digest the server shows."""
    req = created(h)
    shown_before = shown(h, req["id"])
    sql(attacker, "UPDATE mint_requests SET nonce = :n WHERE id = :id", n="0x" + "ab" * 32, id=req["id"])
    recompute_digest(h, attacker, req["id"])
    seen = shown(h, req["id"])
    assert seen["digest"] != req["digest"]
    assert any("nonce" in w for w in seen["warnings"])
    policy = h.client.get("/v1/policy").get_json()
    with pytest.raises(VerificationFailed, match="nonce shown is not the one alice's signed request determines"):
        check_requester_signed(policy, seen)  # what `appliance mint approve` runs on the approver's machine
    check_requester_signed(policy, shown_before)
    check_within_policy(policy, shown_before)
    with pytest.raises(VerificationFailed, match="not on the active policy's allowlist"):
        check_within_policy(policy, {**shown_before, "to": ELSEWHERE})
    with pytest.raises(VerificationFailed, match="per-request maximum"):
        maximum = int(policy["active"]["bundle"]["policy"]["mint"]["max_per_request"])
        check_within_policy(policy, {**shown_before, "amount": str(maximum + 1)})
    h.approve("bob", seen)
    final = h.approve("carol", seen)
    refused(final)
    assert "nonce" in json.dumps(final.get_json())
    assert hsm_signs["mint"] == 0


def test_a_verifying_contract_changed_in_the_database_is_never_signed(h: Harness, attacker: Engine,
                                                                     hsm_signs: Counter[str]) -> None:
    req = created(h)
    sql(attacker, "UPDATE mint_requests SET verifying_contract = :c WHERE id = :id", c=ELSEWHERE, id=req["id"])
    recompute_digest(h, attacker, req["id"])
    seen = shown(h, req["id"])
    h.approve("bob", seen)
    refused(h.approve("carol", seen))
    assert hsm_signs["mint"] == 0


def test_a_bundle_row_with_the_requesters_key_replaced_does_not_vouch_for_a_forged_request(
        h: Harness, attacker: Engine, hsm_signs: Counter[str]) -> None:
    """The attacker inserts a bundle in which 'alice' has the attacker's key, and a request signed with it."""
    req = created(h)
    active = h.client.get("/v1/policy").get_json()["active"]["bundle"]
    mine = SoftwareSigner.for_key(ec.generate_private_key(ec.SECP256R1()))
    for op in active["operators"]["operators"]:
        if op["name"] == "alice":
            op["jwk"] = mine.public_jwk()
    forged = PolicyBundle.from_json(active)
    sql(attacker, "INSERT INTO policy_bundles (id, hash, bundle, status, proposed_by, created_at) "
        "VALUES ('forged', :hash, :bundle, 'superseded', 'erin', 0)",
        hash=forged.hash, bundle=canonical_json(forged.to_json()).decode())
    payload = {"to": ELSEWHERE, "amount": req["amount"], "chain_id": h.chain_id, "iat": int(h.clock()),
               "jti": "forged-request"}
    jws = jose.sign_compact({"alg": mine.alg, "kid": mine.key_id, "typ": auth.TYP_MINT_REQUEST},
                            json.dumps(payload).encode(), mine.sign)
    sql(attacker, "UPDATE mint_requests SET to_address = :to, request_jws = :jws, policy_hash = :hash "
        "WHERE id = :id", to=ELSEWHERE, jws=jws, hash=forged.hash, id=req["id"])
    recompute_digest(h, attacker, req["id"])
    seen = h.client.get(f"/v1/mint-requests/{req['id']}")
    if seen.status_code == 200:
        body = seen.get_json()
        for name in ("bob", "carol"):
            response = h.approve(name, body)
            assert response.status_code < 500, response.get_json()
    else:
        refused(seen)
    refused(h.client.get(f"/v1/mint-requests/{req['id']}/authorization"))
    assert hsm_signs["mint"] == 0


# -- approvals --------------------------------------------------------------------------------------------

def test_approval_rows_written_by_the_requester_with_database_access_do_not_count(
        h: Harness, attacker: Engine, hsm_signs: Counter[str]) -> None:
    """T1+T2: alice, the requester, also writes the database: bob's and carol's approvals are forged rows."""
    req = created(h)
    other = created(h)
    genuine = h.approval("bob", other)  # bob's real signature, but over another request
    assert h.client.post(f"/v1/mint-requests/{other['id']}/approvals", json={"jws": genuine}).status_code == 201
    for name, token in (("bob", genuine), ("carol", h.approval("alice", req))):
        sql(attacker, "INSERT INTO mint_approvals (request_id, operator, decision, digest, policy_hash, iat, jws, "
            "created_at) VALUES (:id, :op, 'approve', :digest, :policy, :iat, :jws, :iat)",
            id=req["id"], op=name, digest=req["digest"], policy=req["policy"], iat=int(h.clock()), jws=token)
    refused(h.client.get(f"/v1/mint-requests/{req['id']}/authorization"))
    assert shown(h, req["id"])["status"] == "pending"
    assert hsm_signs["mint"] == 0


# -- closed requests ---------------------------------------------------------------------------------------

def _resurrect(attacker: Engine, request_id: str) -> None:
    sql(attacker, "DELETE FROM mint_approvals WHERE request_id = :id AND decision = 'reject'", id=request_id)
    sql(attacker, "UPDATE mint_requests SET status = 'pending', closed_by = NULL, closed_at = NULL "
        "WHERE id = :id", id=request_id)


def test_a_vetoed_request_set_back_to_pending_is_never_signed(h: Harness, attacker: Engine,
                                                            hsm_signs: Counter[str]) -> None:
    req = created(h)
    assert h.approve("dave", req, decision="reject").get_json()["status"] == "rejected"
    _resurrect(attacker, req["id"])
    assert h.approve("bob", req).status_code == 201
    final = h.approve("carol", req)
    refused(final)
    assert "mint.rejected" in json.dumps(final.get_json())
    assert hsm_signs["mint"] == 0


def test_a_cancelled_request_with_a_stale_reservation_inserted_is_never_signed(h: Harness, attacker: Engine,
                                                                             hsm_signs: Counter[str]) -> None:
    """The recovery path: a stale unsigned reservation row makes GET .../authorization take it over. The
    takeover decides like a first signature, at now, with closures as the checkpointed log records them."""
    req = created(h)
    h.approve("bob", req)
    h.approve("carol", req, decision="reject")
    _resurrect(attacker, req["id"])
    sql(attacker, "INSERT INTO mint_approvals (request_id, operator, decision, digest, policy_hash, iat, jws, "
        "created_at) VALUES (:id, 'carol', 'approve', :digest, :policy, :iat, :jws, :iat)", id=req["id"],
        digest=req["digest"], policy=req["policy"], iat=int(h.clock()), jws=h.approval("carol", req))
    row = sql(attacker, "SELECT nonce, digest, chain_id, amount FROM mint_requests WHERE id = :id", id=req["id"])[0]
    sql(attacker, "INSERT INTO mint_authorizations (request_id, nonce, digest, chain_id, amount, signer, "
        "reserved_at) VALUES (:id, :nonce, :digest, :chain, :amount, :signer, :at)", id=req["id"],
        nonce=row.nonce, digest=row.digest, chain=row.chain_id, amount=row.amount,
        signer=h.app_ctx.mint_signer.address, at=int(h.clock()) - 10)
    h.clock.advance(RECOVERY_AFTER_SECONDS + 1)
    refused(h.client.get(f"/v1/mint-requests/{req['id']}/authorization"))
    refused(h.client.get(f"/v1/mint-requests/{req['id']}/authorization"))
    assert hsm_signs["mint"] == 0


def test_a_cancelled_request_resurrected_is_never_signed(h: Harness, attacker: Engine,
                                                       hsm_signs: Counter[str]) -> None:
    req = created(h)
    cancel = h.jws("alice", auth.TYP_MINT_CANCEL, {"request_id": req["id"]})
    assert h.client.post(f"/v1/mint-requests/{req['id']}/cancel", json={"jws": cancel}).status_code == 200
    _resurrect(attacker, req["id"])
    h.approve("bob", req)
    refused(h.approve("carol", req))
    assert hsm_signs["mint"] == 0


# -- rollback of the histories -----------------------------------------------------------------------------

def test_a_policy_rolled_back_in_the_database_is_detected_and_nothing_is_signed(
        h: Harness, attacker: Engine, hsm_signs: Counter[str]) -> None:
    """Deleting the latest activated bundle and re-activating the previous one would bring back bob."""
    from tests.integration.test_policy_changes import enact, tables

    policy, operators = tables(h)
    for op in operators["operators"]:
        if op["name"] == "bob":
            op["enabled"] = False
    latest = enact(h, policy, operators)
    req = created(h)
    failures = metric("appliance_integrity_failures_total", history="policy")
    row = sql(attacker, "SELECT id, activated_seq FROM policy_bundles WHERE hash = :h", h=latest)[0]
    sql(attacker, "DELETE FROM policy_approvals WHERE bundle_id = :id", id=row.id)
    sql(attacker, "DELETE FROM policy_bundles WHERE id = :id", id=row.id)
    sql(attacker, "UPDATE policy_bundles SET status = 'active' WHERE activated_seq = :seq",
        seq=row.activated_seq - 1)
    for response in (h.client.get("/v1/policy"), h.request(), h.approve("bob", req), h.approve("carol", req),
                     h.client.get(f"/v1/mint-requests/{req['id']}/authorization")):
        assert response.status_code == 503, response.get_json()
        assert response.get_json()["type"] == "urn:appliance:problem:rollback-detected"
    ready = h.client.get("/readyz")
    assert ready.status_code == 503 and ready.get_json()["checks"]["integrity"]["ok"] is False
    assert metric("appliance_integrity_failures_total", history="policy") > failures
    assert hsm_signs["mint"] == 0


def test_the_audit_log_rolled_back_behind_its_checkpoint_is_detected(h: Harness, attacker: Engine,
                                                                    hsm_signs: Counter[str]) -> None:
    """The veto is covered by a checkpoint; erasing its entry (and rebuilding the head) is a rollback."""
    from appliance.domain.merkle import CompactRange

    req = created(h)
    h.approve("dave", req, decision="reject")
    idx = min(r.idx for r in sql(attacker, "SELECT idx, entry FROM audit_entries ORDER BY idx")
              if json.loads(r.entry)["action"] == "mint.rejected")  # the officer's rejection, then the closure
    sql(attacker, "DELETE FROM audit_entries WHERE idx >= :i", i=idx)
    tree = CompactRange.empty()
    for r in sql(attacker, "SELECT leaf_hash FROM audit_entries ORDER BY idx"):
        tree = tree.append(bytes(r.leaf_hash))
    sql(attacker, "UPDATE audit_head SET size = :n, compact = :c, root = :r", n=tree.size, c=tree.encode(),
        r=tree.root())
    _resurrect(attacker, req["id"])
    signed = hsm_signs["audit"]
    for response in (h.approve("bob", req), h.approve("carol", req),
                     h.client.get("/v1/audit/proof/inclusion?index=0&size=1")):
        assert response.status_code == 503, response.get_json()
        assert response.get_json()["type"] == "urn:appliance:problem:rollback-detected"
    assert h.client.get("/readyz").status_code == 503
    # the checkpoint served is still the one the HSM signed over the log before the cut: evidence of the cut
    assert h.client.get("/v1/audit/checkpoint").get_data(as_text=True).splitlines()[1] == str(tree.size + 2)
    assert hsm_signs["mint"] == 0 and hsm_signs["audit"] == signed


def test_an_attestation_deleted_from_the_database_is_detected_and_no_fork_is_signed(
        h: Harness, attacker: Engine, hsm_signs: Counter[str]) -> None:
    from tests.integration.test_attestations import attest, inputs, later

    reserves, supply, _ = inputs(h)
    assert attest(h, reserves, supply).status_code == 201
    stamp = "2099-01-01T00:00:00Z"
    h.clock.now = 4070908800 + 120
    assert attest(h, later(reserves, stamp), later(supply, stamp)).status_code == 201
    before = hsm_signs["attestation"]
    sql(attacker, "DELETE FROM attestations WHERE seq = 2")
    again = attest(h, later(reserves, "2098-12-31T00:00:00Z"), later(supply, "2098-12-31T00:00:00Z"))
    assert again.status_code == 503 and again.get_json()["type"] == "urn:appliance:problem:rollback-detected"
    assert hsm_signs["attestation"] == before
    assert h.client.get("/readyz").get_json()["checks"]["integrity"]["ok"] is False


def test_the_reserve_guard_reads_the_signed_attestation_not_the_tables_columns(
        h: Harness, attacker: Engine, hsm_signs: Counter[str]) -> None:
    from datetime import UTC, datetime

    from tests.integration.test_attestations import attest, inputs, later
    from tests.integration.test_policy_changes import enact, tables

    policy, _ = tables(h)
    policy["reserve_guard"]["enabled"] = True
    enact(h, policy)
    reserves, supply, _ = inputs(h)
    stamp = datetime.fromtimestamp(h.clock() - 60, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    supply["chains"][0]["total_supply"] = str(100100000000 * 10**4 - 5_000_000 * 10**6)  # 5M tokens of headroom
    assert attest(h, later(reserves, stamp), later(supply, stamp)).status_code == 201
    sql(attacker, "UPDATE attestations SET reserves_total = :big, supply_total = '0', status = 'FULLY_BACKED'",
        big=str(10**30))
    too_much = h.request(amount=str(6_000_000 * 10**6))
    assert too_much.status_code == 422 and "exceed reserves" in json.dumps(too_much.get_json())
    assert hsm_signs["mint"] == 0


def test_invented_reserve_figures_are_never_attested(h: Harness, attacker: Engine,
                                                     hsm_signs: Counter[str]) -> None:
    """T2 (the auditor, or a treasury officer) and T1+T2 inventing the reserves: only a custodian's signature
    over the report makes the HSM attest, and the attestation names that signature in its evidence."""
    from tests.integration.test_attestations import inputs

    reserves, supply, _ = inputs(h)
    invented = {**reserves, "holdings": [{**reserves["holdings"][0], "amount": str(10**20)}]}

    def ask(by: str, report: Any) -> Any:
        h.clock.now = max(h.clock.now, 1764000060)  # past the reports' as_of
        token = h.jws(by, auth.TYP_ATTESTATION_REQUEST, {"reserves": report, "supply": supply, "holders_csv": None})
        return h.client.post("/v1/attestations", json={"jws": token})

    assert ask("grace", invented).status_code == 400  # the report's JSON, unsigned
    assert ask("grace", h.report(invented, custodian="grace")).status_code == 403  # signed by the auditor herself
    assert ask("bob", h.report(invented, custodian="bob")).status_code == 403  # treasury neither asks nor vouches
    assert ask("grace", h.report(invented, custodian="bob")).status_code == 403
    forged = h.report(invented).rsplit(".", 1)[0] + "." + h.report(reserves).rsplit(".", 1)[1]
    assert ask("grace", forged).status_code == 401  # another report's signature
    wrong_type = h.jws("heidi", auth.TYP_ATTESTATION_REQUEST, invented)
    assert ask("grace", wrong_type).status_code == 401  # the custodian's signature over something else
    # T1 disables nothing and enrols nobody: an operators row edited to make grace a custodian is not believed
    sql(attacker, "UPDATE policy_bundles SET bundle = replace(bundle, '\"auditor\"', '\"custodian\"') "
                  "WHERE status = 'active'")
    refused(ask("grace", h.report(invented, custodian="grace")))
    assert hsm_signs["attestation"] == 0


# -- policy proposals ---------------------------------------------------------------------------------------

def _disable(operators: dict[str, Any], name: str) -> dict[str, Any]:
    for op in operators["operators"]:
        if op["name"] == name:
            op["enabled"] = False
    return operators


def test_an_older_proposal_cannot_undo_a_later_change(h: Harness, hsm_signs: Counter[str]) -> None:
    """Two proposals on the same bundle: once one lands, the other (which would bring bob back) is stale."""
    from tests.integration.test_policy_changes import propose, tables, vote

    policy, operators = tables(h)
    renamed = {**policy, "name": "renamed"}
    old = propose(h, renamed, None).get_json()  # keeps the operator set bob is enabled in
    disabling = propose(h, policy, _disable(operators, "bob")).get_json()
    vote(h, disabling, "erin")
    assert vote(h, disabling, "frank").get_json()["status"] == "active"
    vote_on_old = vote(h, old, "erin")
    assert vote_on_old.status_code == 409 and "cannot be approved" in vote_on_old.get_json()["detail"]
    bob = next(op for op in h.client.get("/v1/policy").get_json()["active"]["bundle"]["operators"]["operators"]
               if op["name"] == "bob")
    assert bob["enabled"] is False


def test_a_proposal_expires_after_a_week(h: Harness) -> None:
    from appliance.domain.policy import DEFAULT_PROPOSAL_TTL_SECONDS as PROPOSAL_TTL_SECONDS
    from tests.integration.test_policy_changes import propose, tables, vote

    policy, _ = tables(h)
    proposal = propose(h, {**policy, "name": "late"}, None).get_json()
    assert proposal["expires_at"] == int(h.clock()) + PROPOSAL_TTL_SECONDS
    vote(h, proposal, "erin")
    h.clock.advance(PROPOSAL_TTL_SECONDS)
    late = vote(h, proposal, "frank")
    assert late.status_code == 409 and "expired" in late.get_json()["detail"]


def test_a_proposal_on_a_base_that_is_not_the_active_bundle_is_refused(h: Harness) -> None:
    from tests.integration.test_policy_changes import tables

    policy, _ = tables(h)
    jws = h.jws("erin", auth.TYP_POLICY_PROPOSAL, {"policy": policy, "operators": None, "base": "0" * 64})
    response = h.client.post("/v1/policy/proposals", json={"jws": jws})
    assert response.status_code == 409 and "propose on it" in response.get_json()["detail"]
    jws = h.jws("erin", auth.TYP_POLICY_PROPOSAL, {"policy": policy, "operators": None})
    assert h.client.post("/v1/policy/proposals", json={"jws": jws}).status_code == 400


def test_an_activated_bundle_whose_proposal_was_replaced_is_refused(h: Harness, attacker: Engine,
                                                                   hsm_signs: Counter[str]) -> None:
    """The votes are genuine, the bundle was not what the proposer signed: the history check refuses it."""
    from tests.integration.test_policy_changes import enact, propose, tables

    policy, _ = tables(h)
    latest = enact(h, {**policy, "name": "enacted"})
    other = propose(h, {**policy, "name": "another"}, None).get_json()
    other_jws = sql(attacker, "SELECT proposal_jws FROM policy_bundles WHERE id = :id", id=other["id"])[0][0]
    sql(attacker, "UPDATE policy_bundles SET proposal_jws = :j WHERE hash = :h", j=other_jws, h=latest)
    # the running process notices at once: its verified history is keyed by every proposal's JWS too
    response = h.client.get("/v1/policy")
    assert response.status_code == 503 and response.get_json()["type"].endswith("policy-history-invalid")
    assert hsm_signs["mint"] == 0


def test_whether_the_proposers_vote_counts_is_a_governance_setting(h: Harness) -> None:
    from tests.integration.test_policy_changes import enact, propose, tables, vote

    policy, _ = tables(h)
    policy["governance"] = {**policy["governance"], "approvals": 1, "proposer_counts": False,
                            "proposal_ttl_seconds": 3600}
    enact(h, policy)
    proposal = propose(h, {**policy, "name": "second"}, None, by="erin").get_json()
    assert proposal["expires_at"] == int(h.clock()) + 3600
    assert vote(h, proposal, "erin").get_json()["status"] == "proposed"  # erin proposed: her vote does not count
    assert vote(h, proposal, "frank").get_json()["status"] == "active"
    refused = propose(h, {**policy, "governance": {**policy["governance"], "approvals": 2}}, None)
    assert refused.status_code == 400 and "besides the proposer" in json.dumps(refused.get_json())
