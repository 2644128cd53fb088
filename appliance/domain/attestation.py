"""Reserve attestation payloads (DESIGN.md section 4): figures, exact coverage, chaining, and what a verifier redoes.

The payload is what the HSM signs (as RFC 8785 JSON inside a JWS) and what a regulator checks offline with
nothing but the payload itself, the previous attestation and the published keys:

    version 1, seq (1, 2, ...), prev (SHA-256 hex of the previous compact JWS, null for seq 1), as_of and
    issued_at ("YYYY-MM-DDTHH:MM:SSZ"), issuer, token, currency,
    reserves {total, decimals, by_asset_class, by_custodian}, supply {total, decimals, by_chain[]},
    coverage_bps, status, liabilities ({root, total, leaves} or null), evidence[], policy, audit {size, root}

Every amount is a decimal string of integer minor units. Coverage is exact integer arithmetic: both sides are
scaled to the larger number of decimals and coverage_bps = floor(reserves * 10000 / supply); null when the
supply is 0. status is FULLY_BACKED iff coverage_bps is null or at least 10000.

Pure: no I/O, no clock (issued_at is a parameter), no randomness.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import rfc8785

from appliance.domain import patterns
from appliance.domain.reserves import ReserveReport, SupplySnapshot
from appliance.domain.rfc3339 import parse_utc as parse_utc
from appliance.domain.rfc3339 import utc as utc
from appliance.errors import Conflict, InvalidInput, Problem

VERSION = 1
BPS = 10_000  # basis points in 100 %
FULLY_BACKED = "FULLY_BACKED"
UNDER_BACKED = "UNDER_BACKED"
MAX_JSON_INT = 2**53 - 1  # I-JSON: larger integers are not exact in many JSON implementations (RFC 8785 refuses)
MAX_DECIMALS = 18
MAX_SUM = 2**128  # liabilities sums are 16 bytes (appliance.domain.liabilities.SUM_BYTES)
REQUIRED = ("version", "seq", "prev", "as_of", "issued_at", "issuer", "token", "currency", "reserves", "supply",
            "coverage_bps", "status", "liabilities", "evidence", "policy", "audit")

_MAX_DIGITS = 100  # a verifier parses amounts from untrusted payloads: bound the work int() can be made to do


# -- small shared pieces ----------------------------------------------------------------------------------------

def prev_digest(jws: str) -> str:
    """SHA-256 hex of a compact JWS's ASCII bytes: the `prev` member of the attestation that follows it.

    Surrounding whitespace (a trailing newline from a file) is not part of the JWS and is ignored. ValueError
    if the text is not a compact JWS (three base64url parts), so a wrong file is not silently hashed.
    """
    token = jws.strip()
    if not patterns.COMPACT_JWS.fullmatch(token):
        raise ValueError("not a compact JWS (three base64url parts separated by dots)")
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def coverage_bps(reserves: int, reserve_decimals: int, supply: int, supply_decimals: int) -> int | None:
    """floor(reserves * 10000 / supply) with both scaled exactly to max(decimals); None when supply is 0.

    Example: 1,000,000.00 HKD (100000000 at 2 decimals) against 1,000,000 tokens (10**12 at 6 decimals) is
    10000; one cent less is 9999. ValueError for negative amounts or decimals outside 0..18.
    """
    for d in (reserve_decimals, supply_decimals):
        if isinstance(d, bool) or not isinstance(d, int) or not 0 <= d <= MAX_DECIMALS:
            raise ValueError(f"decimals must be an integer from 0 to {MAX_DECIMALS}, not {d!r}")
    if reserves < 0 or supply < 0:
        raise ValueError("reserves and supply cannot be negative")
    if supply == 0:
        return None
    common = max(reserve_decimals, supply_decimals)
    # Multiply, never divide, to reach the common unit: every intermediate is an exact integer.
    # (int ** int is typed Any because a negative exponent gives a float; these exponents are >= 0.)
    scaled_reserves: int = reserves * 10 ** (common - reserve_decimals)
    scaled_supply: int = supply * 10 ** (common - supply_decimals)
    return scaled_reserves * BPS // scaled_supply


def status_for(coverage: int | None) -> str:
    """FULLY_BACKED iff nothing is outstanding (coverage None) or coverage is at least 10000 bps."""
    return FULLY_BACKED if coverage is None or coverage >= BPS else UNDER_BACKED


def _breakdown(pairs: Sequence[tuple[str, int]]) -> dict[str, str]:
    totals: dict[str, int] = {}
    for key, amount in pairs:
        totals[key] = totals.get(key, 0) + amount
    return {key: str(totals[key]) for key in sorted(totals)}


def _check_liabilities_summary(liabilities: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if liabilities is None:
        return None
    problems = _liabilities_failures(liabilities)
    if problems:
        raise ValueError("liabilities: " + "; ".join(problems))
    return {"root": liabilities["root"], "total": liabilities["total"], "leaves": liabilities["leaves"]}


# -- building -----------------------------------------------------------------------------------------------------

def figures(report: ReserveReport, supply: SupplySnapshot,
            liabilities: Mapping[str, Any] | None) -> dict[str, Any]:
    """The payload members that come from the inputs alone (not from the chain, the clock or configuration).

    Two requests for the same as_of are the same attestation iff these are equal (see figures_digest).
    Chains are ordered by chain id and evidence by (name, sha256) so that a reordered but identical input gives
    identical figures. InvalidInput if the coverage cannot be carried exactly by a JSON integer (more than
    2**53-1 bps: reserves some 900 billion times the supply, which only a unit mistake produces).
    """
    coverage = coverage_bps(report.total, report.decimals, supply.total, supply.decimals)
    if coverage is not None and coverage > MAX_JSON_INT:
        raise InvalidInput("the coverage is too large to be attested", [Problem(
            "coverage_bps", f"{coverage} bps exceeds 2**53-1, the largest exact JSON integer; check the units and "
                            "decimals of the reserve report and the supply snapshot")])
    return {
        "as_of": utc(report.as_of),
        "currency": report.currency,
        "reserves": {
            "total": str(report.total),
            "decimals": report.decimals,
            "by_asset_class": _breakdown([(h.asset_class, h.amount) for h in report.holdings]),
            "by_custodian": _breakdown([(h.custodian, h.amount) for h in report.holdings]),
        },
        "supply": {
            "total": str(supply.total),
            "decimals": supply.decimals,
            "by_chain": [{"chain_id": c.chain_id, "contract": c.contract, "total_supply": str(c.total_supply)}
                         for c in sorted(supply.chains, key=lambda c: c.chain_id)],
        },
        "coverage_bps": coverage,
        "status": status_for(coverage),
        "liabilities": _check_liabilities_summary(liabilities),
        "evidence": [{"name": e.name, "sha256": e.sha256}
                     for e in sorted(report.evidence, key=lambda e: (e.name, e.sha256))],
    }


def figures_digest(report: ReserveReport, supply: SupplySnapshot, liabilities: Mapping[str, Any] | None) -> str:
    """SHA-256 hex of the RFC 8785 JSON of `figures(...)`: what tells an idempotent retry from a conflict."""
    return hashlib.sha256(rfc8785.dumps(figures(report, supply, liabilities))).hexdigest()


def build_payload(report: ReserveReport, supply: SupplySnapshot, *, seq: int, prev_jws: str | None,
                  issued_at: datetime, issuer: str, token: Mapping[str, Any], policy_hash: str,
                  audit: Mapping[str, Any], liabilities: Mapping[str, Any] | None) -> dict[str, Any]:
    """The attestation payload of DESIGN.md section 4 for attestation number `seq`.

    prev_jws is the previous attestation's compact JWS: None exactly when seq is 1. issued_at must be aware.
    token is the configured token ({"symbol", "name", "decimals"}); when it names decimals they must be the
    supply snapshot's (InvalidInput otherwise: coverage would be off by a power of ten). audit is the signed
    checkpoint {"size": int, "root": standard base64}; liabilities is LiabilityTree.summary() or None.

    Raises ValueError for arguments the shell got wrong (seq/prev mismatch, naive time, malformed policy hash,
    audit or liabilities summary) and InvalidInput for inputs that cannot be attested. The result passes
    check_payload: a payload the verifier would refuse is never returned, so never signed.
    """
    if isinstance(seq, bool) or not isinstance(seq, int) or not 1 <= seq <= MAX_JSON_INT:
        raise ValueError("seq must be an integer from 1 to 2**53-1")
    if (seq == 1) != (prev_jws is None):
        raise ValueError("seq 1 has no previous attestation (prev_jws None) and every later seq has one")
    if not isinstance(issuer, str) or not issuer.strip():
        raise ValueError("issuer must be a non-empty string")
    if not isinstance(policy_hash, str) or not patterns.HEX64.fullmatch(policy_hash):
        raise ValueError("policy_hash must be 64 lowercase hex digits (SHA-256)")
    if not isinstance(token, Mapping) or not all(isinstance(k, str) for k in token):
        raise ValueError("token must be a JSON object")
    token_decimals = token.get("decimals")
    if token_decimals is not None and token_decimals != supply.decimals:
        raise InvalidInput("the supply snapshot does not match the token", [Problem(
            "supply: decimals", f"is {supply.decimals}; the token {token.get('symbol', '')} has {token_decimals}")])
    audit_problems = _audit_failures(audit)
    if audit_problems:
        raise ValueError("audit: " + "; ".join(audit_problems))
    payload: dict[str, Any] = {
        "version": VERSION,
        "seq": seq,
        "prev": None if prev_jws is None else prev_digest(prev_jws),
        "issued_at": utc(issued_at),
        "issuer": issuer,
        "token": dict(token),
        **figures(report, supply, liabilities),
        "policy": policy_hash,
        "audit": {"size": audit["size"], "root": audit["root"]},
    }
    failures = check_payload(payload)
    if failures:  # a bug here, not bad input: the parsers and the checks above should make this unreachable
        raise ValueError("the payload would not verify: " + "; ".join(failures))
    return payload


# -- verification from the payload alone ------------------------------------------------------------------------

def _amount(value: object) -> int | None:
    """A canonical decimal string's integer, or None."""
    if isinstance(value, str) and len(value) <= _MAX_DIGITS and patterns.DECIMAL.fullmatch(value):
        return int(value)
    return None


