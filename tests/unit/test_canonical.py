"""RFC 8785 canonical JSON and strict JSON parsing."""

from __future__ import annotations

import hashlib
import json
import sys
from types import MappingProxyType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.domain.canonical import MAX_DEPTH, canonical_json, json_digest, parse_json_strict, sha256_hex
from appliance.errors import InvalidInput

# -- canonical_json -----------------------------------------------------------------------------------------------


def test_rfc8785_section_3_2_2_sample_without_numbers() -> None:
    # RFC 8785 section 3.2.2 input minus its "numbers" member (floats are refused here on purpose).
    value = {"string": "\u20ac$\u000f\u000aA'\u0042\u0022\u005c\\\"/", "literals": [None, True, False]}
    expected = '{"literals":[null,true,false],"string":"\u20ac$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
    assert canonical_json(value) == expected.encode("utf-8")


def test_rfc8785_section_3_2_3_key_sorting_by_utf16_code_units() -> None:
    value = {
        "\u20ac": "Euro Sign",
        "\r": "Carriage Return",
        "\ufb33": "Hebrew Letter Dalet With Dagesh",
        "1": "One",
        "\U0001f600": "Emoji: Grinning Face",
        "\u0080": "Control",
        "\u00f6": "Latin Small Letter O With Diaeresis",
    }
    # UTF-16 order puts the emoji (surrogates D83D...) before U+FB33, unlike code-point order.
    expected = ('{"\\r":"Carriage Return","1":"One","\u0080":"Control",'
                '"\u00f6":"Latin Small Letter O With Diaeresis","\u20ac":"Euro Sign",'
                '"\U0001f600":"Emoji: Grinning Face","\ufb33":"Hebrew Letter Dalet With Dagesh"}')
    assert canonical_json(value) == expected.encode("utf-8")


def test_nested_ordering_no_whitespace_and_mapping_types() -> None:
    value = MappingProxyType({"b": (1, {"z": None, "a": "x"}), "a": -5})
    assert canonical_json(value) == b'{"a":-5,"b":[1,{"a":"x","z":null}]}'


