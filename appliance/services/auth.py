"""Operator authentication: every write is signed by an enrolled operator: a compact JWS by their own key, or a
WebAuthn assertion by one of their enrolled security keys (`domain/webauthn.py`) over the same statement.

The protected header names the key (`kid`, its RFC 7638 thumbprint) and the message type (`typ`), which
separates the domains: a signed approval can never be replayed as a request or a policy vote. The payload
carries `iat` (within ±5 minutes of the appliance's clock) and a unique `jti`, recorded in the same
transaction as the state change so a replay is refused across restarts and instances. A security key's sign
count is recorded in that transaction too, and one that does not increase is refused (a cloned key).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, insert, select, update
from sqlalchemy import exc as sa_exc

from appliance import metrics
from appliance.domain import jose, reads, webauthn
from appliance.domain.canonical import parse_json_strict
from appliance.domain.messages import TYP_ATTESTATION_REQUEST as TYP_ATTESTATION_REQUEST
from appliance.domain.messages import TYP_MINT_APPROVAL as TYP_MINT_APPROVAL
from appliance.domain.messages import TYP_MINT_CANCEL as TYP_MINT_CANCEL
from appliance.domain.messages import TYP_MINT_REQUEST as TYP_MINT_REQUEST
from appliance.domain.messages import TYP_POLICY_APPROVAL as TYP_POLICY_APPROVAL
from appliance.domain.messages import TYP_POLICY_PROPOSAL as TYP_POLICY_PROPOSAL
from appliance.domain.messages import TYP_RESERVE_REPORT as TYP_RESERVE_REPORT
from appliance.domain.messages import dumps as dumps
from appliance.domain.policy import Operator, PolicyBundle
from appliance.domain.signed import OPERATOR_ALGS as OPERATOR_ALGS
from appliance.domain.signed import verify_operator_signature
from appliance.domain.signed import verify_stored as verify_stored
from appliance.errors import ApplianceError, Conflict, Forbidden, InvalidInput, Unauthenticated
from appliance.store.tables import seen_tokens, webauthn_sign_counts

IAT_SKEW_SECONDS = 300


@dataclass(frozen=True)
class Authenticated:
    operator: Operator
    payload: dict[str, Any]
    token: str
    jti: str
    iat: int
    credential_id: str | None = None  # the security key that made a WebAuthn assertion (None: a JWS)
    sign_count: int = 0


class SignCountRegressed(Unauthenticated):
    """A security key's sign count did not increase: the key may have been cloned. Audited on its own."""


PAST_TENSE = {"approve": "approved", "reject": "rejected"}  # decisions as audit actions (mint.approved)

def _operator_for_kid(bundle: PolicyBundle, kid: object) -> Operator:
    if not isinstance(kid, str):
        raise Unauthenticated("the JWS header needs a `kid`: the RFC 7638 thumbprint of your enrolled key")
    operator = bundle.operators.by_kid(kid)
    if operator is None:
        raise Unauthenticated("no enrolled operator has the key named by `kid`")
    return operator


def authenticate(token: object, bundle: PolicyBundle, *, typ: str, roles: frozenset[str], now: int) -> Authenticated:
    """Verify an operator's JWS of type `typ`; raises Unauthenticated, Forbidden or InvalidInput."""
    try:
        return _authenticate(token, bundle, typ=typ, roles=roles, now=now)
    except Unauthenticated as exc:
        metrics.AUTH_FAILURES.labels(_reason_label(exc.detail)).inc()
        raise


def authenticate_read(authorization: str | None, bundle: PolicyBundle, *, method: str, target: str,
                      now: int) -> Operator:
    """The enabled operator of `bundle` whose read token (an `Authorization: Bearer` JWS, see domain/reads.py)
    is for exactly `method target` and fresh at `now`; raises Unauthenticated or Forbidden."""
    try:
        token = reads.token_of(authorization)
    except Unauthenticated:
        metrics.AUTH_FAILURES.labels("missing").inc()
        raise
    try:
        if webauthn.is_envelope(token):
            raise Unauthenticated("a read token is a compact JWS (security keys sign in to the console instead)")
        operator, payload = _signed_by_operator(token, bundle, typ=reads.TYP_READ, roles=frozenset(),
                                                location="authorization")
        reads.check(payload, method, target, now)
        return operator
    except InvalidInput as exc:  # a malformed token is a failed authentication like any other
        metrics.AUTH_FAILURES.labels("other").inc()
        raise Unauthenticated(f"the read token is malformed: {exc.detail}") from exc
    except Unauthenticated as exc:
        metrics.AUTH_FAILURES.labels(_reason_label(exc.detail)).inc()
        raise


def verify_statement(token: object, bundle: PolicyBundle, *, typ: str, roles: frozenset[str],
                     location: str) -> tuple[Operator, dict[str, Any]]:
    """A signed statement (not a request: no freshness or replay checks), such as a custodian's reserve report:
    of type `typ`, verifying under the key of an enabled operator of `bundle` holding one of `roles`. Returns
    (operator, payload); raises InvalidInput, Unauthenticated or Forbidden naming `location`."""
    try:
        return _signed_by_operator(token, bundle, typ=typ, roles=roles, location=location)
    except Unauthenticated as exc:
        metrics.AUTH_FAILURES.labels(_reason_label(exc.detail)).inc()
        raise


