"""RFC 8785 canonical JSON, SHA-256 digests, and strict parsing of untrusted JSON.

Everything the appliance signs or hashes is RFC 8785 (JCS) canonical JSON, so a regulator can recompute every
digest with any JCS implementation. Amounts travel as decimal strings, never as JSON numbers: floats are
refused on the way in (parse_json_strict) and on the way out (canonical_json).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

import rfc8785

from appliance.errors import InvalidInput, Problem

# I-JSON (RFC 7493) / RFC 8785: integers beyond +-(2**53 - 1) are not exact in every JSON implementation,
# and rfc8785 refuses to serialize them. Refusing them at parse time turns a later 500 into a clear 400.
MAX_SAFE_INTEGER = 2**53 - 1
# Deeper documents are refused BEFORE json.loads: its C scanner recurses once per level and, when a library
# raises sys.setrecursionlimit (py_ecc, pulled in by eth-account, sets 100000), deep input overflows the C
# stack and kills the process instead of raising RecursionError. Real documents nest 4-5 levels.
MAX_DEPTH = 64
# A JSON string (skipped whole, so brackets inside strings do not count) or a bracket. An unterminated string
# runs to the end of the text (as it does for the parser), so a match starting at a quote never fails: no
# backtracking, no restart at every later quote, linear time on any input.
_STRING_OR_BRACKET = re.compile(r'"(?:[^"\\]|\\.)*+(?:"|\\?\Z)|[\[\]{}]', re.DOTALL)


class _Refused(ValueError):
    """Raised from inside json.loads hooks; converted to InvalidInput with the location."""


def _refuse(location: str, message: str) -> InvalidInput:
    return InvalidInput(f"{location}: {message}", [Problem(location, message)])


def _plain(obj: object, path: str) -> object:
    """A copy of obj made of dict/list/str/int/bool/None, ready for rfc8785; refuses floats.

    Mappings other than dict and tuples are converted because rfc8785 accepts only dict and list/tuple.
    """
    if obj is None or isinstance(obj, (str, bool)):
        return obj
    if isinstance(obj, int):
        if not -MAX_SAFE_INTEGER <= obj <= MAX_SAFE_INTEGER:
            raise _refuse(path, "integer is beyond +-(2**53 - 1), not exact in JSON: amounts are decimal strings")
        return obj
    if isinstance(obj, float):
        raise _refuse(path, "floats are not allowed: amounts are decimal strings of integer units")
    if isinstance(obj, Mapping):
        result: dict[str, object] = {}
        for key, value in obj.items():
            if not isinstance(key, str):
                raise TypeError(f"{path}: JSON object keys must be strings, not {type(key).__name__}")
            result[key] = _plain(value, f"{path}.{key}")
        return result
    if isinstance(obj, (list, tuple)):
        return [_plain(value, f"{path}[{i}]") for i, value in enumerate(obj)]
    # bytes, Decimal, datetime...: a programming error, not bad input, so not an InvalidInput.
    raise TypeError(f"{path}: {type(obj).__name__} is not a JSON value")


def canonical_json(obj: object) -> bytes:
    """RFC 8785 (JCS) canonical UTF-8 bytes of obj.

    Raises InvalidInput if obj contains a float or an integer beyond +-(2**53 - 1) (naming the path, e.g.
    `$.reserves.total`) or a string that is not valid Unicode (a lone surrogate); TypeError if obj contains
    something that is not JSON at all (bytes, Decimal, non-string keys).
    """
    plain = _plain(obj, "$")
    try:
        return rfc8785.dumps(plain)  # type: ignore[arg-type]  # _plain returned a JSON value
    except rfc8785.CanonicalizationError as exc:  # lone surrogates: not encodable as UTF-8
        raise _refuse("$", str(exc)) from None


def sha256_hex(data: bytes) -> str:
    """Lowercase hex SHA-256 of data."""
    return hashlib.sha256(data).hexdigest()


def json_digest(obj: object) -> str:
    """Lowercase hex SHA-256 of canonical_json(obj); raises what canonical_json raises."""
    return sha256_hex(canonical_json(obj))


# -- strict parsing ---------------------------------------------------------------------------------------------

def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Duplicate keys are the classic parser-differential attack: two parsers read two different values.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _Refused(f"duplicate object key {_shorten(key)!r}")
        result[key] = value
    return result


def _shorten(text: str, limit: int = 64) -> str:
    # Messages echo untrusted text: keep them readable and bounded.
    return text if len(text) <= limit else text[:limit] + "..."


def _no_float(token: str) -> Any:
    raise _Refused(f"number {_shorten(token, 24)} is not an integer (no fractions or exponents): "
                   "amounts are decimal strings")


def _no_constant(token: str) -> Any:
    raise _Refused(f"{token} is not JSON")


def _safe_int(token: str) -> int:
    # Checked on the text before int(): huge digit strings never reach the (quadratic) conversion.
    if len(token.lstrip("-")) > len(str(MAX_SAFE_INTEGER)) or abs(int(token)) > MAX_SAFE_INTEGER:
        raise _Refused(f"integer {_shorten(token, 24)} is beyond +-(2**53 - 1): "
                       "send large numbers (amounts) as decimal strings")
    return int(token)


def _check_depth(text: str) -> None:
    """Refuse nesting deeper than MAX_DEPTH, by a linear scan of the text that never recurses.

    The scan tokenizes strings exactly as JSON does up to the first malformed string, where json.loads would
    stop anyway, so it can never see less nesting than the parser would recurse through.
    """
    if text.count("[") + text.count("{") <= MAX_DEPTH:  # fast path for small documents
        return
    depth = 0
    for match in _STRING_OR_BRACKET.finditer(text):
        token = match.group()
        if token in ("[", "{"):
            depth += 1
            if depth > MAX_DEPTH:
                raise _Refused(f"nested deeper than {MAX_DEPTH} levels")
        elif token in ("]", "}"):
            depth -= 1


def _check_strings(value: Any) -> None:
    """Refuse strings (values or keys) that are not valid Unicode; iterative, depth is already bounded."""
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            _check_string(item)
        elif isinstance(item, dict):
            for key, child in item.items():
                _check_string(key)
                stack.append(child)
        elif isinstance(item, list):
            stack.extend(item)


def _check_string(text: str) -> None:
    # json.loads turns "\ud800" into a lone surrogate, which no UTF-8 output (or RFC 8785) can carry.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise _Refused("a string contains a lone UTF-16 surrogate escape") from None


def parse_json_strict(data: bytes | str, location: str = "body") -> Any:
    """Parse untrusted JSON text strictly.

    Refused, each as InvalidInput with a Problem at `location`: bytes that are not UTF-8 (a BOM included),
    syntax errors, duplicate object keys (the key is named), NaN/Infinity, numbers with a fraction or an
    exponent, integers beyond +-(2**53 - 1), lone surrogate escapes and nesting deeper than MAX_DEPTH.
    Integers within range are allowed (chain ids, times).
    """
    if isinstance(data, (bytes, bytearray, memoryview)):
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _refuse(location, f"is not UTF-8 (invalid byte at offset {exc.start})") from None
    elif isinstance(data, str):
        text = data
    else:
        raise TypeError(f"parse_json_strict takes bytes or str, not {type(data).__name__}")
    try:
        _check_depth(text)
        value = json.loads(text, object_pairs_hook=_object_without_duplicates, parse_float=_no_float,
                           parse_int=_safe_int, parse_constant=_no_constant)
        _check_strings(value)
    except _Refused as exc:
        raise _refuse(location, str(exc)) from None
    except json.JSONDecodeError as exc:
        raise _refuse(location, f"is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:  # defence in depth: _check_depth should make this unreachable
        raise _refuse(location, f"nested deeper than {MAX_DEPTH} levels") from None
    return value
