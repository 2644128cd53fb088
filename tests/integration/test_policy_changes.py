"""Policy and operator changes take effect only under a quorum of the current security admins."""

from __future__ import annotations

import copy
import tomllib
from typing import Any

import pytest
import tomli_w

from appliance.services import auth
from tests.helpers import Harness


def current(h: Harness) -> dict[str, Any]:
    return h.client.get("/v1/policy").get_json()  # type: ignore[no-any-return]


def tables(h: Harness) -> tuple[dict[str, Any], dict[str, Any]]:
    bundle = current(h)["active"]["bundle"]
    return copy.deepcopy(bundle["policy"]), copy.deepcopy(bundle["operators"])


def propose(h: Harness, policy: dict[str, Any], operators: dict[str, Any] | None, by: str = "erin") -> Any:
    jws = h.jws(by, auth.TYP_POLICY_PROPOSAL, {"policy": policy, "operators": operators,
                                               "base": current(h)["active"]["hash"]})
    return h.client.post("/v1/policy/proposals", json={"jws": jws})


def vote(h: Harness, proposal: dict[str, Any], by: str, decision: str = "approve") -> Any:
    jws = h.jws(by, auth.TYP_POLICY_APPROVAL, {"proposal": proposal["id"], "hash": proposal["hash"],
                                               "decision": decision})
    return h.client.post(f"/v1/policy/proposals/{proposal['id']}/approvals", json={"jws": jws})


def enact(h: Harness, policy: dict[str, Any], operators: dict[str, Any] | None = None) -> str:
    proposal = propose(h, policy, operators).get_json()
    assert vote(h, proposal, "erin").get_json()["status"] == "proposed"
    assert vote(h, proposal, "frank").get_json()["status"] == "active"
    return str(proposal["hash"])


def test_a_change_needs_the_governance_quorum(h: Harness) -> None:
    before = current(h)["active"]["hash"]
    policy, _ = tables(h)
    policy["mint"]["max_per_request"] = "1"
    proposal = propose(h, policy, None)
    assert proposal.status_code == 201
    proposal = proposal.get_json()
    assert vote(h, proposal, "erin").get_json()["status"] == "proposed"
    assert current(h)["active"]["hash"] == before  # one admin is not a quorum
    assert vote(h, proposal, "erin").status_code == 409  # and cannot vote twice
    assert h.request(amount="2").status_code == 201  # the old maximum still applies
    assert vote(h, proposal, "frank").get_json()["status"] == "active"
    assert current(h)["active"]["hash"] == proposal["hash"]
    assert h.request(amount="2").status_code == 422


def test_only_security_admins_propose_and_approve(h: Harness) -> None:
    policy, _ = tables(h)
    policy["name"] = "by a treasurer"
    assert propose(h, policy, None, by="bob").status_code == 403
    proposal = propose(h, policy, None).get_json()
    assert vote(h, proposal, "dave").status_code == 403
    assert vote(h, {"id": proposal["id"], "hash": "0" * 64}, "frank").status_code == 422


def test_a_rejection_by_an_admin_ends_the_proposal(h: Harness) -> None:
    policy, _ = tables(h)
    policy["name"] = "rejected"
    proposal = propose(h, policy, None).get_json()
    assert vote(h, proposal, "frank", "reject").get_json()["status"] == "rejected"
    assert vote(h, proposal, "erin").status_code == 409
    from appliance.services.audit import AuditLog

    head = AuditLog(h.app_ctx).head().size
    actions = [e["action"] for e in h.client.get(f"/v1/audit/entries?start=0&end={head}").get_json()["entries"]]
    assert "policy.rejected" in actions and not any(a.endswith("rejectd") for a in actions)


def test_editing_the_toml_on_disk_changes_nothing(h: Harness) -> None:
    path = h.directory / "policy.toml"
    data = tomllib.loads(path.read_text())
    data["mint"]["max_per_request"] = "1"
    path.write_text(tomli_w.dumps(data))
    assert h.request(amount="1000").status_code == 201
    from appliance import config
    from appliance.services import setup

    setup.init(config.load(h.directory / "appliance.toml"))  # init again: idempotent, the pinned bundle stays
    assert h.request(amount="1000").status_code == 201


