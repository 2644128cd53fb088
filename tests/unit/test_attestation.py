"""Attestation payloads: exact coverage, the payload contract, what a verifier recomputes, chaining, one per as_of."""

from __future__ import annotations

import copy
import hashlib
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from typing import Any

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.domain import attestation as att
from appliance.domain import reserves
from appliance.errors import Conflict, InvalidInput

AS_OF = "2026-11-24T16:00:00Z"
ISSUED = datetime(2026, 11, 25, 1, 2, 3, tzinfo=UTC)
POLICY = "0" * 64
AUDIT = {"size": 3, "root": "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="}
TOKEN = {"symbol": "HKDS", "name": "HKD Stablecoin", "decimals": 6}


def report_data(amounts: list[str], decimals: int = 2, as_of: str = AS_OF) -> dict[str, Any]:
    return {"as_of": as_of, "currency": "HKD", "decimals": decimals,
            "holdings": [{"custodian": f"C{i % 2}", "account": f"A{i}", "asset_class": ["cash", "tbill"][i % 2],
                          "amount": a} for i, a in enumerate(amounts)],
            "evidence": [{"name": "statement.pdf", "sha256": "ab" * 32}]}


def supply_data(totals: list[str], decimals: int = 6, as_of: str = AS_OF) -> dict[str, Any]:
    return {"as_of": as_of, "decimals": decimals,
            "chains": [{"chain_id": i + 1, "contract": "0x" + f"{i + 1:02x}" * 20, "total_supply": t}
                       for i, t in enumerate(totals)]}


def payload_for(amounts: list[str], totals: list[str], *, rd: int = 2, sd: int = 6, seq: int = 1,
                prev: str | None = None, as_of: str = AS_OF, liabilities: dict[str, Any] | None = None,
                token: dict[str, Any] | None = None) -> dict[str, Any]:
    return att.build_payload(
        reserves.parse_reserve_report(report_data(amounts, rd, as_of)),
        reserves.parse_supply_snapshot(supply_data(totals, sd, as_of)), seq=seq, prev_jws=prev, issued_at=ISSUED,
        issuer="Example Issuer Ltd", token=token if token is not None else {**TOKEN, "decimals": sd},
        policy_hash=POLICY, audit=AUDIT, liabilities=liabilities)


def exact(r: int, rd: int, s: int, sd: int) -> int | None:
    """The definition, with rationals: floor((r / 10^rd) / (s / 10^sd) * 10000)."""
    if s == 0:
        return None
    return (Fraction(r, 10**rd) / Fraction(s, 10**sd) * 10000).__floor__()


# -- exact arithmetic ---------------------------------------------------------------------------------------------

amounts = st.integers(0, 10**30)
decimals = st.integers(0, 18)


@settings(max_examples=500, deadline=None)
@given(amounts, decimals, amounts, decimals)
def test_coverage_is_exact(r: int, rd: int, s: int, sd: int) -> None:
    assert att.coverage_bps(r, rd, s, sd) == exact(r, rd, s, sd)


@settings(max_examples=150, deadline=None)
@given(st.lists(amounts, min_size=1, max_size=4), decimals, st.lists(amounts, min_size=1, max_size=3), decimals)
def test_the_payload_carries_exact_figures_or_refuses(rs: list[int], rd: int, ss: list[int], sd: int) -> None:
    expected = exact(sum(rs), rd, sum(ss), sd)
    if expected is not None and expected > 2**53 - 1:  # not exact as a JSON number: refused, never rounded
        with pytest.raises(InvalidInput, match="coverage is too large"):
            payload_for([str(a) for a in rs], [str(t) for t in ss], rd=rd, sd=sd)
        return
    p = payload_for([str(a) for a in rs], [str(t) for t in ss], rd=rd, sd=sd)
    assert p["coverage_bps"] == expected
    assert p["status"] == ("FULLY_BACKED" if expected is None or expected >= 10000 else "UNDER_BACKED")
    assert p["reserves"]["total"] == str(sum(rs)) and p["supply"]["total"] == str(sum(ss))
    assert att.check_payload(p) == []
    rfc8785.dumps(p)  # it canonicalizes: nothing beyond I-JSON


