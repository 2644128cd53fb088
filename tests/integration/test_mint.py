"""The mint flow end to end over HTTP (Flask test client), real SoftHSM2 and SQLite: and every attack."""

from __future__ import annotations

import base64
import json
import threading
from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data

from appliance.domain import eip712
from appliance.services import auth
from tests.helpers import Harness, failing_write, metric, raising

SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def created(h: Harness, **kw: Any) -> dict[str, Any]:
    response = h.request(**kw)
    assert response.status_code == 201, response.get_json()
    return response.get_json()  # type: ignore[no-any-return]


def mint_signatures() -> float:
    return metric("appliance_signatures_total", key="mint", outcome="ok")


def test_request_two_approvals_then_an_authorization_eth_account_verifies(h: Harness) -> None:
    req = created(h)
    assert req["status"] == "pending" and req["approvals"] == []
    assert req["required"]["approvals"] == 2
    assert h.approve("bob", req).status_code == 201
    assert h.client.get(f"/v1/mint-requests/{req['id']}/authorization").status_code == 409
    done = h.approve("carol", req).get_json()
    assert done["status"] == "authorized"
    authz = h.client.get(f"/v1/mint-requests/{req['id']}/authorization").get_json()
    assert set(authz) == {"typedData", "digest", "signature", "signer"}
    # eth-account, written by nobody on this team, recomputes the digest and recovers the signer
    signable = encode_typed_data(full_message=authz["typedData"])
    assert Account.recover_message(signable, signature=authz["signature"]) == authz["signer"]
    jwks = h.client.get("/.well-known/jwks.json").get_json()
    mint_key = next(k for k in jwks["keys"] if k["crv"] == "secp256k1")
    assert authz["signer"] == mint_key["address"]
    sig = bytes.fromhex(authz["signature"][2:])
    assert len(sig) == 65 and sig[64] in (27, 28)
    assert int.from_bytes(sig[32:64], "big") <= SECP256K1_N // 2
    assert authz["typedData"]["message"]["to"] == req["to"]
    assert authz["typedData"]["message"]["amount"] == req["amount"]


def test_asking_again_returns_the_stored_signature_without_an_hsm_call(h: Harness) -> None:
    req = created(h)
    h.approve("bob", req)
    h.approve("carol", req)
    before = mint_signatures()
    first = h.client.get(f"/v1/mint-requests/{req['id']}/authorization").get_json()
    second = h.client.get(f"/v1/mint-requests/{req['id']}/authorization").get_json()
    assert first == second
    assert mint_signatures() == before


def test_large_mint_needs_three_including_a_cfo(h: Harness) -> None:
    req = created(h, amount=str(1_000_000 * 10**6 + 1))
    assert req["required"]["approvals"] == 3
    for name in ("bob", "carol"):
        assert h.approve(name, req).status_code == 201
    h.signers.clear()
    # three treasury officers without a cfo are not enough: alice is the requester, so use the cfo
    assert h.client.get(f"/v1/mint-requests/{req['id']}").get_json()["status"] == "pending"
    assert h.approve("dave", req).get_json()["status"] == "authorized"


def test_three_treasury_without_cfo_is_not_enough(h: Harness) -> None:
    req = created(h, name="dave", amount=str(2_000_000 * 10**6))
    for name in ("alice", "bob", "carol"):
        assert h.approve(name, req).status_code == 201
    state = h.client.get(f"/v1/mint-requests/{req['id']}").get_json()
    assert state["status"] == "pending" and state["authorization"] is None
    assert any("cfo" in line for line in state["quorum"]["missing"])


# -- attacks -------------------------------------------------------------------------------------------------

def test_requester_cannot_approve_own_request(h: Harness) -> None:
    req = created(h)
    response = h.approve("alice", req)
    assert response.status_code == 403
    assert response.mimetype == "application/problem+json"


def test_approval_over_a_different_digest_is_refused(h: Harness) -> None:
    req = created(h)
    other = created(h, amount="999")
    response = h.approve("bob", req, digest=other["digest"])
    assert response.status_code == 422
    assert "digest" in response.get_json()["detail"]


