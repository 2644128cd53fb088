"""The one decision: which of Stored, InFlight, Closed, Pending, Refuse, Sign follows from the facts.

A property test compares decide() with an oracle written out plainly, over every combination of facts; the
examples pin the explanations (the combined quorum, the 409/422 choice)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.domain import mint_decision as md
from appliance.domain.quorum import QuorumResult

NOW = 1_800_000_000
TIER_A = {"approvals": 2, "text": "2 approvals from treasury or cfo; requester excluded"}
TIER_B = {"approvals": 3, "text": "3 approvals from treasury or cfo; requester excluded"}


def result(met: bool, vetoed: bool = False, tier: dict[str, Any] | None = None) -> QuorumResult:
    return QuorumResult(met=met, vetoed=vetoed, expired=False, tier=tier or TIER_A,
                        counted=("bob", "carol") if met else ("bob",), rejected_by=("dave",) if vetoed else (),
                        ignored=(), missing=() if met else ("1 more approval",))


def case(**kw: Any) -> md.Case:
    base: dict[str, Any] = dict(status="pending", expires_at=NOW + 60, now=NOW, reservation=None,
                                quorum=md.Quorum(result(True)), refusals=(), nonce_holder=None)
    return md.Case(**{**base, **kw})


def test_a_met_quorum_with_nothing_against_it_signs() -> None:
    assert isinstance(md.decide(case()), md.Sign)


def test_a_stored_signature_is_returned_and_an_unsigned_reservation_is_in_flight() -> None:
    assert md.decide(case(reservation=md.ReservationState(True, NOW))) == md.Stored()
    assert md.decide(case(reservation=md.ReservationState(False, NOW - 5))) == md.InFlight(NOW - 5)


def test_closed_and_expired_requests_are_closed_whatever_the_quorum() -> None:
    assert md.decide(case(status="cancelled", quorum=None)) == md.Closed("cancelled")
    assert md.decide(case(expires_at=NOW, quorum=None)) == md.Closed("expired")


def test_a_veto_closes_the_request_now() -> None:
    q = md.Quorum(result(False, vetoed=True))
    assert md.decide(case(quorum=q, refusals=None)) == md.Closed("rejected", veto=True, quorum=q)


def test_refusals_are_422_and_a_taken_nonce_is_a_409_conflict() -> None:
    refused = md.decide(case(refusals=("velocity limit: 5 > 3",)))
    assert isinstance(refused, md.Refuse) and not refused.conflict
    conflict = md.decide(case(nonce_holder="other"))
    assert isinstance(conflict, md.Refuse) and conflict.conflict
    assert conflict.reasons == (f"{md.NONCE_CONSUMED}: request other holds its authorization",)


def test_facts_the_decision_needs_must_have_been_gathered() -> None:
    with pytest.raises(ValueError):
        md.decide(case(quorum=None))
    with pytest.raises(ValueError):
        md.decide(case(refusals=None))
    assert isinstance(md.decide(case(quorum=md.Quorum(result(False)), refusals=None)), md.Pending)


def test_the_combined_quorum_needs_both_policies_and_explains_both_tiers() -> None:
    both = md.Quorum(result(True, tier=TIER_A), result(False, tier=TIER_B))
    assert not both.met and both.deciding is both.recorded
    required = both.required()
    assert required["recorded"] == TIER_B and "(active policy); and 3 approvals" in required["text"]
    assert md.Quorum(result(True), result(True, tier=TIER_A)).required() == TIER_A  # same tier: said once
    assert md.Quorum(result(False), result(True)).to_json() == result(False).to_json()
    assert md.Quorum(result(True), result(False, vetoed=True)).vetoed


def test_a_takeover_signs_only_what_a_first_signature_would() -> None:
    met = md.Quorum(result(True))
    assert isinstance(md.decide_takeover("pending", met, (), None), md.Sign)
    gone = md.decide_takeover("pending", md.Quorum(result(False)), None, None)
    assert isinstance(gone, md.Refuse) and gone.reasons == (md.QUORUM_GONE,)
    closed = md.decide_takeover("rejected", met, ("the request expired",), None)
    assert isinstance(closed, md.Refuse) and closed.reasons == ("the request expired", "the request is rejected")
    assert md.decide_takeover("pending", met, (), "other").conflict  # type: ignore[union-attr]


@given(status=st.sampled_from(["pending", "authorized", "rejected", "cancelled"]),
       expired=st.booleans(), reservation=st.sampled_from([None, True, False]),
       current=st.sampled_from([(True, False), (False, False), (False, True)]),
       recorded=st.sampled_from([None, (True, False), (False, False), (False, True)]),
       refusals=st.lists(st.sampled_from(["a", "b", "c"]), max_size=3), holder=st.sampled_from([None, "x"]))
def test_decide_matches_the_oracle(status: str, expired: bool, reservation: bool | None,
                                   current: tuple[bool, bool], recorded: tuple[bool, bool] | None,
                                   refusals: list[str], holder: str | None) -> None:
    q = md.Quorum(result(*current), None if recorded is None else result(*recorded))
    state = None if reservation is None else md.ReservationState(reservation, NOW)
    got = md.decide(case(status=status, expires_at=NOW - 1 if expired else NOW + 1, reservation=state, quorum=q,
                         refusals=tuple(refusals), nonce_holder=holder))
    # the oracle, spelled out
    met = current[0] and (recorded is None or recorded[0])
    vetoed = current[1] or (recorded is not None and recorded[1])
    if reservation is not None:
        assert got == (md.Stored() if reservation else md.InFlight(NOW))
    elif status != "pending":
        assert got == md.Closed(status)
    elif expired:
        assert got == md.Closed("expired")
    elif vetoed:
        assert isinstance(got, md.Closed) and got.veto
    elif not met:
        assert got == md.Pending(q)
    elif refusals or holder:
        assert isinstance(got, md.Refuse) and got.conflict == (holder is not None)
        assert set(got.reasons) >= set(refusals) and len(got.reasons) == len(set(got.reasons))
    else:
        assert got == md.Sign(q)
    assert md.needs_quorum(status, NOW - 1 if expired else NOW + 1, NOW, state) == (
        reservation is None and status == "pending" and not expired)