@pytest.mark.parametrize(("reserve", "rd", "supply", "sd", "bps", "status"), [
    ("100000000", 2, str(10**12), 6, 10000, "FULLY_BACKED"),  # 1,000,000.00 HKD for 1,000,000 tokens
    ("99999999", 2, str(10**12), 6, 9999, "UNDER_BACKED"),  # one cent short
    ("100000000", 2, str(10**12 + 1), 6, 9999, "UNDER_BACKED"),  # one base unit too many tokens
    (str(10**24), 18, "1000000", 0, 10000, "FULLY_BACKED"),  # reserves with more decimals than the token
    (str(10**24 - 1), 18, "1000000", 0, 9999, "UNDER_BACKED"),  # short by 10^-18 HKD
    ("1000000", 0, str(10**24), 18, 10000, "FULLY_BACKED"),
    ("1000000", 0, str(10**24 + 1), 18, 9999, "UNDER_BACKED"),
    ("1", 2, "0", 6, None, "FULLY_BACKED"),  # nothing outstanding
    ("0", 2, "1", 6, 0, "UNDER_BACKED"),
    ("0", 2, "0", 6, None, "FULLY_BACKED"),
])
def test_coverage_boundaries(reserve: str, rd: int, supply: str, sd: int, bps: int | None, status: str) -> None:
    p = payload_for([reserve], [supply], rd=rd, sd=sd)
    assert (p["coverage_bps"], p["status"]) == (bps, status)


def test_coverage_refuses_what_it_cannot_compute() -> None:
    with pytest.raises(ValueError):
        att.coverage_bps(-1, 2, 1, 6)
    with pytest.raises(ValueError):
        att.coverage_bps(1, 19, 1, 6)
    with pytest.raises(ValueError):
        att.coverage_bps(1, True, 1, 6)


# -- the payload ----------------------------------------------------------------------------------------------------

def test_the_payload_is_exactly_the_contract() -> None:
    liabilities = {"root": "cd" * 32, "total": "3570000", "leaves": 2}
    p = payload_for(["100", "250", "7"], ["3000000", "570000"], liabilities=liabilities)
    assert set(p) == set(att.REQUIRED)
    assert p == {
        "version": 1, "seq": 1, "prev": None, "as_of": AS_OF, "issued_at": "2026-11-25T01:02:03Z",
        "issuer": "Example Issuer Ltd", "token": TOKEN, "currency": "HKD",
        "reserves": {"total": "357", "decimals": 2, "by_asset_class": {"cash": "107", "tbill": "250"},
                     "by_custodian": {"C0": "107", "C1": "250"}},
        "supply": {"total": "3570000", "decimals": 6, "by_chain": [
            {"chain_id": 1, "contract": "0x" + "01" * 20, "total_supply": "3000000"},
            {"chain_id": 2, "contract": "0x" + "02" * 20, "total_supply": "570000"}]},
        "coverage_bps": 10000, "status": "FULLY_BACKED", "liabilities": liabilities,
        "evidence": [{"name": "statement.pdf", "sha256": "ab" * 32}], "policy": POLICY, "audit": AUDIT}


def test_as_of_is_written_in_utc_to_the_second_and_prev_is_the_digest_of_the_previous_jws() -> None:
    jws = "eyJhbGciOiJFUzI1NiJ9.eyJzZXEiOjF9.c2ln"
    p = payload_for(["1"], ["1"], seq=2, prev=jws + "\n", as_of="2026-11-25T00:00:00.75+08:00")
    assert p["as_of"] == AS_OF
    assert p["prev"] == hashlib.sha256(jws.encode("ascii")).hexdigest() == att.prev_digest(jws)