def test_client_supplied_digest_that_does_not_match_is_refused(h: Harness) -> None:
    req = created(h)
    response = h.approve("bob", req, digest="0x" + "00" * 32)
    assert response.status_code == 422


def test_approval_for_another_request_is_refused(h: Harness) -> None:
    req, other = created(h), created(h)
    jws = h.approval("bob", other)
    response = h.client.post(f"/v1/mint-requests/{req['id']}/approvals", json={"jws": jws})
    assert response.status_code == 422


def test_approval_bound_to_another_chain_or_contract_is_refused(h: Harness) -> None:
    req = created(h)
    domain, message = eip712.mint_from_typed_data(req["typedData"])
    for changed in (eip712.Eip712Domain(domain.name, domain.version, domain.chain_id + 1,
                                        domain.verifying_contract),
                    eip712.Eip712Domain(domain.name, domain.version, domain.chain_id, h.allowlist[1])):
        digest = "0x" + eip712.mint_digest(changed, message).hex()
        assert h.approve("bob", req, digest=digest).status_code == 422


def test_same_operator_counts_once_new_signature_or_high_s_twin(h: Harness) -> None:
    req = created(h, amount=str(2_000_000 * 10**6))  # needs 3
    first = h.approval("bob", req)  # bob's key is P-256: ES256
    assert h.client.post(f"/v1/mint-requests/{req['id']}/approvals", json={"jws": first}).status_code == 201
    # a fresh approval by bob (new jti, new signature bytes)
    assert h.approve("bob", req).status_code == 409
    # the high-s twin of bob's ES256 signature: different bytes, equally valid for JOSE
    head, payload, sig = first.split(".")
    raw = base64.urlsafe_b64decode(sig + "==")
    s = int.from_bytes(raw[32:], "big")
    twin = raw[:32] + (P256_N - s).to_bytes(32, "big")
    twin_jws = ".".join([head, payload, base64.urlsafe_b64encode(twin).rstrip(b"=").decode()])
    assert twin_jws != first
    assert h.client.post(f"/v1/mint-requests/{req['id']}/approvals", json={"jws": twin_jws}).status_code == 409
    state = h.client.get(f"/v1/mint-requests/{req['id']}").get_json()
    assert [a["operator"] for a in state["approvals"]] == ["bob"]
    assert state["quorum"]["counted"] == ["bob"]
    # past the jti check too: the twin written into the database under carol's name still counts once, as bob
    _insert_approval(h, req, "carol", twin_jws)
    assert h.client.get(f"/v1/mint-requests/{req['id']}").get_json()["quorum"]["counted"] == ["bob"]


def test_replayed_jti_is_refused(h: Harness) -> None:
    req, other = created(h), created(h)
    jti = "replayed-jti-0123456789"
    ok = h.jws("bob", auth.TYP_MINT_APPROVAL, {"request_id": req["id"], "digest": req["digest"],
                                                "decision": "approve", "policy": req["policy"]}, jti=jti)
    assert h.client.post(f"/v1/mint-requests/{req['id']}/approvals", json={"jws": ok}).status_code == 201
    again = h.jws("bob", auth.TYP_MINT_APPROVAL, {"request_id": other["id"], "digest": other["digest"],
                                                   "decision": "approve", "policy": other["policy"]}, jti=jti)
    response = h.client.post(f"/v1/mint-requests/{other['id']}/approvals", json={"jws": again})
    assert response.status_code == 409
    assert "replay" in response.get_json()["detail"]


def test_approval_signed_as_another_message_type_is_refused(h: Harness) -> None:
    req = created(h)
    wrong_typ = h.jws("bob", auth.TYP_MINT_REQUEST, {"request_id": req["id"], "digest": req["digest"],
                                                      "decision": "approve", "policy": req["policy"]})
    response = h.client.post(f"/v1/mint-requests/{req['id']}/approvals", json={"jws": wrong_typ})
    assert response.status_code == 401


