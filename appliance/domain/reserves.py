"""Attestation inputs: the custodians' reserve report, the supply snapshot and the holder balances.

These are the "Inputs" of DESIGN.md section 4. Every parser collects *all* the problems of an input, each
located like `reserves.json: holdings[3].amount`, and raises one InvalidInput listing them, so an operator fixes
a file in one round trip. Amounts are decimal strings of integer minor units matching ^(0|[1-9][0-9]*)$ (ASCII
digits only): JSON numbers are refused because many JSON stacks read them as IEEE doubles, and signs, exponents,
separators and leading zeros are refused because they invite two readings of the same text.

Pure: no I/O, no clock. Times are parsed from the inputs and handed back as aware UTC datetimes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

from appliance.domain import patterns
from appliance.errors import InvalidInput, Problem, Problems

MAX_AMOUNT = 2**256 - 1  # one holding or one chain's supply: a uint256, like the token contract itself
MAX_DECIMALS = 18
MAX_TEXT = 200  # custodian, account, asset class, evidence name: a label, not a document
MAX_CHAIN_ID = 2**53 - 1  # chain ids end up as JSON integers in the payload; beyond this JSON is not exact
# Holder balances feed the Merkle-sum tree, whose sums are 16 bytes (appliance.domain.liabilities.SUM_BYTES).
# The limit is repeated here (this module imports nothing from the domain) so a too-large balance is refused with
# its line number instead of later by the tree without one.
MAX_BALANCE = 2**128 - 1
MAX_CSV_PROBLEMS = 1000  # a 10-million-line file that is wrong everywhere must not build 10 million Problems

# Compiled once at import: the CSV path runs per line and must not compile or even call a regex per line.
_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})")
_REPORT_KEYS = frozenset({"as_of", "currency", "decimals", "holdings", "evidence"})
_REPORT_REQUIRED = frozenset({"as_of", "currency", "decimals", "holdings"})
_HOLDING_KEYS = frozenset({"custodian", "account", "asset_class", "amount"})
_EVIDENCE_KEYS = frozenset({"name", "sha256"})
_SUPPLY_KEYS = frozenset({"as_of", "decimals", "chains"})
_CHAIN_KEYS = frozenset({"chain_id", "contract", "total_supply"})
_HEADER = "account,balance"
_BALANCE_DIGITS = len(str(MAX_BALANCE))


@dataclass(frozen=True)
class Holding:
    """One custodian account's balance, in minor units of the report's currency."""

    custodian: str
    account: str
    asset_class: str
    amount: int


@dataclass(frozen=True)
class Evidence:
    """A source document (bank statement, custodian letter) named by its SHA-256."""

    name: str
    sha256: str


@dataclass(frozen=True)
class ReserveReport:
    """A validated reserve report. `as_of` is aware UTC; `as_of_text` is the string exactly as received."""

    as_of: datetime
    as_of_text: str
    currency: str
    decimals: int
    holdings: tuple[Holding, ...]
    evidence: tuple[Evidence, ...]

    @property
    def total(self) -> int:
        """Sum of all holdings, in minor units."""
        return sum(h.amount for h in self.holdings)


@dataclass(frozen=True)
class ChainSupply:
    """Outstanding supply of the token contract on one chain, in base units."""

    chain_id: int
    contract: str
    total_supply: int


@dataclass(frozen=True)
class SupplySnapshot:
    """A validated supply snapshot; `chains` sorted by chain id so equal snapshots compare equal."""

    as_of: datetime
    as_of_text: str
    decimals: int
    chains: tuple[ChainSupply, ...]

    @property
    def total(self) -> int:
        """Sum over chains, in base units."""
        return sum(c.total_supply for c in self.chains)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _kind(value: object) -> str:
    """The JSON name of a value's type, as the sender would say it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, Mapping):
        return "an object"
    return f"a {type(value).__name__}"


def _members(value: object, path: str, allowed: frozenset[str], required: frozenset[str],
             p: Problems) -> Mapping[str, object] | None:
    """value as a JSON object; unknown and missing members are problems. None if value is not an object."""
    if not isinstance(value, Mapping):
        p.add(path, f"must be a JSON object, not {_kind(value)}")
        return None
    for key in sorted(str(k) for k in value if k not in allowed):
        p.add(_join(path, key), "unknown member")
    for key in sorted(required - set(value)):
        p.add(_join(path, key), "required member is missing")
    return value


