"""Integer amounts: strict parsing, exact scaling and coverage, display."""

from __future__ import annotations

import re
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.domain.amounts import (
    MAX_UINT256,
    common_scale,
    coverage_bps,
    format_units,
    parse_amount,
    parse_decimals,
    scale,
)
from appliance.errors import InvalidInput


@pytest.mark.parametrize(("text", "expected"), [
    ("1", 1),
    ("1000", 1000),
    ("1000000000000000000", 10**18),
    (str(MAX_UINT256), MAX_UINT256),
])
def test_accepted(text: str, expected: int) -> None:
    assert parse_amount(text, "amount") == expected


def test_zero_only_when_allowed() -> None:
    with pytest.raises(InvalidInput, match="greater than zero"):
        parse_amount("0", "amount")
    assert parse_amount("0", "amount", allow_zero=True) == 0


@pytest.mark.parametrize(("value", "message"), [
    ("-1", "sign"),
    ("+1", "sign"),
    ("01", "leading zeros"),
    ("00", "leading zeros"),
    ("1e18", "exponent"),
    ("1E18", "exponent"),
    ("1.0", "decimal point"),
    (".5", "decimal point"),
    (" 1", "whitespace"),
    ("1 ", "whitespace"),
    ("1\n", "whitespace"),   # `$` in a regex would have let this one through
    ("1_000", "separators"),
    ("1,000", "separators"),
    ("\uff11", "ASCII"),      # fullwidth digit one: str.isdigit() says True
    ("\u0661", "ASCII"),      # Arabic-Indic digit one
    ("", "empty"),
    ("0x10", "decimal string"),
    ("one", "decimal string"),
    (1000, "decimal strings"),
    (1.5, "decimal strings"),
    (True, "decimal strings"),
    (None, "decimal strings"),
    (str(2**256), "at most"),
    ("9" * 5000, "at most"),
])
def test_refused(value: object, message: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        parse_amount(value, "holdings[3].amount", allow_zero=True)
    (problem,) = exc.value.problems
    assert problem.location == "holdings[3].amount"
    assert message in problem.message


def test_maximum_is_inclusive() -> None:
    assert parse_amount("100", "a", maximum=100) == 100
    with pytest.raises(InvalidInput, match="at most 100"):
        parse_amount("101", "a", maximum=100)


@given(st.integers(0, MAX_UINT256))
@settings(max_examples=200, deadline=None)
def test_round_trip(n: int) -> None:
    assert parse_amount(str(n), "a", allow_zero=True) == n


_AMOUNT_ALPHABET = st.sampled_from(list("0123456789") + ["-", "+", " ", "\n", "\t", "e", "E", ".", "_", ",", "x",
                                                           "\u0661", "\uff10", "\uff11", "\u00b2", "\u00a0"])


@given(st.text(_AMOUNT_ALPHABET, max_size=10) | st.integers(-(10**80), 10**80).map(str), st.booleans())
@settings(max_examples=1000, deadline=None)
def test_parse_amount_accepts_exactly_canonical_decimals(text: str, allow_zero: bool) -> None:
    canonical = re.fullmatch(r"0|[1-9][0-9]*", text, re.ASCII) is not None
    expected = int(text) if canonical and int(text) <= MAX_UINT256 and (allow_zero or int(text) > 0) else None
    try:
        assert parse_amount(text, "a", allow_zero=allow_zero) == expected
    except InvalidInput:
        assert expected is None, text


@pytest.mark.parametrize("value", [0, 6, 18])
def test_decimals_accepted(value: int) -> None:
    assert parse_decimals(value, "decimals") == value


@pytest.mark.parametrize("value", [-1, 19, True, "6", 6.0, None])
def test_decimals_refused(value: object) -> None:
    with pytest.raises(InvalidInput) as exc:
        parse_decimals(value, "supply.decimals")
    assert exc.value.problems[0].location == "supply.decimals"


def test_scale() -> None:
    assert scale(12345, 2, 6) == 123450000
    assert scale(7, 3, 3) == 7
    assert common_scale(5, 2, 7, 6) == (50000, 7, 6)
    assert common_scale(5, 6, 7, 2) == (5, 70000, 6)
    with pytest.raises(ValueError):
        scale(100, 6, 2)
    with pytest.raises(ValueError):
        scale(1, -1, 2)


def test_coverage_exactly_at_full_and_one_unit_below() -> None:
    # 1,000,000.00 HKD of reserves (2 decimals) against 1,000,000.000000 tokens (6 decimals)
    supply = 1_000_000 * 10**6
    assert coverage_bps(1_000_000_00, 2, supply, 6) == 10000
    assert coverage_bps(1_000_000_00 - 1, 2, supply, 6) == 9999
    # one base unit of excess supply is enough to fall below 100 %
    assert coverage_bps(1_000_000_00, 2, supply + 1, 6) == 9999
    assert coverage_bps(1_000_000_00, 2, supply - 1, 6) == 10000
    assert coverage_bps(0, 2, supply, 6) == 0
    assert coverage_bps(5, 2, 0, 6) is None
    assert coverage_bps(0, 0, 0, 0) is None
    # floor at the basis-point boundary: 1 unit in 10000 is exactly one basis point
    assert [coverage_bps(r, 0, 10_000, 0) for r in (9_998, 9_999, 10_000, 10_001)] == [9998, 9999, 10000, 10001]
    assert coverage_bps(1, 0, 3, 0) == 3333 and coverage_bps(2, 0, 3, 0) == 6666  # floor, never rounded up


def test_coverage_with_decimals_on_either_side() -> None:
    for r_dec in range(19):
        for s_dec in range(19):
            r = 10**30 * 10**r_dec
            s = 10**30 * 10**s_dec
            assert coverage_bps(r, r_dec, s, s_dec) == 10000
            assert coverage_bps(r - 1, r_dec, s, s_dec) == 9999
            assert coverage_bps(r, r_dec, s + 1, s_dec) == 9999


@given(st.integers(10_001, 10**30), st.integers(0, 18), st.integers(0, 18))
@settings(max_examples=300, deadline=None)
def test_coverage_is_10000_when_equal_after_scaling_and_9999_one_unit_below(units: int, r_dec: int,
                                                                           s_dec: int) -> None:
    # `units` counted in the coarser of the two units, so both sides can hold exactly the same value.
    coarse = min(r_dec, s_dec)
    reserves, supply = units * 10 ** (r_dec - coarse), units * 10 ** (s_dec - coarse)
    assert coverage_bps(reserves, r_dec, supply, s_dec) == 10000
    assert coverage_bps(reserves - 1, r_dec, supply, s_dec) == 9999  # one minor unit of reserves short
    assert coverage_bps(reserves, r_dec, supply + 1, s_dec) == 9999  # one base unit of supply too many
    assert coverage_bps(reserves + 1, r_dec, supply, s_dec) == 10000  # floor: an excess below 1 bp (units > 10000)
    assert coverage_bps(reserves, r_dec, 0, s_dec) is None


def test_coverage_refuses_negative() -> None:
    with pytest.raises(ValueError):
        coverage_bps(-1, 2, 10, 2)


@given(st.integers(0, 10**30), st.integers(0, 18), st.integers(0, 10**30), st.integers(0, 18))
@settings(max_examples=500, deadline=None)
def test_coverage_matches_exact_rational_arithmetic(r: int, r_dec: int, s: int, s_dec: int) -> None:
    result = coverage_bps(r, r_dec, s, s_dec)
    if s == 0:
        assert result is None
        return
    exact = Fraction(r, 10**r_dec) / Fraction(s, 10**s_dec) * 10000
    assert result == exact.numerator // exact.denominator  # floor


@pytest.mark.parametrize(("amount", "decimals", "text"), [
    (1_000_000_000_000, 6, "1,000,000.000000"),
    (1, 6, "0.000001"),
    (123456789, 2, "1,234,567.89"),
    (999, 0, "999"),
    (1000, 0, "1,000"),
    (0, 2, "0.00"),
    (-150, 2, "-1.50"),
    (MAX_UINT256, 18, "115,792,089,237,316,195,423,570,985,008,687,907,853,269,984,665,640,564,039,457"
                      ".584007913129639935"),
])
def test_format_units(amount: int, decimals: int, text: str) -> None:
    assert format_units(amount, decimals) == text


@given(st.integers(0, 10**40), st.integers(0, 18))
@settings(max_examples=200, deadline=None)
def test_format_units_is_exact(amount: int, decimals: int) -> None:
    text = format_units(amount, decimals).replace(",", "")
    whole, _, fraction = text.partition(".")
    assert len(fraction) == decimals
    assert int(whole + fraction) == amount
