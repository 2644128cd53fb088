"""The policy history verified from its trust anchor (pure): what the service checks against the HSM's anchor and
what an officer's workstation checks against the anchor pinned in its own configuration."""

from __future__ import annotations

import copy
import json
import secrets
from dataclasses import replace
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.domain import jose
from appliance.domain.messages import TYP_POLICY_APPROVAL, TYP_POLICY_PROPOSAL, dumps
from appliance.domain.policy import PolicyBundle, parse_operators, parse_policy
from appliance.domain.policy_history import (
    Activation,
    HistoryBroken,
    check_served,
    parse_served,
    summary,
    verify_history,
)
from tests.unit.test_policy import operators_dict, policy_dict

# Deterministic Ed25519 keys for the history's operators, used nowhere else.
_KEYS = {name: ed25519.Ed25519PrivateKey.from_private_bytes(bytes([40 + i]) * 32)
         for i, name in enumerate(("alice", "bob", "carol", "dave", "erin", "frank", "grace", "hank", "mallory"))}


def _operators(extra: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    ops = copy.deepcopy(operators_dict())
    for op in ops["operators"]:
        op["jwk"] = jose.public_jwk(_KEYS[op["name"]].public_key())
    ops["operators"].extend(extra or [])
    return ops


def _sign(name: str, typ: str, payload: dict[str, Any]) -> str:
    key = _KEYS[name]
    header = {"alg": "EdDSA", "kid": jose.thumbprint(jose.public_jwk(key.public_key())), "typ": typ}
    body = {**payload, "iat": 1_800_000_000, "jti": secrets.token_urlsafe(18)}
    return jose.sign_compact(header, dumps(body), lambda m: jose.software_sign(key, "EdDSA", m))


def first() -> Activation:
    bundle = PolicyBundle(parse_policy(policy_dict()), parse_operators(_operators()))
    return Activation(1, "init", bundle.hash, bundle, None, ())


def successor(previous: Activation, name: str, operators: dict[str, Any] | None = None,
              voters: tuple[str, ...] = ("erin", "frank"), proposer: str = "erin") -> Activation:
    """The activation a genuine proposal by `proposer` on `previous`, approved by `voters`, gives."""
    policy = policy_dict()
    policy["name"] = name
    bundle = PolicyBundle(parse_policy(policy), previous.bundle.operators if operators is None
                          else parse_operators(operators))
    ident = f"proposal-{name}"
    proposal = _sign(proposer, TYP_POLICY_PROPOSAL, {"policy": policy, "operators": operators, "base": previous.hash})
    votes = tuple(_sign(v, TYP_POLICY_APPROVAL, {"proposal": ident, "hash": bundle.hash, "decision": "approve"})
                  for v in voters)
    return Activation(previous.seq + 1, ident, bundle.hash, bundle, proposal, votes)


def chain(length: int) -> list[Activation]:
    history = [first()]
    for i in range(1, length):
        history.append(successor(history[-1], f"change {i}"))
    return history


def test_a_genuine_history_verifies_to_its_last_bundle() -> None:
    history = chain(4)
    assert verify_history(history[0].hash, history) == history[-1].bundle


def test_another_anchor_refuses_even_a_genuine_history() -> None:
    other = successor(first(), "elsewhere")
    with pytest.raises(HistoryBroken, match="trust anchor"):
        verify_history(other.hash, chain(2))


def test_an_empty_history_is_refused() -> None:
    with pytest.raises(HistoryBroken, match="no activated"):
        verify_history(first().hash, [])


def test_a_bundle_not_signed_by_its_proposer_is_refused() -> None:
    """T1 or a host swaps in a bundle with the attacker's key enrolled: the proposer signed another one."""
    history = chain(2)
    mallory = {"name": "mallory", "roles": ["treasury", "cfo"], "jwk": jose.public_jwk(_KEYS["mallory"].public_key())}
    forged = PolicyBundle(history[1].bundle.policy, parse_operators(_operators([mallory])))
    history[1] = replace(history[1], bundle=forged, hash=forged.hash)
    with pytest.raises(HistoryBroken, match="not the one its proposer signed"):
        verify_history(history[0].hash, history)


def test_a_proposal_by_someone_who_is_not_a_security_admin_is_refused() -> None:
    history = [first()]
    history.append(successor(history[0], "by a treasurer", proposer="alice"))
    with pytest.raises(HistoryBroken, match="may not propose"):
        verify_history(history[0].hash, history)


def test_too_few_votes_are_refused() -> None:
    history = [first()]
    history.append(successor(history[0], "one vote", voters=("erin",)))
    with pytest.raises(HistoryBroken, match="quorum"):
        verify_history(history[0].hash, history)


def test_votes_by_non_admins_duplicates_and_forgeries_do_not_count() -> None:
    genuine = successor(first(), "padded", voters=("erin",))
    wrong_hash = _sign("frank", TYP_POLICY_APPROVAL, {"proposal": genuine.id, "hash": "0" * 64, "decision": "approve"})
    other_proposal = _sign("frank", TYP_POLICY_APPROVAL, {"proposal": "x", "hash": genuine.hash,
                                                          "decision": "approve"})
    as_proposal = _sign("frank", TYP_POLICY_PROPOSAL, {"proposal": genuine.id, "hash": genuine.hash,
                                                       "decision": "approve"})
    by_treasurer = _sign("alice", TYP_POLICY_APPROVAL, {"proposal": genuine.id, "hash": genuine.hash,
                                                        "decision": "approve"})
    by_outsider = _sign("mallory", TYP_POLICY_APPROVAL, {"proposal": genuine.id, "hash": genuine.hash,
                                                         "decision": "approve"})
    padded = replace(genuine, votes=(*genuine.votes, genuine.votes[0], wrong_hash, other_proposal, as_proposal,
                                     by_treasurer, by_outsider, "not.a.jws"))
    with pytest.raises(HistoryBroken, match="quorum"):
        verify_history(first().hash, [first(), padded])


def test_a_verifying_rejection_voids_the_activation() -> None:
    base = first()
    genuine = successor(base, "rejected")
    rejection = _sign("frank", TYP_POLICY_APPROVAL, {"proposal": genuine.id, "hash": genuine.hash,
                                                     "decision": "reject"})
    with pytest.raises(HistoryBroken, match="quorum"):
        verify_history(base.hash, [base, replace(genuine, votes=(genuine.votes[0], rejection))])


def test_a_proposal_built_on_an_older_bundle_is_refused() -> None:
    """Replaying an approved proposal on the bundle before undoes what changed since: refused."""
    history = chain(2)
    stale = successor(history[0], "stale")
    history.append(replace(stale, seq=3))
    with pytest.raises(HistoryBroken, match="proposed on bundle"):
        verify_history(history[0].hash, history)


@pytest.mark.parametrize("edit", ["drop middle", "swap", "renumber"])
def test_reordered_or_truncated_histories_are_refused(edit: str) -> None:
    history = chain(4)
    if edit == "drop middle":
        del history[1]
    elif edit == "swap":
        history[1], history[2] = history[2], history[1]
    else:
        history[2] = replace(history[2], seq=7)
    with pytest.raises(HistoryBroken):
        verify_history(history[0].hash, history)


@settings(max_examples=60, deadline=None)
@given(length=st.integers(1, 4), data=st.data())
def test_any_single_change_to_a_served_history_is_refused_or_changes_nothing(length: int, data: Any) -> None:
    """Flip one member of one activation as served on the wire: the verifier refuses, or returns the same head
    bundle (only for the first bundle's id, votes or proposal, which nothing but the anchor vouches for). It never
    returns another bundle."""
    history = chain(length)
    served = {"activations": [{"seq": a.seq, "id": a.id, "hash": a.hash, "bundle": a.bundle.to_json(),
                               "proposal_jws": a.proposal_jws, "votes": list(a.votes)} for a in history]}
    i = data.draw(st.integers(0, length - 1))
    member = data.draw(st.sampled_from(["seq", "id", "hash", "bundle", "proposal_jws", "votes"]))
    item = served["activations"][i]
    if member == "seq":
        item["seq"] += data.draw(st.sampled_from([-1, 1, 5]))
    elif member == "id":
        item["id"] += "x"
    elif member == "hash":
        item["hash"] = "f" * 64
    elif member == "bundle":
        item["bundle"]["policy"]["name"] = "edited"
    elif member == "proposal_jws":
        item["proposal_jws"] = None if item["proposal_jws"] else _sign("erin", TYP_POLICY_PROPOSAL, {})
    else:
        item["votes"] = item["votes"][:1]
    try:
        head = verify_history(history[0].hash, parse_served(json.loads(json.dumps(served))))
    except HistoryBroken:
        return
    assert head == history[-1].bundle
    assert i == 0 and member in {"id", "votes", "proposal_jws"}  # the first bundle is judged by the anchor alone


def _served(history: list[Activation]) -> tuple[dict[str, Any], dict[str, Any]]:
    head = history[-1]
    policy = {"active": {"id": head.id, "hash": head.hash, "activated_seq": head.seq, "bundle": head.bundle.to_json()},
              "proposals": []}
    return policy, {"activations": [{"seq": a.seq, "id": a.id, "hash": a.hash, "bundle": a.bundle.to_json(),
                                     "proposal_jws": a.proposal_jws, "votes": list(a.votes)} for a in history]}


def test_a_client_accepts_the_served_policy_that_heads_a_verified_history() -> None:
    history = chain(3)
    policy, served = _served(history)
    checked = check_served(policy, served, history[0].hash)
    assert checked["active"]["bundle"] == history[-1].bundle.to_json()


def test_a_client_refuses_an_active_bundle_that_is_not_the_history_head() -> None:
    """A compromised host serves a genuine history but shows another bundle (the attacker's key enrolled)."""
    history = chain(2)
    policy, served = _served(history)
    mallory = {"name": "mallory", "roles": ["treasury"], "jwk": jose.public_jwk(_KEYS["mallory"].public_key())}
    forged = PolicyBundle(history[-1].bundle.policy, parse_operators(_operators([mallory])))
    policy["active"].update(bundle=forged.to_json(), hash=forged.hash)
    with pytest.raises(HistoryBroken, match="not the head"):
        check_served(policy, served, history[0].hash)
    policy, served = _served(history)
    policy["active"]["activated_seq"] = 1
    with pytest.raises(HistoryBroken, match="not the head"):
        check_served(policy, served, history[0].hash)


def test_a_client_refuses_a_history_grown_from_another_first_bundle() -> None:
    """A host that rebuilt the whole history from a first bundle of its own (its own admins voting) is caught by
    the pin alone."""
    history = chain(2)
    policy, served = _served(history)
    with pytest.raises(HistoryBroken, match="trust anchor"):
        check_served(policy, served, "a" * 64)


@pytest.mark.parametrize("body", [None, [], {"activations": "x"}, {"activations": [{"seq": 1}]},
                                  {"activations": [{"seq": "1", "id": "i", "hash": "h", "bundle": {},
                                                    "proposal_jws": None, "votes": []}]},
                                  {"activations": [{"seq": 1, "id": "i", "hash": "h", "bundle": {},
                                                    "proposal_jws": 3, "votes": []}]},
                                  {"activations": [{"seq": 1, "id": "i", "hash": "h", "bundle": {},
                                                    "proposal_jws": None, "votes": [1]}]}])
def test_a_malformed_served_history_is_refused_not_crashed_on(body: Any) -> None:
    with pytest.raises(HistoryBroken):
        parse_served(body)


def test_the_summary_names_who_proposed_and_who_approved_each_activation() -> None:
    history = chain(3)
    assert summary(history) == [{"seq": 1, "hash": history[0].hash, "proposer": "init", "approvers": []}] + [
        {"seq": a.seq, "hash": a.hash, "proposer": "erin", "approvers": ["erin", "frank"]} for a in history[1:]]