def test_expired_request_and_stale_approval_are_refused(h: Harness) -> None:
    req = created(h)
    stale = h.jws("bob", auth.TYP_MINT_APPROVAL, {"request_id": req["id"], "digest": req["digest"],
                                                   "decision": "approve", "policy": req["policy"]},
                  iat=int(h.clock()) - 301)
    assert h.client.post(f"/v1/mint-requests/{req['id']}/approvals", json={"jws": stale}).status_code == 401
    h.clock.advance(86400)
    response = h.approve("bob", req)
    assert response.status_code == 409
    assert "expired" in response.get_json()["detail"]
    assert h.client.get(f"/v1/mint-requests/{req['id']}").get_json()["status"] == "expired"


def test_expired_approval_no_longer_counts(h: Harness) -> None:
    req = created(h)
    assert h.approve("bob", req).status_code == 201
    h.clock.advance(3601)  # approval_ttl_seconds of the dev policy
    state = h.approve("carol", req).get_json()
    assert state["status"] == "pending"
    assert state["authorization"] is None
    assert any(op == "bob" for op, _ in state["quorum"]["ignored"])


def test_a_rejection_vetoes_the_request(h: Harness) -> None:
    req = created(h)
    assert h.approve("bob", req, decision="reject").get_json()["status"] == "rejected"
    assert h.approve("carol", req).status_code == 409
    actions = _audit_actions(h)
    assert ("mint.rejected", req["id"]) in actions


def _audit_actions(h: Harness) -> list[tuple[str, str]]:
    from appliance.services.audit import AuditLog

    head = AuditLog(h.app_ctx).head().size
    entries = h.client.get(f"/v1/audit/entries?start=0&end={head}").get_json()["entries"]
    return [(e["action"], e["subject"]) for e in entries]


def test_approvals_are_audited_as_approved(h: Harness) -> None:
    req = created(h)
    h.approve("bob", req)
    assert ("mint.approved", req["id"]) in _audit_actions(h)


@pytest.mark.parametrize("amount", [
    "0", "-1", str(2**256), "1.5", "1e18", "01", " 1", "１", 1000, 1.5, True, None, "",
])
def test_bad_amounts_are_refused(h: Harness, amount: Any) -> None:
    response = h.request(amount=amount)
    assert response.status_code == 400, amount
    assert response.get_json()["errors"][0]["location"].startswith("jws.payload")


def test_bad_addresses_are_refused(h: Harness) -> None:
    good = h.allowlist[0]
    flip = next(i for i, ch in enumerate(good) if i > 1 and ch.isalpha())  # a letter whose case carries checksum
    mistyped = good[:flip] + good[flip].swapcase() + good[flip + 1:]
    for bad, reason in ((good.lower(), "not checksummed"), (good[:-1], "40 hex digits, not 39"),
                        (good + "0", "40 hex digits, not 41"), ("0x" + "g" * 40, "only hex digits"),
                        (good[2:], "must start with 0x"), (mistyped, "invalid EIP-55 checksum")):
        response = h.request(to=bad)
        assert response.status_code == 400, bad  # refused as an address, before the allowlist is consulted
        problems = response.get_json()["errors"]
        assert [p["location"] for p in problems] == ["jws.payload.to"], bad
        assert reason in problems[0]["message"], (bad, problems)
    response = h.request(to=eip712.to_checksum_address(bytes(20)))
    assert response.status_code == 422
    assert "allowlist" in json.dumps(response.get_json())


def test_unknown_chain_is_refused(h: Harness) -> None:
    assert h.request(chain_id=999).status_code == 400


def test_per_request_maximum(h: Harness) -> None:
    assert h.request(amount=str(10_000_000 * 10**6 + 1)).status_code == 422
    assert h.request(amount=str(10_000_000 * 10**6)).status_code == 201


def test_velocity_limit_refuses_the_request_that_would_cross_it(h: Harness) -> None:
    ten_million = str(10_000_000 * 10**6)
    for _ in range(5):  # the dev velocity limit is 50,000,000 tokens a day
        req = created(h, amount=ten_million)
        for name in ("bob", "carol"):
            h.approve(name, req)
        assert h.approve("dave", req).get_json()["status"] == "authorized"
    response = h.request(amount="1")
    assert response.status_code == 422
    assert "velocity" in json.dumps(response.get_json())
    h.clock.advance(86401)
    assert h.request(amount="1").status_code == 201