def _text(value: object, path: str, p: Problems) -> str | None:
    """A label: non-empty, at most MAX_TEXT characters, no surrounding whitespace, no control characters.

    Surrounding whitespace is refused because "Bank A" and "Bank A " would otherwise be two custodians that
    look the same in the attestation's breakdown.
    """
    if not isinstance(value, str):
        p.add(path, f"must be a string, not {_kind(value)}")
        return None
    if not value:
        p.add(path, "must not be empty")
        return None
    problem = None
    if len(value) > MAX_TEXT:
        problem = f"must be at most {MAX_TEXT} characters"
    elif value != value.strip():
        problem = "must not start or end with whitespace"
    elif not value.isprintable():
        problem = "must not contain control or other non-printable characters"
    else:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate from a JSON "\ud800" escape: not encodable, not signable
            problem = "is not valid Unicode text"
    if problem:
        p.add(path, problem)
        return None
    return value


def _amount(value: object, path: str, p: Problems, maximum: int = MAX_AMOUNT) -> int | None:
    """A decimal string of integer units, 0..maximum; a located problem otherwise."""
    if not isinstance(value, str):
        p.add(path, f"must be a decimal string of integer units like \"1000000\", not {_kind(value)}")
        return None
    if not patterns.DECIMAL.fullmatch(value) or not value.isascii():
        p.add(path, _why_not_decimal(value))
        return None
    # Length first: a canonical decimal with more digits is larger, and a huge string never reaches int().
    if len(value) > len(str(maximum)) or int(value) > maximum:
        p.add(path, f"must be at most {maximum}")
        return None
    return int(value)


def _why_not_decimal(text: str) -> str:
    """Why a string is not a canonical decimal, in words that tell the sender what to fix."""
    if not text:
        return "is empty: amounts are decimal strings of integer units"
    if text[0] in "+-":
        return "must not have a sign (amounts are non-negative integers of minor units)"
    if any(c.isspace() for c in text):
        return "must not contain whitespace"
    if "." in text:
        return "must be an integer number of minor units, without a decimal point"
    if "e" in text.lower():
        return "must not use an exponent: write every digit"
    if "_" in text or "," in text:
        return "must not contain digit separators"
    if not text.isascii():
        return "must contain only the ASCII digits 0-9"
    if text.isdigit():
        return "must not have leading zeros"
    return "must be a decimal string of integer units (ASCII digits 0-9 only)"


def _decimals(value: object, path: str, p: Problems) -> int | None:
    # bool is an int in Python but `true` is not a number of decimals in JSON.
    if isinstance(value, bool) or not isinstance(value, int):
        p.add(path, f"must be an integer from 0 to {MAX_DECIMALS}, not {_kind(value)}")
        return None
    if not 0 <= value <= MAX_DECIMALS:
        p.add(path, f"must be from 0 to {MAX_DECIMALS}, not {value}")
        return None
    return value


def _rfc3339(value: object, path: str, p: Problems) -> datetime | None:
    """An RFC 3339 date-time with an explicit offset (Z or +hh:mm), as an aware UTC datetime.

    A time without an offset is refused: it would mean a different instant in every time zone. Fractions of a
    second are kept to the microsecond (digits beyond are dropped: RFC 3339 allows any number). Leap seconds
    (:60) are refused because no datetime library represents them consistently.
    """
    if not isinstance(value, str):
        p.add(path, f"must be an RFC 3339 time string like \"2026-11-24T16:00:00Z\", not {_kind(value)}")
        return None
    match = _RFC3339.fullmatch(value)
    if match is None:
        p.add(path, "must be an RFC 3339 time with an explicit offset, like 2026-11-24T16:00:00Z or "
                    "2026-11-25T00:00:00+08:00")
        return None
    year, month, day, hour, minute, second = (int(match.group(i)) for i in range(1, 7))
    fraction, offset = match.group(7), match.group(8)
    if second == 60:
        p.add(path, "leap seconds (:60) are not supported")
        return None
    micro = int((fraction[1:] + "000000")[:6]) if fraction else 0
    try:
        if offset in ("Z", "z"):
            zone = UTC
        else:
            off_h, off_m = int(offset[1:3]), int(offset[4:6])
            if off_h > 23 or off_m > 59:
                raise ValueError("offset out of range")
            delta = timedelta(hours=off_h, minutes=off_m)
            zone = timezone(-delta if offset[0] == "-" else delta)
        moment = datetime(year, month, day, hour, minute, second, micro, tzinfo=zone)
        return moment.astimezone(UTC)
    except (ValueError, OverflowError):
        p.add(path, "is not a valid date and time")
        return None


