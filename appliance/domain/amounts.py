"""Amounts as integers of minor/base units: strict parsing, exact scaling, coverage and display.

Never floats. On the wire an amount is a decimal string of integer units ("1000000" at 6 decimals is one
token); JSON numbers are refused because many JSON implementations read them as IEEE doubles.
"""

from __future__ import annotations

import re

from appliance.domain import patterns
from appliance.errors import InvalidInput, Problem

MAX_UINT256 = 2**256 - 1
MAX_DECIMALS = 18
BPS = 10_000  # basis points in one whole (100 %)

# [0-9] rather than \d: \d (like str.isdigit) also matches Arabic-Indic, fullwidth and other Unicode digits.


def _invalid(location: str, message: str) -> InvalidInput:
    return InvalidInput(f"{location}: {message}", [Problem(location, message)])


def _kind(value: object) -> str:
    """What a non-string JSON value is, as the sender would call it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return f"a {type(value).__name__}"


def _diagnose(text: str) -> str:
    """Why a string is not a canonical decimal, in the words an operator needs to fix it."""
    if text == "":
        return "is empty: amounts are decimal strings of integer units"
    if text != text.strip() or any(c.isspace() for c in text):
        return "contains whitespace"
    if text[0] in "+-":
        return "must not have a sign"
    if "_" in text or "," in text:
        return "must not contain digit separators (_ or ,)"
    if "." in text:
        return "must be an integer number of units, without a decimal point"
    if not text.isascii():
        return "must contain only the ASCII digits 0-9"
    if "e" in text.lower() and text.lower().replace("e", "", 1).isdigit():
        return "must not use an exponent: write every digit"
    if text.isdigit() and text[0] == "0":
        return "must not have leading zeros"
    return "must be a decimal string of integer units (ASCII digits only)"


def parse_amount(value: object, location: str, *, allow_zero: bool = False, maximum: int = MAX_UINT256) -> int:
    """The integer behind a canonical decimal string of units, e.g. "1000000" -> 1000000.

    Accepted: a `str` matching ^(0|[1-9][0-9]*)$. Refused with InvalidInput (a Problem at `location`): any
    non-string (int, float and bool included: amounts are decimal strings of integer units), a sign, leading
    zeros, an exponent, a decimal point, whitespace, digit separators, non-ASCII digits; zero unless
    allow_zero; anything above `maximum` (default 2**256 - 1, the largest uint256).
    """
    if not isinstance(value, str):
        raise _invalid(location, f"amounts are decimal strings of integer units (like \"1000000\"), not {_kind(value)}")
    if not patterns.DECIMAL.fullmatch(value):
        raise _invalid(location, _diagnose(value))
    # Length first: without leading zeros more digits is a larger number, and huge strings never reach int().
    if len(value) > len(str(maximum)) or int(value) > maximum:
        raise _invalid(location, f"must be at most {maximum}")
    amount = int(value)
    if amount == 0 and not allow_zero:
        raise _invalid(location, "must be greater than zero")
    return amount


def parse_decimals(value: object, location: str) -> int:
    """A number of decimals: an int (not a bool) from 0 to 18; InvalidInput at `location` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid(location, f"decimals must be an integer from 0 to {MAX_DECIMALS}")
    if not 0 <= value <= MAX_DECIMALS:
        raise _invalid(location, f"decimals must be from 0 to {MAX_DECIMALS}, not {value}")
    return value


def _check_decimals(*decimals: int) -> None:
    for d in decimals:
        if isinstance(d, bool) or not isinstance(d, int) or d < 0:
            raise ValueError(f"decimals must be a non-negative integer, not {d!r}")


def scale(amount: int, from_decimals: int, to_decimals: int) -> int:
    """amount (in units of 10**-from_decimals) expressed in units of 10**-to_decimals, exactly.

    Raises ValueError when to_decimals < from_decimals (that would divide and could lose units) or when a
    decimals value is negative.
    """
    _check_decimals(from_decimals, to_decimals)
    if to_decimals < from_decimals:
        raise ValueError(f"scaling from {from_decimals} down to {to_decimals} decimals is not exact")
    factor: int = 10 ** (to_decimals - from_decimals)
    return amount * factor


def common_scale(a: int, a_dec: int, b: int, b_dec: int) -> tuple[int, int, int]:
    """(a, b, d): both amounts scaled exactly to d = max(a_dec, b_dec) decimals. ValueError as scale()."""
    d = max(a_dec, b_dec)
    return scale(a, a_dec, d), scale(b, b_dec, d), d


def coverage_bps(reserves: int, reserve_decimals: int, supply: int, supply_decimals: int) -> int | None:
    """floor(reserves * 10000 / supply) in basis points, both sides in a common unit; None when supply is 0.

    Exact integer arithmetic: 10000 means fully backed, 9999 means short by any amount up to 0.01 %.
    Raises ValueError for negative amounts or decimals.
    """
    if reserves < 0 or supply < 0:
        raise ValueError("reserves and supply cannot be negative")
    r, s, _ = common_scale(reserves, reserve_decimals, supply, supply_decimals)
    if s == 0:
        return None
    return r * BPS // s


def format_units(amount: int, decimals: int) -> str:
    """Exact human display with thousands separators: (1000000000000, 6) -> "1,000,000.000000".

    For the CLI only; never parse this back. Raises ValueError for negative decimals.
    """
    _check_decimals(decimals)
    sign = "-" if amount < 0 else ""
    whole, fraction = divmod(abs(amount), 10**decimals)
    text = f"{sign}{whole:,}"
    return f"{text}.{fraction:0{decimals}d}" if decimals else text


_TOKENS = re.compile(r"(?P<whole>[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.(?P<fraction>[0-9]+))?")


def parse_tokens(text: object, decimals: int, location: str, *, symbol: str | None = None) -> int:
    """Base units of an amount written in whole tokens, as an officer types it: "250000", "250,000",
    "1,234.5" (at most `decimals` fraction digits, commas only as correct thousands groups), optionally followed
    by the token's `symbol` ("250000 HKDS"). Exact (never a float); InvalidInput at `location` otherwise, and
    for zero or more than 2^256 - 1 base units."""
    _check_decimals(decimals)
    if not isinstance(text, str):
        raise _invalid(location, f"must be an amount in tokens such as \"250,000\", not {_kind(text)}")
    value = text.strip()
    if symbol and value.upper().endswith(symbol.upper()):
        value = value[: -len(symbol)].rstrip()
    match = _TOKENS.fullmatch(value) if len(value) <= 100 else None
    if match is None:
        raise _invalid(location, f"{text[:40]!r} is not an amount in tokens (digits, optional thousands commas and "
                                 "a decimal point)")
    fraction = match["fraction"] or ""
    if len(fraction) > decimals:
        raise _invalid(location, f"has {len(fraction)} decimal places; the token has {decimals}")
    units: int = int(match["whole"].replace(",", "")) * 10**decimals + int(fraction.ljust(decimals, "0") or "0")
    if not 0 < units <= MAX_UINT256:
        raise _invalid(location, "must be more than zero" if units == 0 else "is larger than 2^256 - 1 base units")
    return units


def format_tokens(amount: int, decimals: int, symbol: str = "") -> str:
    """An amount of base units as an officer reads it: thousands separators, no trailing fraction zeros, and
    the symbol: (250000000000, 6, "HKDS") -> "250,000 HKDS"; (1500000, 6) -> "1.5"."""
    text = format_units(amount, decimals)
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return f"{text} {symbol}" if symbol else text
