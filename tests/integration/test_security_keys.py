"""Security keys (WebAuthn) as operator signatures through the real service and the session's SoftHSM2 token."""

from __future__ import annotations

import json
from typing import Any

from eth_account import Account
from eth_account.messages import encode_typed_data
from sqlalchemy import text

from appliance.services import auth
from tests.helpers import Harness, enrol_security_keys, metric
from tests.integration.test_policy_changes import current, propose, tables, vote


def _approve_with_key(h: Harness, name: str, req: dict[str, Any], decision: str = "approve",
                      **options: Any) -> Any:
    payload = {"request_id": req["id"], "digest": req["digest"], "decision": decision, "policy": req["policy"]}
    return h.client.post(f"/v1/mint-requests/{req['id']}/approvals",
                         json={"webauthn": h.assertion(name, auth.TYP_MINT_APPROVAL, payload, **options)})


def _signer_of(authorization: dict[str, Any]) -> str:
    return str(Account.recover_message(encode_typed_data(full_message=authorization["typedData"]),
                                       signature=authorization["signature"]))


def test_a_quorum_of_security_keys_gets_an_authorization_that_verifies_with_eth_account(h: Harness) -> None:
    enrol_security_keys(h, ["bob", "carol"], hardware_tiers=(0, 1))
    req = h.request("alice").get_json()
    first = _approve_with_key(h, "bob", req)
    assert first.status_code == 201, first.get_json()
    assert first.get_json()["quorum"]["counted"] == ["bob"]
    done = _approve_with_key(h, "carol", req)
    assert done.status_code == 201, done.get_json()
    authorization = h.client.get(f"/v1/mint-requests/{req['id']}/authorization").get_json()
    assert _signer_of(authorization) == authorization["signer"]


def test_a_hardware_only_tier_does_not_count_software_approvals(h: Harness) -> None:
    enrol_security_keys(h, ["bob", "carol"], hardware_tiers=(0,))
    req = h.request("alice").get_json()
    url = f"/v1/mint-requests/{req['id']}/approvals"
    assert h.client.post(url, json={"jws": h.approval("bob", req)}).status_code == 201  # recorded, not counted
    view = h.client.post(url, json={"jws": h.approval("carol", req)}).get_json()
    assert view["status"] == "pending"
    assert ["bob", "this tier counts only approvals made with a security key"] in view["quorum"]["ignored"]
    assert h.client.get(f"/v1/mint-requests/{req['id']}/authorization").status_code != 200
    again = _approve_with_key(h, "carol", req)  # carol already decided (by JWS): one decision per officer
    assert again.status_code == 409


def test_replayed_and_misdirected_assertions_are_refused(h: Harness) -> None:
    enrol_security_keys(h, ["bob", "carol"])
    req = h.request("alice").get_json()
    other = h.request("alice", amount="1000").get_json()
    payload = {"request_id": req["id"], "digest": req["digest"], "decision": "approve", "policy": req["policy"]}
    envelope = h.assertion("bob", auth.TYP_MINT_APPROVAL, payload)
    url = f"/v1/mint-requests/{req['id']}/approvals"
    assert h.client.post(url, json={"webauthn": envelope}).status_code == 201
    replay = h.client.post(url, json={"webauthn": envelope})
    assert replay.status_code == 409 and "replayed" in replay.get_json()["detail"]
    # the same statement sent to another request: the payload names the first one
    moved = h.client.post(f"/v1/mint-requests/{other['id']}/approvals", json={"webauthn": envelope})
    assert moved.status_code == 422
    # a payload rewritten to name the other request, over the original challenge: the signature says no
    forged = {**envelope, "payload": {**envelope["payload"], "request_id": other["id"], "digest": other["digest"]}}
    refused = h.client.post(f"/v1/mint-requests/{other['id']}/approvals", json={"webauthn": forged})
    assert refused.status_code == 401 and "challenge" in refused.get_json()["detail"]
    wrong_origin = _approve_with_key(h, "carol", other, origin="https://evil.example")
    assert wrong_origin.status_code == 401 and "origin" in wrong_origin.get_json()["detail"]
    wrong_rp = _approve_with_key(h, "carol", other, rp_id="evil.example")
    assert wrong_rp.status_code == 401 and "relying party" in wrong_rp.get_json()["detail"]
    no_uv = _approve_with_key(h, "carol", other, uv=False)
    assert no_uv.status_code == 401 and "verification" in no_uv.get_json()["detail"]


def test_a_sign_count_going_backwards_is_refused_and_audited(h: Harness) -> None:
    enrol_security_keys(h, ["bob", "carol"])
    req = h.request("alice").get_json()
    other = h.request("alice", amount="1000").get_json()
    h.keys["bob"].sign_count = 10
    assert _approve_with_key(h, "bob", req).status_code == 201  # count 11
    before = metric("appliance_auth_failures_total", reason="sign-count")
    cloned = _approve_with_key(h, "bob", other, sign_count=7)
    assert cloned.status_code == 401 and "cloned" in cloned.get_json()["detail"]
    assert metric("appliance_auth_failures_total", reason="sign-count") == before + 1
    entries = h.client.get("/v1/audit/entries?start=0").get_json()["entries"]
    assert any(e["action"] == "auth.sign-count-regressed" for e in entries)
    assert _approve_with_key(h, "bob", other).status_code == 201  # the genuine key carries on (count 12)