def _list(value: object, path: str, p: Problems, *, non_empty: bool) -> list[object]:
    if not isinstance(value, list):
        p.add(path, f"must be a list, not {_kind(value)}")
        return []
    if non_empty and not value:
        p.add(path, "must not be empty")
    return value


def parse_reserve_report(data: object, source: str = "reserves.json") -> ReserveReport:
    """Validate a custodians' reserve report (DESIGN.md "Inputs"); InvalidInput lists every problem found.

    Refused: unknown or missing members; a currency that is not 3 capital letters; decimals that are not an
    integer 0..18; an empty holdings list; amounts that are not canonical decimal strings of minor units (no
    numbers, signs, exponents, decimal points or leading zeros) or exceed 2**256-1; two holdings with the same
    (custodian, account); malformed evidence (name and 64 lowercase hex sha256; names unique); an as_of that is
    not RFC 3339 with an explicit offset. `evidence` is optional (an empty list when absent).
    """
    p = Problems(source)
    top = _members(data, "", _REPORT_KEYS, _REPORT_REQUIRED, p) or {}
    as_of = _rfc3339(top["as_of"], "as_of", p) if "as_of" in top else None
    currency = top.get("currency")
    if "currency" in top and (not isinstance(currency, str) or not patterns.CURRENCY.fullmatch(currency)):
        p.add("currency", "must be an ISO 4217 code of 3 capital letters, like HKD")
    decimals = _decimals(top["decimals"], "decimals", p) if "decimals" in top else None

    holdings: list[Holding] = []
    first_seen: dict[tuple[str, str], int] = {}
    raw_holdings = _list(top["holdings"], "holdings", p, non_empty=True) if "holdings" in top else []
    for i, item in enumerate(raw_holdings):
        path = f"holdings[{i}]"
        h = _members(item, path, _HOLDING_KEYS, _HOLDING_KEYS, p)
        if h is None:
            continue
        custodian = _text(h["custodian"], f"{path}.custodian", p) if "custodian" in h else None
        account = _text(h["account"], f"{path}.account", p) if "account" in h else None
        asset_class = _text(h["asset_class"], f"{path}.asset_class", p) if "asset_class" in h else None
        amount = _amount(h["amount"], f"{path}.amount", p) if "amount" in h else None
        if custodian is not None and account is not None:
            key = (custodian, account)
            if key in first_seen:
                p.add(path, f"duplicates holdings[{first_seen[key]}]: account {account!r} at custodian "
                            f"{custodian!r} is listed twice")
            else:
                first_seen[key] = i
        if custodian is not None and account is not None and asset_class is not None and amount is not None:
            holdings.append(Holding(custodian, account, asset_class, amount))

    evidence: list[Evidence] = []
    names: dict[str, int] = {}
    raw_evidence = _list(top["evidence"], "evidence", p, non_empty=False) if "evidence" in top else []
    for i, item in enumerate(raw_evidence):
        path = f"evidence[{i}]"
        e = _members(item, path, _EVIDENCE_KEYS, _EVIDENCE_KEYS, p)
        if e is None:
            continue
        name = _text(e["name"], f"{path}.name", p) if "name" in e else None
        digest = e.get("sha256")
        if "sha256" in e and (not isinstance(digest, str) or not patterns.HEX64.fullmatch(digest)):
            p.add(f"{path}.sha256", "must be a SHA-256 digest: 64 lowercase hex digits")
            digest = None
        if name is not None:
            if name in names:
                p.add(f"{path}.name", f"duplicates evidence[{names[name]}].name: each document is named once")
            else:
                names[name] = i
        if name is not None and isinstance(digest, str):
            evidence.append(Evidence(name, digest))

    p.raise_if_any("the reserve report")
    # No problem was recorded, so every field was present and valid.
    assert as_of is not None and isinstance(currency, str) and decimals is not None
    return ReserveReport(as_of, str(top["as_of"]), currency, decimals, tuple(holdings), tuple(evidence))