@pytest.mark.parametrize(("change", "error"), [
    ({"seq": 2, "prev_jws": None}, ValueError),
    ({"seq": 1, "prev_jws": "a.b.c"}, ValueError),
    ({"seq": 0}, ValueError),
    ({"seq": True}, ValueError),
    ({"seq": 2, "prev_jws": "not a jws"}, ValueError),
    ({"issued_at": datetime(2026, 11, 25)}, ValueError),  # naive: which zone?
    ({"policy_hash": "ABC"}, ValueError),
    ({"issuer": ""}, ValueError),
    ({"audit": {"size": -1, "root": AUDIT["root"]}}, ValueError),
    ({"audit": {"size": 1, "root": "not base64!"}}, ValueError),
    ({"liabilities": {"root": "cd" * 32, "total": 5, "leaves": 1}}, ValueError),
    ({"liabilities": {"root": "cd" * 32, "total": str(2**128), "leaves": 1}}, ValueError),
    ({"liabilities": {"root": "cd" * 32, "total": "5", "leaves": 0}}, ValueError),
    ({"token": {**TOKEN, "decimals": 18}}, InvalidInput),  # the snapshot's decimals are not the token's
])
def test_build_payload_refuses_wrong_arguments(change: dict[str, Any], error: type[Exception]) -> None:
    arguments: dict[str, Any] = {"seq": 1, "prev_jws": None, "issued_at": ISSUED, "issuer": "I", "token": TOKEN,
                                 "policy_hash": POLICY, "audit": AUDIT, "liabilities": None, **change}
    with pytest.raises(error):
        att.build_payload(reserves.parse_reserve_report(report_data(["1"])),
                          reserves.parse_supply_snapshot(supply_data(["1"])), **arguments)


def test_figures_digest_tells_a_retry_from_a_correction() -> None:
    r = reserves.parse_reserve_report(report_data(["100", "250"]))
    s = reserves.parse_supply_snapshot(supply_data(["5", "6"]))
    reordered_r = report_data(["100", "250"])
    reordered_r["holdings"].reverse()
    reordered_s = supply_data(["5", "6"])
    reordered_s["chains"].reverse()
    same = att.figures_digest(reserves.parse_reserve_report(reordered_r), reserves.parse_supply_snapshot(reordered_s),
                              None)
    assert same == att.figures_digest(r, s, None)
    corrected = reserves.parse_reserve_report(report_data(["101", "250"]))
    assert att.figures_digest(corrected, s, None) != same
    assert att.figures_digest(r, s, {"root": "00" * 32, "total": "11", "leaves": 2}) != same


# -- what a verifier recomputes ---------------------------------------------------------------------------------------

Tamper = Callable[[dict[str, Any]], Any]


@pytest.mark.parametrize("tamper", [
    lambda p: p["reserves"].update(total="358"),
    lambda p: p["reserves"]["by_asset_class"].update(cash="108"),
    lambda p: p["reserves"]["by_custodian"].update(C0="106"),
    lambda p: p["reserves"]["by_custodian"].update(C2="1"),
    lambda p: p["reserves"].update(decimals=3),  # the coverage no longer follows
    lambda p: p["supply"].update(total="3570001"),
    lambda p: p["supply"]["by_chain"][1].update(total_supply="570001"),
    lambda p: p["supply"]["by_chain"].append(dict(p["supply"]["by_chain"][0])),
    lambda p: p["supply"].update(decimals=5),
    lambda p: p.update(coverage_bps=p["coverage_bps"] + 1),
    lambda p: p.update(coverage_bps=p["coverage_bps"] - 1),
    lambda p: p.update(coverage_bps=None),
    lambda p: p.update(coverage_bps=10000.0),
    lambda p: p.update(status="UNDER_BACKED"),
    lambda p: p.update(status="fully_backed"),
    lambda p: p["reserves"].update(total=357),
    lambda p: p["reserves"]["by_custodian"].update(C0="0107"),
    lambda p: p["supply"]["by_chain"][0].update(total_supply="3e6"),
    lambda p: p.pop("audit"),
    lambda p: p.pop("liabilities"),
    lambda p: p.update(version=2),
    lambda p: p.update(seq=0),
    lambda p: p.update(prev="ab" * 32),  # seq 1 has no predecessor
    lambda p: p.update(as_of="2026-11-24T16:00:00+00:00"),
    lambda p: p.update(currency="hkd"),
    lambda p: p.update(policy="xyz"),
    lambda p: p.update(evidence=[{"name": "x", "sha256": "no"}]),
    lambda p: p.update(liabilities={"root": "cd" * 32, "total": "-1", "leaves": 1}),
    lambda p: p["token"].update(decimals=2),
])
def test_check_payload_catches_tampering(tamper: Tamper) -> None:
    p = payload_for(["100", "250", "7"], ["3000000", "570000"])
    assert att.check_payload(p) == []
    tamper(p)
    assert att.check_payload(p) != []


