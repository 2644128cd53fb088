"""The policy history, verified from its trust anchor: pure, shared by the service and an officer's workstation.

A history is the list of activated bundles in activation order. It is genuine when the first bundle hashes to
the anchor (the hash pinned in the HSM token at `init`, and in each officer's client configuration), and each
later bundle is exactly what an enabled security admin of the previous bundle signed as a proposal on that
previous bundle (its `base`), approved by a quorum of the previous bundle's governance, counting only vote JWS
that verify under the previous bundle's keys and name this proposal and its hash, with no verifying rejection.

Nothing here trusts a stored id, status or count: every fact comes from a signature or from a hash. The service
checks the history it reads from its database (`services/policy.py`); `appliance policy ...` and
`appliance mint approve` check the history the service sends them (`GET /v1/policy/history`), so that even a
compromised appliance host cannot make an officer sign under a policy the anchored quorum never approved.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from appliance.domain import jose
from appliance.domain.messages import TYP_POLICY_APPROVAL, TYP_POLICY_PROPOSAL
from appliance.domain.policy import (
    POLICY_PROPOSER_ROLE,
    PolicyBundle,
    parse_operators,
    parse_policy,
    unreachable_governance,
)
from appliance.domain.signed import OPERATOR_ALGS, by_security_key, verify_stored
from appliance.errors import ApplianceError, InvalidInput, Problem


def checked(bundle: PolicyBundle) -> PolicyBundle:
    """The bundle, once every operator key is a valid Ed25519 or P-256 public JWK and its own operators can meet
    its governance quorum (InvalidInput listing every problem otherwise)."""
    problems = []
    for op in bundle.operators:
        where = f"operators.toml: {op.name}.jwk"
        try:
            jose.public_key_from_jwk(dict(op.jwk), where)
            if jose.jwk_alg(dict(op.jwk)) not in OPERATOR_ALGS:
                problems.append(Problem(where, "operator keys are Ed25519 or P-256"))
        except InvalidInput as exc:
            problems.extend(exc.problems or [Problem(where, exc.detail)])
    if problems:
        raise InvalidInput("operator keys are not valid", problems)
    unreachable = unreachable_governance(bundle)
    if unreachable:
        raise InvalidInput("the operators could never meet the governance quorum: the policy would be locked",
                           unreachable)
    return bundle


def proposed_bundle(payload: Mapping[str, Any], current: PolicyBundle) -> PolicyBundle:
    """The bundle a proposal payload gives: its policy (policy.toml as a table) and operators (operators.toml,
    or null to keep `current`'s). InvalidInput otherwise."""
    policy_data, operators_data = payload.get("policy"), payload.get("operators")
    if not isinstance(policy_data, dict):
        raise InvalidInput("jws.payload.policy must be the policy.toml table")
    if operators_data is not None and not isinstance(operators_data, dict):
        raise InvalidInput("jws.payload.operators must be the operators.toml table or null")
    operators = current.operators if operators_data is None else parse_operators(operators_data)
    return checked(PolicyBundle(parse_policy(policy_data), operators))


def vouched_proposal(proposal_jws: str | None, bundle_hash: str, base_hash: str,
                     base: PolicyBundle) -> dict[str, Any] | str:
    """The payload of a stored proposal if its proposer signed exactly it: the proposal JWS verifies under
    `base`'s keys, by an enabled security admin, names `base_hash` as its base, and its policy and operators give
    `bundle_hash`. Otherwise the reason (a str). Whoever writes the database cannot make a proposer's signature
    name another bundle, and a proposal built on an older bundle never undoes a newer one."""
    verified = verify_stored(proposal_jws or "", base, TYP_POLICY_PROPOSAL)
    if verified is None:
        return "the stored proposal does not verify as signed by an operator of the bundle it changes"
    operator, payload = verified
    if not operator.enabled or POLICY_PROPOSER_ROLE not in operator.roles:
        return f"{operator.name} may not propose policy changes"
    if payload.get("base") != base_hash:
        return f"it was proposed on bundle {payload.get('base')}, not on the active bundle {base_hash}"
    try:
        proposed = proposed_bundle(payload, base)
    except ApplianceError:
        return "the signed proposal does not give a valid bundle"
    if proposed.hash != bundle_hash or isinstance(payload.get("iat"), bool) or not isinstance(payload.get("iat"), int):
        return "the stored bundle is not the one its proposer signed"
    return payload


def tally(proposal_id: str, bundle_hash: str, proposal_jws: str | None, votes: Sequence[str],
          governing: PolicyBundle) -> tuple[set[str], set[str]]:
    """(approvers, rejecters) of a proposal among `governing`'s enabled eligible operators, counting only vote
    JWS that verify under `governing`'s keys and name this proposal and its hash. The proposer's own vote counts
    only when the governance says so (`proposer_counts`); with `hardware_keys_only`, only votes made with a
    security key approve (a rejection by any enrolled key still counts: refusing is fail-safe)."""
    governance = governing.policy.governance
    eligible_roles = set(governance.eligible_roles)
    proposer = verify_stored(proposal_jws or "", governing, TYP_POLICY_PROPOSAL)
    excluded = None if governance.proposer_counts or proposer is None else proposer[0].name
    approvers: set[str] = set()
    rejecters: set[str] = set()
    for vote in votes:
        verified = verify_stored(vote, governing, TYP_POLICY_APPROVAL)
        if verified is None:
            continue
        operator, payload = verified
        if (not operator.enabled or not operator.roles & eligible_roles or operator.name == excluded
                or payload.get("proposal") != proposal_id or payload.get("hash") != bundle_hash
                or (governance.hardware_keys_only and not by_security_key(vote)
                    and payload.get("decision") == "approve")):
            continue
        if payload.get("decision") == "approve":
            approvers.add(operator.name)
        elif payload.get("decision") == "reject":
            rejecters.add(operator.name)
    return approvers, rejecters


@dataclass(frozen=True)
class Activation:
    """One activated bundle as stored or served: its activation seq, proposal id, recorded hash, the bundle,
    the proposer's JWS (None for the first, pinned at init) and every vote JWS recorded for it."""

    seq: int
    id: str
    hash: str
    bundle: PolicyBundle
    proposal_jws: str | None
    votes: tuple[str, ...]


class HistoryBroken(ValueError):
    """The history does not descend from the anchor; the message says where and why."""


def verify_history(anchor: str, history: Sequence[Activation]) -> PolicyBundle:
    """The bundle in force at the end of `history`, once every activation is shown to descend from `anchor` (see
    the module); HistoryBroken naming the first activation that does not."""
    if not history:
        raise HistoryBroken("the history holds no activated policy bundle")
    if history[0].seq != 1 or history[0].bundle.hash != anchor:
        raise HistoryBroken(f"the first policy bundle is not the pinned trust anchor {anchor}")
    for i, step in enumerate(history):
        if step.seq != i + 1 or step.bundle.hash != step.hash:
            raise HistoryBroken(f"policy bundle {step.hash} was altered or its activation reordered")
        if i == 0:
            continue
        previous = history[i - 1]
        fault = vouched_proposal(step.proposal_jws, step.hash, previous.hash, previous.bundle)
        if isinstance(fault, str):
            raise HistoryBroken(f"policy bundle {step.hash}: {fault}")
        approvers, rejecters = tally(step.id, step.hash, step.proposal_jws, step.votes, previous.bundle)
        if rejecters or len(approvers) < previous.bundle.policy.governance.approvals:
            raise HistoryBroken(f"policy bundle {step.hash} lacks a verifying quorum of the previous bundle's "
                                "security admins")
    return history[-1].bundle


def summary(history: Sequence[Activation]) -> list[dict[str, Any]]:
    """Who proposed and who approved each activation of a history that `verify_history` accepted (the proposer is
    whom the proposal JWS verifies as; the approvers are the verifying votes that counted)."""
    steps = [{"seq": history[0].seq, "hash": history[0].hash, "proposer": "init", "approvers": []}] if history else []
    for previous, step in zip(history, history[1:], strict=False):
        signed = verify_stored(step.proposal_jws or "", previous.bundle, TYP_POLICY_PROPOSAL)
        approvers, _ = tally(step.id, step.hash, step.proposal_jws, step.votes, previous.bundle)
        steps.append({"seq": step.seq, "hash": step.hash, "proposer": signed[0].name if signed else "?",
                      "approvers": sorted(approvers)})
    return steps


def parse_served(data: Any) -> list[Activation]:
    """The activations of a `GET /v1/policy/history` body (HistoryBroken when it is not one)."""
    items = data.get("activations") if isinstance(data, Mapping) else None
    if not isinstance(items, list):
        raise HistoryBroken("the served policy history is not an object with an `activations` list")
    history = []
    for item in items:
        try:
            votes = item["votes"]
            if not isinstance(votes, list) or not all(isinstance(v, str) for v in votes):
                raise TypeError("votes")
            proposal = item["proposal_jws"]
            if proposal is not None and not isinstance(proposal, str):
                raise TypeError("proposal_jws")
            seq, ident, digest = item["seq"], item["id"], item["hash"]
            if not isinstance(seq, int) or not isinstance(ident, str) or not isinstance(digest, str):
                raise TypeError("seq, id, hash")
            history.append(Activation(seq, ident, digest, PolicyBundle.from_json(item["bundle"]), proposal,
                                      tuple(votes)))
        except (KeyError, TypeError, ApplianceError) as exc:
            raise HistoryBroken(f"activation {len(history) + 1} of the served policy history is malformed") from exc
    return history


def check_served(policy: Mapping[str, Any], history: Any, anchor: str) -> dict[str, Any]:
    """On an officer's machine: the service's `GET /v1/policy` body, once its active bundle is shown to be the
    head of the served history and that history to descend from the officer's own pinned `anchor`. Its active
    bundle is replaced by the verified one (so nothing unverified is shown or signed under); HistoryBroken
    otherwise. A compromised appliance host can withhold activations, but cannot make an officer sign under a
    bundle the anchored quorum never approved."""
    activations = parse_served(history)
    bundle = verify_history(anchor, activations)
    active = policy.get("active") if isinstance(policy, Mapping) else None
    if not isinstance(active, Mapping):
        raise HistoryBroken("the served policy has no active bundle")
    try:
        shown = PolicyBundle.from_json(active.get("bundle")).hash
    except ApplianceError as exc:
        raise HistoryBroken("the served active bundle is malformed") from exc
    if not active.get("hash") == shown == bundle.hash or active.get("activated_seq") != len(activations):
        raise HistoryBroken("the active bundle the service shows is not the head of its verified history")
    return {**policy, "active": {**active, "bundle": bundle.to_json()}}