def _is_int(value: object, low: int, high: int = MAX_JSON_INT) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _sum_of(values: object, where: str, failures: list[str]) -> int | None:
    """Sum of an object of decimal strings (a breakdown); None (and a failure) if it is not one."""
    if not isinstance(values, Mapping) or not values:
        failures.append(f"{where} must be a non-empty object of decimal strings")
        return None
    total = 0
    for key, value in values.items():
        amount = _amount(value)
        if amount is None:
            failures.append(f"{where}.{key} must be a decimal string of minor units")
            return None
        total += amount
    return total


def _audit_failures(audit: object) -> list[str]:
    if not isinstance(audit, Mapping) or set(audit) != {"size", "root"}:
        return ["audit must be {size, root}"]
    failures = []
    if not _is_int(audit["size"], 0):
        failures.append("audit.size must be a non-negative integer")
    root = audit["root"]
    # Standard base64 (C2SP checkpoints use it), canonical so one root has one spelling. The length is not
    # pinned to 32 bytes here: the root is checked against the signed checkpoint, not by this payload check.
    try:
        raw = base64.b64decode(root, validate=True) if isinstance(root, str) and root else None
    except (binascii.Error, ValueError):
        raw = None
    if raw is None or base64.b64encode(raw).decode("ascii") != root:
        failures.append("audit.root must be a standard base64 string")
    return failures