def test_a_threshold_raised_while_pending_applies(h: Harness) -> None:
    req = h.request().get_json()
    assert h.approve("bob", req).status_code == 201
    policy, _ = tables(h)
    for tier in policy["mint"]["tiers"]:
        tier["approvals"] = 3
    enact(h, policy)
    state = h.approve("carol", req).get_json()
    assert state["status"] == "pending" and state["authorization"] is None  # 2 of 3 now
    assert h.approve("dave", req).get_json()["status"] == "authorized"


def test_a_threshold_lowered_while_pending_does_not_loosen_the_request(h: Harness) -> None:
    req = h.request().get_json()
    policy, _ = tables(h)
    policy["mint"]["tiers"][0]["approvals"] = 1
    enact(h, policy)
    shown = h.client.get(f"/v1/mint-requests/{req['id']}").get_json()["required"]
    assert shown["approvals"] == 1 and shown["recorded"]["approvals"] == 2  # both are shown: both must hold
    assert "policy the request was made under" in shown["text"]
    state = h.approve("bob", req).get_json()
    assert state["status"] == "pending"  # the request was made under "2 approvals"
    assert h.approve("carol", req).get_json()["status"] == "authorized"


def test_an_operator_disabled_after_approving_no_longer_counts(h: Harness) -> None:
    req = h.request().get_json()
    assert h.approve("bob", req).status_code == 201
    policy, operators = tables(h)
    for op in operators["operators"]:
        if op["name"] == "bob":
            op["enabled"] = False
    enact(h, policy, operators)
    state = h.approve("carol", req).get_json()
    assert state["status"] == "pending"
    assert ["bob", "operator disabled"] in state["quorum"]["ignored"]
    assert h.approve("dave", req).get_json()["status"] == "authorized"
    assert h.request(name="bob").status_code == 403  # and bob can no longer request


def test_policy_changes_are_audited(h: Harness) -> None:
    policy, _ = tables(h)
    policy["name"] = "audited"
    digest = enact(h, policy)
    from appliance.services.audit import AuditLog

    head = AuditLog(h.app_ctx).head().size
    entries = h.client.get(f"/v1/audit/entries?start=0&end={head}").get_json()["entries"]
    actions = [(e["action"], e["subject"]) for e in entries]
    assert ("policy.proposed", digest) in actions
    assert ("policy.approved", digest) in actions
    assert ("policy.activated", digest) in actions


# -- someone holding the database, but no security admin's key, cannot change the policy --------------------------

def _install(h: Harness, policy: dict[str, Any], operators: dict[str, Any], voters: list[str]) -> None:
    """Write a bundle straight into the database as the active one, with genuine approvals by `voters`."""
    import uuid

    from sqlalchemy import func, select, update

    from appliance.domain.canonical import canonical_json
    from appliance.domain.policy import PolicyBundle, parse_operators, parse_policy
    from appliance.store.tables import policy_approvals, policy_bundles
    bundle = PolicyBundle(parse_policy(policy), parse_operators(operators))
    bundle_id = str(uuid.uuid4())
    proposal = h.jws("erin", auth.TYP_POLICY_PROPOSAL, {"policy": policy, "operators": operators,
                                                        "base": current(h)["active"]["hash"]})
    with h.app_ctx.db.engine.begin() as conn:
        seq = conn.execute(select(func.max(policy_bundles.c.activated_seq))).scalar_one() + 1
        conn.execute(update(policy_bundles).where(policy_bundles.c.status == "active").values(status="superseded"))
        conn.execute(policy_bundles.insert().values(
            id=bundle_id, hash=bundle.hash, bundle=canonical_json(bundle.to_json()).decode(), status="active",
            proposed_by="erin", created_at=int(h.clock()), activated_seq=seq, activated_at=int(h.clock()),
            proposal_jws=proposal))
        for name in voters:
            jws = h.jws(name, auth.TYP_POLICY_APPROVAL, {"proposal": bundle_id, "hash": bundle.hash,
                                                         "decision": "approve"})
            conn.execute(policy_approvals.insert().values(
                bundle_id=bundle_id, operator=name, decision="approve", iat=int(h.clock()), jws=jws,
                created_at=int(h.clock())))


