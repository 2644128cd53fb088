"""What the officers' web console needs beyond the mint and policy services: statements for a security key to
sign, sign-in, and registering new security keys for the quorum to enrol.

The console never decides anything itself. Every approval, rejection, request or vote it makes is a WebAuthn
assertion over a statement (`domain/webauthn.py`), handed to the same service call the JSON API uses, which
verifies it like any other operator signature. Sign-in only opens a session for reading and for asking the
security key; a session alone can sign nothing.

A registered key counts for nothing until a security admin proposes, and the governance quorum approves, a
policy change that enrols it. While it waits it is a `webauthn_enrolments` row carrying an HMAC under the
console secret (a file on the appliance host, never in the database), so that a row written by someone who
holds only the database is never offered for enrolment; the admins compare the key's fingerprint with its
owner before they approve.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import uuid
from pathlib import Path
from typing import Any

from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy import delete, insert, select

from appliance.domain import bundle_diff, policy_history, webauthn
from appliance.domain.canonical import canonical_json
from appliance.domain.jose import b64url_decode, b64url_encode
from appliance.domain.messages import TYP_KEY_INVITATION, TYP_POLICY_PROPOSAL
from appliance.domain.policy import POLICY_PROPOSER_ROLE, Operator, PolicyBundle
from appliance.errors import ApplianceError, ConfigError, Conflict, Forbidden, InvalidInput, Unauthenticated
from appliance.services import auth
from appliance.services.audit import AuditLog
from appliance.services.context import Appliance
from appliance.services.policy import PolicyService
from appliance.store.tables import webauthn_enrolments

STATEMENT_TIMEOUT_MS = 120_000  # how long the browser waits for the officer to touch the key
INVITATION_SECONDS = 86_400


def load_or_create_secret(path: Path) -> bytes:
    """The console's 32-byte secret from `path`, created (mode 0600, atomically) when missing: every worker
    process of one appliance reads the same file."""
    try:
        return bytes.fromhex(path.read_text(encoding="ascii").strip())
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the console secret {path}: {exc}") from exc
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(secrets.token_hex(32) + "\n")
    try:
        os.link(temporary, path)  # fails if another worker created it first: theirs is the secret
    except FileExistsError:
        pass
    finally:
        temporary.unlink()
    return load_or_create_secret(path)


class ConsoleService:
    def __init__(self, app: Appliance, audit: AuditLog, policies: PolicyService) -> None:
        self.app = app
        self.audit = audit
        self.policies = policies
        self._secret: bytes | None = None

    @property
    def secret(self) -> bytes:
        if self._secret is None:
            self._secret = load_or_create_secret(self.app.settings.console.secret_file)
        return self._secret

    # -- who is signed in ---------------------------------------------------------------------------------------

    def bundle(self) -> PolicyBundle:
        return self.policies.current().active.bundle

    def relying_party(self, bundle: PolicyBundle | None = None) -> webauthn.RelyingParty:
        rp = (bundle or self.bundle()).policy.webauthn
        if rp is None:
            raise Conflict("the active policy names no [webauthn] relying party: security keys cannot be used yet")
        return rp

    def officer(self, name: object) -> Operator | None:
        """The enabled operator `name` of the active bundle (None: unknown, disabled or not a name)."""
        op = self.bundle().operators.get(name) if isinstance(name, str) else None
        return op if op is not None and op.enabled else None

    # -- statements a security key signs --------------------------------------------------------------------------

    def statement(self, operator: Operator, typ: str, fields: dict[str, Any]) -> dict[str, Any]:
        """A statement for `operator`'s security key: the payload (fields, iat, jti) and the WebAuthn request
        options whose challenge commits to it."""
        if not operator.webauthn:
            raise Forbidden(f"{operator.name} has no enrolled security key")
        payload = {**fields, "iat": self.app.now(), "jti": secrets.token_urlsafe(24)}
        rp = self.relying_party()
        return {"typ": typ, "payload": payload, "publicKey": {
            "challenge": b64url_encode(webauthn.challenge(typ, payload)), "rpId": rp.rp_id,
            "allowCredentials": [{"type": "public-key", "id": c.id, "transports": list(c.transports)}
                                 for c in operator.webauthn],
            "userVerification": "required", "timeout": STATEMENT_TIMEOUT_MS}}

    @staticmethod
    def envelope(body: object) -> str:
        """The envelope of what the console's script posts back: {typ, payload, credential: {id,
        authenticator_data, client_data_json, signature}}."""
        if not isinstance(body, dict) or not isinstance(body.get("credential"), dict):
            raise InvalidInput("post the statement with the security key's assertion as `credential`")
        credential = body["credential"]
        return webauthn.encode(webauthn.parse({
            "typ": body.get("typ"), "payload": body.get("payload"), "credential_id": credential.get("id"),
            "authenticator_data": credential.get("authenticator_data"),
            "client_data_json": credential.get("client_data_json"), "signature": credential.get("signature")},
            "credential"))

    # -- sign-in ---------------------------------------------------------------------------------------------------

    def login_statement(self, name: object) -> dict[str, Any]:
        operator = self.officer(name)
        if operator is None or not operator.webauthn:
            raise Unauthenticated("no enabled officer of that name has an enrolled security key")
        return self.statement(operator, webauthn.TYP_LOGIN, {"operator": operator.name,
                                                             "nonce": secrets.token_urlsafe(16)})

    def login(self, expected: object, body: object) -> Operator:
        """The officer whose security key signed exactly the sign-in statement `expected` (kept in the session
        when it was issued), not older than the statement timeout. The key's sign count advances as for any
        assertion (SignCountRegressed when it does not); audited."""
        envelope = webauthn.parse(self.envelope(body))
        if not isinstance(expected, dict) or envelope.typ != webauthn.TYP_LOGIN or envelope.payload != expected:
            raise Unauthenticated("this sign-in was not asked for here: start again")
        if self.app.now() - int(expected.get("iat", 0)) > STATEMENT_TIMEOUT_MS // 1000:
            raise Unauthenticated("the sign-in took too long: start again")
        bundle = self.bundle()
        enrolled = bundle.operators.by_credential(envelope.credential_id)
        if enrolled is None or enrolled[0].name != expected.get("operator") or not enrolled[0].enabled:
            raise Unauthenticated("that security key is not enrolled for this officer")
        operator, credential = enrolled
        try:
            count = webauthn.verify(envelope, credential, self.relying_party(bundle),
                                    current_sign_count=credential.sign_count)
        except ApplianceError as exc:
            raise Unauthenticated(f"the security key of {operator.name} does not verify: {exc.detail}") from exc
        now = self.app.now()

        def record(conn: Any) -> None:  # the audit head's lock first, as in every transaction that appends
            self.audit.record(conn, actor=operator.name, action="console.signed-in", subject=None,
                              details={"credential": credential.id[:16]}, policy_hash=None)
            auth.advance_sign_count(conn, operator.name, credential.id, count, now)

        self.app.db.write(record, "console-login")
        return operator

    # -- registering a security key ----------------------------------------------------------------------------

    def registration_options(self, name: str) -> tuple[dict[str, Any], str]:
        """WebAuthn creation options for a new key of officer `name`, and the challenge to keep in the session."""
        operator = self.officer(name)
        if operator is None:
            raise Forbidden(f"{name} is not an enabled officer")
        rp = self.relying_party()
        challenge = secrets.token_bytes(32)
        options = {"challenge": b64url_encode(challenge), "rp": {"id": rp.rp_id, "name": self.app.settings.issuer},
                   "user": {"id": b64url_encode(hashlib.sha256(name.encode()).digest()[:16]), "name": name,
                            "displayName": name},
                   "pubKeyCredParams": [{"type": "public-key", "alg": -7}, {"type": "public-key", "alg": -8}],
                   "excludeCredentials": [{"type": "public-key", "id": c.id} for c in operator.webauthn],
                   "authenticatorSelection": {"userVerification": "required", "residentKey": "preferred"},
                   "attestation": "none", "timeout": STATEMENT_TIMEOUT_MS}
        return options, b64url_encode(challenge)

    def register(self, name: str, challenge: object, response: object, label: object) -> dict[str, Any]:
        """Verify a new key's registration for `name` and keep it for the quorum to enrol; audited."""
        if not isinstance(challenge, str) or not isinstance(response, dict):
            raise InvalidInput("start the registration again: no registration was asked for here")
        credential = webauthn.registered(response, b64url_decode(challenge), self.relying_party(), str(label or ""))
        if self.bundle().operators.by_credential(credential.id) is not None:
            raise Conflict("this security key is already enrolled")
        text = canonical_json(credential.to_json()).decode()
        row_id = str(uuid.uuid4())

        def store(conn: Any) -> None:
            conn.execute(insert(webauthn_enrolments).values(id=row_id, operator=name, credential=text,
                                                            mac=self._mac(name, text), created_at=self.app.now()))
            self.audit.record(conn, actor=name, action="security-key.registered", subject=row_id,
                              details={"credential": credential.id, "fingerprint": webauthn.fingerprint(credential),
                                       "label": credential.label}, policy_hash=None)

        self.app.db.write(store, "console-register")
        return {"id": row_id, "operator": name, "fingerprint": webauthn.fingerprint(credential),
                "credential": credential.to_json()}

    def _mac(self, name: str, credential_text: str) -> str:
        message = canonical_json({"operator": name, "credential": credential_text})
        return hmac.new(self.secret, message, hashlib.sha256).hexdigest()

    def enrolments(self) -> list[dict[str, Any]]:
        """Registered keys not enrolled yet, whose row the console itself wrote (its MAC verifies)."""
        bundle = self.bundle()
        with self.app.db.read() as conn:
            rows = conn.execute(select(webauthn_enrolments).order_by(webauthn_enrolments.c.created_at)).all()
        found = []
        for row in rows:
            credential = self._vouched(row)
            if credential is None or bundle.operators.get(row.operator) is None:
                continue
            if bundle.operators.by_credential(credential.id) is None:
                found.append({"id": row.id, "operator": row.operator, "credential": credential,
                              "fingerprint": webauthn.fingerprint(credential), "created_at": row.created_at})
        return found

    def _vouched(self, row: Any) -> webauthn.Credential | None:
        if not hmac.compare_digest(str(row.mac), self._mac(str(row.operator), str(row.credential))):
            return None
        try:
            parsed = webauthn.parse_credentials([json.loads(row.credential)], "credential", lambda *_: None)
        except (ValueError, ApplianceError):
            return None
        return parsed[0] if parsed else None

    def enrolment_statement(self, admin: Operator, ids: list[str]) -> dict[str, Any]:
        """The policy proposal that enrols the registered keys `ids` (each added to its officer's keys), for a
        security admin's security key to sign."""
        if POLICY_PROPOSER_ROLE not in admin.roles:
            raise Forbidden("only a security admin proposes enrolments")
        chosen = [e for e in self.enrolments() if e["id"] in set(ids)]
        if not chosen or len(chosen) != len(set(ids)):
            raise InvalidInput("choose registered keys that are waiting for enrolment")
        active = self.policies.current().active
        operators = active.bundle.operators.to_json()
        for entry in operators["operators"]:
            for e in chosen:
                if e["operator"] == entry["name"]:
                    entry.setdefault("webauthn", []).append(e["credential"].to_json())
        return self.statement(admin, TYP_POLICY_PROPOSAL, {"policy": _next_version(active.bundle),
                                                           "operators": operators, "base": active.hash})

    def removal_statement(self, admin: Operator, credential_ids: list[str]) -> dict[str, Any]:
        """The policy proposal that removes the enrolled security keys `credential_ids` (a lost or retired key),
        for a security admin's security key to sign."""
        if POLICY_PROPOSER_ROLE not in admin.roles:
            raise Forbidden("only a security admin proposes removing a key")
        active = self.policies.current().active
        wanted = set(credential_ids)
        found = {c.id for op in active.bundle.operators for c in op.webauthn} & wanted
        if not wanted or found != wanted:
            raise InvalidInput("choose enrolled security keys to remove")
        operators = active.bundle.operators.to_json()
        for entry in operators["operators"]:
            kept = [c for c in entry.get("webauthn", []) if c["id"] not in wanted]
            if kept:
                entry["webauthn"] = kept
            else:
                entry.pop("webauthn", None)
        return self.statement(admin, TYP_POLICY_PROPOSAL, {"policy": _next_version(active.bundle),
                                                           "operators": operators, "base": active.hash})

    def enrolled_keys(self) -> list[dict[str, Any]]:
        """Every enrolled security key of the active bundle: officer, label, fingerprint, credential id."""
        return [{"operator": op.name, "label": c.label, "fingerprint": webauthn.fingerprint(c), "id": c.id}
                for op in self.bundle().operators for c in op.webauthn]

    def forget_enrolled(self) -> None:
        """Drop the registrations the active bundle now enrols."""
        bundle = self.bundle()
        with self.app.db.read() as conn:
            rows = conn.execute(select(webauthn_enrolments)).all()
        done = [r.id for r in rows if (c := self._vouched(r)) is not None
                and bundle.operators.by_credential(c.id) is not None]
        if done:
            self.app.db.write(lambda conn: conn.execute(delete(webauthn_enrolments)
                                                        .where(webauthn_enrolments.c.id.in_(done))), "console")

    # -- invitations: how an officer without a key yet registers their first ----------------------------------

    def _serializer(self) -> URLSafeTimedSerializer:
        return URLSafeTimedSerializer(self.secret, salt="appliance-console-invitation")

    def invite(self, admin: Operator, name: str) -> str:
        """The link with which officer `name` registers a security key (valid for a day), on the console's
        first origin; audited."""
        if POLICY_PROPOSER_ROLE not in admin.roles:
            raise Forbidden("only a security admin invites officers to register a key")
        if self.officer(name) is None:
            raise InvalidInput(f"{name!r} is not an enabled officer")
        origin = self.relying_party().origins[0]
        self.audit.record_standalone(actor=admin.name, action="security-key.invited", subject=None,
                                     details={"operator": name}, policy_hash=None)
        return f"{origin}/console/enrol/{self._serializer().dumps({'operator': name})}"

    def invite_signed(self, token: object) -> dict[str, Any]:
        """An invitation asked for with a security admin's JWS (how the first keys are registered, before any
        admin can sign in to the console): {"operator": name, "link": ...}."""
        now = self.app.now()
        who = auth.authenticate(token, self.bundle(), typ=TYP_KEY_INVITATION,
                                roles=frozenset({POLICY_PROPOSER_ROLE}), now=now)
        name = who.payload.get("operator")
        if not isinstance(name, str):
            raise InvalidInput("jws.payload.operator must name the officer to invite")
        self.app.db.write(lambda conn: auth.consume_jti(conn, who, now), "console-invitation")
        return {"operator": name, "link": self.invite(who.operator, name)}

    def registrations(self) -> list[dict[str, Any]]:
        """The keys waiting for enrolment, as JSON (what `appliance policy enrol` proposes)."""
        return [{"id": e["id"], "operator": e["operator"], "credential": e["credential"].to_json(),
                 "fingerprint": e["fingerprint"], "created_at": e["created_at"]} for e in self.enrolments()]

    def invited(self, token: str) -> str:
        try:
            data = self._serializer().loads(token, max_age=INVITATION_SECONDS)
        except BadSignature as exc:
            raise Unauthenticated("this invitation is not valid or has expired: ask a security admin") from exc
        name = data.get("operator") if isinstance(data, dict) else None
        if self.officer(name) is None:
            raise Unauthenticated("this invitation names no enabled officer")
        return str(name)

    # -- policy proposals as their proposer signed them ----------------------------------------------------------

    def proposals(self) -> list[dict[str, Any]]:
        """Open proposals with the bundle their proposer's signature gives (never the stored text), as a diff
        against the active bundle."""
        described = self.policies.describe()
        active = self.policies.current().active
        out = []
        for p in described["proposals"]:
            vouched = policy_history.vouched_proposal(p["proposal_jws"], p["hash"], active.hash, active.bundle)
            if isinstance(vouched, str):
                out.append({**p, "changes": [], "problem": vouched})
                continue
            bundle = policy_history.proposed_bundle(vouched, active.bundle)
            out.append({**p, "changes": bundle_diff.readable(active.bundle.to_json(), bundle.to_json())})
        return out


def _next_version(bundle: PolicyBundle) -> dict[str, Any]:
    """The bundle's policy table with `version` one higher: every change is a new revision (and a bundle that
    returns to an earlier state, a key removed again, is still a new bundle)."""
    policy = bundle.policy.to_json()
    return {**policy, "version": int(policy["version"]) + 1}