def parse_supply_snapshot(data: object, source: str = "supply.json") -> SupplySnapshot:
    """Validate a supply snapshot (DESIGN.md "Inputs"); InvalidInput lists every problem found.

    Refused: unknown or missing members, decimals not an integer 0..18, an empty chain list, a chain_id that is
    not an integer 1..2**53-1 (it becomes a JSON integer), a chain listed twice, a contract that is not 0x and
    40 hex digits (EIP-55 checksum validity is checked by the shell, which knows the configured contracts), a
    total_supply that is not a canonical decimal string of base units.
    """
    p = Problems(source)
    top = _members(data, "", _SUPPLY_KEYS, _SUPPLY_KEYS, p) or {}
    as_of = _rfc3339(top["as_of"], "as_of", p) if "as_of" in top else None
    decimals = _decimals(top["decimals"], "decimals", p) if "decimals" in top else None
    chains: list[ChainSupply] = []
    first_seen: dict[int, int] = {}
    raw_chains = _list(top["chains"], "chains", p, non_empty=True) if "chains" in top else []
    for i, item in enumerate(raw_chains):
        path = f"chains[{i}]"
        c = _members(item, path, _CHAIN_KEYS, _CHAIN_KEYS, p)
        if c is None:
            continue
        chain_id = c.get("chain_id")
        if "chain_id" in c:
            if isinstance(chain_id, bool) or not isinstance(chain_id, int) or not 0 < chain_id <= MAX_CHAIN_ID:
                p.add(f"{path}.chain_id", f"must be an integer from 1 to {MAX_CHAIN_ID}")
                chain_id = None
            elif chain_id in first_seen:
                p.add(f"{path}.chain_id", f"chain {chain_id} is already listed at chains[{first_seen[chain_id]}]")
            else:
                first_seen[chain_id] = i
        contract = c.get("contract")
        if "contract" in c and (not isinstance(contract, str) or not patterns.ADDRESS.fullmatch(contract)):
            p.add(f"{path}.contract", "must be a contract address: 0x followed by 40 hex digits")
            contract = None
        supply = _amount(c["total_supply"], f"{path}.total_supply", p) if "total_supply" in c else None
        if isinstance(chain_id, int) and isinstance(contract, str) and supply is not None:
            chains.append(ChainSupply(chain_id, contract, supply))
    p.raise_if_any("the supply snapshot")
    assert as_of is not None and decimals is not None
    return SupplySnapshot(as_of, str(top["as_of"]), decimals, tuple(sorted(chains, key=lambda c: c.chain_id)))


def _split_text(text: str) -> Iterator[str]:
    """Lines of a text split on "\\n" only, lazily (a 10-million-line text is not copied into a list).

    str.splitlines would also split on \\x0b, \\x1c, U+2028 and others, which would silently cut an account
    name in two; a trailing "\\r" is removed by the CSV reader.
    """
    start = 0
    find = text.find
    while True:
        end = find("\n", start)
        if end < 0:
            if start < len(text):
                yield text[start:]
            return
        yield text[start:end]
        start = end + 1


def iter_holders_csv(lines: Iterable[str] | str, source: str = "holders.csv", *,
                     check_duplicates: bool = True) -> Iterator[tuple[str, int]]:
    """Stream (account, balance) rows of a holder-balances CSV (DESIGN.md "Inputs"), balances in base units.

    `lines` is an iterable of lines (with or without their line ending, e.g. an open text file) or the whole
    text. Format: the first line is exactly `account,balance` (a UTF-8 byte order mark before it is tolerated);
    every other line is `account,balance` with exactly one comma, a non-empty account without surrounding
    whitespace, double quotes (quoted CSV fields are not supported) or non-printable characters, and a canonical
    decimal balance of
    0..2**128-1 base units. Empty lines are skipped. Problems name their line (`holders.csv: line 7`).

    Streaming contract: valid rows are yielded as they are read; when the input is exhausted, InvalidInput is
    raised listing the problems (at most MAX_CSV_PROBLEMS, then a count of the rest). A consumer must therefore
    read to the end before trusting what it received (LiabilityTree.build does).

    check_duplicates: refuse a repeated account, naming both lines. This keeps every account seen in a dict,
    about 100 bytes per holder (~1 GB for 10 million). Pass False to stream in constant memory when the
    consumer refuses duplicates itself (LiabilityTree.build refuses equal commitments, without line numbers).
    """
    if isinstance(lines, str):
        lines = _split_text(lines)
    p = Problems(source)
    extra = 0  # problems beyond MAX_CSV_PROBLEMS: counted, not kept

    def problem(number: int, message: str) -> None:
        nonlocal extra
        if len(p.items) < MAX_CSV_PROBLEMS:
            p.add(f"line {number}", message)
        else:
            extra += 1

    iterator = iter(lines)
    header = next(iterator, None)
    if header is None:
        problem(1, f"the file is empty; the first line must be exactly {_HEADER}")
    else:
        header = header.rstrip("\r\n")
        if header.startswith("\ufeff"):
            header = header[1:]
        if header != _HEADER:
            problem(1, f"the header must be exactly {_HEADER}")
    seen: dict[str, int] = {}
    # The loop below runs once per holder (10 million times for a large issuer): only str methods and one
    # int(), each a single C call; no regex, no per-line allocation beyond the two fields.
    max_digits = _BALANCE_DIGITS
    for number, line in enumerate(iterator, start=2):
        if line[-1:] == "\n":
            line = line[:-1]
        if line[-1:] == "\r":
            line = line[:-1]
        if not line:
            continue
        account, comma, balance = line.partition(",")
        if not comma or "," in balance:
            problem(number, "must be account,balance with exactly one comma")
            continue
        if not account:
            problem(number, "the account is empty")
            continue
        # Invisible differences would make two holders look like one: no surrounding whitespace, no control or
        # other non-printable characters (a stray tab or CR from a spreadsheet export), no CSV quoting.
        if '"' in account or account != account.strip() or not account.isprintable():
            problem(number, "the account must not be quoted, start or end with whitespace, or contain control "
                            "or other non-printable characters")
            continue
        # isdigit() alone would accept Arabic-Indic and fullwidth digits; isascii() keeps it to 0-9.
        if not (balance.isascii() and balance.isdigit()) or (balance[0] == "0" and len(balance) > 1):
            problem(number, "the balance " + _why_not_decimal(balance))
            continue
        if len(balance) > max_digits or int(balance) > MAX_BALANCE:
            problem(number, f"the balance must be at most {MAX_BALANCE}")
            continue
        if check_duplicates:
            first = seen.setdefault(account, number)
            if first != number:
                problem(number, f"account {account[:60]!r} is already listed on line {first}")
                continue
        yield account, int(balance)
    if extra:
        p.items.append(Problem(source, f"{extra} more problem(s) not listed"))
    p.raise_if_any("the holder balances file")


