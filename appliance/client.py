"""HTTP client of a running appliance, used by the CLI (operators sign locally, then send).

Problem responses come back as the matching `ApplianceError` subclass, so the CLI's single error path prints
the service's reason; transport failures become `InfrastructureError`.
"""

from __future__ import annotations

import http.client
import json
import secrets
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

from appliance import errors
from appliance.domain import policy_history
from appliance.errors import PROBLEM_BASE, ApplianceError, InfrastructureError, Problem

_BY_STATUS: dict[int, type[ApplianceError]] = {
    400: errors.InvalidInput, 401: errors.Unauthenticated, 403: errors.Forbidden, 404: errors.NotFound,
    409: errors.Conflict, 413: errors.InvalidInput, 415: errors.InvalidInput, 422: errors.PolicyViolation,
    503: errors.InfrastructureError,
}


def new_jti() -> str:
    return secrets.token_urlsafe(24)


class Client:
    def __init__(self, base_url: str, timeout: float = 30.0, trust_anchor: str | None = None,
                 ca_file: str | None = None, client_cert: str | None = None, client_key: str | None = None,
                 reader: Callable[[str, str], str] | None = None) -> None:
        self.base = base_url.rstrip("/")
        self.timeout = timeout
        #: https: the system's trust store, or only `ca_file`; a client certificate where the service asks for one
        self.tls = _tls_context(ca_file, client_cert, client_key) if self.base.startswith("https://") else None
        #: the first policy bundle's hash as the officer pinned it: when set, policy() verifies the served
        #: history from it, and nothing the service says about the policy is believed otherwise
        self.trust_anchor = trust_anchor
        #: (method, path and query) -> the Authorization header of a signed read (operator.read_authorization):
        #: operators, mint requests and policy details are for enrolled operators (domain/reads.py)
        self.reader = reader

    def _request(self, method: str, path: str, body: Any = None, accept: str = "application/json") -> Any:
        data = None if body is None else json.dumps(body).encode("utf-8")
        req = urllib.request.Request(self.base + path, data=data, method=method)  # noqa: S310 (http/https only)
        if not self.base.startswith(("http://", "https://")):
            raise errors.ConfigError(f"the service URL must be http:// or https://, not {self.base!r}")
        req.add_header("Accept", f"{accept}, application/problem+json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if method == "GET" and self.reader is not None:
            req.add_header("Authorization", self.reader(method, path))
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=self.tls) as resp:  # noqa: S310
                raw = resp.read()
                ctype = resp.headers.get_content_type()
        except urllib.error.HTTPError as exc:
            raise _problem(exc) from None
        except (urllib.error.URLError, TimeoutError, ConnectionError, ssl.SSLError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", exc)
            raise InfrastructureError(f"cannot reach the appliance at {self.base}: {reason}") from exc
        if ctype == "application/json" or ctype.endswith("+json"):
            return json.loads(raw)
        return raw.decode("utf-8")

    def get(self, path: str, accept: str = "application/json", **query: Any) -> Any:
        q = {k: v for k, v in query.items() if v is not None}
        return self._request("GET", path + ("?" + urllib.parse.urlencode(q) if q else ""), accept=accept)

    def post(self, path: str, body: Any) -> Any:
        return self._request("POST", path, body)

    # -- resources ------------------------------------------------------------------------------------------

    def jwks(self) -> dict[str, Any]:
        return self.get("/.well-known/jwks.json", accept="application/jwk-set+json")  # type: ignore[no-any-return]

    def verifier_key(self) -> str:
        return str(self.get("/v1/audit/verifier-key", accept="text/plain")).strip()

    def checkpoint(self) -> str:
        return str(self.get("/v1/audit/checkpoint", accept="text/plain"))

    def audit_entries(self, start: int, end: int) -> list[str]:
        """The exact canonical JSON text of each entry, as the log hashed it."""
        return self.get("/v1/audit/entries", start=start, end=end, format="canonical")["entries"]  # type: ignore[no-any-return]

    def consistency(self, old: int, new: int) -> dict[str, Any]:
        return self.get("/v1/audit/proof/consistency", old=old, new=new)  # type: ignore[no-any-return]

    def policy_history(self) -> Any:
        return self.get("/v1/policy/history")

    def policy(self) -> dict[str, Any]:
        """GET /v1/policy; with a pinned trust anchor, only once the served history verifies from it (see
        policy_history.check_served; VerificationFailed otherwise)."""
        served: dict[str, Any] = self.get("/v1/policy")
        if self.trust_anchor is None:
            return served
        try:
            return policy_history.check_served(served, self.policy_history(), self.trust_anchor)
        except policy_history.HistoryBroken as exc:
            raise errors.VerificationFailed(f"the policy the service sent does not descend from the pinned trust "
                                            f"anchor {self.trust_anchor}: {exc}; refusing to go on") from exc


def _tls_context(ca_file: str | None, client_cert: str | None, client_key: str | None) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(cafile=ca_file)
        if client_cert:
            context.load_cert_chain(client_cert, client_key)
    except (OSError, ssl.SSLError) as exc:
        raise errors.ConfigError(f"cannot load the TLS files (CA {ca_file}, client certificate {client_cert}): "
                                 f"{exc}") from exc
    return context


def _problem(exc: urllib.error.HTTPError) -> ApplianceError:
    try:
        body = json.loads(exc.read() or b"{}")
    except (ValueError, OSError):
        body = {}
    detail = body.get("detail") or exc.reason or f"HTTP {exc.code}"
    found = [Problem(e.get("location", ""), e.get("message", "")) for e in body.get("errors", [])
             if isinstance(e, dict)]
    cls = _BY_STATUS.get(exc.code, errors.ClientError if exc.code < 500 else InfrastructureError)
    error = cls(f"{detail} (HTTP {exc.code})", found)
    kind = body.get("type")
    if isinstance(kind, str) and kind.startswith(PROBLEM_BASE):  # the service's named problem, kept as it said
        error.slug = kind.removeprefix(PROBLEM_BASE)
        error.title = str(body.get("title") or error.title)
    return error

