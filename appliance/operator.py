"""What an officer's workstation does: load their own key and sign typed requests locally.

The appliance never sees an operator's private key; it only verifies the JWS against the enrolled public key.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from appliance.client import new_jti
from appliance.domain import jose, reads
from appliance.domain.messages import TYP_MINT_REQUEST, TYP_POLICY_PROPOSAL, TYP_RESERVE_REPORT, dumps
from appliance.domain.mint_rules import nonce_for
from appliance.domain.policy import POLICY_PROPOSER_ROLE, PolicyBundle
from appliance.domain.signed import verify_stored
from appliance.errors import ApplianceError, ConfigError, VerificationFailed


@dataclass(frozen=True)
class SoftwareSigner:
    """A key held in software: operators' personal keys (they sign locally) and test doubles."""

    private_key: Any
    alg: str

    @classmethod
    def for_key(cls, private_key: Any) -> SoftwareSigner:
        if isinstance(private_key, ed25519.Ed25519PrivateKey):
            return cls(private_key, "EdDSA")
        if isinstance(private_key, ec.EllipticCurvePrivateKey):
            alg = {"secp256r1": "ES256", "secp256k1": "ES256K"}.get(private_key.curve.name)
            if alg:
                return cls(private_key, alg)
        raise ValueError("operator keys are Ed25519, P-256 or secp256k1")

    def public_jwk(self) -> dict[str, str]:
        return jose.public_jwk(self.private_key.public_key())

    @property
    def key_id(self) -> str:
        return jose.thumbprint(self.public_jwk())

    def sign(self, message: bytes) -> bytes:
        return jose.software_sign(self.private_key, self.alg, message)


def read_authorization(signer: SoftwareSigner, clock: Callable[[], float] = time.time) -> Callable[[str, str], str]:
    """The Client's `reader`: for each GET, `Bearer <jws>` by `signer` over that one method, path and query."""
    def authorize(method: str, target: str) -> str:
        head = {"alg": signer.alg, "kid": signer.key_id, "typ": reads.TYP_READ}
        token = jose.sign_compact(head, dumps(reads.claims(method, target, int(clock()))), signer.sign)
        return f"{reads.SCHEME} {token}"
    return authorize


def load_key(path: str | Path) -> SoftwareSigner:
    """An operator's private key from a PEM (PKCS#8) file; ConfigError if it is not one."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the key file {path}: {exc.strerror}") from exc
    try:
        key = serialization.load_pem_private_key(data, password=None)
        return SoftwareSigner.for_key(key)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path} is not an unencrypted PEM Ed25519 or P-256 private key") from exc


def sign_request(signer: SoftwareSigner, typ: str, payload: dict[str, Any], now: int | None = None) -> str:
    """A compact JWS of type `typ` over payload + fresh `iat` and `jti`."""
    body = {**payload, "iat": int(time.time()) if now is None else now, "jti": new_jti()}
    header = {"alg": signer.alg, "kid": signer.key_id, "typ": typ}
    return jose.sign_compact(header, dumps(body), signer.sign)


def check_enrolled(signer: SoftwareSigner, name: str, policy: dict[str, Any]) -> dict[str, Any]:
    """The enrolled operator `name` from the active bundle, if the key file is really theirs."""
    for op in _enrolled(policy):
        if op["name"] == name:
            if jose.thumbprint(op["jwk"]) != signer.key_id:
                raise ConfigError(f"the key file is not the key enrolled for {name}")
            return dict(op)
    raise ConfigError(f"{name} is not an enrolled operator")


def _enrolled(policy: dict[str, Any]) -> list[dict[str, Any]]:
    """The active bundle's operator entries, as GET /v1/policy serves them."""
    operators = policy["active"]["bundle"]["operators"]
    return list(operators["operators"] if isinstance(operators, dict) else operators)


def _signed_object(token: object, jwks: list[Any], typ: str) -> dict[str, Any]:
    """The JSON object payload of a JWS that verifies under one of `jwks` with `typ`; ValueError otherwise."""
    try:
        payload = json.loads(jose.verify_compact(str(token or ""), jwks, algs=jose.ALGS, typ=typ).payload)
    except ApplianceError as exc:
        raise ValueError(str(exc)) from exc
    if not isinstance(payload, dict):
        raise ValueError("the payload is not a JSON object")
    return payload


