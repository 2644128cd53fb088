"""Quorum evaluation: do these (already signature-checked) approvals authorize this mint request?

Pure and total: evaluate() never raises for bad approvals, it explains them. The result says who counted, who
rejected, which approvals were ignored and why, and what is still missing, so the API response and the audit
entry come straight from it. One person, one vote: an operator counts at most once, whatever they sent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from appliance.domain.policy import OperatorSet, Policy, Tier, describe

# How far in the future an approval's iat may be: clock skew between an officer's workstation and the appliance.
FUTURE_SKEW_SECONDS = 300

# Why an approval did not count (the second member of each QuorumResult.ignored pair).
NOT_AUTHENTIC = "its stored signature does not verify"
UNKNOWN_OPERATOR = "unknown operator"
OPERATOR_DISABLED = "operator disabled"
REQUESTER = "the requester never counts"
NOT_ELIGIBLE = "no role eligible for this tier"
WRONG_REQUEST = "approval for another request"
DIGEST_MISMATCH = "digest mismatch"
POLICY_HASH_MISMATCH = "policy hash mismatch"
UNKNOWN_DECISION = "unknown decision"
APPROVAL_EXPIRED = "approval expired"
FROM_THE_FUTURE = "approval from the future"
DUPLICATE = "duplicate (an operator counts once)"
OVERRULED_BY_REJECTION = "the same operator also rejected (the rejection wins)"
SECURITY_KEY_REQUIRED = "this tier counts only approvals made with a security key"


@dataclass(frozen=True)
class Approval:
    """An operator's decision on a request, as its JWS says. `authentic` is the caller's verdict on that JWS's
    signature (re-checked from storage whenever quorum is evaluated); an inauthentic one never counts or vetoes."""

    operator: str
    decision: str  # "approve" or "reject"; anything else is ignored as UNKNOWN_DECISION
    request_id: str
    digest: str
    policy_hash: str
    iat: int
    authentic: bool = True
    security_key: bool = False  # made with an enrolled WebAuthn credential rather than a software JWK


@dataclass(frozen=True)
class RequestFacts:
    """What quorum needs to know about a mint request (times in Unix seconds)."""

    id: str
    requester: str
    amount: int
    digest: str
    created_at: int
    expires_at: int
    policy_hash: str


@dataclass(frozen=True)
class QuorumResult:
    """The outcome of evaluate(), explaining itself.

    `tier` is describe() of the tier applied; `counted` and `rejected_by` are operator names, sorted;
    `ignored` is one (operator, reason) per approval that did not count, in input order; `missing` says what
    the counted approvals still lack ("1 more approval", "1 more cfo").
    """

    met: bool
    vetoed: bool
    expired: bool
    tier: dict[str, Any]
    counted: tuple[str, ...]
    rejected_by: tuple[str, ...]
    ignored: tuple[tuple[str, str], ...]
    missing: tuple[str, ...]

    @property
    def reasons(self) -> str:
        """One line: who met the quorum, or why it is not met."""
        if self.met:
            return f"quorum met by {', '.join(self.counted)}"
        return "; ".join(self.why_not) or "quorum not met"

    @property
    def why_not(self) -> tuple[str, ...]:
        """Each reason the quorum is not met (empty when met): expiry, veto, then what is missing."""
        if self.met:
            return ()
        parts = []
        if self.expired:
            parts.append("the request expired")
        if self.vetoed:
            parts.append(f"rejected by {', '.join(self.rejected_by)}")
        return (*parts, *self.missing)

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe form for API responses and audit entries (ignored as [operator, reason] pairs)."""
        return {"met": self.met, "vetoed": self.vetoed, "expired": self.expired, "tier": self.tier,
                "counted": list(self.counted), "rejected_by": list(self.rejected_by),
                "ignored": [[operator, reason] for operator, reason in self.ignored],
                "missing": list(self.missing), "reasons": self.reasons}


