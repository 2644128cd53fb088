"""The signing-time rules: every rule refuses on its own, both policies must allow, nothing is judged from an
unsigned time, and what the audit log contributes (LogFacts) can only restrict.

A property test compares signing_refusals with an oracle written out plainly below."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.domain.mint_rules import (
    IAT_SKEW_SECONDS,
    Authorized,
    LogFacts,
    SignedTerms,
    StoredTerms,
    nonce_for,
    signing_refusals,
)
from appliance.domain.policy import Policy, parse_policy

NOW = 1_800_000_000
TO = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
OTHER_TO = "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359"
CONTRACT = "0x" + "ab" * 20
CHAIN = 1
TTL, VALIDITY = 86400, 600
REQUEST_ID = "mr_01"


def make_policy(*, max_per_request: int = 10**6, velocity: int = 3 * 10**6, window: int = 86400, ttl: int = TTL,
                validity: int = VALIDITY, allow: tuple[str, ...] = (TO,)) -> Policy:
    return parse_policy({
        "version": 1, "name": "mint rules tests",
        "mint": {"max_per_request": str(max_per_request), "velocity_limit": str(velocity),
                 "velocity_window_seconds": window, "request_ttl_seconds": ttl, "approval_ttl_seconds": 3600,
                 "authorization_validity_seconds": validity, "veto_on_reject": True,
                 "tiers": [{"approvals": 2, "eligible_roles": ["treasury", "cfo"]}],
                 "allowlist": [{"chain_id": CHAIN, "address": a, "label": f"wallet {i}"} for i, a in enumerate(allow)]},
        "governance": {"approvals": 2, "eligible_roles": ["security-admin"]},
        "reserve_guard": {"enabled": False},
    })


POLICY = make_policy()
CREATED = NOW - 600
JWS = "eyJhbGciOiJFUzI1NiJ9.eyJhbW91bnQiOiIxMDAwIn0.c2lnbmF0dXJl"  # stands for the requester's compact JWS
NONCE = nonce_for(JWS)


def stored(**changes: Any) -> StoredTerms:
    base = StoredTerms(requester="req", chain_id=CHAIN, verifying_contract=CONTRACT, to=TO, amount=1000,
                       valid_after=CREATED, valid_before=CREATED + TTL + VALIDITY, expires_at=CREATED + TTL,
                       nonce=NONCE)
    return replace(base, **changes)


def signed(**changes: Any) -> SignedTerms:
    return replace(SignedTerms(requester="req", chain_id=CHAIN, to=TO, amount=1000, iat=CREATED,
                                   nonce=NONCE), **changes)


UNSIGNED = "unsigned"  # refusals(UNSIGNED): no JWS of the requester verified


def refusals(signed_terms: SignedTerms | str | None = None, stored_terms: StoredTerms | None = None, *,
             recorded: Policy = POLICY, active: Policy = POLICY, contract: str | None = CONTRACT,
             authorized: tuple[Authorized, ...] = (), now: int = NOW) -> list[str]:
    terms = signed() if signed_terms is None else None if signed_terms == UNSIGNED else signed_terms
    assert terms is None or isinstance(terms, SignedTerms)
    return signing_refusals(terms,
                            stored() if stored_terms is None else stored_terms, recorded=recorded, active=active,
                            contract=contract, authorized=authorized, request_id=REQUEST_ID, now=now)


def test_a_request_within_every_rule_may_be_signed() -> None:
    assert refusals() == []
    assert refusals(contract=CONTRACT.upper().replace("0X", "0x")) == []  # the contract compares without case
    assert refusals(signed(to=TO.lower())) == []  # so does the signed recipient


# Each case breaks exactly one rule; the reason names it.
CASES: dict[str, tuple[dict[str, Any], str]] = {
    "no signed JWS": ({"signed_terms": UNSIGNED}, "does not match its requester's signed JWS"),
    "amount raised in the row": ({"stored_terms": stored(amount=2000)}, "does not match its requester's signed JWS"),
    "recipient redirected": ({"stored_terms": stored(to=OTHER_TO)}, "does not match its requester's signed JWS"),
    "requester rewritten": ({"stored_terms": stored(requester="mallory")}, "does not match"),
    "chain rewritten": ({"stored_terms": stored(chain_id=5)}, "does not match"),
    "nonce rewritten": ({"stored_terms": stored(nonce="0x" + "ab" * 32)}, "the stored nonce is not the one"),
    "nonce of another request": ({"signed_terms": signed(nonce=nonce_for(JWS + "x"))}, "the stored nonce is not"),
    "contract rewritten": ({"stored_terms": stored(verifying_contract="0x" + "cd" * 20)}, "is not the one configured"),
    "no contract configured": ({"contract": None}, "is not the one configured"),
    "window moved away from iat": ({"stored_terms": stored(valid_after=CREATED + IAT_SKEW_SECONDS + 1,
                                                           valid_before=CREATED + IAT_SKEW_SECONDS + 1 + TTL + VALIDITY,
                                                           expires_at=CREATED + IAT_SKEW_SECONDS + 1 + TTL)},
                                   "does not start when the requester signed"),
    "expiry extended": ({"stored_terms": stored(expires_at=CREATED + TTL + 1)}, "not the policy's request TTL"),
    "window widened": ({"stored_terms": stored(valid_before=CREATED + TTL + VALIDITY + 1)},
                       "not the one the request's policy sets"),
    "request expired": ({"now": CREATED + TTL}, "the request expired"),
    "not allowlisted": ({"recorded": make_policy(allow=(OTHER_TO,)), "active": make_policy(allow=(OTHER_TO,))},
                        "is not on the allowlist"),
    "above the maximum": ({"recorded": make_policy(max_per_request=999), "active": make_policy(max_per_request=999)},
                          "outside the per-request maximum"),
    "velocity": ({"authorized": (Authorized("mr_other", NOW - 10, 3 * 10**6 - 999),)}, "velocity limit"),
}


@pytest.mark.parametrize("case", CASES, ids=str)
def test_each_rule_refuses_on_its_own(case: str) -> None:
    args, reason = CASES[case]
    found = refusals(**args)
    assert found and all(isinstance(r, str) for r in found), case
    assert any(reason in r for r in found), (case, found)


def test_the_policy_in_force_must_allow_it_too() -> None:
    stricter = make_policy(max_per_request=999, allow=(OTHER_TO,), validity=60)
    found = refusals(active=stricter)
    assert any("allowlist" in r for r in found)
    assert any("per-request maximum" in r for r in found)
    assert any("longer than the policy in force allows" in r for r in found)
    # ... and the recorded one (a newer, looser policy never widens a request made under a stricter one)
    assert any("allowlist" in r for r in refusals(recorded=make_policy(allow=(OTHER_TO,))))


def test_velocity_counts_only_others_inside_the_window() -> None:
    limit = 3 * 10**6
    own = Authorized(REQUEST_ID, NOW - 5, limit)  # this request's own reservation: not counted against it
    old = Authorized("mr_old", NOW - 86400, limit)  # at the edge: outside the window
    assert refusals(authorized=(own, old)) == []
    assert refusals(authorized=(Authorized("mr_x", NOW - 86399, limit - 1000),)) == []  # exactly at the limit
    assert refusals(authorized=(Authorized("mr_x", NOW - 86399, limit - 999),)) != []


def test_the_nonce_is_determined_by_the_requester_s_jws() -> None:
    assert NONCE == nonce_for(JWS) and len(NONCE) == 66 and NONCE == NONCE.lower()
    assert int(NONCE, 16) >= 0 and nonce_for(JWS[:-1] + "Z") != NONCE
    assert refusals(stored_terms=stored(nonce=NONCE.upper().replace("0X", "0x"))) == []  # hex without case


def test_reasons_are_not_repeated() -> None:
    found = refusals(stored_terms=stored(amount=2000, to=OTHER_TO))
    assert len(found) == len(set(found))


@given(amount=st.integers(-5, 2 * 10**6), used=st.integers(0, 4 * 10**6), age=st.integers(0, 2 * TTL),
       skew=st.integers(-2 * IAT_SKEW_SECONDS, 2 * IAT_SKEW_SECONDS), tamper_amount=st.booleans(),
       allow=st.booleans())
def test_refusals_agree_with_a_plain_oracle(amount: int, used: int, age: int, skew: int, tamper_amount: bool,
                                            allow: bool) -> None:
    created = NOW - age
    row = StoredTerms("req", CHAIN, CONTRACT, TO, amount + (1 if tamper_amount else 0), created,
                      created + TTL + VALIDITY, created + TTL, NONCE)
    policy = POLICY if allow else make_policy(allow=(OTHER_TO,))
    found = signing_refusals(SignedTerms("req", CHAIN, TO, amount, created + skew, NONCE), row, recorded=policy,
                             active=policy, contract=CONTRACT, authorized=[Authorized("mr_x", NOW - 1, used)],
                             request_id=REQUEST_ID, now=NOW)
    ok = (not tamper_amount and abs(skew) <= IAT_SKEW_SECONDS and age < TTL and allow
          and 0 < row.amount <= 10**6 and used + row.amount <= 3 * 10**6)
    assert (found == []) == ok, found


# -- what the log says ---------------------------------------------------------------------------------------

def entry(action: str, subject: str, index: int, **details: Any) -> dict[str, Any]:
    return {"action": action, "subject": subject, "index": index, "details": details}


def test_log_facts_take_reservations_and_the_first_closure() -> None:
    facts = LogFacts.empty()
    for e in (entry("mint.authorization.reserved", "mr_a", 3, amount="500", reserved_at=NOW - 100),
              entry("mint.authorization.reserved", "mr_a", 9, amount="500", reserved_at=NOW - 10),
              entry("mint.cancelled", "mr_b", 4), entry("mint.rejected", "mr_b", 5, status="rejected"),
              entry("mint.approved", "mr_c", 6),
              entry("mint.rejected", "mr_d", 7, digest="0x00"),  # one officer's rejection, not (yet) a veto
              entry("mint.rejected", "mr_e", 8, status="rejected")):
        facts.add(e)
    assert [(a.request_id, a.at, a.amount, a.index) for a in facts.authorized] == [
        ("mr_a", NOW - 100, 500, 3), ("mr_a", NOW - 10, 500, 9)]
    assert facts.closed == {"mr_b": "mint.cancelled", "mr_e": "mint.rejected"}
    assert facts.reserved_at("mr_a", covered=10) == NOW - 10
    assert facts.reserved_at("mr_a", covered=9) == NOW - 100  # entry 9 is beyond the checkpoint
    assert facts.reserved_at("mr_a", covered=3) is None
    assert facts.reserved_at("mr_c", covered=10) is None


@pytest.mark.parametrize("bad", [
    entry("mint.authorization.reserved", "mr_a", 1, amount=500, reserved_at=NOW),  # amount not a string
    entry("mint.authorization.reserved", "mr_a", 1, amount="-5", reserved_at=NOW),
    entry("mint.authorization.reserved", "mr_a", 1, amount="5", reserved_at="now"),
    entry("mint.authorization.reserved", "mr_a", 1, amount="5", reserved_at=True),
    {"action": "mint.authorization.reserved", "subject": 7, "details": {"amount": "5", "reserved_at": NOW}},
    {"action": "mint.cancelled", "subject": "mr_a", "details": "cancelled"},
])
def test_malformed_entries_contribute_nothing(bad: dict[str, Any]) -> None:
    facts = LogFacts.empty()
    facts.add(bad)
    assert facts.authorized == [] and facts.closed == {}