def check_requester_signed(policy: dict[str, Any], req: dict[str, Any]) -> None:
    """On the approver's own machine: the request's JWS verifies under the requester's key in the active bundle
    and names the recipient, amount and chain shown (VerificationFailed otherwise). Whoever rewrote the stored
    request cannot make the requester's signature name their figures."""
    requester = next((op for op in _enrolled(policy) if op["name"] == req.get("requester")), None)
    if requester is None:
        raise VerificationFailed(f"the requester {req.get('requester')!r} is not an enrolled operator")
    try:
        payload = _signed_object(req.get("request_jws"), [requester["jwk"]], TYP_MINT_REQUEST)
    except ValueError as exc:
        raise VerificationFailed(f"the request is not signed by its requester {requester['name']}: refusing to "
                                 "sign") from exc
    signed = (str(payload.get("to", "")).lower(), str(payload.get("amount")), payload.get("chain_id"))
    if signed != (str(req["to"]).lower(), str(req["amount"]), req["chain_id"]):
        raise VerificationFailed(f"the request shown is not what {requester['name']} signed (recipient, amount "
                                 "or chain differ): refusing to sign")
    if str(req.get("nonce", "")).lower() != nonce_for(str(req["request_jws"])):
        raise VerificationFailed(f"the nonce shown is not the one {requester['name']}'s signed request determines: "
                                 "refusing to sign")


def check_within_policy(policy: dict[str, Any], req: dict[str, Any]) -> None:
    """On the approver's own machine: the recipient is on the active policy's allowlist for the chain and the
    amount within its per-request maximum (VerificationFailed otherwise), whatever the service's warnings say."""
    active = PolicyBundle.from_json(policy["active"]["bundle"]).policy
    if not active.is_allowlisted(int(req["chain_id"]), str(req["to"])):
        raise VerificationFailed(f"{req['to']} is not on the active policy's allowlist for chain {req['chain_id']}: "
                                 "refusing to sign")
    if not 0 < int(req["amount"]) <= active.mint.max_per_request:
        raise VerificationFailed(f"the amount {req['amount']} is outside the active policy's per-request maximum "
                                 f"{active.mint.max_per_request}: refusing to sign")


def check_proposal(policy: dict[str, Any], proposal: dict[str, Any]) -> dict[str, Any]:
    """On the admin's own machine: the bundle the proposer signed, recomputed from their proposal JWS (verified
    under an enabled security admin's key in the active bundle, on the active bundle as its base) and checked to
    be the bundle and hash the service lists. Returns that bundle's JSON; VerificationFailed otherwise."""
    active = policy["active"]
    try:
        bundle = PolicyBundle.from_json(active["bundle"])
    except ApplianceError as exc:
        raise VerificationFailed(f"the active bundle the service lists is not valid: {exc}") from exc
    # a JWS or a security key's assertion (a proposal made in the console), by an enabled admin of the bundle
    verified = verify_stored(str(proposal.get("proposal_jws") or ""), bundle, TYP_POLICY_PROPOSAL)
    if verified is None or not verified[0].enabled or POLICY_PROPOSER_ROLE not in verified[0].roles:
        raise VerificationFailed("the proposal is not signed by an enabled security admin of the active bundle: "
                                 "refusing to vote")
    payload = verified[1]
    if payload.get("base") != active["hash"]:
        raise VerificationFailed(f"the proposal was made on bundle {payload.get('base')}, not on the active bundle "
                                 f"{active['hash']}: refusing to vote (it would undo what changed since)")
    operators = payload.get("operators") or active["bundle"]["operators"]
    try:
        signed = PolicyBundle.from_json({"policy": payload.get("policy"), "operators": operators})
        listed = PolicyBundle.from_json(proposal.get("bundle"))
    except ApplianceError as exc:
        raise VerificationFailed(f"the proposal does not give a valid bundle: {exc}") from exc
    if not signed.hash == listed.hash == proposal.get("hash"):
        raise VerificationFailed("the bundle the service lists is not the one its proposer signed: refusing to vote")
    return signed.to_json()


def sign_reserve_report(signer: SoftwareSigner, report: dict[str, Any], now: int | None = None) -> str:
    """A custodian's signature over their reserve report: the JWS an auditor's attestation request carries."""
    return sign_request(signer, TYP_RESERVE_REPORT, report, now)
