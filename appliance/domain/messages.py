"""What an operator signs: the JWS types (the `typ` header that separates the domains, so an approval can never
be replayed as a request or a vote) and the payload encoding. Pure and light: an officer's workstation (the CLI's
client commands) imports this, never the service."""

from __future__ import annotations

import json
from typing import Any

TYP_MINT_REQUEST = "mint-request+jws"
TYP_MINT_APPROVAL = "mint-approval+jws"
TYP_MINT_CANCEL = "mint-cancel+jws"
TYP_ATTESTATION_REQUEST = "attestation-request+jws"
TYP_RESERVE_REPORT = "reserve-report+jws"  # a custodian's signed reserve report (the payload is the report)
TYP_POLICY_PROPOSAL = "policy-proposal+jws"
TYP_POLICY_APPROVAL = "policy-approval+jws"
TYP_KEY_INVITATION = "security-key-invitation+jws"  # a security admin invites an officer to register a key
TYP_READ = "read+jws"  # an enrolled operator asks to read one private resource (see domain/reads.py)


def dumps(payload: dict[str, Any]) -> bytes:
    """JSON bytes for a JWS payload (compact, UTF-8)."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
