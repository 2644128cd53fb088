"""Pure attestation core: input validation, exact coverage, payload checks, chaining, liabilities tree."""

from __future__ import annotations

import copy
import hashlib
from datetime import UTC, datetime
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.domain import attestation as att
from appliance.domain import reserves
from appliance.domain.liabilities import LiabilityTree, verify_proof
from appliance.errors import Conflict, InvalidInput, NotFound, VerificationFailed

AS_OF = "2026-11-24T16:00:00Z"


def report(amounts: list[str], decimals: int = 2, as_of: str = AS_OF) -> dict[str, Any]:
    return {"as_of": as_of, "currency": "HKD", "decimals": decimals,
            "holdings": [{"custodian": f"C{i % 2}", "account": f"A{i}", "asset_class": ["cash", "tbill"][i % 2],
                          "amount": a} for i, a in enumerate(amounts)],
            "evidence": [{"name": "statement.pdf", "sha256": "ab" * 32}]}


def supply(total: str, decimals: int = 6, as_of: str = AS_OF) -> dict[str, Any]:
    return {"as_of": as_of, "decimals": decimals,
            "chains": [{"chain_id": 1, "contract": "0x" + "11" * 20, "total_supply": total}]}


def payload_for(r: dict[str, Any], s: dict[str, Any], seq: int = 1, prev: str | None = None) -> dict[str, Any]:
    return att.build_payload(reserves.parse_reserve_report(r), reserves.parse_supply_snapshot(s), seq=seq,
                             prev_jws=prev, issued_at=datetime(2026, 11, 25, tzinfo=UTC), issuer="Issuer",
                             token={"symbol": "HKDS"}, policy_hash="0" * 64, audit={"size": 3, "root": "AA=="},
                             liabilities=None)


# -- inputs ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("mutate", "location"), [
    (lambda d: d["holdings"][0].update(amount="-1"), "reserves.json: holdings[0].amount"),
    (lambda d: d["holdings"][0].update(amount=1.5), "reserves.json: holdings[0].amount"),
    (lambda d: d["holdings"][0].update(amount="1e5"), "reserves.json: holdings[0].amount"),
    (lambda d: d["holdings"][0].update(amount="007"), "reserves.json: holdings[0].amount"),
    (lambda d: d["holdings"][1].update(account="A0", custodian="C0"), "reserves.json: holdings[1]"),
    (lambda d: d.update(currency="hkd"), "reserves.json: currency"),
    (lambda d: d.update(decimals=19), "reserves.json: decimals"),
    (lambda d: d.update(decimals=True), "reserves.json: decimals"),
    (lambda d: d.update(as_of="2026-11-24 16:00"), "reserves.json: as_of"),
    (lambda d: d.update(as_of="2026-11-24T16:00:00"), "reserves.json: as_of"),
    (lambda d: d.update(holdings=[]), "reserves.json: holdings"),
    (lambda d: d.update(extra=1), "reserves.json: extra"),
    (lambda d: d["evidence"][0].update(sha256="XYZ"), "reserves.json: evidence[0].sha256"),
])
def test_bad_reserve_reports_are_refused_with_their_location(mutate: Any, location: str) -> None:
    data = report(["100", "200"])
    mutate(data)
    with pytest.raises(InvalidInput) as caught:
        reserves.parse_reserve_report(data)
    assert location in [p.location for p in caught.value.problems]


def test_every_problem_is_reported_at_once() -> None:
    data = report(["-1", "x", "3"])
    data["currency"] = "usd"
    with pytest.raises(InvalidInput) as caught:
        reserves.parse_reserve_report(data)
    assert len(caught.value.problems) == 3


def test_bad_supply_snapshots() -> None:
    data = supply("10")
    data["chains"].append(dict(data["chains"][0]))
    data["chains"][0]["contract"] = "0x12"
    with pytest.raises(InvalidInput) as caught:
        reserves.parse_supply_snapshot(data)
    locations = [p.location for p in caught.value.problems]
    assert "supply.json: chains[0].contract" in locations and "supply.json: chains[1].chain_id" in locations


def test_holders_csv() -> None:
    assert reserves.parse_holders_csv("account,balance\nalice,10\nbob,0\n\n") == [("alice", 10), ("bob", 0)]
    for bad in ("acct,bal\na,1\n", "account,balance\na,-1\n", "account,balance\na,1.5\n", "account,balance\n,5\n",
                "account,balance\na,01\n", "account,balance\na,1,2\n"):
        with pytest.raises(InvalidInput):
            reserves.parse_holders_csv(bad)
    with pytest.raises(InvalidInput) as caught:
        reserves.parse_holders_csv("account,balance\na,1\nb,x\n")
    assert caught.value.problems[0].location == "holders.csv: line 3"


