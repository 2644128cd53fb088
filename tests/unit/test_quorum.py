"""Quorum evaluation: boundary tables, every reason an approval is ignored, veto, expiry, and a property test
against a brute-force oracle written out plainly below."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from appliance.domain.policy import ROLES, Operator, OperatorSet, Policy, parse_policy
from appliance.domain.quorum import Approval, QuorumResult, RequestFacts, evaluate

NOW = 1_800_000_000
TTL = 3600
SKEW = 300  # how far in the future an approval's iat may be (clock skew between workstations and appliance)
SMALL_UP_TO = 1000
REQUEST_ID = "mr_01"
DIGEST = "0x" + "11" * 32
OTHER_DIGEST = "0x" + "22" * 32
POLICY_HASH = "a" * 64
OTHER_POLICY_HASH = "b" * 64

# The reasons are part of the API (responses, audit entries): spelled out here, not imported.
UNKNOWN = "unknown operator"
DISABLED = "operator disabled"
REQUESTER = "the requester never counts"
NOT_ELIGIBLE = "no role eligible for this tier"
OTHER_REQUEST = "approval for another request"
DIGEST_MISMATCH = "digest mismatch"
POLICY_MISMATCH = "policy hash mismatch"
BAD_DECISION = "unknown decision"
EXPIRED = "approval expired"
FUTURE = "approval from the future"
DUPLICATE = "duplicate (an operator counts once)"
OVERRULED = "the same operator also rejected (the rejection wins)"


def tier(approvals: int, eligible: list[str], required: dict[str, int] | None = None,
         up_to: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"approvals": approvals, "eligible_roles": eligible}
    if required is not None:
        out["required"] = required
    if up_to is not None:
        out["up_to"] = str(up_to)
    return out


def make_policy(tiers: list[dict[str, Any]] | None = None, *, veto: bool = True, ttl: int = TTL) -> Policy:
    """Up to 1000 base units: 2 of treasury/cfo; above: 3 of treasury/cfo including 1 cfo (by default)."""
    if tiers is None:
        tiers = [tier(2, ["treasury", "cfo"], up_to=SMALL_UP_TO), tier(3, ["treasury", "cfo"], {"cfo": 1})]
    return parse_policy({
        "version": 1, "name": "quorum tests",
        "mint": {"max_per_request": str(10**9), "velocity_limit": str(10**9), "velocity_window_seconds": 86400,
                 "request_ttl_seconds": 86400, "approval_ttl_seconds": ttl, "authorization_validity_seconds": 600,
                 "veto_on_reject": veto, "tiers": tiers, "allowlist": []},
        "governance": {"approvals": 2, "eligible_roles": ["security-admin"]},
        "reserve_guard": {"enabled": False},
    })


def make_operators(spec: dict[str, tuple[frozenset[str], bool]]) -> OperatorSet:
    # Quorum never looks at keys (signatures are checked before): a distinct placeholder key per operator.
    return OperatorSet([Operator(name, roles, {"kty": "OKP", "crv": "Ed25519", "x": f"key-of-{name}"}, enabled)
                        for name, (roles, enabled) in spec.items()])


OPERATORS = make_operators({
    "req": (frozenset({"treasury"}), True),             # the requester of REQUEST
    "t1": (frozenset({"treasury"}), True),
    "t2": (frozenset({"treasury"}), True),
    "t3": (frozenset({"treasury"}), True),
    "t4": (frozenset({"treasury"}), True),
    "c1": (frozenset({"cfo"}), True),
    "c2": (frozenset({"cfo"}), True),
    "tc": (frozenset({"treasury", "cfo"}), True),       # one person holding both roles
    "off": (frozenset({"treasury", "cfo"}), False),     # disabled
    "aud": (frozenset({"auditor"}), True),
    "sec": (frozenset({"security-admin"}), True),
})


def request(amount: int = SMALL_UP_TO, *, expires_at: int = NOW + 3600, requester: str = "req") -> RequestFacts:
    return RequestFacts(id=REQUEST_ID, requester=requester, amount=amount, digest=DIGEST, created_at=NOW - 600,
                        expires_at=expires_at, policy_hash=POLICY_HASH)


def approval(operator: str, decision: Literal["approve", "reject"] = "approve", *, request_id: str = REQUEST_ID,
             digest: str = DIGEST, policy_hash: str = POLICY_HASH, iat: int = NOW - 60) -> Approval:
    return Approval(operator=operator, decision=decision, request_id=request_id, digest=digest,
                    policy_hash=policy_hash, iat=iat)


def run(approvals: list[Approval], *, amount: int = SMALL_UP_TO, veto: bool = True, now: int = NOW,
        expires_at: int = NOW + 3600) -> QuorumResult:
    return evaluate(request(amount, expires_at=expires_at), approvals, OPERATORS, make_policy(veto=veto), now)


# -- boundary tables ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("approvers", "met", "missing"), [
    ([], False, ("2 more approvals",)),
    (["t1"], False, ("1 more approval",)),          # threshold - 1
    (["t1", "c1"], True, ()),                           # threshold
    (["t1", "t2", "c1"], True, ()),                     # threshold + 1
])
def test_small_tier_boundaries(approvers: list[str], met: bool, missing: tuple[str, ...]) -> None:
    result = run([approval(name) for name in approvers], amount=SMALL_UP_TO)
    assert (result.met, result.missing) == (met, missing)
    assert result.counted == tuple(sorted(approvers))
    assert not result.vetoed and not result.expired and result.ignored == ()


@pytest.mark.parametrize(("approvers", "met", "missing"), [
    (["t1", "c1"], False, ("1 more approval",)),     # threshold - 1, cfo included
    (["t1", "t2", "c1"], True, ()),                     # threshold
    (["t1", "t2", "t3", "c1"], True, ()),               # threshold + 1
    (["t1", "c1", "c2"], True, ()),
    (["t1", "t2", "t3"], False, ("1 more cfo",)),       # "3 including 1 cfo" with 3 treasury and no cfo
    (["t1", "t2", "t3", "t4"], False, ("1 more cfo",)),
    (["t1", "t2"], False, ("1 more approval", "1 more cfo")),
])
def test_large_tier_boundaries(approvers: list[str], met: bool, missing: tuple[str, ...]) -> None:
    result = run([approval(name) for name in approvers], amount=SMALL_UP_TO + 1)
    assert (result.met, result.missing) == (met, missing)
    assert result.counted == tuple(sorted(approvers))


@pytest.mark.parametrize(("amount", "met"), [(SMALL_UP_TO, True), (SMALL_UP_TO + 1, False)])
def test_the_tier_follows_the_amount(amount: int, met: bool) -> None:
    result = run([approval("t1"), approval("t2")], amount=amount)
    assert result.met is met
    assert result.tier["approvals"] == (2 if met else 3)


# -- one person, one vote, several roles ----------------------------------------------------------------------------

def test_an_operator_with_both_roles_counts_once_and_satisfies_the_cfo_requirement() -> None:
    result = run([approval("tc"), approval("t1"), approval("t2")], amount=SMALL_UP_TO + 1)
    assert result.met and result.counted == ("t1", "t2", "tc")


def test_an_operator_with_both_roles_is_still_one_approval() -> None:
    result = run([approval("tc"), approval("tc", iat=NOW - 10), approval("t1")], amount=SMALL_UP_TO + 1)
    assert not result.met
    assert result.counted == ("t1", "tc")
    assert result.missing == ("1 more approval",)
    assert result.ignored == (("tc", DUPLICATE),)


def test_one_dual_role_operator_can_satisfy_two_role_minimums() -> None:
    policy = make_policy([tier(2, ["treasury", "cfo"], {"treasury": 1, "cfo": 1})])
    ok = evaluate(request(), [approval("tc"), approval("t1")], OPERATORS, policy, NOW)
    assert ok.met
    alone = evaluate(request(), [approval("tc")], OPERATORS, policy, NOW)
    assert not alone.met and alone.missing == ("1 more approval",)


def test_repeated_approvals_by_one_operator_count_once() -> None:
    result = run([approval("t1"), approval("t1", iat=NOW - 5), approval("t1", iat=NOW)])
    assert not result.met and result.counted == ("t1",)
    assert result.ignored == (("t1", DUPLICATE), ("t1", DUPLICATE))


# -- every reason an approval is ignored --------------------------------------------------------------------------

IGNORED_CASES = [
    pytest.param(approval("ghost"), UNKNOWN, id="unknown"),
    pytest.param(approval("off"), DISABLED, id="disabled"),
    pytest.param(approval("req"), REQUESTER, id="requester"),
    pytest.param(approval("aud"), NOT_ELIGIBLE, id="auditor"),
    pytest.param(approval("sec"), NOT_ELIGIBLE, id="security-admin"),
    pytest.param(approval("t2", request_id="mr_02"), OTHER_REQUEST, id="other-request"),
    pytest.param(approval("t2", digest=OTHER_DIGEST), DIGEST_MISMATCH, id="digest"),
    pytest.param(approval("t2", digest=DIGEST.upper()), DIGEST_MISMATCH, id="digest-case"),
    pytest.param(approval("t2", policy_hash=OTHER_POLICY_HASH), POLICY_MISMATCH, id="policy-hash"),
    pytest.param(approval("t2", iat=NOW - TTL - 1), EXPIRED, id="expired"),
    pytest.param(approval("t2", iat=NOW - 10 * TTL), EXPIRED, id="long-expired"),
    pytest.param(approval("t2", iat=NOW + SKEW + 1), FUTURE, id="future"),
    pytest.param(approval("t2", iat=NOW + 10 * TTL), FUTURE, id="far-future"),
    pytest.param(approval("t2", request_id="mr_02", digest=OTHER_DIGEST), OTHER_REQUEST, id="first-reason-only"),
]


@pytest.mark.parametrize(("bad", "reason"), IGNORED_CASES)
def test_each_ignored_approval_is_explained_and_does_not_count(bad: Approval, reason: str) -> None:
    result = run([approval("t1"), bad])
    assert not result.met
    assert result.counted == ("t1",)
    assert result.ignored == ((bad.operator, reason),)
    assert result.missing == ("1 more approval",)


@pytest.mark.parametrize(("bad", "reason"), [c for c in IGNORED_CASES if c.values[1] != EXPIRED])
def test_an_ignored_rejection_does_not_veto(bad: Approval, reason: str) -> None:
    reject = Approval(bad.operator, "reject", bad.request_id, bad.digest, bad.policy_hash, bad.iat)
    result = run([approval("t1"), approval("t3"), reject])
    assert result.met and not result.vetoed and result.rejected_by == ()
    assert result.ignored == ((bad.operator, reason),)


def test_a_rejection_does_not_expire_with_the_approval_ttl() -> None:
    """A veto lasts as long as the request: otherwise waiting out the TTL would undo it."""
    old_reject = approval("t2", "reject", iat=NOW - 10 * TTL)
    result = run([approval("t1"), approval("t3"), old_reject])
    assert result.vetoed and not result.met and result.rejected_by == ("t2",)


def test_a_rejection_from_the_future_is_ignored_like_an_approval() -> None:
    result = run([approval("t1"), approval("t3"), approval("t2", "reject", iat=NOW + SKEW + 1)])
    assert result.met and not result.vetoed and result.ignored == (("t2", FUTURE),)


@pytest.mark.parametrize("decision", ["approved", "APPROVE", "", "abstain"])
def test_an_unknown_decision_never_counts_nor_vetoes(decision: str) -> None:
    odd = Approval("t2", decision, REQUEST_ID, DIGEST, POLICY_HASH, NOW - 60)  # type: ignore[arg-type]
    result = run([approval("t1"), odd])
    assert not result.met and not result.vetoed and result.ignored == (("t2", BAD_DECISION),)


@pytest.mark.parametrize("iat", [NOW - TTL, NOW - TTL + 1, NOW, NOW + SKEW - 1, NOW + SKEW])
def test_approval_time_boundaries_that_still_count(iat: int) -> None:
    result = run([approval("t1"), approval("t2", iat=iat)])
    assert result.met and result.ignored == ()


def test_an_unknown_operator_named_like_an_enrolled_one_does_not_count() -> None:
    result = run([approval("t1"), approval("T2"), approval("t2 ")])
    assert not result.met and result.ignored == (("T2", UNKNOWN), ("t2 ", UNKNOWN))


def test_a_non_requester_is_not_confused_with_the_requester() -> None:
    result = evaluate(request(requester="t1"), [approval("req"), approval("t1"), approval("t2")], OPERATORS,
                      make_policy(), NOW)
    assert result.met and result.counted == ("req", "t2") and result.ignored == (("t1", REQUESTER),)


# -- veto, rejection and expiry --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("veto", "met"), [(True, False), (False, True)])
def test_a_valid_rejection_vetoes_only_when_veto_is_on(veto: bool, met: bool) -> None:
    result = run([approval("t1"), approval("t2"), approval("t3", "reject")], veto=veto)
    assert result.met is met and result.vetoed is veto
    assert result.rejected_by == ("t3",) and result.counted == ("t1", "t2")
    if veto:
        assert "rejected by t3" in result.reasons


@pytest.mark.parametrize("order", ["approve-then-reject", "reject-then-approve"])
@pytest.mark.parametrize("veto", [True, False])
def test_approve_and_reject_by_one_operator_is_a_rejection(order: str, veto: bool) -> None:
    both = [approval("t2"), approval("t2", "reject")]
    if order == "reject-then-approve":
        both.reverse()
    result = run([approval("t1"), *both, approval("c1")], veto=veto, amount=SMALL_UP_TO + 1)
    assert not result.met  # t2 does not count: only t1 and c1 remain, 3 are needed
    assert result.counted == ("c1", "t1") and result.rejected_by == ("t2",)
    assert result.vetoed is veto
    assert result.ignored == (("t2", OVERRULED),)


def test_with_veto_off_a_rejecter_is_simply_not_counted() -> None:
    result = run([approval("t1"), approval("t2"), approval("t2", "reject")], veto=False)
    assert not result.met and result.missing == ("1 more approval",)


def test_repeated_rejections_are_one_rejecter() -> None:
    result = run([approval("t1"), approval("t2"), approval("t3", "reject"), approval("t3", "reject")], veto=False)
    assert result.met and result.rejected_by == ("t3",) and result.ignored == (("t3", DUPLICATE),)


def test_a_rejection_by_an_operator_without_an_eligible_role_does_not_veto() -> None:
    result = run([approval("t1"), approval("t2"), approval("aud", "reject"), approval("sec", "reject")])
    assert result.met and result.rejected_by == ()
    assert result.ignored == (("aud", NOT_ELIGIBLE), ("sec", NOT_ELIGIBLE))


@pytest.mark.parametrize(("now", "expired"), [(NOW - 1, False), (NOW, True), (NOW + 1, True)])
def test_an_expired_request_is_never_met(now: int, expired: bool) -> None:
    result = run([approval("t1"), approval("t2"), approval("t3")], now=now, expires_at=NOW)
    assert result.expired is expired and result.met is not expired
    if expired:
        assert result.missing == () and result.reasons == "the request expired"


# -- the explanation ----------------------------------------------------------------------------------------------

def test_a_met_quorum_says_who_met_it() -> None:
    result = evaluate(request(), [approval("t1"), approval("t2")], OPERATORS, make_policy(), NOW)
    assert result.met and result.reasons == "quorum met by t1, t2" and result.why_not == ()


def test_an_unmet_quorum_says_what_is_missing() -> None:
    result = evaluate(request(SMALL_UP_TO + 1), [approval("t1"), approval("t2")], OPERATORS, make_policy(), NOW)
    assert result.why_not == ("1 more approval", "1 more cfo")
    assert result.reasons == "1 more approval; 1 more cfo"


@pytest.mark.parametrize(("approvals", "expires_at", "reasons"), [
    ([approval("t1"), approval("t2"), approval("t3", "reject")], NOW + 60, ["rejected by t3"]),
    ([approval("t1"), approval("t2")], NOW, ["the request expired"]),
    ([approval("t1"), approval("t3", "reject"), approval("c1", "reject")], NOW,
     ["the request expired", "rejected by c1, t3", "1 more approval"]),
])
def test_veto_and_expiry_are_explained_first(approvals: list[Approval], expires_at: int,
                                             reasons: list[str]) -> None:
    result = evaluate(request(expires_at=expires_at), approvals, OPERATORS, make_policy(), NOW)
    assert not result.met and result.why_not == tuple(reasons) and result.reasons == "; ".join(reasons)


def test_result_json_explains_itself() -> None:
    result = run([approval("t1"), approval("ghost"), approval("t3", "reject")])
    assert result.to_json() == {
        "met": False, "vetoed": True, "expired": False,
        "tier": {"approvals": 2, "eligible_roles": ["treasury", "cfo"], "required": {}, "up_to": str(SMALL_UP_TO),
                 "text": "2 approvals from treasury or cfo; requester excluded"},
        "counted": ["t1"], "rejected_by": ["t3"], "ignored": [["ghost", UNKNOWN]],
        "missing": ["1 more approval"], "reasons": "rejected by t3; 1 more approval",
    }
    assert result.why_not == ("rejected by t3", "1 more approval")
    json.dumps(result.to_json())  # JSON-safe as it is


def test_a_met_result_explains_itself_too() -> None:
    result = run([approval("c1"), approval("t2"), approval("t2")])
    assert result.met and result.why_not == () and result.missing == ()
    assert result.reasons == "quorum met by c1, t2"
    assert result.to_json()["ignored"] == [["t2", DUPLICATE]]


def test_the_policy_hash_of_an_approval_must_be_the_requests_not_the_policy_in_hand() -> None:
    # evaluate() is handed the policy to apply; approvals bind the hash recorded with the request.
    other = RequestFacts(id=REQUEST_ID, requester="req", amount=1, digest=DIGEST, created_at=NOW - 600,
                         expires_at=NOW + 3600, policy_hash=OTHER_POLICY_HASH)
    result = evaluate(other, [approval("t1"), approval("t2", policy_hash=OTHER_POLICY_HASH)], OPERATORS,
                      make_policy(), NOW)
    assert result.counted == ("t2",) and result.ignored == (("t1", POLICY_MISMATCH),)


# -- property: evaluate() agrees with a brute-force oracle ------------------------------------------------------------

@dataclass(frozen=True)
class OracleTier:
    up_to: int | None
    approvals: int
    eligible: frozenset[str]
    required: dict[str, int]


@dataclass(frozen=True)
class Scenario:
    operators: dict[str, tuple[frozenset[str], bool]]  # name -> (roles, enabled)
    tiers: list[OracleTier]
    veto: bool
    ttl: int
    request: RequestFacts
    approvals: list[Approval]
    now: int


@dataclass(frozen=True)
class Expected:
    met: bool
    approvers: frozenset[str]
    rejecters: frozenset[str]
    vetoed: bool
    expired: bool
    enough: bool  # the counted approvers alone would meet the tier


def oracle(s: Scenario) -> Expected:
    """The quorum rule as written in DESIGN.md section 3, computed the plain way."""
    chosen = None
    for t in s.tiers:  # the first tier whose inclusive bound covers the amount; the last is unbounded
        if t.up_to is None or s.request.amount <= t.up_to:
            chosen = t
            break
    assert chosen is not None

    valid = []
    for a in s.approvals:
        if a.operator not in s.operators:
            continue  # unknown
        roles, enabled = s.operators[a.operator]
        if not enabled:
            continue
        if a.operator == s.request.requester:
            continue
        if not (roles & chosen.eligible):
            continue
        if a.request_id != s.request.id or a.digest != s.request.digest:
            continue
        if a.policy_hash != s.request.policy_hash:
            continue
        if a.decision not in ("approve", "reject"):
            continue
        if a.decision == "approve" and s.now - a.iat > s.ttl:
            continue  # an approval too old; a rejection stands for the request's life
        if a.iat - s.now > SKEW:
            continue  # from the future
        valid.append(a)

    rejecters = {a.operator for a in valid if a.decision == "reject"}
    approvers = {a.operator for a in valid if a.decision == "approve"} - rejecters
    vetoed = s.veto and len(rejecters) > 0
    expired = s.now >= s.request.expires_at
    enough = len(approvers) >= chosen.approvals
    for role, minimum in chosen.required.items():
        holders = [name for name in approvers if role in s.operators[name][0]]
        if len(holders) < minimum:
            enough = False
    met = enough and not vetoed and not expired
    return Expected(met, frozenset(approvers), frozenset(rejecters), vetoed, expired, enough)


FLAWS = ["other request", "other digest", "other policy", "too old", "too old", "from the future", "odd decision"]


@st.composite
def approval_by(draw: st.DrawFn, operator: str, ttl: int) -> Approval:
    """Mostly well-formed approvals (so that quorums are often met), a quarter with one or two flaws."""
    flaws = draw(st.sets(st.sampled_from(FLAWS), min_size=1, max_size=2)) if draw(st.integers(0, 3)) == 0 else set()
    if "too old" in flaws:
        iat = draw(st.one_of(st.just(NOW - ttl - 1), st.integers(NOW - 3 * ttl, NOW - ttl - 1)))
    elif "from the future" in flaws:
        iat = draw(st.one_of(st.just(NOW + SKEW + 1), st.integers(NOW + SKEW + 1, NOW + 2 * TTL)))
    else:
        iat = draw(st.one_of(st.integers(NOW - ttl, NOW + SKEW), st.sampled_from([NOW - ttl, NOW, NOW + SKEW])))
    decision = "approved" if "odd decision" in flaws else draw(st.sampled_from(["approve"] * 7 + ["reject"]))
    return Approval(operator=operator, decision=decision,  # type: ignore[arg-type]
                    request_id="mr_02" if "other request" in flaws else REQUEST_ID,
                    digest=OTHER_DIGEST if "other digest" in flaws else DIGEST,
                    policy_hash=OTHER_POLICY_HASH if "other policy" in flaws else POLICY_HASH, iat=iat)


NAMES = ["ana", "ben", "cai", "dee", "eli", "fay", "gus"]
# Every non-empty set of roles can be drawn; realistic ones are listed again to weigh them, so that a good share
# of the scenarios can meet their quorum at all.
_ALL_ROLE_SETS = [frozenset(r for i, r in enumerate(sorted(ROLES)) if mask >> i & 1) for mask in range(1, 16)]
_T, _C, _TC = frozenset({"treasury"}), frozenset({"cfo"}), frozenset({"treasury", "cfo"})
OPERATOR_ROLE_SETS = [_T] * 6 + [_C] * 4 + [_TC] * 3 + _ALL_ROLE_SETS
TIER_ROLE_SETS = [_TC] * 10 + [_T] * 3 + _ALL_ROLE_SETS
assert len(set(_ALL_ROLE_SETS)) == 15


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    count = draw(st.sampled_from([7, 7, 7, 6, 6, 5, 5, 4, 3, 2, 1]))  # weighted towards more operators
    operators = {name: (draw(st.sampled_from(OPERATOR_ROLE_SETS)),
                        draw(st.sampled_from([True] * 5 + [False])))
                 for name in NAMES[:count]}

    tier_count = draw(st.integers(1, 3))
    bounds = sorted(draw(st.sets(st.integers(1, 10_000), min_size=tier_count - 1, max_size=tier_count - 1)))
    tiers = []
    for i in range(tier_count):
        approvals = draw(st.integers(1, 4))
        eligible = draw(st.sampled_from(TIER_ROLE_SETS))
        required = {role: draw(st.integers(0, approvals)) for role in sorted(eligible) if draw(st.booleans())}
        tiers.append(OracleTier(bounds[i] if i < len(bounds) else None, approvals, eligible, required))

    ttl = draw(st.integers(1, 7200))
    boundary_amounts = [b + d for b in bounds for d in (0, 1)]
    amount = draw(st.sampled_from(boundary_amounts) if boundary_amounts and draw(st.booleans())
                  else st.integers(1, 20_000))
    requester = draw(st.sampled_from([*operators, "outsider"]))
    expires_at = NOW + draw(st.sampled_from([3600] * 8 + [1, 0, -1]))
    req = RequestFacts(id=REQUEST_ID, requester=requester, amount=amount, digest=DIGEST, created_at=NOW - 7200,
                       expires_at=expires_at, policy_hash=POLICY_HASH)

    # Who sends something: a shuffled pool of every operator, an unknown name and the requester; each sender
    # sends 1 to 3 approvals (duplicates), and all of them arrive in a random order.
    pool = list(dict.fromkeys([*operators, "ghost", requester]))
    senders = draw(st.permutations(pool))[:draw(st.sampled_from([len(pool)] * 4 + list(range(len(pool)))))]
    sent = [draw(approval_by(name, ttl)) for name in senders for _ in range(draw(st.sampled_from([1, 1, 2, 3])))]
    approvals = list(draw(st.permutations(sent)))
    return Scenario(operators, tiers, draw(st.booleans()), ttl, req, approvals, NOW)


def policy_of(s: Scenario) -> Policy:
    return make_policy([tier(t.approvals, sorted(t.eligible), t.required, t.up_to) for t in s.tiers],
                       veto=s.veto, ttl=s.ttl)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_evaluate_agrees_with_a_brute_force_oracle(s: Scenario) -> None:
    result = evaluate(s.request, s.approvals, make_operators(s.operators), policy_of(s), s.now)
    expected = oracle(s)
    event(f"met={expected.met}")
    assert result.met == expected.met
    assert set(result.counted) == expected.approvers
    assert set(result.rejected_by) == expected.rejecters
    assert (result.vetoed, result.expired) == (expected.vetoed, expected.expired)
    assert (result.missing == ()) == expected.enough
    # every approval is explained: one per counted operator, one per rejecter, every other one ignored
    assert not set(result.counted) & set(result.rejected_by)
    assert len(result.counted) + len(result.rejected_by) + len(result.ignored) == len(s.approvals)
    senders = iter(a.operator for a in s.approvals)
    assert all(name in senders for name, _ in result.ignored), "ignored is not in arrival order"
    # the order in which approvals arrive changes nothing but the order of `ignored`
    again = evaluate(s.request, list(reversed(s.approvals)), make_operators(s.operators), policy_of(s), s.now)
    assert (again.met, again.counted, again.rejected_by, again.missing) == (
        result.met, result.counted, result.rejected_by, result.missing)
    assert sorted(again.ignored) == sorted(result.ignored)


def test_an_approval_whose_stored_signature_fails_neither_counts_nor_vetoes() -> None:
    from dataclasses import replace
    forged = replace(approval("t2"), authentic=False)
    result = run([approval("t1"), forged])
    assert not result.met and result.counted == ("t1",)
    assert result.ignored == (("t2", "its stored signature does not verify"),)
    vetoed = run([approval("t1"), approval("t2"), replace(approval("c1", "reject"), authentic=False)])
    assert vetoed.met and not vetoed.vetoed and vetoed.rejected_by == ()