def test_a_later_seq_needs_a_prev_and_extra_members_are_not_judged() -> None:
    p = payload_for(["1"], ["1"], seq=2, prev="a.b.c")
    assert att.check_payload({**p, "note": "extra members are allowed: 'at least'"}) == []
    assert att.check_payload({**p, "prev": None}) != []
    assert att.check_payload([]) == ["the payload must be a JSON object"]  # type: ignore[arg-type]


# -- chaining -------------------------------------------------------------------------------------------------------

def jws_for(payload: dict[str, Any]) -> str:
    """A stand-in compact JWS that differs per payload (the signature is not what these tests are about)."""
    digest = hashlib.sha256(rfc8785.dumps(payload)).hexdigest()
    return f"eyJhbGciOiJFUzI1NiJ9.{digest}.sig{payload['seq']}"


def chain(n: int) -> list[tuple[str, dict[str, Any]]]:
    items: list[tuple[str, dict[str, Any]]] = []
    prev = None
    for i in range(n):
        stamp = (datetime(2026, 11, 10, 16, tzinfo=UTC) + timedelta(days=i)).strftime("%Y-%m-%dT%H:%M:%SZ")
        p = payload_for(["1"], ["1"], seq=i + 1, prev=prev, as_of=stamp)
        prev = jws_for(p)
        items.append((prev, p))
    return items


def relink(items: list[tuple[str, dict[str, Any]]], at: int, **changes: Any) -> None:
    """Change item `at` and re-sign it, so the following item's prev no longer matches unless relinked too."""
    payload = {**items[at][1], **changes}
    items[at] = (jws_for(payload), payload)


def test_a_good_chain_given_in_any_order_holds() -> None:
    items = chain(5)
    shuffled = list(items)
    random.Random(7).shuffle(shuffled)
    assert att.check_chain(shuffled) == []
    for before, after in zip(items, items[1:], strict=False):
        assert att.check_link(before[0], before[1], after[1]) == []


def test_gaps_duplicates_and_a_wrong_start_are_each_reported() -> None:
    items = chain(6)
    failures = att.check_chain([items[0], items[2], items[5]])
    assert [f for f in failures if "missing" in f] == ["seq 2 missing", "seq 4 missing", "seq 5 missing"]
    assert any("seq 2 appears twice" in f for f in att.check_chain([items[0], items[1], items[1], items[2]]))
    assert any("starts at seq 2, not 1" in f for f in att.check_chain(items[1:]))
    assert att.check_chain([]) == ["no attestations"]
    broken_first = copy.deepcopy(items[:2])
    broken_first[0][1]["prev"] = "ab" * 32
    assert any("seq 1 must have prev null" in f for f in att.check_chain(broken_first))


def test_a_prev_pointing_at_the_wrong_item_is_reported() -> None:
    items = chain(4)
    wrong = list(items)
    relink(wrong, 2, prev=att.prev_digest(items[0][0]))  # seq 3 claims to follow seq 1
    relink(wrong, 3, prev=att.prev_digest(wrong[2][0]))  # and seq 4 follows that seq 3
    failures = att.check_chain(wrong)
    assert any(f.startswith("seq 3: prev is not the SHA-256 of attestation 2") for f in failures)
    assert not any(f.startswith("seq 4: prev") for f in failures)  # seq 4 is reported only if it is wrong too