def _refuses_to_act(h: Harness) -> None:
    for response in (h.client.get("/v1/policy"), h.client.get("/v1/policy/history"), h.request()):
        assert response.status_code == 503, response.get_json()
        assert response.get_json()["type"].endswith("policy-history-invalid")
        assert response.content_type == "application/problem+json"


def test_a_bundle_written_into_the_database_without_an_admin_quorum_is_refused(h: Harness) -> None:
    policy, operators = tables(h)
    policy["mint"]["tiers"][0]["approvals"] = 1  # what a thief would want: one approval mints
    policy["mint"]["tiers"][1]["approvals"] = 1
    policy["mint"]["tiers"][1]["required"] = {}
    # one genuine admin vote (erin's, for a proposal that never went through the API) is not the quorum of two
    _install(h, policy, operators, ["erin"])
    _refuses_to_act(h)


def test_a_bundle_with_a_full_quorum_of_genuine_votes_is_accepted(h: Harness) -> None:
    # the control for the test above: the same write with both admins' real signatures verifies
    policy, operators = tables(h)
    policy["mint"]["tiers"][0]["approvals"] = 1
    _install(h, policy, operators, ["erin", "frank"])
    assert h.client.get("/v1/policy").status_code == 200
    req = h.request().get_json()
    assert h.approve("bob", req).get_json()["status"] == "authorized"


def test_the_active_bundle_edited_in_place_is_refused(h: Harness) -> None:
    import json

    from sqlalchemy import update

    from appliance.store.tables import policy_bundles
    assert h.client.get("/v1/policy").status_code == 200
    with h.app_ctx.db.engine.begin() as conn:
        row = conn.execute(policy_bundles.select().where(policy_bundles.c.status == "active")).first()
        assert row is not None
        data = json.loads(row.bundle)
        data["policy"]["mint"]["tiers"][0]["approvals"] = 1
        conn.execute(update(policy_bundles).where(policy_bundles.c.id == row.id).values(bundle=json.dumps(data)))
    _refuses_to_act(h)


def test_a_first_bundle_replaced_with_its_hash_is_refused(h: Harness) -> None:
    # rewriting the text and the hash column together still fails: the HSM token pins the first hash
    from sqlalchemy import update

    from appliance.domain.canonical import canonical_json
    from appliance.domain.policy import PolicyBundle, parse_operators, parse_policy
    from appliance.store.tables import policy_bundles
    policy, operators = tables(h)
    policy["mint"]["tiers"][0]["approvals"] = 1
    forged = PolicyBundle(parse_policy(policy), parse_operators(operators))
    with h.app_ctx.db.engine.begin() as conn:
        conn.execute(update(policy_bundles).where(policy_bundles.c.activated_seq == 1).values(
            hash=forged.hash, bundle=canonical_json(forged.to_json()).decode()))
    _refuses_to_act(h)


def test_the_anchor_is_in_the_token_and_another_database_cannot_claim_it(env: Any, tmp_path: Any) -> None:
    import pytest

    from appliance import config
    from appliance.errors import ConfigError
    from appliance.services import context, setup
    from appliance.services.policy import PolicyService
    from tests.conftest import write_env

    settings = config.load(env.config)
    app = context.build(settings)
    try:
        with app.db.read() as conn:
            active = PolicyService(app).active(conn)
        assert PolicyService(app).anchor() == active.hash  # init wrote the first bundle's hash into the token
    finally:
        app.hsm.close()
        app.db.dispose()
    # a second deployment (new database, other policy) told to use the same anchor label is refused at init
    other = write_env(tmp_path / "other")
    text = other.config.read_text()
    mine = tomllib.loads(text)["keys"]["policy_anchor"]
    other.config.write_text(text.replace(mine, settings.hsm.policy_anchor))
    with pytest.raises(ConfigError, match="wrong database or token"):
        setup.init(config.load(other.config))


