"""How the console and the CLI show a mint request to the officer deciding on it: pure, no I/O, no clock.

Everything shown is derived from what the service recomputed from stored fields (amount, recipient, digest,
quorum), never from text a requester typed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any


def utc(ts: int) -> str:
    """A Unix time as an officer reads it: "2026-12-07 11:23:05 UTC"."""
    return datetime.fromtimestamp(int(ts), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def age(seconds: int) -> str:
    """A duration in the largest units that matter: "less than a minute", "4 min", "3 h 5 min", "2 d 1 h"."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return "less than a minute"
    minutes, hours, days = seconds // 60 % 60, seconds // 3600 % 24, seconds // 86400
    if days:
        return f"{days} d {hours} h" if hours else f"{days} d"
    if hours:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    return f"{minutes} min"


def progress(quorum: Mapping[str, Any]) -> str:
    """Where a request stands, in one line: "1 of 2 approvals, still needs 1 more cfo", "2 of 2 approvals:
    quorum met", "rejected by dave", "expired"."""
    counted = len(quorum.get("counted", ()))
    needed = int(quorum.get("tier", {}).get("approvals", 0))
    head = f"{counted} of {needed} {'approval' if needed == 1 else 'approvals'}"
    if quorum.get("met"):
        return f"{head}: quorum met"
    if quorum.get("vetoed"):
        return f"{head}; rejected by {', '.join(quorum.get('rejected_by', ()))}"
    if quorum.get("expired"):
        return f"{head}; the request expired"
    missing = list(quorum.get("missing", ()))
    return f"{head}, still needs {' and '.join(missing)}" if missing else head


def label_of(allowlist: Sequence[Mapping[str, Any]], chain_id: int, address: str) -> str | None:
    """The allowlist label of (chain_id, address), compared exactly as the policy does; None if not listed."""
    for entry in allowlist:
        if entry.get("chain_id") == chain_id and entry.get("address") == address:
            return str(entry.get("label") or "")
    return None


def may_decide(view: Mapping[str, Any], operator: str, roles: frozenset[str]) -> str | None:
    """Why `operator` may not decide on the request `view` (the service's request object), or None if they may:
    it must be pending, not their own, not yet decided by them, and they must hold a role the tier counts."""
    if view.get("status") != "pending":
        return f"the request is {view.get('status')}"
    if view.get("requester") == operator:
        return "you made this request: the requester never approves their own"
    if any(a.get("operator") == operator for a in view.get("approvals", ())):
        return "you have already decided on this request"
    eligible = set(view.get("required", {}).get("eligible_roles", ()))
    if not roles & eligible:
        return f"this tier counts approvals from {' or '.join(sorted(eligible))} only"
    return None


def _tokens(units: object, token: Mapping[str, Any]) -> str:
    from appliance.domain.amounts import format_tokens  # noqa: PLC0415 - a light module

    decimals = token.get("decimals")
    if not isinstance(decimals, int):
        return f"{int(str(units)):,} base units"
    return format_tokens(int(str(units)), decimals, str(token.get("symbol", "")))


def _tier_text(tier: Mapping[str, Any]) -> str:
    n = int(tier["approvals"])
    text = f"{n} {'approval' if n == 1 else 'approvals'} from {' or '.join(tier['eligible_roles'])}"
    required = [f"{count} {role}" for role, count in tier.get("required", {}).items() if count]
    if required:
        text += ", including " + " and ".join(required)
    if tier.get("hardware_keys_only"):
        text += ", by security key only"
    return text


def policy_lines(described: Mapping[str, Any]) -> list[str]:
    """GET /v1/policy as a person reads it: the limits, tiers, allowlist, governance, reserve guard, security
    keys and operators of the active bundle, then the open proposals."""
    active, token = described["active"], described.get("token", {})
    policy, operators = active["bundle"]["policy"], active["bundle"]["operators"]["operators"]
    m = policy["mint"]
    lines = [f"policy {policy['name']!r} (version {policy['version']}), bundle {active['hash']} "
             f"(activation {active['activated_seq']})",
             f"  per request    at most {_tokens(m['max_per_request'], token)}",
             f"  velocity       at most {_tokens(m['velocity_limit'], token)} per {age(m['velocity_window_seconds'])}",
             f"  timing         requests expire after {age(m['request_ttl_seconds'])}; approvals count for "
             f"{age(m['approval_ttl_seconds'])}; authorizations are valid {age(m['authorization_validity_seconds'])}",
             f"  rejection      {'one valid rejection vetoes' if m['veto_on_reject'] else 'does not veto'}"]
    low = "0"
    for i, tier in enumerate(m["tiers"], 1):
        bound = f"up to {_tokens(tier['up_to'], token)}" if "up_to" in tier else f"above {_tokens(low, token)}"
        lines.append(f"  tier {i}         {bound}: {_tier_text(tier)}")
        low = tier.get("up_to", low)
    lines += [f"  allowlist      chain {e['chain_id']} {e['address']}" + (f" ({e['label']})" if e.get("label") else "")
              for e in m.get("allowlist", [])] or ["  allowlist      (empty: no recipient is allowed)"]
    guard = policy["reserve_guard"]
    lines.append(f"governance       {described.get('governance', '')}"
                 + ("; security keys only" if policy["governance"].get("hardware_keys_only") else ""))
    lines.append("reserve guard    " + (f"on: needs an attestation at most {age(guard['max_attestation_age_seconds'])}"
                                       " old, fully backed" if guard["enabled"] else "off"))
    rp = policy.get("webauthn")
    lines.append(f"security keys    relying party {rp['rp_id']}, origins {', '.join(rp['origins'])}" if rp
                 else "security keys    none accepted (no [webauthn] relying party)")
    lines.append("operators")
    for op in operators:
        keys = len(op.get("webauthn", []))
        state = "" if op.get("enabled", True) else "  DISABLED"
        lines.append(f"  {op['name']:<14} {', '.join(op['roles']):<28} software key"
                     + (f" + {keys} security key{'s' if keys != 1 else ''}" if keys else "") + state)
    for p in described.get("proposals", []):
        votes = ", ".join(f"{v['operator']}:{v['decision']}" for v in p["approvals"]) or "no votes"
        lines.append(f"proposal {p['id']} bundle {p['hash']} by {p['proposed_by']}: {votes}"
                     + (f" (cannot be approved: {p['problem']})" if p.get("problem") else ""))
    return lines