def _liabilities_failures(liabilities: object) -> list[str]:
    if not isinstance(liabilities, Mapping) or set(liabilities) != {"root", "total", "leaves"}:
        return ["liabilities must be null or {root, total, leaves}"]
    failures = []
    if not isinstance(liabilities["root"], str) or not patterns.HEX64.fullmatch(liabilities["root"]):
        failures.append("liabilities.root must be 64 lowercase hex digits")
    total = _amount(liabilities["total"])
    if total is None or total >= MAX_SUM:
        failures.append("liabilities.total must be a decimal string below 2**128")
    if not _is_int(liabilities["leaves"], 1):
        failures.append("liabilities.leaves must be a positive integer")
    return failures


def check_payload(payload: Mapping[str, Any]) -> list[str]:
    """What a verifier recomputes from the payload alone; returns the failures (empty: it holds).

    Checked: every required member is present with its type; reserves.total equals the sum of by_asset_class and
    the sum of by_custodian; supply.total equals the sum over by_chain; coverage_bps and status are what the
    figures give; the liabilities summary, when present, is well formed; seq 1 has prev null and a later seq a
    SHA-256 hex prev. Members beyond the required ones are not interpreted (DESIGN.md says "at least").
    The chain itself (prev digest, increasing as_of) needs the previous attestation: see check_link.
    """
    if not isinstance(payload, Mapping):
        return ["the payload must be a JSON object"]
    missing = [m for m in REQUIRED if m not in payload]
    if missing:
        return [f"missing member {m}" for m in missing]
    failures: list[str] = []
    if payload["version"] != VERSION or isinstance(payload["version"], bool):
        failures.append(f"version must be {VERSION}, not {payload['version']!r}")
    seq, prev = payload["seq"], payload["prev"]
    if not _is_int(seq, 1):
        failures.append("seq must be a positive integer")
    elif seq == 1 and prev is not None:
        failures.append("seq 1 must have prev null")
    elif seq > 1 and not (isinstance(prev, str) and patterns.HEX64.fullmatch(prev)):
        failures.append(f"seq {seq} must have prev: the SHA-256 hex of attestation {seq - 1}")
    for key in ("as_of", "issued_at"):
        if parse_utc(payload[key]) is None:
            failures.append(f"{key} must be a UTC time like 2026-11-24T16:00:00Z")
    if not isinstance(payload["issuer"], str) or not payload["issuer"]:
        failures.append("issuer must be a non-empty string")
    if not isinstance(payload["currency"], str) or not patterns.CURRENCY.fullmatch(payload["currency"]):
        failures.append("currency must be 3 capital letters")
    if not isinstance(payload["policy"], str) or not patterns.HEX64.fullmatch(payload["policy"]):
        failures.append("policy must be a SHA-256 hex digest")
    failures += _audit_failures(payload["audit"])
    evidence = payload["evidence"]
    if not isinstance(evidence, list) or not all(
            isinstance(e, Mapping) and set(e) == {"name", "sha256"} and isinstance(e["name"], str)
            and isinstance(e["sha256"], str) and patterns.HEX64.fullmatch(e["sha256"]) for e in evidence):
        failures.append("evidence must be a list of {name, sha256 (64 lowercase hex)}")
    if payload["liabilities"] is not None:
        failures += _liabilities_failures(payload["liabilities"])

    reserves, supply = payload["reserves"], payload["supply"]
    if not isinstance(reserves, Mapping) or not isinstance(supply, Mapping):
        return failures + ["reserves and supply must be objects"]
    r_total, s_total = _amount(reserves.get("total")), _amount(supply.get("total"))
    r_dec, s_dec = reserves.get("decimals"), supply.get("decimals")
    if r_total is None:
        failures.append("reserves.total must be a decimal string of minor units")
    if s_total is None:
        failures.append("supply.total must be a decimal string of base units")
    if not _is_int(r_dec, 0, MAX_DECIMALS):
        failures.append(f"reserves.decimals must be an integer from 0 to {MAX_DECIMALS}")
        r_dec = None
    if not _is_int(s_dec, 0, MAX_DECIMALS):
        failures.append(f"supply.decimals must be an integer from 0 to {MAX_DECIMALS}")
        s_dec = None
    token = payload["token"]
    if not isinstance(token, Mapping):
        failures.append("token must be an object")
    elif "decimals" in token and s_dec is not None and token["decimals"] != s_dec:
        failures.append(f"token.decimals {token['decimals']!r} differs from supply.decimals {s_dec}")
    for part in ("by_asset_class", "by_custodian"):
        part_total = _sum_of(reserves.get(part), f"reserves.{part}", failures)
        if part_total is not None and r_total is not None and part_total != r_total:
            failures.append(f"reserves.{part} sums to {part_total}, not reserves.total {r_total}")
    chains = supply.get("by_chain")
    chain_total: int | None = None
    if not isinstance(chains, list) or not chains:
        failures.append("supply.by_chain must be a non-empty list")
    else:
        chain_total, ids = 0, set()
        for i, chain in enumerate(chains):
            ok = (isinstance(chain, Mapping) and set(chain) == {"chain_id", "contract", "total_supply"}
                  and _is_int(chain["chain_id"], 1) and isinstance(chain["contract"], str)
                  and patterns.ADDRESS.fullmatch(chain["contract"]) is not None)
            amount = _amount(chain["total_supply"]) if ok else None
            if amount is None:
                failures.append(f"supply.by_chain[{i}] must be {{chain_id, contract, total_supply}}")
                chain_total = None
                break
            if chain["chain_id"] in ids:
                failures.append(f"supply.by_chain lists chain {chain['chain_id']} twice")
            ids.add(chain["chain_id"])
            chain_total += amount
        if chain_total is not None and s_total is not None and chain_total != s_total:
            failures.append(f"supply.by_chain sums to {chain_total}, not supply.total {s_total}")

    coverage, status = payload["coverage_bps"], payload["status"]
    if coverage is not None and not _is_int(coverage, 0):
        failures.append("coverage_bps must be a non-negative integer or null")
    if status not in (FULLY_BACKED, UNDER_BACKED):
        failures.append(f"status must be {FULLY_BACKED} or {UNDER_BACKED}")
    if r_total is not None and s_total is not None and r_dec is not None and s_dec is not None:
        expected = coverage_bps(r_total, r_dec, s_total, s_dec)
        if coverage != expected or isinstance(coverage, bool):
            failures.append(f"coverage_bps is {coverage!r}; the figures give {expected!r}")
        if status != status_for(expected):
            failures.append(f"status is {status!r}; the figures give {status_for(expected)!r}")
    return failures