def test_a_stored_assertion_with_one_byte_changed_no_longer_counts(h: Harness) -> None:
    enrol_security_keys(h, ["bob", "carol"], hardware_tiers=(0,))
    req = h.request("alice").get_json()
    assert _approve_with_key(h, "bob", req).status_code == 201
    with h.app_ctx.db.engine.begin() as conn:
        stored = json.loads(conn.execute(text("SELECT jws FROM mint_approvals WHERE request_id = :r"),
                                         {"r": req["id"]}).scalar_one())
        signature = bytearray(stored["signature"].encode())
        signature[10] = ord("A") if signature[10] != ord("A") else ord("B")
        stored["signature"] = signature.decode()
        conn.execute(text("UPDATE mint_approvals SET jws = :j WHERE request_id = :r"),
                     {"j": json.dumps(stored), "r": req["id"]})
    view = _approve_with_key(h, "carol", req).get_json()
    assert view["status"] == "pending", view
    assert ["bob", "its stored signature does not verify"] in view["quorum"]["ignored"]


def test_policy_votes_by_security_key_and_a_hardware_only_governance(h: Harness) -> None:
    enrol_security_keys(h, ["erin", "frank"], hardware_governance=True)
    policy, operators = tables(h)
    by_jws = propose(h, {**policy, "name": "by JWS"}, operators).get_json()
    assert vote(h, by_jws, "erin").status_code == 201  # recorded, but only security keys count now
    assert vote(h, by_jws, "frank").get_json()["status"] == "proposed"
    by_keys = propose(h, {**policy, "name": "by keys"}, operators).get_json()
    body = {"proposal": by_keys["id"], "hash": by_keys["hash"], "decision": "approve"}
    for name, status in (("erin", "proposed"), ("frank", "active")):
        response = h.client.post(f"/v1/policy/proposals/{by_keys['id']}/approvals",
                                 json={"webauthn": h.assertion(name, auth.TYP_POLICY_APPROVAL, body)})
        assert response.status_code == 201, response.get_json()
        assert response.get_json()["status"] == status
    assert current(h)["active"]["bundle"]["policy"]["name"] == "by keys"


def test_a_body_with_neither_or_both_kinds_of_signature_is_a_clear_400(h: Harness) -> None:
    for body in ({}, {"jws": "a.b.c", "webauthn": {}}, {"webauthn": "nope"}, {"webauthn": {"typ": 1}}):
        response = h.client.post("/v1/mint-requests", json=body)
        assert response.status_code == 400, (body, response.get_json())
        assert response.get_json()["type"].startswith("urn:appliance:problem:")


def test_requests_rejections_and_cancellations_by_security_key(h: Harness) -> None:
    enrol_security_keys(h, ["alice", "bob", "carol"], hardware_tiers=(0,))
    to = h.allowlist[0]
    created = h.client.post("/v1/mint-requests", json={"webauthn": h.assertion(
        "alice", auth.TYP_MINT_REQUEST, {"chain_id": h.chain_id, "to": to, "amount": "5000000"})})
    assert created.status_code == 201, created.get_json()
    req = created.get_json()
    vetoed = _approve_with_key(h, "bob", req, decision="reject")
    assert vetoed.status_code == 201 and vetoed.get_json()["status"] == "rejected"
    assert vetoed.get_json()["approvals"][0]["by"] == "security key"
    other = h.request("alice", amount="7000000").get_json()
    cancelled = h.client.post(f"/v1/mint-requests/{other['id']}/cancel", json={"webauthn": h.assertion(
        "alice", auth.TYP_MINT_CANCEL, {"request_id": other["id"]})})
    assert cancelled.status_code == 200 and cancelled.get_json()["status"] == "cancelled"
    # a request assertion replayed as a cancellation names another statement type: refused
    replayed = h.client.post(f"/v1/mint-requests/{other['id']}/cancel", json={"webauthn": h.assertion(
        "alice", auth.TYP_MINT_REQUEST, {"request_id": other["id"]})})
    assert replayed.status_code == 401 and "typ" in replayed.get_json()["detail"]


def test_a_policy_without_a_relying_party_accepts_no_security_key(h: Harness) -> None:
    enrol_security_keys(h, ["bob"])
    policy, operators = tables(h)
    del policy["webauthn"]
    from tests.integration.test_policy_changes import enact

    enact(h, policy, operators)
    req = h.request("alice").get_json()
    refused = _approve_with_key(h, "bob", req)
    assert refused.status_code == 401 and "no [webauthn] relying party" in refused.get_json()["detail"]