def _ignore_reason(a: Approval, request: RequestFacts, operators: OperatorSet, tier: Tier, approval_ttl: int,
                   now: int) -> str | None:
    """Why `a` cannot count (or veto), or None when it is valid."""
    if not a.authentic:
        return NOT_AUTHENTIC
    op = operators.get(a.operator)
    if op is None:
        return UNKNOWN_OPERATOR
    if not op.enabled:
        return OPERATOR_DISABLED
    if a.operator == request.requester:
        return REQUESTER
    if not op.roles & tier.eligible_roles:
        return NOT_ELIGIBLE
    if tier.hardware_keys_only and not a.security_key and a.decision == "approve":
        return SECURITY_KEY_REQUIRED  # a rejection by any enrolled key still vetoes: refusing is fail-safe
    if a.request_id != request.id:
        return WRONG_REQUEST
    if a.digest != request.digest:
        return DIGEST_MISMATCH
    if a.policy_hash != request.policy_hash:
        return POLICY_HASH_MISMATCH
    if a.decision not in ("approve", "reject"):
        return UNKNOWN_DECISION
    # An approval goes stale; a rejection lasts as long as the request, or waiting out the TTL would undo a veto.
    if a.decision == "approve" and now > a.iat + approval_ttl:
        return APPROVAL_EXPIRED
    if a.iat > now + FUTURE_SKEW_SECONDS:
        return FROM_THE_FUTURE
    return None


def _missing(tier: Tier, counted: set[str], operators: OperatorSet) -> list[str]:
    lines = []
    short = tier.approvals - len(counted)
    if short > 0:
        lines.append(f"{short} more approval{'' if short == 1 else 's'}")
    roles = [op.roles for op in operators if op.name in counted]
    for role, minimum in tier.required:
        holders = sum(1 for held in roles if role in held)
        if holders < minimum:
            lines.append(f"{minimum - holders} more {role}")
    return lines


def evaluate(request: RequestFacts, approvals: Sequence[Approval], operators: OperatorSet, policy: Policy,
             now: int) -> QuorumResult:
    """Whether `approvals` meet `policy`'s quorum for `request` at `now`, with the explanation. Never raises.

    The tier is chosen by the request's amount. An approval counts only if its operator is enrolled, enabled,
    not the requester and holds an eligible role, and it names the request's id, digest and policy hash, and
    iat - 300 s <= now <= iat + approval_ttl_seconds; an operator counts once. A rejection is valid on the same
    terms except that it does not go stale. Met iff the request has not expired (now < expires_at), no valid
    rejection vetoes it (veto_on_reject), at least tier.approvals operators count and, for each required role,
    enough of them hold it. An operator who both approved and rejected is a rejecter.
    """
    tier = policy.tier_for(request.amount)
    ttl = policy.mint.approval_ttl_seconds
    verdicts = [(a, _ignore_reason(a, request, operators, tier, ttl, now)) for a in approvals]
    rejecters = {a.operator for a, reason in verdicts if reason is None and a.decision == "reject"}

    counted: set[str] = set()
    seen_rejections: set[str] = set()
    ignored: list[tuple[str, str]] = []
    for a, reason in verdicts:
        if reason is None and a.decision == "reject":
            reason = DUPLICATE if a.operator in seen_rejections else None
            seen_rejections.add(a.operator)
        elif reason is None:
            if a.operator in rejecters:
                reason = OVERRULED_BY_REJECTION
            elif a.operator in counted:
                reason = DUPLICATE
            else:
                counted.add(a.operator)
        if reason is not None:
            ignored.append((a.operator, reason))

    expired = now >= request.expires_at
    vetoed = policy.mint.veto_on_reject and bool(rejecters)
    missing = _missing(tier, counted, operators)
    return QuorumResult(met=not expired and not vetoed and not missing, vetoed=vetoed, expired=expired,
                        tier=describe(tier), counted=tuple(sorted(counted)), rejected_by=tuple(sorted(rejecters)),
                        ignored=tuple(ignored), missing=tuple(missing))