def test_a_vote_signed_with_a_since_rotated_key_does_not_count(h: Harness) -> None:
    """erin votes on P2, then erin's key is rotated by another bundle: P2 must not activate on that stale vote
    (it would not verify in the history check, and every later read would be refused). P2 names the bundle it
    was built on, so once the rotation lands it is stale and no vote on it is taken at all."""
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from appliance.operator import SoftwareSigner

    policy, operators = tables(h)
    policy["name"] = "p2"
    p2 = propose(h, policy, None).get_json()
    assert vote(h, p2, "erin").get_json()["status"] == "proposed"
    new_erin = SoftwareSigner.for_key(ed25519.Ed25519PrivateKey.generate())
    rotated = copy.deepcopy(operators)
    entries = rotated["operators"] if isinstance(rotated, dict) else rotated
    for op in entries:
        if op["name"] == "erin":
            op["jwk"] = new_erin.public_jwk()
    policy2, _ = tables(h)
    policy2["name"] = "rotation"
    enact(h, policy2, rotated)
    h.signers["erin"] = new_erin
    stale = vote(h, p2, "frank")  # P2 was built on the bundle the rotation replaced: it can no longer land
    assert stale.status_code == 409 and "cannot be approved" in stale.get_json()["detail"]
    assert h.client.get("/v1/policy").status_code == 200
    assert current(h)["active"]["bundle"]["policy"]["name"] == "rotation"
    assert h.request(amount="1000").status_code == 201


def test_a_proposal_that_would_lock_out_governance_is_refused(h: Harness) -> None:
    policy, operators = tables(h)
    policy["governance"]["approvals"] = 99
    response = propose(h, policy, None)
    assert response.status_code == 400
    assert any(p["location"] == "policy.governance.approvals" for p in response.get_json()["errors"])
    entries = operators["operators"] if isinstance(operators, dict) else operators
    for op in entries:
        if "security-admin" in op["roles"]:
            op["enabled"] = False
    assert propose(h, tables(h)[0], operators).status_code == 400


def test_disabling_an_officer_stays_possible_and_warns_of_an_unreachable_tier(h: Harness) -> None:
    policy, operators = tables(h)
    for op in operators["operators"]:
        if op["name"] == "bob":  # alice, carol and dave remain: 3-approval mints cannot be approved
            op["enabled"] = False
    response = propose(h, policy, operators)
    assert response.status_code == 201
    assert any("tiers[1].approvals" in w for w in response.get_json()["warnings"])


def test_the_served_history_verifies_on_a_client_from_the_anchor_in_the_token(h: Harness) -> None:
    """What `GET /v1/policy/history` serves is enough for an officer's machine to verify the active bundle from
    the first bundle's hash alone (the pure verifier the CLI runs), including votes by the proposer."""
    from appliance.domain import policy_history

    policy, _ = tables(h)
    policy["name"] = "second"
    second = enact(h, policy)
    policy["name"] = "third"
    third = enact(h, policy)
    served = h.client.get("/v1/policy/history")
    assert served.status_code == 200
    body = served.get_json()
    anchor = h.app_ctx.token.anchor()
    assert body["anchor"] == anchor and body["head"] == {"seq": 3, "hash": third}
    assert [a["hash"] for a in body["activations"]][1:] == [second, third]
    checked = policy_history.check_served(current(h), body, str(anchor))
    assert checked["active"]["hash"] == third
    with pytest.raises(policy_history.HistoryBroken):
        policy_history.check_served(current(h), {**body, "activations": body["activations"][:2]}, str(anchor))
