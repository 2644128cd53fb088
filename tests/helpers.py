"""Test helpers: an appliance around the session token, Flask clients, officers who sign locally."""

from __future__ import annotations

import json
import secrets
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from prometheus_client import REGISTRY

from appliance import config
from appliance.api import create_app
from appliance.domain import jose, reads
from appliance.domain.messages import TYP_RESERVE_REPORT
from appliance.operator import SoftwareSigner, load_key, read_authorization
from appliance.services import auth, context
from appliance.services.context import Appliance
from tests.authenticator import SoftAuthenticator


class ReadingClient(FlaskClient):
    """A test client that signs every GET with `reader`'s read token (domain/reads.py), as the CLI does, unless
    the request brings its own Authorization header or `reader` is None (an anonymous caller)."""

    reader: Callable[[str, str], str] | None = None

    def get(self, url: str, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        headers = dict(kwargs.pop("headers", None) or {})
        if self.reader is not None and "Authorization" not in headers:
            parts = urllib.parse.urlsplit(url)
            headers["Authorization"] = self.reader("GET", reads.target_of(parts.path, parts.query))
        return super().get(url, *args, headers=headers, **kwargs)


class Clock:
    """A controllable clock for the appliance (time is a parameter)."""

    def __init__(self) -> None:
        self.now = float(int(time.time()))

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Harness:
    app_ctx: Appliance
    flask: Flask
    clock: Clock
    directory: Path
    summary: dict[str, Any]
    signers: dict[str, SoftwareSigner] = field(default_factory=dict)
    keys: dict[str, SoftAuthenticator] = field(default_factory=dict)  # officers' enrolled security keys

    #: whose read token the harness's clients send with every GET (None: anonymous reads)
    reader: str | None = "grace"

    @property
    def client(self) -> ReadingClient:
        client = self.flask.test_client()
        assert isinstance(client, ReadingClient)
        client.reader = None if self.reader is None else (lambda m, t: self.read_token(self.reader or "", m, t))
        return client

    def anonymous(self) -> FlaskClient:
        """A client that sends no read token."""
        return self.flask.test_client()

    def read_token(self, name: str, method: str, target: str, iat: int | None = None) -> str:
        """`Bearer <jws>`: `name`'s read token for `method target` (see domain/reads.py)."""
        clock = self.clock if iat is None else (lambda: float(iat))
        return read_authorization(self.signer(name), clock)(method, target)

    def signer(self, name: str) -> SoftwareSigner:
        if name not in self.signers:
            self.signers[name] = load_key(self.directory / "operators" / f"{name}.pem")
        return self.signers[name]

    def jws(self, name: str, typ: str, payload: dict[str, Any], iat: int | None = None,
            jti: str | None = None, header: dict[str, Any] | None = None) -> str:
        signer = self.signer(name)
        body = {**payload, "iat": int(self.clock()) if iat is None else iat,
                "jti": jti or secrets.token_urlsafe(24)}
        head = {"alg": signer.alg, "kid": signer.key_id, "typ": typ, **(header or {})}
        return jose.sign_compact(head, json.dumps(body).encode(), signer.sign)

    def assertion(self, name: str, typ: str, payload: dict[str, Any], iat: int | None = None,
                  jti: str | None = None, **options: Any) -> dict[str, Any]:
        """`name`'s security key's assertion over the statement (the envelope a browser posts)."""
        body = {**payload, "iat": int(self.clock()) if iat is None else iat, "jti": jti or secrets.token_urlsafe(24)}
        return self.keys[name].envelope(typ, body, **options)

    def signed(self, name: str, typ: str, payload: dict[str, Any]) -> dict[str, Any]:
        """The body of a write by `name`: with their security key when one is enrolled, else their JWS."""
        if name in self.keys:
            return {"webauthn": self.assertion(name, typ, payload)}
        return {"jws": self.jws(name, typ, payload)}

    def report(self, reserves: Any, custodian: str = "heidi") -> str:
        """The reserve report as its custodian signs it (what an attestation request carries)."""
        return self.jws(custodian, TYP_RESERVE_REPORT, reserves)

    # -- mint flow ------------------------------------------------------------------------------------------

    @property
    def allowlist(self) -> list[str]:
        return list(self.summary["allowlist"])

    @property
    def chain_id(self) -> int:
        return int(self.summary["chain_id"])

    def request(self, name: str = "alice", amount: str = "250000000000", to: str | None = None,
                chain_id: int | None = None, **extra: Any) -> Any:
        payload = {"to": to or self.allowlist[0], "amount": amount,
                   "chain_id": self.chain_id if chain_id is None else chain_id, **extra}
        return self.client.post("/v1/mint-requests", json={"jws": self.jws(name, auth.TYP_MINT_REQUEST, payload)})

    def approval(self, name: str, req: dict[str, Any], decision: str = "approve", **override: Any) -> str:
        payload = {"request_id": req["id"], "digest": req["digest"], "decision": decision,
                   "policy": req["policy"], **override}
        return self.jws(name, auth.TYP_MINT_APPROVAL, payload)

    def approve(self, name: str, req: dict[str, Any], decision: str = "approve", **override: Any) -> Any:
        if name in self.keys:  # an officer with an enrolled security key approves with it
            payload = {"request_id": req["id"], "digest": req["digest"], "decision": decision,
                       "policy": req["policy"], **override}
            return self.client.post(f"/v1/mint-requests/{req['id']}/approvals",
                                    json={"webauthn": self.assertion(name, auth.TYP_MINT_APPROVAL, payload)})
        return self.client.post(f"/v1/mint-requests/{req['id']}/approvals",
                                json={"jws": self.approval(name, req, decision, **override)})


def harness(directory: Path, summary: dict[str, Any], clock: Clock | None = None) -> Harness:
    clock = clock or Clock()
    settings = config.load(directory / "appliance.toml")
    app_ctx = context.build(settings, clock=clock)
    return Harness(app_ctx, reading(create_app(app_ctx)), clock, directory, summary)


def reading(app: Flask) -> Flask:
    """`app` whose test clients are ReadingClients."""
    app.test_client_class = ReadingClient
    return app


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@contextmanager
def raising(obj: Any, method: str, error: BaseException) -> Iterator[None]:
    """obj.method raises `error` inside the block (a real HSM or store failing at one chosen step)."""
    had_own = method in vars(obj)
    original = getattr(obj, method)

    def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise error

    setattr(obj, method, broken)
    try:
        yield
    finally:
        if had_own:
            setattr(obj, method, original)
        else:
            delattr(obj, method)


@contextmanager
def failing_write(db: Any, operation: str) -> Iterator[None]:
    """The store refuses the durable write named `operation` (and only that one) inside the block."""
    from appliance.errors import StorageUnavailable

    original = db.write

    def write(fn: Any, op: str = "write", attempts: int = 5) -> Any:
        if op == operation:
            raise StorageUnavailable(f"storage {op} failed: disk full (simulated)")
        return original(fn, op, attempts)

    db.write = write
    try:
        yield
    finally:
        del db.write


def digest_of(settings: Any, chain_id: int, contract: str, to: str, amount: str, nonce: str, valid_after: int,
              valid_before: int) -> str:
    """The EIP-712 digest of these stored field values, as an attacker who edits rows would recompute it."""
    from appliance.domain import eip712

    domain = eip712.Eip712Domain(settings.eip712_name, settings.eip712_version, int(chain_id), contract)
    message = eip712.MintAuthorization(to=to, amount=int(amount), nonce=bytes.fromhex(nonce[2:]),
                                       valid_after=int(valid_after), valid_before=int(valid_before))
    return "0x" + eip712.mint_digest(domain, message).hex()


SECURITY_KEY_ORIGIN = "http://localhost:8080"


def enrol_security_keys(h: Harness, names: list[str], hardware_tiers: tuple[int, ...] = (),
                        hardware_governance: bool = False, origin: str = SECURITY_KEY_ORIGIN) -> str:
    """Enact (erin and frank approving) a bundle that enrols a software security key for each of `names`, with
    the relying party `localhost` at `origin`, and demands security keys on the tiers at `hardware_tiers`."""
    from tests.integration.test_policy_changes import enact, tables

    policy, operators = tables(h)
    policy["webauthn"] = {"rp_id": "localhost", "origins": [origin]}
    for i in hardware_tiers:
        policy["mint"]["tiers"][i]["hardware_keys_only"] = True
    if hardware_governance:
        policy["governance"]["hardware_keys_only"] = True
    for op in operators["operators"]:
        if op["name"] in names:
            key = h.keys.setdefault(op["name"], SoftAuthenticator(origin=origin))
            op["webauthn"] = [key.credential(f"{op['name']}'s key")]
    return enact(h, policy, operators)
