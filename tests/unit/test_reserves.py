"""Attestation inputs: the reserve report, the supply snapshot, the holder-balances CSV, and their consistency."""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from appliance.domain import reserves
from appliance.errors import InvalidInput

AS_OF = "2026-11-24T16:00:00Z"


def report() -> dict[str, Any]:
    return {"as_of": AS_OF, "currency": "HKD", "decimals": 2,
            "holdings": [{"custodian": "Bank A", "account": "001-1", "asset_class": "cash", "amount": "100"},
                         {"custodian": "Bank A", "account": "001-2", "asset_class": "tbill", "amount": "250"},
                         {"custodian": "Bank B", "account": "9", "asset_class": "deposit", "amount": "7"}],
            "evidence": [{"name": "statement-a.pdf", "sha256": "ab" * 32}]}


def supply() -> dict[str, Any]:
    return {"as_of": AS_OF, "decimals": 6,
            "chains": [{"chain_id": 1, "contract": "0x" + "11" * 20, "total_supply": "3570000"}]}


def problems_of(parse: Callable[[Any], Any], data: Any) -> dict[str, str]:
    with pytest.raises(InvalidInput) as caught:
        parse(data)
    return {p.location: p.message for p in caught.value.problems}


# -- reserve report ---------------------------------------------------------------------------------------------

def test_a_good_report_is_parsed() -> None:
    r = reserves.parse_reserve_report(report())
    assert r.as_of == datetime(2026, 11, 24, 16, tzinfo=UTC) and r.as_of_text == AS_OF
    assert r.currency == "HKD" and r.decimals == 2 and r.total == 357
    assert [h.amount for h in r.holdings] == [100, 250, 7]
    assert r.evidence[0].sha256 == "ab" * 32


def test_as_of_with_an_offset_is_normalized_to_utc_and_the_original_is_kept() -> None:
    data = report()
    data["as_of"] = "2026-11-25T00:00:00.123456789+08:00"
    r = reserves.parse_reserve_report(data)
    assert r.as_of == datetime(2026, 11, 24, 16, 0, 0, 123456, tzinfo=UTC)
    assert r.as_of_text == "2026-11-25T00:00:00.123456789+08:00"
    data["as_of"] = "2026-11-24t16:00:00z"  # RFC 3339 allows lower-case t and z
    assert reserves.parse_reserve_report(data).as_of == datetime(2026, 11, 24, 16, tzinfo=UTC)


def test_evidence_is_optional_and_any_asset_class_label_is_accepted() -> None:
    data = report()
    del data["evidence"]
    data["holdings"][0]["asset_class"] = "Money market fund (HKD)"
    data["holdings"][1]["amount"] = "0"  # a closed account reported at zero
    r = reserves.parse_reserve_report(data)
    assert r.evidence == () and r.holdings[0].asset_class == "Money market fund (HKD)" and r.total == 107