def _signed_by_operator(token: object, bundle: PolicyBundle, *, typ: str, roles: frozenset[str],
                        location: str) -> tuple[Operator, dict[str, Any]]:
    if webauthn.is_envelope(token):
        operator, envelope = _asserted_by_operator(str(token), bundle, typ=typ, location=location)
        _check_operator(operator, roles)
        return operator, envelope.payload
    if not isinstance(token, str) or token.count(".") != 2:
        raise InvalidInput(f"`{location}` must be a compact JWS string")
    parsed = jose.parse_compact(token, location)
    if parsed.header.get("typ") != typ:
        raise Unauthenticated(f"the JWS `typ` must be {typ!r} for this operation")
    operator = _operator_for_kid(bundle, parsed.header.get("kid"))
    try:
        verify_operator_signature(token, operator, typ)
    except ApplianceError as exc:
        raise Unauthenticated(f"the signature of {operator.name} does not verify: {exc.detail}") from exc
    _check_operator(operator, roles)
    payload = parse_json_strict(parsed.payload, f"{location}.payload")
    if not isinstance(payload, dict):
        raise InvalidInput(f"the payload of `{location}` must be a JSON object")
    return operator, payload


def _asserted_by_operator(token: str, bundle: PolicyBundle, *, typ: str,
                          location: str) -> tuple[Operator, webauthn.Envelope]:
    """A WebAuthn envelope of type `typ` by a security key enrolled in `bundle`, verified for the bundle's
    relying party (user verification required) with a sign count above the one enrolled."""
    envelope = webauthn.parse(token, location)
    if envelope.typ != typ:
        raise Unauthenticated(f"the assertion's `typ` must be {typ!r} for this operation")
    rp = bundle.policy.webauthn
    if rp is None:
        raise Unauthenticated("this policy accepts no security keys: it has no [webauthn] relying party")
    enrolled = bundle.operators.by_credential(envelope.credential_id)
    if enrolled is None:
        raise Unauthenticated("no enrolled operator has the security key named by `credential_id`")
    operator, credential = enrolled
    try:
        webauthn.verify(envelope, credential, rp, current_sign_count=credential.sign_count)
    except ApplianceError as exc:
        raise Unauthenticated(f"the security key of {operator.name} does not verify: {exc.detail}") from exc
    return operator, envelope


def _check_operator(operator: Operator, roles: frozenset[str]) -> None:
    if not operator.enabled:
        raise Forbidden(f"operator {operator.name} is disabled")
    if roles and not (operator.roles & roles):
        raise Forbidden(f"operator {operator.name} lacks a required role ({', '.join(sorted(roles))})")


def _authenticate(token: object, bundle: PolicyBundle, *, typ: str, roles: frozenset[str],
                  now: int) -> Authenticated:
    operator, payload = _signed_by_operator(token, bundle, typ=typ, roles=roles, location="jws")
    assert isinstance(token, str)  # noqa: S101 - checked by _signed_by_operator
    iat, jti = payload.get("iat"), payload.get("jti")
    if isinstance(iat, bool) or not isinstance(iat, int):
        raise InvalidInput("jws.payload.iat must be an integer (Unix seconds)")
    if abs(now - iat) > IAT_SKEW_SECONDS:
        raise Unauthenticated(f"jws.payload.iat is more than {IAT_SKEW_SECONDS} s from the appliance's clock")
    if not isinstance(jti, str) or not 16 <= len(jti) <= 128 or not jti.isascii() or not jti.isprintable():
        raise InvalidInput("jws.payload.jti must be a unique printable ASCII string of 16 to 128 characters")
    if webauthn.is_envelope(token):
        envelope = webauthn.parse(token)
        return Authenticated(operator=operator, payload=payload, token=webauthn.encode(envelope), jti=jti, iat=iat,
                             credential_id=envelope.credential_id, sign_count=envelope.sign_count)
    return Authenticated(operator=operator, payload=payload, token=token, jti=jti, iat=iat)


def consume_jti(conn: Connection, auth: Authenticated, now: int) -> None:
    """Record the token's jti inside the caller's transaction; a replay raises Conflict."""
    try:
        with conn.begin_nested():
            conn.execute(insert(seen_tokens).values(jti=auth.jti, operator=auth.operator.name, seen_at=now))
    except sa_exc.IntegrityError as exc:
        metrics.AUTH_FAILURES.labels("replay").inc()
        raise Conflict("this JWS was already used (replayed jti)") from exc
    if auth.credential_id is not None:
        advance_sign_count(conn, auth.operator.name, auth.credential_id, auth.sign_count, now)


def advance_sign_count(conn: Connection, operator: str, credential_id: str, sign_count: int, now: int) -> None:
    """Record a security key's sign count in the caller's transaction; one that does not increase (while either
    is non-zero: keys that keep no counter report 0) raises SignCountRegressed."""
    table = webauthn_sign_counts
    stored = conn.execute(select(table.c.sign_count).where(table.c.credential_id == credential_id)
                          .with_for_update()).scalar()
    if stored is not None and (stored or sign_count) and sign_count <= stored:
        metrics.AUTH_FAILURES.labels("sign-count").inc()
        raise SignCountRegressed(f"the security key of {operator} reported sign count {sign_count}, not above "
                                 f"{stored}: the key may have been cloned; the assertion is refused")
    if stored is None:
        conn.execute(insert(table).values(credential_id=credential_id, operator=operator, sign_count=sign_count,
                                          updated_at=now))
    else:
        conn.execute(update(table).where(table.c.credential_id == credential_id)
                     .values(sign_count=sign_count, updated_at=now))


def _reason_label(detail: str) -> str:
    for key, label in (("typ", "wrong-type"), ("kid", "unknown-key"), ("enrolled", "unknown-key"),
                       ("does not verify", "bad-signature"), ("iat", "stale"), ("security key", "security-key")):
        if key in detail:
            return label
    return "other"