def test_currency_and_time_must_match() -> None:
    r = reserves.parse_reserve_report(report(["1"]))
    s = reserves.parse_supply_snapshot(supply("1", as_of="2026-11-26T16:00:00Z"))
    with pytest.raises(InvalidInput) as caught:
        reserves.check_consistency(r, s, "CNH", tolerance_seconds=3600)
    assert len(caught.value.problems) == 2


# -- exact arithmetic ------------------------------------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(st.integers(0, 10**30), st.integers(1, 10**30), st.integers(0, 18), st.integers(0, 18))
def test_coverage_is_exact(r: int, s: int, rd: int, sd: int) -> None:
    expected = int(Fraction(r, 10**rd) * 10000 / Fraction(s, 10**sd))
    if expected > 2**53 - 1:  # not carried exactly by a JSON integer: refused, never rounded
        with pytest.raises(InvalidInput, match="coverage is too large"):
            payload_for(report([str(r)], rd), supply(str(s), sd))
        return
    payload = payload_for(report([str(r)], rd), supply(str(s), sd))
    assert payload["coverage_bps"] == expected
    assert payload["status"] == ("FULLY_BACKED" if expected >= 10000 else "UNDER_BACKED")
    assert att.check_payload(payload) == []


def test_coverage_boundaries() -> None:
    exactly = payload_for(report(["100000000"], 2), supply(str(10**6 * 10**6), 6))  # 1,000,000.00 HKD vs 1M tokens
    assert exactly["coverage_bps"] == 10000 and exactly["status"] == "FULLY_BACKED"
    below = payload_for(report(["99999999"], 2), supply(str(10**6 * 10**6), 6))  # one cent short
    assert below["coverage_bps"] == 9999 and below["status"] == "UNDER_BACKED"
    nothing = payload_for(report(["1"]), supply("0"))
    assert nothing["coverage_bps"] is None and nothing["status"] == "FULLY_BACKED"


def test_payload_shape_and_totals() -> None:
    p = payload_for(report(["100", "250", "7"]), supply("3570000"))
    assert p["reserves"] == {"total": "357", "decimals": 2, "by_asset_class": {"cash": "107", "tbill": "250"},
                             "by_custodian": {"C0": "107", "C1": "250"}}
    assert p["seq"] == 1 and p["prev"] is None and p["as_of"] == AS_OF
    assert all(isinstance(v, str) for v in p["reserves"]["by_asset_class"].values())


@pytest.mark.parametrize("tamper", [
    lambda p: p["reserves"].update(total="358"),
    lambda p: p["reserves"]["by_custodian"].update(C0="108"),
    lambda p: p["supply"].update(total="1"),
    lambda p: p.update(coverage_bps=p["coverage_bps"] + 1),
    lambda p: p.update(status="UNDER_BACKED"),
    lambda p: p.update(coverage_bps=1.0),
    lambda p: p["reserves"].update(total=357),
    lambda p: p.pop("audit"),
])
def test_check_payload_catches_tampering(tamper: Any) -> None:
    p = payload_for(report(["100", "250", "7"]), supply("3570000"))
    tamper(p)
    assert att.check_payload(p) != []


def test_seq_and_prev_must_agree() -> None:
    with pytest.raises(ValueError):
        payload_for(report(["1"]), supply("1"), seq=2, prev=None)
    with pytest.raises(ValueError):
        payload_for(report(["1"]), supply("1"), seq=1, prev="x.y.z")


# -- chaining ---------------------------------------------------------------------------------------------------------

def chain(n: int) -> list[tuple[str, dict[str, Any]]]:
    items: list[tuple[str, dict[str, Any]]] = []
    prev = None
    for i in range(n):
        stamp = f"2026-11-{10 + i:02d}T16:00:00Z"
        p = payload_for(report(["1"], as_of=stamp), supply("1", as_of=stamp), seq=i + 1, prev=prev)
        prev = f"h{i}.{hashlib.sha256(repr(p).encode()).hexdigest()}.s"
        items.append((prev, p))
    return items


def test_a_good_chain_in_any_order() -> None:
    items = chain(4)
    assert att.check_chain(list(reversed(items))) == []


