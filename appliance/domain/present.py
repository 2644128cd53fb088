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
