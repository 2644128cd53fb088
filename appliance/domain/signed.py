"""Operator signatures checked again as read back from storage or from the wire: pure, shared by the service
and an officer's workstation. A stored row counts only through the signature it carries.

An operator signs in one of two ways: a compact JWS under their enrolled JWK, or a WebAuthn assertion by one of
their enrolled security keys (`domain/webauthn.py`), stored as a JSON envelope. Both say the same statement
(`typ` and a JSON payload) and both are verified here."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from appliance.domain import jose, webauthn
from appliance.domain.canonical import parse_json_strict
from appliance.domain.policy import Operator, PolicyBundle
from appliance.errors import ApplianceError

OPERATOR_ALGS = frozenset({"EdDSA", "ES256"})


@functools.lru_cache(maxsize=16384)
def _verify_operator_signature(token: str, jwk: Mapping[str, str], typ: str) -> None:
    """jose.verify_compact of an operator's token under exactly this key and typ; raises if it fails.

    Only successes are remembered (lru_cache never caches an exception): the same token text under the same
    key always verifies, so a stored approval is not verified again on every quorum evaluation, while a row
    whose text was edited misses the cache and is verified for real."""
    jose.verify_compact(token, dict(jwk), algs=OPERATOR_ALGS, typ=typ, location="jws")


def verify_operator_signature(token: str, operator: Operator, typ: str) -> None:
    """The token verifies under `operator`'s enrolled key with `typ` (ApplianceError otherwise)."""
    _verify_operator_signature(token, operator.jwk, typ)


def verify_stored(token: str, bundle: PolicyBundle, typ: str) -> tuple[Operator, dict[str, Any]] | None:
    """A JWS accepted earlier, checked again as read back from storage: signed by the operator its `kid` names
    in `bundle`, of type `typ`, with a JSON object payload. Returns (operator, payload), or None when it does not
    verify. No clock or replay checks (they held when it was accepted) and no role or enabled checks (the
    caller's policy decides). This is what keeps a forged or edited database row from counting."""
    if webauthn.is_envelope(token):
        return _verify_stored_assertion(token, bundle, typ)
    try:
        parsed = jose.parse_compact(token, "jws")
        kid = parsed.header.get("kid")
        operator = bundle.operators.by_kid(kid) if isinstance(kid, str) else None
        if parsed.header.get("typ") != typ or operator is None:
            return None
        verify_operator_signature(token, operator, typ)
        payload = parse_json_strict(parsed.payload, "jws.payload")
    except ApplianceError:
        return None
    return (operator, payload) if isinstance(payload, dict) else None


def _verify_stored_assertion(token: str, bundle: PolicyBundle, typ: str) -> tuple[Operator, dict[str, Any]] | None:
    """verify_stored for a WebAuthn envelope: by a security key enrolled in `bundle`, for its relying party, over
    this typ. The live sign count is not checked again (it was when the assertion was accepted)."""
    rp = bundle.policy.webauthn
    try:
        envelope = webauthn.parse(token)
        enrolled = bundle.operators.by_credential(envelope.credential_id)
        if rp is None or enrolled is None or envelope.typ != typ:
            return None
        webauthn.verify(envelope, enrolled[1], rp)
    except ApplianceError:
        return None
    return enrolled[0], envelope.payload


def by_security_key(token: str) -> bool:
    """Whether a (verified) operator signature was made with a security key rather than a software JWK."""
    return webauthn.is_envelope(token)