@pytest.mark.parametrize(("value", "path"), [
    (1.5, "$"),
    ({"reserves": {"total": 1.0}}, "$.reserves.total"),
    ({"a": [1, 2, float("nan")]}, "$.a[2]"),
    ([0.0], "$[0]"),
])
def test_floats_are_refused_anywhere(value: object, path: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        canonical_json(value)
    assert exc.value.problems[0].location == path
    assert "decimal strings" in exc.value.problems[0].message


def test_integers_beyond_ijson_range_are_refused_but_bools_and_edges_pass() -> None:
    assert canonical_json([2**53 - 1, -(2**53 - 1), True]) == b"[9007199254740991,-9007199254740991,true]"
    with pytest.raises(InvalidInput, match="2\\*\\*53"):
        canonical_json({"amount": 2**53})


def test_lone_surrogate_is_invalid_input_and_non_json_types_are_type_errors() -> None:
    with pytest.raises(InvalidInput):
        canonical_json({"a": "\ud800"})
    with pytest.raises(TypeError):
        canonical_json({"a": b"bytes"})
    with pytest.raises(TypeError):
        canonical_json({1: "non-string key"})


def test_digests() -> None:
    assert sha256_hex(b"abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert json_digest({"b": 1, "a": "x"}) == hashlib.sha256(b'{"a":"x","b":1}').hexdigest()


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


def reference_jcs(value: object) -> str:
    """A naive RFC 8785 serializer for values without floats: sorted by UTF-16 code units, no whitespace."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # escapes exactly ", \\ and controls, like RFC 8785 3.2.2.2
    if isinstance(value, list):
        return "[" + ",".join(reference_jcs(v) for v in value) + "]"
    assert isinstance(value, dict)
    keys = sorted(value, key=lambda k: k.encode("utf-16-be"))
    return "{" + ",".join(json.dumps(k, ensure_ascii=False) + ":" + reference_jcs(value[k]) for k in keys) + "}"


@given(_json)
@settings(max_examples=300, deadline=None)
def test_canonical_json_matches_a_naive_reference(value: object) -> None:
    assert canonical_json(value) == reference_jcs(value).encode("utf-8")


def test_integer_formatting() -> None:
    # RFC 8785 3.2.2.3: integers as ECMAScript prints them, i.e. plain digits, no exponent, no "+", no ".0".
    assert canonical_json([0, -0, 1, -1, 10**15, 10**6, -(2**53 - 1)]) == (
        b"[0,0,1,-1,1000000000000000,1000000,-9007199254740991]")
    assert canonical_json({"n": 100}) == b'{"n":100}'


def test_no_whitespace_anywhere() -> None:
    value = {"a b": [1, {"c": "d e", "f": [None, True]}], "g": {}}
    assert canonical_json(value) == b'{"a b":[1,{"c":"d e","f":[null,true]}],"g":{}}'
    assert canonical_json([]) == b"[]" and canonical_json({}) == b"{}"


def test_non_ascii_is_written_as_utf8_not_escaped() -> None:
    assert canonical_json({"\u00e9": "\u20ac\U0001f600"}) == '{"\u00e9":"\u20ac\U0001f600"}'.encode()
    assert canonical_json("\u007f\u2028") == '"\u007f\u2028"'.encode()


@given(_json)
@settings(max_examples=200, deadline=None)
def test_canonical_output_parses_back_strictly_to_the_same_value(value: object) -> None:
    encoded = canonical_json(value)
    assert parse_json_strict(encoded) == value
    assert canonical_json(parse_json_strict(encoded)) == encoded


# -- parse_json_strict --------------------------------------------------------------------------------------------


def test_accepts_big_integers_and_nested_objects() -> None:
    # "Big" within I-JSON: the module refuses anything beyond +-(2**53 - 1) on purpose (amounts are strings).
    text = '{"outer": {"inner": {"max": 9007199254740991, "min": -9007199254740991, "list": [[{"x": {}}]]}}}'
    assert parse_json_strict(text) == {"outer": {"inner": {"max": 2**53 - 1, "min": -(2**53 - 1),
                                                           "list": [[{"x": {}}]]}}}
    assert parse_json_strict("1234567890123456") == 1234567890123456
    assert parse_json_strict('"' + "9" * 400 + '"') == "9" * 400  # a big amount travels as a string


def test_accepts_plain_json_with_integers() -> None:
    text = '{"chain_id": 1, "amount": "1000000", "ok": true, "none": null, "list": [-3, 0]}'
    assert parse_json_strict(text) == json.loads(text)
    assert parse_json_strict(text.encode()) == json.loads(text)


@pytest.mark.parametrize(("text", "key"), [
    ('{"amount": "1", "amount": "2"}', "'amount'"),
    ('{"outer": {"to": "a", "x": 1, "to": "b"}}', "'to'"),
    ('[{"a": 1}, {"b": 1, "b": 1}]', "'b'"),
])
def test_duplicate_keys_are_refused_naming_the_key(text: str, key: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        parse_json_strict(text, "reserves.json")
    problem = exc.value.problems[0]
    assert problem.location == "reserves.json"
    assert "duplicate" in problem.message and key in problem.message


@pytest.mark.parametrize("text", [
    '{"a": 1.0}', '{"a": 1e18}', '{"a": 1E5}', "1e5", '{"a": 1e+5}', '{"a": 10e-1}', '[1.5e3]',
    '{"a": -0.5}', "[1e-7]", "0.0",
    '{"a": NaN}', '{"a": Infinity}', '{"a": -Infinity}',
])
def test_floats_exponents_and_non_finite_constants_are_refused(text: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        parse_json_strict(text, "supply")
    assert exc.value.problems[0].location == "supply"


@pytest.mark.parametrize("data", [
    b'{"a": "\xff"}',              # not UTF-8
    b'\xef\xbb\xbf{"a": 1}',       # UTF-8 BOM
    b'{"a": "\xc3"}',              # truncated sequence
    '{"a": 1,}',                   # trailing comma
    "",                            # empty
    '{"a": 1} x',                  # trailing data
    "[" + str(2**53) + "]",        # beyond I-JSON integers
    "1" * 5000,                    # a digit string far past Python's int conversion limit
    '{"a": "\\ud800"}',            # lone surrogate escape
    "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1),
    "[" * 100_000 + "]" * 100_000,
])
def test_malformed_input_is_refused_as_invalid_input(data: bytes | str) -> None:
    with pytest.raises(InvalidInput) as exc:
        parse_json_strict(data, "body")
    assert exc.value.problems[0].location == "body"


def test_nesting_up_to_the_limit_is_fine_and_brackets_in_strings_do_not_count() -> None:
    text = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    assert parse_json_strict(text) is not None
    inside = json.dumps({"a": ["[{" * 1000 + "\\", '"]]', "\\\""]})  # escapes and quoted brackets
    assert parse_json_strict(inside) == json.loads(inside)


def test_deep_nesting_is_refused_even_with_a_raised_recursion_limit() -> None:
    # py_ecc (via eth-account) raises the limit to 100000; json's C scanner would then overflow the C stack.
    previous = sys.getrecursionlimit()
    sys.setrecursionlimit(max(previous, 100_000))
    try:
        with pytest.raises(InvalidInput, match="nested deeper"):
            parse_json_strict("[" * 500_000 + "]" * 500_000)
        with pytest.raises(InvalidInput, match="nested deeper"):
            parse_json_strict('{"a": "x", "b": ' + "{" * 100_000)
    finally:
        sys.setrecursionlimit(previous)


def test_depth_scan_is_linear_on_hostile_strings() -> None:
    # Unterminated strings full of escaped quotes: a backtracking scan would be quadratic here.
    with pytest.raises(InvalidInput):
        parse_json_strict("[" * 60 + "{" * 5 + '"\\"' * 200_000)