def parse_holders_csv(text: str, source: str = "holders.csv") -> list[tuple[str, int]]:
    """All (account, balance) rows of a holder-balances CSV text; see iter_holders_csv for the format.

    Duplicate accounts are refused with both line numbers. Holds every row in memory: for very large files
    stream iter_holders_csv into LiabilityTree.build instead.
    """
    return list(iter_holders_csv(text, source, check_duplicates=True))


def check_supply_chains(supply: SupplySnapshot, configured: Mapping[int, str], source: str = "supply") -> None:
    """The snapshot covers exactly the configured chains, each for the configured token contract (compared
    exactly, so EIP-55 form included): a missing chain would understate supply, a foreign one overstate it.
    configured: chain id -> token contract. InvalidInput lists every problem."""
    problems: list[Problem] = []
    seen = set()
    for entry in supply.chains:
        seen.add(entry.chain_id)
        where = f"{source}: chains[chain_id={entry.chain_id}]"
        expected = configured.get(entry.chain_id)
        if expected is None:
            problems.append(Problem(f"{where}.chain_id", f"chain {entry.chain_id} is not configured "
                                    f"(configured: {', '.join(str(c) for c in sorted(configured))})"))
        elif entry.contract != expected:
            problems.append(Problem(f"{where}.contract", f"is not the token contract {expected} configured "
                                    f"for chain {entry.chain_id}"))
    for chain_id in sorted(set(configured) - seen):
        problems.append(Problem(f"{source}: chains", f"configured chain {chain_id} has no supply entry"))
    if problems:
        raise InvalidInput(f"the supply snapshot does not match the configured chains ({len(problems)} "
                           "problem(s))", problems)


def check_consistency(report: ReserveReport, supply: SupplySnapshot, token_currency: str, *,
                      tolerance_seconds: int) -> None:
    """The report is in the token's currency and describes (nearly) the same instant as the supply snapshot.

    token_currency: the currency the token is backed by (configuration). tolerance_seconds: the largest
    accepted distance between the two as_of times (inclusive). Raises InvalidInput listing both problems when
    both hold.
    """
    expected, tolerance = token_currency, tolerance_seconds
    if tolerance < 0:
        raise ValueError("the tolerance cannot be negative")
    problems = []
    if report.currency != expected:
        problems.append(Problem("currency", f"the reserve report is in {report.currency}; "
                                            f"the token is backed by {expected}"))
    apart = abs(report.as_of - supply.as_of)
    if apart > timedelta(seconds=tolerance):
        problems.append(Problem("as_of", f"the reserve report ({report.as_of_text}) and the supply snapshot "
                                         f"({supply.as_of_text}) are {apart} apart; at most {tolerance} s allowed"))
    if problems:
        raise InvalidInput("the reserve report and the supply snapshot do not belong together", problems)
