"""Signed reads: what an enrolled operator signs to read a private resource (operators, mint requests, policy
details, security-key registrations), and the check of it. Pure: the CLI signs with it, the service checks.

A read token is a compact JWS of type TYP_READ, sent as `Authorization: Bearer <jws>`, whose payload names the
request it is for and when it was made: `{"htm": "GET", "htu": "/v1/mint-requests/…?status=pending", "iat": …}`.
`htu` is the path and query exactly as sent (not the scheme or host: a reverse proxy may change those).
Reads write nothing, so a token carries no `jti` and is not recorded: it is good for that one path and query
for READ_SKEW_SECONDS either side of its `iat`, and for nothing else (no other path, no write, no other type).
"""

from __future__ import annotations

from typing import Any

from appliance.domain.messages import TYP_READ as TYP_READ
from appliance.errors import Unauthenticated

READ_SKEW_SECONDS = 120
SCHEME = "Bearer"


def claims(method: str, target: str, now: int) -> dict[str, Any]:
    """The payload an operator signs to send `method target` (target: path and query as sent) at `now`."""
    return {"htm": method.upper(), "htu": target, "iat": int(now)}


def target_of(path: str, query: str) -> str:
    """The `htu` of a request: its path, and `?query` when it has one."""
    return f"{path}?{query}" if query else path


def token_of(authorization: str | None) -> str:
    """The JWS of an `Authorization: Bearer <jws>` header; Unauthenticated when there is none."""
    if not authorization:
        raise Unauthenticated("this resource is for enrolled operators: send `Authorization: Bearer <read token>`, "
                              "a JWS of type read+jws by your enrolled key (the CLI: --read-key)")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != SCHEME.lower() or not token.strip():
        raise Unauthenticated("the Authorization header must be `Bearer <read token>`")
    return token.strip()


def check(payload: dict[str, Any], method: str, target: str, now: int) -> None:
    """Unauthenticated unless the signed payload is for exactly this request, made within the skew of `now`."""
    if payload.get("htm") != method.upper():
        raise Unauthenticated(f"the read token is for {payload.get('htm')!r}, not {method.upper()}")
    if payload.get("htu") != target:
        raise Unauthenticated("the read token's `htu` is not this request's path and query")
    iat = payload.get("iat")
    if isinstance(iat, bool) or not isinstance(iat, int):
        raise Unauthenticated("the read token's `iat` must be an integer (Unix seconds)")
    if abs(now - iat) > READ_SKEW_SECONDS:
        raise Unauthenticated(f"the read token's `iat` is more than {READ_SKEW_SECONDS} s from the appliance's clock")