def test_a_reordered_pair_is_caught_by_its_links() -> None:
    # Two attestations swap places: the old seq 3 is renumbered 2 and vice versa, each keeping its own prev.
    items = chain(4)
    swapped = list(items)
    relink(swapped, 1, seq=3)
    relink(swapped, 2, seq=2)
    failures = att.check_chain(swapped)
    assert any("seq 2: prev" in f for f in failures) and any("seq 3: prev" in f for f in failures)
    assert any("seq 3: as_of" in f for f in failures)  # as_of now goes backwards too


def test_a_repeated_or_earlier_as_of_is_reported_even_across_a_gap() -> None:
    items = chain(4)
    repeated = list(items)
    relink(repeated, 2, as_of=items[1][1]["as_of"])
    relink(repeated, 3, prev=att.prev_digest(repeated[2][0]))
    assert [f for f in att.check_chain(repeated) if "as_of" in f] == [
        f"seq 3: as_of {items[1][1]['as_of']} is not after {items[1][1]['as_of']} (seq 2)"]
    earlier = [items[0], (items[3][0], {**items[3][1], "as_of": "2026-01-01T00:00:00Z"})]
    assert any("seq 4: as_of" in f for f in att.check_chain(earlier))


def test_check_link_reports_each_broken_property() -> None:
    items = chain(3)
    (jws1, p1), (_, p2), (_, p3) = items
    assert att.check_link(jws1, p1, p2) == []
    assert any("does not directly follow" in f for f in att.check_link(jws1, p1, p3))
    assert any("prev is not" in f for f in att.check_link(items[1][0], p1, p2))
    assert any("as_of" in f for f in att.check_link(jws1, p1, {**p2, "as_of": p1["as_of"]}))
    assert any("not a compact JWS" in f for f in att.check_link("garbage", p1, p2))


# -- one attestation per as_of ----------------------------------------------------------------------------------------

T1 = datetime(2026, 11, 24, 16, tzinfo=UTC)
T2 = T1 + timedelta(days=1)


def test_the_first_and_the_next_attestation_are_issued() -> None:
    assert att.decide_attestation(None, None, T1, "d1") == att.Decision("issue", 1)
    assert att.decide_attestation(att.Issued(1, T1, "d1"), None, T2, "d2") == att.Decision("issue", 2)


def test_the_same_as_of_with_the_same_figures_returns_the_existing_one() -> None:
    latest = att.Issued(5, T2, "d5")
    older = att.Issued(4, T1, "d4")
    assert att.decide_attestation(latest, latest, T2, "d5") == att.Decision("reuse", 5)
    assert att.decide_attestation(latest, older, T1, "d4") == att.Decision("reuse", 4)  # a late retry
    # the payload's precision is the second: 16:00:00.4 is the as_of 16:00:00
    assert att.decide_attestation(latest, latest, T2 + timedelta(milliseconds=400), "d5").action == "reuse"


def test_the_same_as_of_with_other_figures_conflicts() -> None:
    latest = att.Issued(5, T2, "d5")
    with pytest.raises(Conflict, match=r"already issued \(seq 5\) with other figures"):  # names the one issued
        att.decide_attestation(latest, latest, T2, "corrected")
    with pytest.raises(Conflict):
        att.decide_attestation(latest, att.Issued(4, T1, "d4"), T1, "corrected")


def test_an_as_of_not_after_the_latest_conflicts() -> None:
    latest = att.Issued(5, T2, "d5")
    with pytest.raises(Conflict, match="not after"):
        att.decide_attestation(latest, None, T1, "d")
    with pytest.raises(ValueError):
        att.decide_attestation(latest, att.Issued(4, T1, "d4"), T2, "d")  # the caller passed the wrong row


def test_times_are_written_in_the_payload_format() -> None:
    assert att.utc(datetime(999, 1, 2, 3, 4, 5, 999999, tzinfo=UTC)) == "0999-01-02T03:04:05Z"
    assert att.parse_utc("0999-01-02T03:04:05Z") == datetime(999, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert att.parse_utc("2026-11-24T16:00:00.5Z") is None and att.parse_utc(20261124) is None
    with pytest.raises(ValueError):
        att.utc(datetime(2026, 11, 24))