def test_velocity_is_checked_again_when_pending_requests_are_authorized(h: Harness) -> None:
    """Requests that each passed creation (nothing authorized yet) cannot together cross the limit."""
    ten_million = str(10_000_000 * 10**6)
    pending = [created(h, amount=ten_million) for _ in range(5)] + [created(h, amount="1")]  # 50,000,000 + 1 unit
    for req in pending[:5]:  # above 1,000,000 tokens: 3 approvals including the cfo, who comes last
        h.approve("bob", req)
        h.approve("carol", req)
    h.approve("bob", pending[5])
    before = mint_signatures()
    for req in pending[:5]:
        assert h.approve("dave", req).get_json()["status"] == "authorized"
    response = h.approve("carol", pending[5])
    assert response.status_code == 422, response.get_json()
    assert "velocity limit" in json.dumps(response.get_json())
    assert mint_signatures() == before + 5
    state = h.client.get(f"/v1/mint-requests/{pending[5]['id']}").get_json()
    assert state["status"] == "pending" and state["authorization"] is None
    again = h.client.get(f"/v1/mint-requests/{pending[5]['id']}/authorization")  # asking again: still refused
    assert again.status_code == 422 and mint_signatures() == before + 5


def test_garbage_bodies_get_clear_4xx(h: Harness) -> None:
    c = h.client
    assert c.post("/v1/mint-requests", data="{", content_type="application/json").status_code == 400
    assert c.post("/v1/mint-requests", data='{"jws": "a", "jws": "b"}',
                  content_type="application/json").status_code == 400
    assert c.post("/v1/mint-requests", data="jws=x", content_type="text/plain").status_code == 415
    assert c.post("/v1/mint-requests", json={"jws": "not.a.jws"}).status_code in (400, 401)
    assert c.post("/v1/mint-requests", json={}).status_code == 400
    assert c.post("/v1/mint-requests", json=[1]).status_code == 400
    assert c.get("/v1/mint-requests/nope").status_code == 404
    assert c.delete("/v1/mint-requests").status_code == 405
    too_large = c.post("/v1/mint-requests", data=b"x" * (2 << 20), content_type="application/json")
    assert too_large.status_code == 413
    assert too_large.get_json()["detail"] == "the body is larger than 1048576 bytes"
    for response in (c.get("/nowhere"), c.post("/v1/mint-requests", data="{", content_type="application/json")):
        assert response.mimetype == "application/problem+json"
        assert "Traceback" not in response.get_data(as_text=True)


def test_a_chunked_body_over_the_limit_is_refused_whole_not_cut_at_the_limit(h: Harness) -> None:
    """A valid request followed by padding past the limit, sent without a Content-Length (chunked): 413, and no
    request is created from the part that fits."""
    import io

    body = json.dumps({"jws": h.jws("alice", auth.TYP_MINT_REQUEST, {"to": h.allowlist[0], "amount": "1",
                                                                      "chain_id": h.chain_id})}).encode()
    limit = h.app_ctx.settings.max_body_bytes

    def chunked(data: bytes) -> Any:
        return h.client.post("/v1/mint-requests", input_stream=io.BytesIO(data), content_type="application/json",
                             headers={"Transfer-Encoding": "chunked"},
                             environ_overrides={"wsgi.input_terminated": True})

    before = h.client.get("/v1/mint-requests").get_json()["total"]
    response = chunked(body + b" " * (limit - len(body)) + b"trailing bytes past the limit")
    assert response.status_code == 413, response.get_json()
    assert h.client.get("/v1/mint-requests").get_json()["total"] == before
    assert chunked(body + b" " * (limit - len(body))).status_code == 201  # exactly at the limit: accepted


def test_cancel_by_requester_or_security_admin_only(h: Harness) -> None:
    req = created(h)
    jws = h.jws("bob", auth.TYP_MINT_CANCEL, {"request_id": req["id"]})
    assert h.client.post(f"/v1/mint-requests/{req['id']}/cancel", json={"jws": jws}).status_code == 403
    jws = h.jws("erin", auth.TYP_MINT_CANCEL, {"request_id": req["id"]})
    assert h.client.post(f"/v1/mint-requests/{req['id']}/cancel", json={"jws": jws}).get_json()["status"] == \
        "cancelled"
    assert h.approve("bob", req).status_code == 409


