"""Whether a mint authorization may be signed now: every rule of the policy, judged at signing time.

Pure. The shell (services.mint) calls `signing_refusals` on every path to the HSM (the first signature, a retry,
the takeover of a stale reservation) with facts it has verified: the terms the requester signed (their JWS,
checked under the anchored policy history), the stored terms the digest is computed from, the policies the
request is judged under (the one it was made under and the one in force), the configured verifying contract,
the amounts already authorized (from the audit log the token vouches for) and the clock. Nothing time-dependent
is judged at a time read from a database row: the validity window is bound to the requester's signed `iat`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from appliance.domain import amounts
from appliance.domain.policy import Policy, ReserveFacts, reserve_guard_reasons
from appliance.domain.rfc3339 import parse_utc

IAT_SKEW_SECONDS = 300  # how far the appliance's clock at creation may differ from the requester's signed iat
NONCE_DOMAIN = b"appliance mint nonce v1\n"


def nonce_for(request_jws: str) -> str:
    """The EIP-712 nonce of the request the requester's compact JWS makes: SHA-256 over a domain tag and the JWS,
    as 0x + 64 hex digits. Derived, never chosen, so that the one term the requester does not type is still bound
    by their signature: a stored nonce that is not this is refused at signing. Two requests have one nonce only
    if they are the same signed request (its jti is consumed once; a replay after the database forgot the jti
    gets the same nonce, which the reservation and the verifying contract accept once)."""
    return "0x" + hashlib.sha256(NONCE_DOMAIN + request_jws.encode("ascii")).hexdigest()


@dataclass(frozen=True)
class SignedTerms:
    """What the requester's verified JWS says."""

    requester: str
    chain_id: int
    to: str
    amount: int
    iat: int
    nonce: str  # nonce_for(the JWS)


@dataclass(frozen=True)
class StoredTerms:
    """What the stored request says (attacker-writable: believed only where it equals the signed terms)."""

    requester: str
    chain_id: int
    verifying_contract: str
    to: str
    amount: int
    valid_after: int
    valid_before: int
    expires_at: int
    nonce: str


@dataclass(frozen=True)
class Authorized:
    """One authorization already reserved or signed (for the velocity limit): when and how much."""

    request_id: str
    at: int
    amount: int
    index: int = -1  # the audit entry that records it (-1: not from the log)


def signing_refusals(signed: SignedTerms | None, stored: StoredTerms, *, recorded: Policy, active: Policy,
                     contract: str | None, authorized: Sequence[Authorized], request_id: str,
                     now: int) -> list[str]:
    """Every reason not to sign now (empty: the rules allow it). `recorded` is the policy the request was made
    under, `active` the one in force; both must allow it. `contract` is the configured verifying contract of the
    stored chain (None: not configured). `authorized` excludes nothing: this request's own entry is skipped."""
    if signed is None:
        return ["the stored request does not match its requester's signed JWS"]
    reasons: list[str] = []
    if (signed.requester, signed.chain_id, signed.to.lower(), signed.amount) != (
            stored.requester, stored.chain_id, stored.to.lower(), stored.amount):
        reasons.append("the stored request does not match its requester's signed JWS")
    if stored.nonce.lower() != signed.nonce:
        reasons.append("the stored nonce is not the one the requester's signed JWS determines")
    if contract is None or contract.lower() != stored.verifying_contract.lower():
        reasons.append(f"the verifying contract {stored.verifying_contract} is not the one configured for chain "
                       f"{stored.chain_id}")
    rm = recorded.mint
    if abs(stored.valid_after - signed.iat) > IAT_SKEW_SECONDS:
        reasons.append("the validity window does not start when the requester signed the request")
    if stored.expires_at != stored.valid_after + rm.request_ttl_seconds:
        reasons.append("the request's expiry is not the policy's request TTL after its creation")
    window = stored.valid_before - stored.valid_after
    if window != rm.request_ttl_seconds + rm.authorization_validity_seconds:
        reasons.append("the validity window is not the one the request's policy sets")
    if window > active.mint.request_ttl_seconds + active.mint.authorization_validity_seconds:
        reasons.append("the validity window is longer than the policy in force allows")
    if now >= stored.expires_at:
        reasons.append("the request expired")
    if now >= stored.valid_before:
        reasons.append("the authorization's validity window has passed")
    for policy in _distinct(recorded, active):
        m = policy.mint
        if not policy.is_allowlisted(stored.chain_id, stored.to):
            reasons.append(f"{stored.to} is not on the allowlist for chain {stored.chain_id}")
        if stored.amount <= 0 or stored.amount > m.max_per_request:
            reasons.append(f"the amount is outside the per-request maximum: {stored.amount} > {m.max_per_request}")
        since = now - m.velocity_window_seconds
        used = sum(a.amount for a in authorized if a.at > since and a.request_id != request_id)
        if used + stored.amount > m.velocity_limit:
            reasons.append(f"velocity limit: {used} authorized in the window + {stored.amount} > {m.velocity_limit}")
    return list(dict.fromkeys(reasons))