def test_chain_faults_are_each_reported() -> None:
    items = chain(4)
    assert any("seq 3 missing" in f for f in att.check_chain([items[0], items[1], items[3]]))
    wrong = copy.deepcopy(items)
    wrong[2][1]["prev"] = att.prev_digest(items[0][0])
    assert any("prev" in f for f in att.check_chain(wrong))
    repeated = copy.deepcopy(items)
    repeated[2][1]["as_of"] = repeated[1][1]["as_of"]
    assert any("as_of" in f for f in att.check_chain(repeated))
    assert any("appears twice" in f for f in att.check_chain([items[0], items[1], items[1]]))
    assert any("starts at seq 2" in f for f in att.check_chain(items[1:]))


def test_one_attestation_per_as_of() -> None:
    t1 = datetime(2026, 11, 24, tzinfo=UTC)
    t2 = datetime(2026, 11, 25, tzinfo=UTC)
    assert att.decide_attestation(None, None, t1, "d") == att.Decision("issue", 1)
    first = att.Issued(1, t1, "d")
    assert att.decide_attestation(first, first, t1, "d") == att.Decision("reuse", 1)
    with pytest.raises(Conflict, match=r"already issued \(seq 1\) with other figures"):
        att.decide_attestation(first, first, t1, "other")
    with pytest.raises(Conflict):
        att.decide_attestation(att.Issued(2, t2, "e"), None, t1, "d")
    assert att.decide_attestation(first, None, t2, "e") == att.Decision("issue", 2)


# -- liabilities ------------------------------------------------------------------------------------------------------

SECRET = b"test-secret"
holder_sets = st.dictionaries(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12),
                              st.integers(0, 10**30), min_size=1, max_size=60)


@settings(max_examples=60, deadline=None)
@given(holder_sets)
def test_every_holders_proof_verifies(holders: dict[str, int]) -> None:
    tree = LiabilityTree.build(holders.items(), SECRET)
    assert tree.total == sum(holders.values()) and tree.leaves == len(holders)
    for account in holders:
        proof = tree.proof(account)
        assert proof["balance"] == str(holders[account])
        verify_proof(proof, tree.root.hex(), tree.total, tree.leaves)


@settings(max_examples=60, deadline=None)
@given(holder_sets, st.data())
def test_changing_or_omitting_a_holder_breaks_root_or_total(holders: dict[str, int], data: st.DataObject) -> None:
    tree = LiabilityTree.build(holders.items(), SECRET)
    victim = data.draw(st.sampled_from(sorted(holders)))
    changed = dict(holders)
    changed[victim] = holders[victim] + data.draw(st.integers(1, 10**6))
    other = LiabilityTree.build(changed.items(), SECRET)
    assert (other.root, other.total) != (tree.root, tree.total)
    if len(holders) > 1:
        omitted = {k: v for k, v in holders.items() if k != victim}
        smaller = LiabilityTree.build(omitted.items(), SECRET)
        assert (smaller.root, smaller.total) != (tree.root, tree.total)


@pytest.mark.parametrize("tamper", [
    lambda p: p.update(balance=str(int(p["balance"]) + 1)),
    lambda p: p.update(salt="00" * 32),
    lambda p: p.update(account=p["account"] + "x"),
    lambda p: p["path"][0].update(hash="00" * 32),
    lambda p: p["path"][0].update(sum=str(int(p["path"][0]["sum"]) + 1)),
    lambda p: p["path"][0].update(side="left" if p["path"][0]["side"] == "right" else "right"),
    lambda p: p.update(index=(p["index"] + 1) % p["leaves"]),
    lambda p: p["path"].pop(),
    lambda p: p["path"].append(p["path"][0]),
])
def test_tampered_proofs_fail(tamper: Any) -> None:
    holders = {f"h{i}": 1000 + i for i in range(13)}
    tree = LiabilityTree.build(holders.items(), SECRET)
    proof = tree.proof("h5")
    tamper(proof)
    with pytest.raises(VerificationFailed):
        verify_proof(proof, tree.root.hex(), tree.total, tree.leaves)


def test_tree_refusals_and_privacy() -> None:
    with pytest.raises(InvalidInput):
        LiabilityTree.build([("a", 2**128)], SECRET)
    with pytest.raises(InvalidInput):
        LiabilityTree.build([("a", 2**127), ("b", 2**127)], SECRET)
    with pytest.raises(InvalidInput):
        LiabilityTree.build([("a", 1), ("a", 2)], SECRET)
    with pytest.raises(InvalidInput):
        LiabilityTree.build([], SECRET)
    tree = LiabilityTree.build([("alice", 5), ("bob", 7)], SECRET)
    with pytest.raises(NotFound):
        tree.proof("carol")
    assert "bob" not in repr(tree.proof("alice"))
    other_secret = LiabilityTree.build([("alice", 5), ("bob", 7)], b"another")
    assert other_secret.root != tree.root  # salts come from the secret
