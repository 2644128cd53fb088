"""domain.patterns: one definition per validation pattern, applied with fullmatch only."""

from __future__ import annotations

import re

import pytest

from appliance.domain import patterns

ADDRESS = "0x" + "aB" * 20


@pytest.mark.parametrize(("pattern", "good", "bad"), [
    (patterns.DECIMAL, ["0", "7", "1000"], ["", "01", "-1", "1.0", "1,000", "\u0661", "1\n"]),
    (patterns.HEX64, ["ab" * 32], ["AB" * 32, "ab" * 31, "ab" * 32 + "\n"]),
    (patterns.ADDRESS, [ADDRESS, ADDRESS.lower()], [ADDRESS + "\n", ADDRESS[2:], ADDRESS + "0", "0X" + "ab" * 20]),
    (patterns.CURRENCY, ["HKD", "CNH"], ["hkd", "HK", "HKDS", "HKD\n"]),
    (patterns.B64URL, ["", "AQAB", "a-_b"], ["a+b", "a/b", "AQ==", "a b"]),
    (patterns.COMPACT_JWS, ["a.b.c", "a..c"], ["a.b", ".b.c", "a.b.", "a.b.c\n"]),
    (patterns.NAME, ["alice", "a", "bob-2_x"], ["Alice", "2bob", "", "a" * 33, "bob\n"]),
    (patterns.NONCE, ["0x" + "0f" * 32], ["0x" + "0F" * 32, "0f" * 32, "0x" + "0f" * 31]),
])
def test_each_pattern_takes_exactly_its_form(pattern: re.Pattern[str], good: list[str], bad: list[str]) -> None:
    assert all(pattern.fullmatch(g) for g in good)
    assert not any(pattern.fullmatch(b) for b in bad)