def reserve_refusals(policy: Policy, attestation: Mapping[str, Any] | None, authorized: Sequence[Authorized], *,
                     amount: int, token_decimals: int, now: int) -> list[str]:
    """The reserve guard for a mint of `amount` (token base units) at `now`, judged from the payload of the
    latest attestation as the HSM signed it (None: there is none that verifies) and the amounts authorized after
    its as_of. Every figure is scaled exactly to the largest of the three decimals before it is compared."""
    if not policy.reserve_guard.enabled:
        return []
    if attestation is None:
        return reserve_guard_reasons(policy, None, authorized_since=0, amount=amount, now=now)
    reserves, supply = attestation["reserves"], attestation["supply"]
    common = max(int(reserves["decimals"]), int(supply["decimals"]), token_decimals)
    as_of = parse_utc(attestation["as_of"])
    if as_of is None:  # a verified payload always has one; fail closed all the same
        return reserve_guard_reasons(policy, None, authorized_since=0, amount=amount, now=now)
    since = int(as_of.timestamp())
    facts = ReserveFacts(as_of=since, status=str(attestation["status"]),
                         reserves=amounts.scale(int(reserves["total"]), int(reserves["decimals"]), common),
                         supply=amounts.scale(int(supply["total"]), int(supply["decimals"]), common))
    after = sum(a.amount for a in authorized if a.at > since)
    return reserve_guard_reasons(policy, facts, authorized_since=amounts.scale(after, token_decimals, common),
                                 amount=amounts.scale(amount, token_decimals, common), now=now)


def _distinct(recorded: Policy, active: Policy) -> list[Policy]:
    return [recorded] if recorded == active else [recorded, active]


RESERVED = "mint.authorization.reserved"
VOIDED = "mint.authorization.voided"


@dataclass
class LogFacts:
    """What the audit log says about mints, gathered from the entries' text as they are hashed into the verified
    tree (services.audit): reservations (for the velocity limit) and closures (a veto or a cancellation is
    final, whatever a row's status says). Only facts that restrict signing are taken from the log, so an entry
    someone appended beyond the last checkpoint can refuse a mint, never allow one."""

    authorized: list[Authorized]
    closed: dict[str, str]

    @staticmethod
    def empty() -> LogFacts:
        return LogFacts([], {})

    def reserved_at(self, request_id: str, covered: int) -> int | None:
        """When the latest reservation of `request_id` among the first `covered` entries (those a signed
        checkpoint the token vouches for covers) was made; None when there is none."""
        times = [a.at for a in self.authorized if a.request_id == request_id and 0 <= a.index < covered]
        return times[-1] if times else None

    def add(self, entry: dict[str, object]) -> None:
        action, subject, details = entry.get("action"), entry.get("subject"), entry.get("details")
        if not isinstance(subject, str) or not isinstance(details, dict):
            return
        if action == RESERVED:
            amount, at = details.get("amount"), details.get("reserved_at")
            if isinstance(amount, str) and amount.isdigit() and isinstance(at, int) and not isinstance(at, bool):
                index = entry.get("index")
                self.authorized.append(Authorized(subject, at, int(amount),
                                                  index if isinstance(index, int) else -1))
        elif action == "mint.cancelled" or (action == "mint.rejected" and (
                details.get("status") == "rejected" or "quorum" in details)):
            # a cancellation always closes; "mint.rejected" is also each rejecting approval's entry, which closes
            # the request only as the veto (the entry that says so: the request's new status, or the quorum)
            self.closed.setdefault(subject, str(action))