def test_list_filters_by_status(h: Harness) -> None:
    a, b = created(h), created(h)
    h.approve("bob", a)
    h.approve("carol", a)
    listing = h.client.get("/v1/mint-requests?status=pending").get_json()
    assert [i["id"] for i in listing["items"]] == [b["id"]]
    assert h.client.get("/v1/mint-requests?status=bogus").status_code == 400


def test_a_final_approval_the_store_cannot_commit_keeps_nothing_and_can_be_sent_again(h: Harness) -> None:
    """The approval, its audit entry and the nonce reservation are one transaction: all of it, or none."""
    req = created(h)
    h.approve("bob", req)
    before, size = mint_signatures(), _audit_size(h)
    carol = h.approval("carol", req)
    url = f"/v1/mint-requests/{req['id']}/approvals"
    with failing_write(h.app_ctx.db, "mint-approval"):
        assert h.client.post(url, json={"jws": carol}).status_code == 503
    assert mint_signatures() == before and _audit_size(h) == size
    shown = h.client.get(f"/v1/mint-requests/{req['id']}").get_json()
    assert [a["operator"] for a in shown["approvals"]] == ["bob"] and shown["status"] == "pending"
    again = h.client.post(url, json={"jws": carol})  # its jti was never consumed: the same JWS is accepted
    assert again.status_code == 201 and again.get_json()["status"] == "authorized"
    assert mint_signatures() - before == 1


def test_a_met_quorum_whose_signing_was_refused_is_completed_by_asking_again(h: Harness) -> None:
    from appliance.store.tables import mint_requests

    req = created(h)
    h.approve("bob", req)
    with h.app_ctx.db.engine.begin() as conn:  # the stored row is not what alice signed: signing is refused
        conn.execute(mint_requests.update().where(mint_requests.c.id == req["id"]).values(requester="dave"))
    before = mint_signatures()
    assert h.approve("carol", req).status_code == 422  # the approval is stored, nothing was reserved
    assert mint_signatures() == before
    with h.app_ctx.db.engine.begin() as conn:  # put right again: asking again decides again, and signs
        conn.execute(mint_requests.update().where(mint_requests.c.id == req["id"]).values(requester="alice"))
    url = f"/v1/mint-requests/{req['id']}/authorization"
    authz = h.client.get(url)
    assert authz.status_code == 200, authz.get_json()
    assert h.client.get(url).get_json() == authz.get_json()
    assert mint_signatures() - before == 1
    assert Account.recover_message(encode_typed_data(full_message=authz.get_json()["typedData"]),
                                   signature=authz.get_json()["signature"]) == authz.get_json()["signer"]
    other = created(h)
    assert h.client.get(f"/v1/mint-requests/{other['id']}/authorization").status_code == 409  # not met: no sign
    assert mint_signatures() - before == 1


def test_an_expired_request_lists_as_expired_and_cannot_be_cancelled(h: Harness) -> None:
    req = created(h)
    h.clock.advance(86400 * 2)  # past any request TTL the dev policy allows
    assert h.client.get(f"/v1/mint-requests/{req['id']}").get_json()["status"] == "expired"
    expired = h.client.get("/v1/mint-requests?status=expired").get_json()
    assert [i["id"] for i in expired["items"]] == [req["id"]] and expired["total"] == 1
    assert expired["items"][0]["status"] == "expired"
    assert h.client.get("/v1/mint-requests?status=pending").get_json()["total"] == 0
    jws = h.jws("alice", auth.TYP_MINT_CANCEL, {"request_id": req["id"]})
    response = h.client.post(f"/v1/mint-requests/{req['id']}/cancel", json={"jws": jws})
    assert response.status_code == 409 and "expired" in response.get_json()["detail"]
    assert h.approve("bob", req).status_code == 409


def test_concurrent_final_approvals_give_exactly_one_signature(h: Harness) -> None:
    exactly_once(h)