# -- chaining -------------------------------------------------------------------------------------------------

def _seq_of(payload: Mapping[str, Any]) -> int | None:
    seq = payload.get("seq") if isinstance(payload, Mapping) else None
    return seq if _is_int(seq, 1) else None


def _digest_or_none(jws: str) -> str | None:
    try:
        return prev_digest(jws)
    except (ValueError, AttributeError):
        return None


def check_link(prev_jws: str, prev_payload: Mapping[str, Any], payload: Mapping[str, Any]) -> list[str]:
    """`payload` directly follows the attestation `prev_jws` (whose payload is `prev_payload`).

    Checked: seq is the previous seq + 1; prev is the SHA-256 hex of prev_jws; as_of is strictly later.
    Returns the failures (empty: the link holds). The signature of prev_jws is the caller's to verify.
    """
    failures = []
    seq, before = _seq_of(payload), _seq_of(prev_payload)
    label = f"seq {seq}" if seq is not None else "the attestation"
    if seq is None or before is None or seq != before + 1:
        failures.append(f"{label} does not directly follow seq {prev_payload.get('seq')!r}")
    digest = _digest_or_none(prev_jws)
    if digest is None:
        failures.append(f"{label}: the previous attestation is not a compact JWS")
    elif payload.get("prev") != digest:
        failures.append(f"{label}: prev is not the SHA-256 of attestation {prev_payload.get('seq')!r}")
    failures += _later(prev_payload, payload, label)
    return failures