def set_(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A mutation that sets data[path] (dotted, with list indexes) to value."""
    def mutate(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = data
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        if isinstance(target, list):
            target[int(last)] = value
        else:
            target[last] = value
    return mutate


def delete(path: str) -> Callable[[dict[str, Any]], None]:
    def mutate(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = data
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        del target[last]
    return mutate


R = "reserves.json: "


@pytest.mark.parametrize(("mutate", "location", "words"), [
    (set_("holdings.0.amount", "-1"), R + "holdings[0].amount", "sign"),
    (set_("holdings.0.amount", "+1"), R + "holdings[0].amount", "sign"),
    (set_("holdings.0.amount", 100), R + "holdings[0].amount", "not a number"),
    (set_("holdings.0.amount", 1.5), R + "holdings[0].amount", "not a number"),
    (set_("holdings.0.amount", True), R + "holdings[0].amount", "not a boolean"),
    (set_("holdings.0.amount", "1.50"), R + "holdings[0].amount", "decimal point"),
    (set_("holdings.0.amount", "1e5"), R + "holdings[0].amount", "exponent"),
    (set_("holdings.0.amount", "007"), R + "holdings[0].amount", "leading zeros"),
    (set_("holdings.0.amount", " 7"), R + "holdings[0].amount", "whitespace"),
    (set_("holdings.0.amount", "1_000"), R + "holdings[0].amount", "separators"),
    (set_("holdings.0.amount", "\u0661\u0662"), R + "holdings[0].amount", "ASCII"),  # Arabic-Indic digits
    (set_("holdings.0.amount", ""), R + "holdings[0].amount", "empty"),
    (set_("holdings.0.amount", str(2**256)), R + "holdings[0].amount", "at most"),
    (set_("holdings.0.custodian", ""), R + "holdings[0].custodian", "empty"),
    (set_("holdings.0.custodian", "Bank A "), R + "holdings[0].custodian", "whitespace"),
    (set_("holdings.0.account", 17), R + "holdings[0].account", "string"),
    (set_("holdings.0.account", "a\x00b"), R + "holdings[0].account", "control"),
    (set_("holdings.0.account", "\ud800"), R + "holdings[0].account", ""),  # a lone surrogate
    (set_("holdings.0.asset_class", ""), R + "holdings[0].asset_class", "empty"),
    (set_("holdings.0.asset_class", "x" * 201), R + "holdings[0].asset_class", "200"),
    (set_("holdings.2.account", "001-1"), R + "holdings[2]", ""),  # not a duplicate: Bank B, not Bank A
    (set_("holdings.1.account", "001-1"), R + "holdings[1]", "holdings[0]"),
    (set_("holdings.0.memo", "x"), R + "holdings[0].memo", "unknown"),
    (delete("holdings.0.amount"), R + "holdings[0].amount", "required"),
    (set_("holdings.1", "cash 250"), R + "holdings[1]", "object"),
    (set_("holdings", []), R + "holdings", "empty"),
    (set_("holdings", {"a": 1}), R + "holdings", "list"),
    (delete("holdings"), R + "holdings", "required"),
    (set_("currency", "hkd"), R + "currency", "3 capital"),
    (set_("currency", "HKDX"), R + "currency", "3 capital"),
    (set_("currency", None), R + "currency", "3 capital"),
    (set_("decimals", 19), R + "decimals", "0 to 18"),
    (set_("decimals", -1), R + "decimals", "0 to 18"),
    (set_("decimals", True), R + "decimals", "boolean"),
    (set_("decimals", 2.0), R + "decimals", "number"),
    (set_("decimals", "2"), R + "decimals", "string"),
    (set_("as_of", "2026-11-24 16:00"), R + "as_of", "RFC 3339"),
    (set_("as_of", "2026-11-24T16:00:00"), R + "as_of", "offset"),  # no offset: which time zone?
    (set_("as_of", "2026-11-24"), R + "as_of", "RFC 3339"),
    (set_("as_of", "2026-02-30T16:00:00Z"), R + "as_of", "valid date"),
    (set_("as_of", "2026-11-24T24:00:00Z"), R + "as_of", "valid date"),
    (set_("as_of", "2026-11-24T16:00:00+24:00"), R + "as_of", "valid date"),
    (set_("as_of", "2026-12-31T23:59:60Z"), R + "as_of", "leap"),
    (set_("as_of", "\uff12026-11-24T16:00:00Z"), R + "as_of", "RFC 3339"),  # a fullwidth digit
    (set_("as_of", 1764000000), R + "as_of", "number"),
    (set_("extra", 1), R + "extra", "unknown"),
    (set_("evidence.0.sha256", "AB" * 32), R + "evidence[0].sha256", "lowercase"),
    (set_("evidence.0.sha256", "ab" * 31), R + "evidence[0].sha256", "64"),
    (set_("evidence.0.sha256", "XYZ"), R + "evidence[0].sha256", "64 lowercase hex"),  # not hex at all
    (set_("evidence.0.name", ""), R + "evidence[0].name", "empty"),
    (set_("evidence.0.size", 10), R + "evidence[0].size", "unknown"),
    (set_("evidence", "statement.pdf"), R + "evidence", "list"),
])
def test_each_refused_report_names_the_problem_where_it_is(mutate: Callable[[dict[str, Any]], None], location: str,
                                                           words: str) -> None:
    data = report()
    mutate(data)
    if location == R + "holdings[2]":  # the same account number at another custodian is a different account
        reserves.parse_reserve_report(data)
        return
    found = problems_of(reserves.parse_reserve_report, data)
    assert location in found, found
    assert words in found[location]


def test_every_problem_of_a_report_is_reported_at_once() -> None:
    data = report()
    data["currency"] = "usd"
    data["holdings"][0]["amount"] = "-1"
    data["holdings"][1]["amount"] = 2.5
    data["holdings"][2]["account"] = ""
    data["evidence"].append({"name": "statement-a.pdf", "sha256": "cd" * 32})
    data["note"] = "x"
    del data["decimals"]
    found = problems_of(reserves.parse_reserve_report, data)
    assert set(found) == {R + "currency", R + "holdings[0].amount", R + "holdings[1].amount",
                          R + "holdings[2].account", R + "evidence[1].name", R + "note", R + "decimals"}


def test_the_source_names_the_input_and_a_non_object_is_refused() -> None:
    found = problems_of(lambda d: reserves.parse_reserve_report(d, "request.reserves"), ["not", "an", "object"])
    assert found == {"request.reserves": "must be a JSON object, not a list"}


def test_the_same_report_reordered_gives_the_same_total() -> None:
    data = report()
    other = copy.deepcopy(data)
    other["holdings"].reverse()
    assert reserves.parse_reserve_report(data).total == reserves.parse_reserve_report(other).total


# -- supply snapshot ----------------------------------------------------------------------------------------------

S = "supply.json: "


def test_a_good_snapshot_is_parsed_and_chains_are_ordered() -> None:
    data = supply()
    data["chains"].insert(0, {"chain_id": 137, "contract": "0x" + "aB" * 20, "total_supply": "5"})
    s = reserves.parse_supply_snapshot(data)
    assert [c.chain_id for c in s.chains] == [1, 137] and s.total == 3570005 and s.decimals == 6


@pytest.mark.parametrize(("mutate", "location", "words"), [
    (set_("chains.0.chain_id", 0), S + "chains[0].chain_id", "integer from 1"),
    (set_("chains.0.chain_id", -1), S + "chains[0].chain_id", "integer from 1"),
    (set_("chains.0.chain_id", True), S + "chains[0].chain_id", "integer from 1"),
    (set_("chains.0.chain_id", "1"), S + "chains[0].chain_id", "integer from 1"),
    (set_("chains.0.chain_id", 2**53), S + "chains[0].chain_id", "integer from 1"),
    (set_("chains.0.contract", "0x12"), S + "chains[0].contract", "40 hex"),
    (set_("chains.0.contract", "11" * 21), S + "chains[0].contract", "40 hex"),
    (set_("chains.0.contract", "0x" + "g1" * 20), S + "chains[0].contract", "40 hex"),
    (set_("chains.0.total_supply", "-5"), S + "chains[0].total_supply", "sign"),
    (set_("chains.0.total_supply", 5), S + "chains[0].total_supply", "number"),
    (set_("chains.0.symbol", "HKDS"), S + "chains[0].symbol", "unknown"),
    (set_("chains", []), S + "chains", "empty"),
    (set_("decimals", 19), S + "decimals", "0 to 18"),
    (set_("as_of", "yesterday"), S + "as_of", "RFC 3339"),
    (delete("as_of"), S + "as_of", "required"),
    (set_("total", "1"), S + "total", "unknown"),
])
def test_each_refused_snapshot_names_the_problem(mutate: Callable[[dict[str, Any]], None], location: str,
                                                words: str) -> None:
    data = supply()
    mutate(data)
    found = problems_of(reserves.parse_supply_snapshot, data)
    assert location in found and words in found[location], found


def test_a_chain_listed_twice_is_refused_with_both_positions() -> None:
    data = supply()
    data["chains"].append(dict(data["chains"][0]))
    data["chains"][0]["contract"] = "0x12"
    found = problems_of(reserves.parse_supply_snapshot, data)
    assert set(found) == {S + "chains[0].contract", S + "chains[1].chain_id"}
    assert "chains[0]" in found[S + "chains[1].chain_id"]


# -- holder balances CSV ----------------------------------------------------------------------------------------------

H = "holders.csv: "


def test_holders_csv_happy_paths() -> None:
    assert reserves.parse_holders_csv("account,balance\nalice,10\nbob,0\n") == [("alice", 10), ("bob", 0)]
    # CRLF, a byte order mark, no final newline, blank lines, and the largest balance the tree accepts
    text = "\ufeffaccount,balance\r\nalice,10\r\n\r\nbob,340282366920938463463374607431768211455"
    assert reserves.parse_holders_csv(text) == [("alice", 10), ("bob", 2**128 - 1)]
    assert reserves.parse_holders_csv("account,balance\n") == []
    # accounts are kept exactly: case, inner spaces, non-ASCII
    text = "account,balance\nAlice Smith,1\nalice smith,2\n\u00e9l\u00e8ve,3\n"
    assert reserves.parse_holders_csv(text) == [("Alice Smith", 1), ("alice smith", 2), ("\u00e9l\u00e8ve", 3)]


@pytest.mark.parametrize(("text", "line", "words"), [
    ("", "line 1", "empty"),
    ("acct,bal\na,1\n", "line 1", "header"),
    ("Account,Balance\na,1\n", "line 1", "header"),
    ("account, balance\na,1\n", "line 1", "header"),
    ("account,balance\na,-1\n", "line 2", "sign"),
    ("account,balance\na,1.5\n", "line 2", "decimal point"),
    ("account,balance\na,1e3\n", "line 2", "exponent"),
    ("account,balance\na,01\n", "line 2", "leading zeros"),
    ("account,balance\na, 1\n", "line 2", "whitespace"),
    ("account,balance\na,\n", "line 2", "empty"),
    ("account,balance\na,\uff11\n", "line 2", "ASCII"),  # a fullwidth 1: str.isdigit() alone would accept it
    ("account,balance\na,340282366920938463463374607431768211456\n", "line 2", "at most"),
    ("account,balance\n,5\n", "line 2", "account is empty"),
    ("account,balance\n a,5\n", "line 2", "whitespace"),
    ('account,balance\n"a,b",5\n', "line 2", "comma"),
    ('account,balance\n"a",5\n', "line 2", "quoted"),
    ("account,balance\na\tb,5\n", "line 2", "non-printable"),
    ("account,balance\na\u2028b,5\n", "line 2", "non-printable"),  # splitting is on \n only: no new line here
    ("account,balance\na\rb,5\n", "line 2", "non-printable"),
    ("account,balance\na,1,2\n", "line 2", "one comma"),
    ("account,balance\nalice\n", "line 2", "one comma"),
    ("account,balance\nb,2\n   \n", "line 3", "one comma"),  # a line of spaces is not an empty line
    ("account,balance\nalice,1\nbob,2\nalice,3\n", "line 4", "line 2"),
])
def test_refused_csv_lines_are_located(text: str, line: str, words: str) -> None:
    found = problems_of(reserves.parse_holders_csv, text)
    assert H + line in found, found
    assert words in found[H + line]


def test_every_bad_line_is_reported_and_the_list_is_capped() -> None:
    found = problems_of(reserves.parse_holders_csv, "acct\na,1\nb,x\nc,2\nd,-3\n")
    assert set(found) == {H + "line 1", H + "line 3", H + "line 5"}
    bad = "account,balance\n" + "".join(f"h{i},-1\n" for i in range(reserves.MAX_CSV_PROBLEMS + 5))
    with pytest.raises(InvalidInput) as caught:
        reserves.parse_holders_csv(bad)
    problems = caught.value.problems
    assert len(problems) == reserves.MAX_CSV_PROBLEMS + 1
    assert problems[-1].location == "holders.csv" and problems[-1].message == "5 more problem(s) not listed"


def test_the_csv_streams_from_lines_with_their_endings_and_raises_at_the_end() -> None:
    lines = iter(["account,balance\n", "alice,1\n", "bob,x\n", "carol,3\r\n"])
    stream = reserves.iter_holders_csv(lines, "upload.csv")
    assert next(stream) == ("alice", 1)
    assert next(stream) == ("carol", 3)  # bob's line is skipped now and reported at the end
    with pytest.raises(InvalidInput) as caught:
        next(stream)
    assert [p.location for p in caught.value.problems] == ["upload.csv: line 3"]


def test_duplicate_checking_can_be_left_to_the_tree() -> None:
    text = "account,balance\na,1\na,2\n"
    with pytest.raises(InvalidInput):
        reserves.parse_holders_csv(text)
    assert list(reserves.iter_holders_csv(text, check_duplicates=False)) == [("a", 1), ("a", 2)]


def test_a_large_csv_streams() -> None:
    n = 200_000
    text = "account,balance\n" + "".join(f"holder-{i:07d},{i * 7919}\n" for i in range(n))
    total = count = 0
    for _, balance in reserves.iter_holders_csv(text):
        total += balance
        count += 1
    assert count == n and total == 7919 * n * (n - 1) // 2


# -- consistency ----------------------------------------------------------------------------------------------------

def test_currency_and_time_must_match_and_both_problems_are_reported() -> None:
    r = reserves.parse_reserve_report(report())
    data = supply()
    data["as_of"] = "2026-11-24T17:00:01Z"
    s = reserves.parse_supply_snapshot(data)
    with pytest.raises(InvalidInput) as caught:
        reserves.check_consistency(r, s, "CNH", tolerance_seconds=3600)
    assert [p.location for p in caught.value.problems] == ["currency", "as_of"]
    reserves.check_consistency(r, s, "HKD", tolerance_seconds=3601)  # the tolerance is inclusive
    data["as_of"] = "2026-11-25T00:00:00+08:00"  # the same instant in another zone
    reserves.check_consistency(r, reserves.parse_supply_snapshot(data), "HKD", tolerance_seconds=0)


def test_consistency_needs_the_tolerance_by_name() -> None:
    r = reserves.parse_reserve_report(report())
    s = reserves.parse_supply_snapshot(supply())
    with pytest.raises(TypeError):
        reserves.check_consistency(r, s, "HKD")  # type: ignore[call-arg]


# -- the supply snapshot against the configured chains ---------------------------------------------------------

TOKEN_A = "0x" + "11" * 20
TOKEN_B = "0x" + "22" * 20


def chains_snapshot(*entries: tuple[int, str]) -> reserves.SupplySnapshot:
    return reserves.parse_supply_snapshot({"as_of": AS_OF, "decimals": 6, "chains": [
        {"chain_id": cid, "contract": contract, "total_supply": "1"} for cid, contract in entries]})


def test_a_snapshot_of_exactly_the_configured_chains_passes() -> None:
    reserves.check_supply_chains(chains_snapshot((1, TOKEN_A), (10, TOKEN_B)), {1: TOKEN_A, 10: TOKEN_B})


def test_foreign_missing_and_wrong_contract_chains_are_each_reported() -> None:
    def check(snapshot: reserves.SupplySnapshot) -> None:
        reserves.check_supply_chains(snapshot, {1: TOKEN_A, 10: TOKEN_B, 56: TOKEN_A})

    found = problems_of(check, chains_snapshot((1, TOKEN_B), (10, TOKEN_B), (424242, TOKEN_A)))
    assert set(found) == {"supply: chains[chain_id=1].contract", "supply: chains[chain_id=424242].chain_id",
                          "supply: chains"}
    assert "56" in found["supply: chains"]


def test_the_contract_is_compared_exactly() -> None:
    checksummed = "0x57eDd9cf30f448adf17d83038999a9f488fE6E81"
    with pytest.raises(InvalidInput):
        reserves.check_supply_chains(chains_snapshot((1, checksummed.lower())), {1: checksummed})