def exactly_once(h: Harness) -> None:
    """8 threads submit final approvals at once (distinct officers and the same JWS): one HSM signature."""
    req = created(h)
    assert h.approve("bob", req).status_code == 201
    final = h.approval("carol", req)
    tokens = [final] * 4 + [h.approval("dave", req), h.approval("dave", req), final, final]
    before = mint_signatures()
    statuses: list[int] = []
    barrier = threading.Barrier(8)

    def submit(i: int, token: str) -> None:
        client = h.flask.test_client()
        client.environ_base["REMOTE_ADDR"] = f"10.2.0.{i}"  # each officer at their own workstation
        barrier.wait()
        statuses.append(client.post(f"/v1/mint-requests/{req['id']}/approvals", json={"jws": token}).status_code)

    threads = [threading.Thread(target=submit, args=(i, t)) for i, t in enumerate(tokens)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert mint_signatures() - before == 1
    assert statuses.count(201) >= 1
    assert all(s in (201, 409) for s in statuses), statuses
    authz = h.client.get(f"/v1/mint-requests/{req['id']}/authorization").get_json()
    assert Account.recover_message(encode_typed_data(full_message=authz["typedData"]),
                                   signature=authz["signature"]) == authz["signer"]


@pytest.mark.postgres
def test_concurrent_final_approvals_give_exactly_one_signature_on_postgresql(pg_h: Harness) -> None:
    exactly_once(pg_h)


@pytest.mark.postgres
def test_mint_flow_on_postgresql(pg_h: Harness) -> None:
    req = created(pg_h)
    pg_h.approve("bob", req)
    authz = pg_h.approve("carol", req).get_json()["authorization"]
    assert Account.recover_message(encode_typed_data(full_message=authz["typedData"]),
                                   signature=authz["signature"]) == authz["signer"]


def test_hsm_failure_after_reservation_is_recovered_once(h: Harness) -> None:
    from appliance.errors import HsmUnavailable

    req = created(h)
    h.approve("bob", req)
    with raising(h.app_ctx.mint_signer, "sign_eth_digest", HsmUnavailable("HSM sign failed: DeviceRemoved")):
        response = h.approve("carol", req)
    assert response.status_code == 503
    assert response.headers["Retry-After"]
    url = f"/v1/mint-requests/{req['id']}/authorization"
    assert h.client.get(url).status_code == 409  # the reservation may still be in flight elsewhere
    before = mint_signatures()
    h.clock.advance(31)
    authz = h.client.get(url).get_json()
    assert h.client.get(url).get_json() == authz
    assert mint_signatures() - before == 1
    assert Account.recover_message(encode_typed_data(full_message=authz["typedData"]),
                                   signature=authz["signature"]) == authz["signer"]


def stale_reservation(h: Harness) -> dict[str, Any]:
    """A request whose final approval reserved the nonce, then the HSM failed: an unsigned reservation."""
    from appliance.errors import HsmUnavailable

    req = created(h)
    h.approve("bob", req)
    with raising(h.app_ctx.mint_signer, "sign_eth_digest", HsmUnavailable("HSM sign failed: DeviceRemoved")):
        assert h.approve("carol", req).status_code == 503
    return req


def test_concurrent_recovery_of_a_stale_reservation_signs_once(h: Harness) -> None:
    import threading


    req = stale_reservation(h)
    h.clock.advance(31)
    before = mint_signatures()
    url = f"/v1/mint-requests/{req['id']}/authorization"
    results: list[tuple[int, Any]] = []
    start = threading.Barrier(6)

    def ask() -> None:
        client = h.client
        start.wait()
        response = client.get(url)
        results.append((response.status_code, response.get_json()))

    threads = [threading.Thread(target=ask) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert mint_signatures() - before == 1
    assert {code for code, _ in results} <= {200, 409} and any(code == 200 for code, _ in results)
    assert len({body["signature"] for code, body in results if code == 200}) == 1
    actions = [a for a, subject in _audit_actions(h) if subject == req["id"]]
    assert actions.count("mint.authorization.recovered") == 1


# -- someone holding the database, but no officer's key, cannot mint ----------------------------------------------

def _insert_approval(h: Harness, req: dict[str, Any], operator: str, jws: str) -> None:
    from appliance.store.tables import mint_approvals
    with h.app_ctx.db.engine.begin() as conn:
        conn.execute(mint_approvals.insert().values(
            request_id=req["id"], operator=operator, decision="approve", digest=req["digest"],
            policy_hash=req["policy"], iat=int(h.clock()), jws=jws, created_at=int(h.clock())))


def _authorize(h: Harness, req: dict[str, Any]) -> Any:
    from appliance.services.mint import MintService
    return MintService(h.app_ctx).authorize(req["id"])


def _forged_approval(h: Harness, req: dict[str, Any], impersonated: str) -> str:
    """An approval naming `impersonated`'s kid, signed with a key the forger made."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    from appliance.domain import jose
    from appliance.operator import SoftwareSigner
    real = h.signer(impersonated)
    key = ed25519.Ed25519PrivateKey.generate() if real.alg == "EdDSA" else ec.generate_private_key(ec.SECP256R1())
    forger = SoftwareSigner.for_key(key)
    body = {"request_id": req["id"], "digest": req["digest"], "decision": "approve", "policy": req["policy"],
            "iat": int(h.clock()), "jti": "forged-jti-0123456789"}
    return jose.sign_compact({"alg": forger.alg, "kid": real.key_id, "typ": auth.TYP_MINT_APPROVAL},
                             json.dumps(body).encode(), forger.sign)


def test_an_approval_row_inserted_in_the_database_does_not_count(h: Harness) -> None:
    req = created(h)
    assert h.approve("bob", req).status_code == 201
    _insert_approval(h, req, "carol", _forged_approval(h, req, "carol"))
    before = mint_signatures()
    assert _authorize(h, req) is None
    shown = h.client.get(f"/v1/mint-requests/{req['id']}").get_json()
    assert shown["status"] == "pending" and shown["authorization"] is None
    assert mint_signatures() == before
    # control: the same row carrying carol's genuine signature does count, so the refusal above was the forgery's
    from appliance.store.tables import mint_approvals
    with h.app_ctx.db.engine.begin() as conn:
        conn.execute(mint_approvals.update().where(mint_approvals.c.operator == "carol")
                     .values(jws=h.approval("carol", req)))
    assert _authorize(h, req) is not None
    assert mint_signatures() == before + 1


def test_a_verified_approval_whose_stored_signature_is_then_altered_no_longer_counts(h: Harness) -> None:
    """Verified signatures are remembered per exact token text: an edited row is verified again, and fails."""
    from appliance.store.tables import mint_approvals
    req = created(h)
    assert h.approve("bob", req).status_code == 201
    assert h.client.get(f"/v1/mint-requests/{req['id']}").get_json()["quorum"]["met"] is False  # bob verified
    with h.app_ctx.db.engine.begin() as conn:
        token = conn.execute(mint_approvals.select().where(mint_approvals.c.operator == "bob")).one().jws
        head, body, sig = token.split(".")
        flipped = sig[:10] + ("A" if sig[10] != "A" else "B") + sig[11:]
        conn.execute(mint_approvals.update().where(mint_approvals.c.operator == "bob")
                     .values(jws=f"{head}.{body}.{flipped}"))
    _insert_approval(h, req, "carol", h.approval("carol", req))
    before = mint_signatures()
    assert _authorize(h, req) is None  # bob's altered row no longer verifies: only carol counts
    assert mint_signatures() == before
    with h.app_ctx.db.engine.begin() as conn:  # control: bob's genuine token restored, the quorum is met
        conn.execute(mint_approvals.update().where(mint_approvals.c.operator == "bob").values(jws=token))
    assert _authorize(h, req) is not None
    assert mint_signatures() == before + 1


def test_another_officers_approval_copied_under_a_new_name_counts_once(h: Harness) -> None:
    req = created(h)
    bobs = h.approval("bob", req)
    assert h.client.post(f"/v1/mint-requests/{req['id']}/approvals", json={"jws": bobs}).status_code == 201
    _insert_approval(h, req, "carol", bobs)  # the columns say carol; the signature is bob's
    assert _authorize(h, req) is None
    assert h.client.get(f"/v1/mint-requests/{req['id']}").get_json()["status"] == "pending"


def test_a_request_edited_in_the_database_is_refused_at_signing(h: Harness) -> None:
    from appliance.store.tables import mint_requests
    req = created(h)
    assert h.approve("bob", req).status_code == 201
    with h.app_ctx.db.engine.begin() as conn:  # pretend dave asked (his name on a request alice signed)
        conn.execute(mint_requests.update().where(mint_requests.c.id == req["id"]).values(requester="dave"))
    before = mint_signatures()
    response = h.approve("carol", req)
    assert response.status_code == 422, response.get_json()
    assert "does not match its requester's signed JWS" in json.dumps(response.get_json())
    assert mint_signatures() == before
    again = h.client.get(f"/v1/mint-requests/{req['id']}/authorization")  # asking again re-evaluates: refused
    assert again.status_code == 422 and "does not match its requester's signed JWS" in json.dumps(again.get_json())
    assert mint_signatures() == before


def _audit_size(h: Harness) -> int:
    from appliance.services.audit import AuditLog

    return AuditLog(h.app_ctx).head().size


def test_polling_the_authorization_writes_nothing_until_it_can_be_signed(h: Harness) -> None:
    from appliance.store.tables import mint_requests

    req = created(h)
    url = f"/v1/mint-requests/{req['id']}/authorization"
    size = _audit_size(h)
    for _ in range(5):
        assert h.client.get(url).status_code == 409  # quorum not met: a read, no write
    assert _audit_size(h) == size
    h.approve("bob", req)
    with h.app_ctx.db.engine.begin() as conn:  # make signing refused (quorum met, request no longer authentic)
        conn.execute(mint_requests.update().where(mint_requests.c.id == req["id"]).values(requester="dave"))
    assert h.approve("carol", req).status_code == 422  # refused, and audited once
    size = _audit_size(h)
    for _ in range(5):
        assert h.client.get(url).status_code == 422
    assert _audit_size(h) == size  # polling a refused request does not grow the log


def test_a_stale_reservation_is_voided_when_its_quorum_no_longer_holds(h: Harness) -> None:
    from tests.integration.test_policy_changes import enact, tables

    req = stale_reservation(h)
    policy, operators = tables(h)
    for op in operators["operators"]:
        if op["name"] == "carol":  # carol's key is suspected compromised
            op["enabled"] = False
    enact(h, policy, operators)
    h.clock.advance(31)
    before = mint_signatures()
    response = h.client.get(f"/v1/mint-requests/{req['id']}/authorization")
    assert response.status_code == 422 and "voided" in response.get_json()["detail"]
    assert mint_signatures() == before
    assert ("mint.authorization.voided", req["id"]) in _audit_actions(h)
    assert h.client.get(f"/v1/mint-requests/{req['id']}").get_json()["authorization"] is None


def test_a_late_original_signer_does_not_replace_or_re_audit_the_stored_signature(h: Harness) -> None:
    from appliance.services.mint import MintService

    req = stale_reservation(h)
    h.clock.advance(31)
    recovered = h.client.get(f"/v1/mint-requests/{req['id']}/authorization").get_json()
    signed = metric("appliance_mint_authorizations_total", outcome="signed")
    late = MintService(h.app_ctx)._sign(req["id"])  # noqa: SLF001 - the original thread finishing after 30 s
    assert late == recovered
    assert metric("appliance_mint_authorizations_total", outcome="signed") == signed
    assert [a for a, subject in _audit_actions(h) if subject == req["id"]].count("mint.authorization.signed") == 1


def test_recovery_after_the_approvals_ttl_still_signs_the_reservation(h: Harness) -> None:
    """The quorum is re-checked as it stood when the reservation was made: an outage longer than the approval
    TTL does not void it (the approvals were fresh when the nonce was reserved)."""
    req = stale_reservation(h)
    h.clock.advance(3600 + 60)  # past approval_ttl_seconds, within the authorization's validity window
    before = mint_signatures()
    authz = h.client.get(f"/v1/mint-requests/{req['id']}/authorization")
    assert authz.status_code == 200, authz.get_json()
    assert mint_signatures() - before == 1


def test_a_reservation_past_its_validity_window_is_voided(h: Harness) -> None:
    req = stale_reservation(h)
    h.clock.advance(2 * 86400)
    response = h.client.get(f"/v1/mint-requests/{req['id']}/authorization")
    assert response.status_code == 422 and "validity window" in json.dumps(response.get_json())