def _later(earlier: Mapping[str, Any], later: Mapping[str, Any], label: str) -> list[str]:
    a, b = parse_utc(earlier.get("as_of")), parse_utc(later.get("as_of"))
    if a is None or b is None:
        return [f"{label}: as_of cannot be compared ({earlier.get('as_of')!r}, {later.get('as_of')!r})"]
    if b <= a:
        return [f"{label}: as_of {later.get('as_of')} is not after {earlier.get('as_of')} "
                f"(seq {earlier.get('seq')})"]
    return []


def check_chain(items: Sequence[tuple[str, Mapping[str, Any]]]) -> list[str]:
    """A whole history of (compact JWS, payload) pairs, given in any order; returns the failures.

    Reported: no attestations; an item whose seq is not a positive integer; a history that does not start at
    seq 1 (or whose seq 1 has a prev); every missing seq ("seq 4 missing"); every repeated seq ("seq 3 appears
    twice"); every item whose prev is not the digest of an item with the previous seq (a reordered pair whose
    links cross is caught here); as_of not strictly increasing along seq, across gaps too.
    """
    if not items:
        return ["no attestations"]
    failures: list[str] = []
    by_seq: dict[int, list[tuple[str, Mapping[str, Any]]]] = {}
    for i, (jws, payload) in enumerate(items):
        seq = _seq_of(payload)
        if seq is None:
            failures.append(f"item {i}: seq is not a positive integer")
            continue
        by_seq.setdefault(seq, []).append((jws, payload))
    if not by_seq:
        return failures
    seqs = sorted(by_seq)
    if seqs[0] != 1:
        failures.append(f"the chain starts at seq {seqs[0]}, not 1")
    for seq in seqs:
        group = by_seq[seq]
        if len(group) > 1:
            failures.append(f"seq {seq} appears {'twice' if len(group) == 2 else f'{len(group)} times'}")
        if seq == 1:
            failures += ["seq 1 must have prev null" for _, p in group if p.get("prev") is not None]
    for before, after in zip(seqs, seqs[1:], strict=False):
        failures += [f"seq {missing} missing" for missing in range(before + 1, after)]
        for _, payload in by_seq[after]:
            # Any item at the previous seq may be the one this one links to; duplicates are reported above.
            if after == before + 1:
                digests = {_digest_or_none(jws) for jws, _ in by_seq[before]} - {None}
                if payload.get("prev") not in digests:
                    failures.append(f"seq {after}: prev is not the SHA-256 of attestation {before}")
            for _, earlier in by_seq[before]:
                failures += _later(earlier, payload, f"seq {after}")
    return failures


# -- one attestation per as_of ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Issued:
    """What the store knows about an attestation already issued: its seq, as_of and figures digest."""

    seq: int
    as_of: datetime
    figures_digest: str


@dataclass(frozen=True)
class Decision:
    """What to do with a request: `reuse` the issued attestation `seq`, or `issue` a new one numbered `seq`."""

    action: Literal["reuse", "issue"]
    seq: int


def _second(moment: datetime) -> datetime:
    # The payload carries as_of to the second; two reports within the same second are the same as_of.
    return moment.astimezone(UTC).replace(microsecond=0)


def decide_attestation(latest: Issued | None, same_as_of: Issued | None, as_of: datetime,
                       figures_digest: str) -> Decision:
    """Decide a request for an attestation as of `as_of` whose figures hash to `figures_digest`.

    latest: the attestation with the highest seq, or None if there is none yet. same_as_of: the attestation
    already issued for this as_of (to the second), if any; it may be older than latest.

    - same as_of, same figures: Decision("reuse", its seq) -- an idempotent retry gets the stored attestation.
    - same as_of, other figures: Conflict (409). There is one attestation per as_of; a correction needs a new
      as_of, so that the history shows both.
    - new as_of not after latest.as_of: Conflict (409). as_of strictly increases along seq; a late report for an
      earlier instant cannot be inserted into a signed chain.
    - otherwise: Decision("issue", latest.seq + 1, or 1 for the first).
    ValueError if same_as_of is not at as_of (the caller looked up the wrong row).
    """
    when = _second(as_of)
    if same_as_of is not None:
        if _second(same_as_of.as_of) != when:
            raise ValueError("same_as_of must be the attestation issued for this as_of")
        if same_as_of.figures_digest == figures_digest:
            return Decision("reuse", same_as_of.seq)
        raise Conflict(f"an attestation as of {utc(when)} was already issued (seq {same_as_of.seq}) with other "
                       "figures; there is one attestation per as_of")
    if latest is not None and when <= _second(latest.as_of):
        raise Conflict(f"as_of {utc(when)} is not after the latest attestation's {utc(latest.as_of)} "
                       f"(seq {latest.seq}); as_of must increase")
    return Decision("issue", 1 if latest is None else latest.seq + 1)
