"""Mint requests, approvals and authorizations: the HSM signs only after a quorum of distinct officers.

Every path that can reach the HSM reads as load, decide, persist, sign:
1. **Load and decide**, inside one write transaction that first takes the audit head's lock (which serializes
   every reservation across threads and instances): the request, its approvals (each stored JWS verified again),
   the verified policy history, the audit log's facts and the signed attestation become a `mint_decision.Case`,
   and `mint_decision.decide` says what may happen (Sign, Pending, Refuse, Closed, InFlight, Stored).
2. **Persist**, in the same transaction: the officer's approval and its audit entry and, when the decision is
   Sign, the nonce reservation (unique) and its audit entry. Committed durably, or nothing is signed (503).
3. **Sign**: a checkpoint covers the reservation (the token's head moves first), the HSM signs the EIP-712 digest
   recomputed from the stored fields, normalised to low-s and recovered to the mint key's address.
4. A second and last transaction stores the signature and appends the "signed" audit entry.
Asking again returns the stored signature without an HSM call. A reservation whose signature was never stored is
taken over, after `[service] reservation_takeover_seconds` (default 30), by exactly one
caller, who decides again at now (`_claim`).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import Connection
from sqlalchemy import exc as sa_exc

from appliance import failpoints, metrics
from appliance.config import DEFAULT_RESERVATION_TAKEOVER_SECONDS
from appliance.domain import amounts, eip712, mint_rules, quorum
from appliance.domain import mint_decision as md
from appliance.domain.attestation import prev_digest
from appliance.domain.policy import MINT_REQUESTER_ROLES, PolicyBundle, check_new_request
from appliance.domain.signed import by_security_key
from appliance.errors import (
    ApplianceError,
    Conflict,
    Forbidden,
    InfrastructureError,
    InvalidInput,
    NotFound,
    PolicyViolation,
    Problem,
    StoreInconsistent,
)
from appliance.services import auth
from appliance.services.audit import AuditLog
from appliance.services.context import Appliance
from appliance.services.policy import Policies, PolicyService
from appliance.store import attestation_repo, audit_repo, mint_repo
from appliance.store.mint_repo import MintRequest, Reservation, StoredApproval
from appliance.verify import verify_attestation

log = logging.getLogger("appliance.mint")
REQUESTER_ROLES = MINT_REQUESTER_ROLES
CANCEL_ROLES = frozenset({"treasury", "cfo", "security-admin"})
STATUSES = ("pending", "authorized", "rejected", "cancelled", "expired")
MAX_LIST = 200
RECOVERY_AFTER_SECONDS = DEFAULT_RESERVATION_TAKEOVER_SECONDS  # unless [service] reservation_takeover_seconds
NONCE_CONSUMED = md.NONCE_CONSUMED


@dataclass(frozen=True)
class Judged:
    """A request with what was loaded to decide on it (kept to answer the caller without reading it again)."""

    request: MintRequest
    approvals: list[StoredApproval]
    quorum: md.Quorum | None
    decision: md.Decision
    warnings: list[str]


class MintService:
    def __init__(self, app: Appliance, audit: AuditLog | None = None, policies: PolicyService | None = None) -> None:
        self.app = app
        self.audit = audit or AuditLog(app)
        self.policies = policies or PolicyService(app, self.audit)

    # -- requests -------------------------------------------------------------------------------------------

    def create(self, token: object) -> dict[str, Any]:
        """Validate and store a mint request signed by a treasury officer; returns the request object."""
        now = self.app.now()
        policies = self.policies.current()
        try:
            who = auth.authenticate(token, policies.active.bundle, typ=auth.TYP_MINT_REQUEST,
                                    roles=REQUESTER_ROLES, now=now)
            request = self._new_request(who, policies, now)
            self.app.db.write(lambda conn: self._store_request(conn, who, request, policies), "mint-request")
        except ApplianceError:
            metrics.MINT_REQUESTS.labels("refused").inc()
            raise
        metrics.MINT_REQUESTS.labels("created").inc()
        return self.get(request.id)

    def _new_request(self, who: auth.Authenticated, policies: Policies, now: int) -> MintRequest:
        chain_id, to, amount = self._request_fields(who.payload)
        chain = self.app.settings.chain(chain_id)
        assert chain is not None  # _request_fields refuses a chain that is not configured
        mint = policies.active.bundle.policy.mint
        request = MintRequest(
            id=str(uuid.uuid4()), requester=who.operator.name, chain_id=chain_id,
            verifying_contract=chain.verifying_contract, to_address=to, amount=str(amount),
            nonce=mint_rules.nonce_for(who.token), valid_after=now,
            valid_before=now + mint.request_ttl_seconds + mint.authorization_validity_seconds, digest="",
            policy_hash=policies.active.hash, status="pending", request_jws=who.token, created_at=now,
            expires_at=now + mint.request_ttl_seconds)
        return replace(request, digest=self._digest(request))

    def _store_request(self, conn: Connection, who: auth.Authenticated, request: MintRequest,
                       policies: Policies) -> None:
        audit_repo.lock_head(conn)  # serializes against authorizations so the velocity sum is current
        policy, amount = policies.active.bundle.policy, int(request.amount)
        facts = self.audit.facts(conn)
        window = request.created_at - policy.mint.velocity_window_seconds
        check_new_request(policy, chain_id=request.chain_id, to=request.to_address, amount=amount,
                          authorized_in_window=sum(a.amount for a in facts.authorized if a.at > window))
        reasons = self._reserve_refusals(conn, policies.active.bundle, amount, request.created_at, facts)
        if reasons:
            raise PolicyViolation("the reserve guard refuses this mint", [Problem("reserve_guard", r)
                                                                          for r in reasons])
        auth.consume_jti(conn, who, request.created_at)
        mint_repo.insert_request(conn, request)
        self.audit.record(conn, actor=who.operator.name, action="mint.requested", subject=request.id,
                          details={"chain_id": request.chain_id, "to": request.to_address, "amount": request.amount,
                                   "digest": request.digest, "nonce": request.nonce},
                          policy_hash=policies.active.hash)

    def _request_fields(self, payload: dict[str, Any]) -> tuple[int, str, int]:
        problems: list[Problem] = []
        chain_id = payload.get("chain_id")
        if isinstance(chain_id, bool) or not isinstance(chain_id, int):
            problems.append(Problem("jws.payload.chain_id", "must be an integer"))
        elif self.app.settings.chain(chain_id) is None:
            problems.append(Problem("jws.payload.chain_id", f"chain {chain_id} is not configured"))
        to = amount = None
        try:
            to = eip712.parse_address(payload.get("to"), "jws.payload.to")
        except InvalidInput as exc:
            problems.extend(exc.problems)
        try:
            amount = amounts.parse_amount(payload.get("amount"), "jws.payload.amount")
        except InvalidInput as exc:
            problems.extend(exc.problems)
        unknown = set(payload) - {"chain_id", "to", "amount", "iat", "jti"}
        problems.extend(Problem(f"jws.payload.{k}", "unknown member") for k in sorted(unknown))
        if problems:
            raise InvalidInput("the mint request is not valid", problems)
        assert isinstance(chain_id, int) and to is not None and amount is not None
        return chain_id, to, amount

    # -- decisions by officers ------------------------------------------------------------------------------

    def approve(self, request_id: str, token: object) -> dict[str, Any]:
        """Record one officer's approval or rejection; sign the authorization once the quorum is met. The
        approval, the decision and (quorum met) the nonce reservation commit in one transaction."""
        now = self.app.now()

        def decide(conn: Connection) -> Judged:
            audit_repo.lock_head(conn)  # first, always: one lock order for every mint transaction
            policies = self.policies.current(conn)
            request = self._request(conn, request_id, lock=True)
            who = self._authenticate_decision(token, request, policies, now)
            self._check_open(conn, request, now)
            auth.consume_jti(conn, who, now)
            self._record_decision(conn, request, who, policies, now)
            judged = self._judge(conn, request, policies, now)
            return replace(judged, decision=self._persist(conn, request, policies, judged.decision, now,
                                                          who.operator.name))

        try:
            judged = self.app.db.write(decide, "mint-approval")
        except ApplianceError:
            metrics.MINT_APPROVALS.labels("refused").inc()
            raise
        metrics.MINT_APPROVALS.labels("recorded").inc()
        failpoints.reach("mint.approval.committed")
        authorization = self._act(request_id, judged.decision, judged.request)
        failpoints.reach("mint.before-response")
        return self._view(judged, authorization, self.app.now())

    def _authenticate_decision(self, token: object, request: MintRequest, policies: Policies,
                               now: int) -> auth.Authenticated:
        who = auth.authenticate(token, policies.active.bundle, typ=auth.TYP_MINT_APPROVAL, roles=REQUESTER_ROLES,
                                now=now)
        payload = who.payload
        if payload.get("decision") not in ("approve", "reject"):
            raise InvalidInput("jws.payload.decision must be approve or reject")
        if payload.get("request_id") != request.id:
            raise PolicyViolation("the approval names another request")
        digest = self._digest(request)
        if payload.get("digest") != digest:
            raise PolicyViolation("the approval's digest is not the digest of this request",
                                  [Problem("jws.payload.digest", f"expected {digest}")])
        if payload.get("policy") != request.policy_hash:
            raise PolicyViolation("the approval names another policy than the request's",
                                  [Problem("jws.payload.policy", f"expected {request.policy_hash}")])
        if who.operator.name == request.requester:
            raise Forbidden("the requester cannot approve or reject their own request")
        return who

    def _record_decision(self, conn: Connection, request: MintRequest, who: auth.Authenticated,
                         policies: Policies, now: int) -> None:
        decision = str(who.payload["decision"])
        try:
            mint_repo.insert_approval(conn, StoredApproval(
                request_id=request.id, operator=who.operator.name, decision=decision, digest=request.digest,
                policy_hash=request.policy_hash, iat=who.iat, jws=who.token, created_at=now))
        except mint_repo.AlreadyDecided as exc:
            raise Conflict(f"{who.operator.name} has already decided on this request") from exc
        self.audit.record(conn, actor=who.operator.name, action=f"mint.{auth.PAST_TENSE[decision]}",
                          subject=request.id, details={"digest": request.digest}, policy_hash=policies.active.hash)

    @staticmethod
    def _check_open(conn: Connection, request: MintRequest, now: int) -> None:
        if request.status != "pending":
            raise Conflict(f"request {request.id} is {request.status}")
        if now >= request.expires_at:  # expiry follows from the clock: readers derive it (get, list) too
            raise Conflict(f"request {request.id} expired")

    def cancel(self, request_id: str, token: object) -> dict[str, Any]:
        now = self.app.now()

        def do_cancel(conn: Connection) -> None:
            audit_repo.lock_head(conn)
            policies = self.policies.current(conn)
            request = self._request(conn, request_id, lock=True)
            who = auth.authenticate(token, policies.active.bundle, typ=auth.TYP_MINT_CANCEL, roles=CANCEL_ROLES,
                                    now=now)
            if who.payload.get("request_id") != request_id:
                raise PolicyViolation("the cancellation names another request")
            if who.operator.name != request.requester and "security-admin" not in who.operator.roles:
                raise Forbidden("only the requester or a security admin can cancel a request")
            self._check_open(conn, request, now)
            if mint_repo.reservation(conn, request_id) is not None:
                raise Conflict(f"request {request_id} is being authorized")
            auth.consume_jti(conn, who, now)
            self._close(conn, request, "cancelled", who.operator.name, now, policies.active.hash, {})

        self.app.db.write(do_cancel, "mint-cancel")
        self._cover_closure()
        return self.get(request_id)

    def _close(self, conn: Connection, request: MintRequest, status: str, by: str, now: int, policy_hash: str,
               details: dict[str, Any]) -> None:
        mint_repo.close(conn, request.id, status, by, now)
        self.audit.record(conn, actor=by, action=f"mint.{status}", subject=request.id,
                          details={**details, "status": status}, policy_hash=policy_hash)

    def _cover_closure(self) -> None:
        """Sign a checkpoint over a veto or cancellation just recorded: once the token's head covers it, nobody
        who writes the database can erase it (the log's closures refuse any later signature of the request)."""
        self._checkpoint_after("a closure")

    def _checkpoint_after(self, what: str, at_least: int = 0) -> None:
        """A checkpoint over what was just made durable, best effort: its caller's result stands whatever happens
        here (the periodic checkpoint covers it)."""
        try:
            self.audit.checkpoint(at_least=at_least)
        except (ApplianceError, sa_exc.SQLAlchemyError):
            log.warning("checkpoint after %s failed", what, exc_info=True)

    # -- the decision ---------------------------------------------------------------------------------------

    def _judge(self, conn: Connection, request: MintRequest, policies: Policies, now: int,
               quorum_at: int | None = None) -> Judged:
        """Load what the decision needs about `request` at `now` and decide (mint_decision.decide).

        `quorum_at` (a takeover only) is when the reservation was made as the checkpointed audit log records
        it: the approvals' TTL is judged then; everything else at now."""
        reservation = mint_repo.reservation(conn, request.id)
        state = None if reservation is None else md.ReservationState(reservation.signature is not None,
                                                                     reservation.last_taken)
        approvals = mint_repo.approvals(conn, request.id)
        judged_quorum = self._quorum(request, approvals, policies, now if quorum_at is None else quorum_at)
        quorum_ = judged_quorum if md.needs_quorum(request.status, request.expires_at, now, state) else None
        refusals = holder = None
        if quorum_ is not None and quorum_.met:
            refusals = self._refusals(conn, request, policies, now)
            holder = mint_repo.nonce_holder(conn, request.nonce, request.id)
        decision = md.decide(md.Case(request.status, request.expires_at, now, state, quorum_, refusals, holder))
        warnings = self._rule_refusals(request, policies, now, []) if isinstance(decision, md.Pending) else []
        return Judged(request, approvals, judged_quorum, decision, warnings)

    def _quorum(self, request: MintRequest, stored: list[StoredApproval], policies: Policies,
                at: int) -> md.Quorum:
        """The quorum under the policy in force and (when it differs) the one the request was made under."""
        active = policies.active
        approvals = [self._approval(a, active.bundle) for a in stored]
        facts = quorum.RequestFacts(id=request.id, requester=request.requester, amount=int(request.amount),
                                    digest=request.digest, created_at=request.valid_after,
                                    expires_at=request.expires_at, policy_hash=request.policy_hash)
        current = quorum.evaluate(facts, approvals, active.bundle.operators, active.bundle.policy, at)
        if request.policy_hash == active.hash:
            return md.Quorum(current)
        recorded = policies.by_hash(request.policy_hash).policy
        return md.Quorum(current, quorum.evaluate(facts, approvals, active.bundle.operators, recorded, at))

    @staticmethod
    def _approval(stored: StoredApproval, bundle: PolicyBundle) -> quorum.Approval:
        """An approval as its JWS says, its signature verified again against `bundle`'s keys. The columns are
        only an index: a row inserted or edited by someone holding the database never counts."""
        verified = auth.verify_stored(stored.jws, bundle, auth.TYP_MINT_APPROVAL)
        iat = verified[1].get("iat") if verified else None
        if verified is None or isinstance(iat, bool) or not isinstance(iat, int):
            return quorum.Approval(operator=stored.operator, decision=stored.decision, request_id=stored.request_id,
                                   digest=stored.digest, policy_hash=stored.policy_hash, iat=stored.iat,
                                   authentic=False)
        operator, payload = verified
        return quorum.Approval(operator=operator.name, decision=payload.get("decision", ""),
                               request_id=payload.get("request_id", ""), digest=payload.get("digest", ""),
                               policy_hash=payload.get("policy", ""), iat=iat,
                               security_key=by_security_key(stored.jws))

    def _refusals(self, conn: Connection, request: MintRequest, policies: Policies, now: int) -> list[str]:
        """Every reason not to sign now, under the recorded and the active policy: the rules (signed terms,
        contract, validity, allowlist, maximum, velocity), the closures the verified audit log records, the
        reserve guard from the signed attestation, and the digest recomputed from the stored fields."""
        facts = self.audit.facts(conn)
        reasons = self._rule_refusals(request, policies, now, facts.authorized)
        if request.id in facts.closed:
            reasons.append(f"the audit log records {facts.closed[request.id]} for this request")
        reasons += self._reserve_refusals(conn, policies.active.bundle, int(request.amount), now, facts)
        if self._digest(request) != request.digest:
            reasons.append("the stored digest does not match the stored fields")
        return reasons

    def _rule_refusals(self, request: MintRequest, policies: Policies, now: int,
                       authorized: list[mint_rules.Authorized]) -> list[str]:
        """mint_rules.signing_refusals for the stored request, under its recorded and the active policy."""
        recorded = policies.by_hash(request.policy_hash)
        contract = self.app.settings.chain(request.chain_id)
        stored = mint_rules.StoredTerms(request.requester, request.chain_id, request.verifying_contract,
                                        request.to_address, int(request.amount), request.valid_after,
                                        request.valid_before, request.expires_at, request.nonce)
        return mint_rules.signing_refusals(
            self._signed_terms(request, recorded), stored, recorded=recorded.policy,
            active=policies.active.bundle.policy, contract=None if contract is None else contract.verifying_contract,
            authorized=authorized, request_id=request.id, now=now)

    @staticmethod
    def _signed_terms(request: MintRequest, recorded: PolicyBundle) -> mint_rules.SignedTerms | None:
        """What the requester signed, from the stored JWS verified under the requester's key in the policy the
        request names (None: it does not verify, or does not say what a request says)."""
        verified = auth.verify_stored(request.request_jws, recorded, auth.TYP_MINT_REQUEST)
        if verified is None:
            return None
        operator, payload = verified
        try:
            amount = amounts.parse_amount(payload.get("amount"), "amount")
            to = eip712.parse_address(payload.get("to"), "to")
        except ApplianceError:
            return None
        chain_id, iat = payload.get("chain_id"), payload.get("iat")
        if any(isinstance(v, bool) or not isinstance(v, int) for v in (chain_id, iat)):
            return None
        return mint_rules.SignedTerms(operator.name, int(chain_id), to, amount, int(iat),  # type: ignore[arg-type]
                                      mint_rules.nonce_for(request.request_jws))

    def _reserve_refusals(self, conn: Connection, bundle: PolicyBundle, amount: int, now: int,
                          facts: mint_rules.LogFacts) -> list[str]:
        """The reserve guard, from the attestation the token's head names, as the HSM signed it (its JWS
        verified under the attestation key: the table's columns are never read)."""
        if not bundle.policy.reserve_guard.enabled:
            return []
        head = self.app.token.require().attestation
        stored = attestation_repo.signed_at(conn, head.seq) if head.hash is not None else None
        payload = None
        if stored is not None and prev_digest(stored.jws) == head.hash:
            signer = self.app.attestation_signer
            try:
                payload = verify_attestation(stored.jws, {"keys": [{**signer.public_jwk(), "kid": signer.key_id}]})
            except ApplianceError:
                payload = None
        return mint_rules.reserve_refusals(bundle.policy, payload, facts.authorized, amount=amount,
                                           token_decimals=self.app.settings.token_decimals, now=now)

    def _persist(self, conn: Connection, request: MintRequest, policies: Policies, decision: md.Decision,
                 now: int, actor: str) -> md.Decision:
        """Write what the decision calls for in the caller's transaction; returns the decision as written (a
        reservation that another caller made first turns Sign into InFlight)."""
        if isinstance(decision, md.Closed) and decision.veto:
            assert decision.quorum is not None
            self._close(conn, request, "rejected", actor, now, policies.active.hash,
                        {"quorum": decision.quorum.to_json()})
        elif isinstance(decision, md.Refuse):
            self.audit.record(conn, actor="appliance", action="mint.authorization.refused", subject=request.id,
                              details={"reasons": list(decision.reasons)}, policy_hash=policies.active.hash)
        elif isinstance(decision, md.Sign):
            return self._reserve(conn, request, policies, decision, now)
        return decision

    def _reserve(self, conn: Connection, request: MintRequest, policies: Policies, decision: md.Sign,
                 now: int) -> md.Decision:
        signer = self.app.mint_signer.address
        try:
            with conn.begin_nested():
                mint_repo.reserve(conn, request, request.digest, signer, now)
        except sa_exc.IntegrityError:
            return md.InFlight(now)  # another caller reserved it first (the unique constraints): theirs to sign
        entry = self.audit.record(conn, actor="appliance", action="mint.authorization.reserved", subject=request.id,
                                  details={"digest": request.digest, "nonce": request.nonce, "amount": request.amount,
                                           "reserved_at": now, "quorum": decision.quorum.to_json(),
                                           "signer": signer}, policy_hash=policies.active.hash)
        failpoints.reach("mint.reserve.before-commit")
        return replace(decision, entry=entry)

    def _act(self, request_id: str, decision: md.Decision, request: MintRequest | None = None
             ) -> dict[str, Any] | None:
        """After the decision committed: sign (Sign), answer a stored one (Stored), refuse (Refuse: 409 when the
        nonce is taken, 422 otherwise), cover a veto with a checkpoint; None when there is nothing to return."""
        if isinstance(decision, md.Sign):
            failpoints.reach("mint.reserve.committed")
            return self._sign(request_id, request, decision.entry)
        if isinstance(decision, md.Stored):
            metrics.MINT_AUTHORIZATIONS.labels("replayed").inc()
            return self._stored_authorization(request_id)
        if isinstance(decision, md.Refuse):
            metrics.MINT_AUTHORIZATIONS.labels("refused").inc()
            problems = [Problem("policy", r) for r in decision.reasons]
            if decision.conflict:
                raise Conflict(f"the authorization is refused: {decision.reasons[-1]}", problems)
            raise PolicyViolation("the authorization is refused", problems)
        if isinstance(decision, md.Closed) and decision.veto:
            self._cover_closure()
        return None

    # -- signing --------------------------------------------------------------------------------------------

    def authorize(self, request_id: str) -> dict[str, Any] | None:
        """Decide again and, if the quorum holds now, reserve and sign; returns the authorization, or None when
        it is not (yet) allowed or another caller holds the reservation."""
        now = self.app.now()

        def decide(conn: Connection) -> tuple[MintRequest, md.Decision]:
            audit_repo.lock_head(conn)
            policies = self.policies.current(conn)
            request = self._request(conn, request_id)
            judged = self._judge(conn, request, policies, now)
            return request, self._persist(conn, request, policies, judged.decision, now, "appliance")

        try:
            request, decision = self.app.db.write(decide, "mint-reserve")
        except InfrastructureError:
            metrics.MINT_AUTHORIZATIONS.labels("failed-closed").inc()
            raise
        return self._act(request_id, decision, request)

    def _sign(self, request_id: str, request: MintRequest | None = None, entry: int = -1) -> dict[str, Any]:
        """Sign a reserved authorization and store the signature; returns the authorization object. `request`:
        the request as the decision that has just reserved it in a committed transaction read it (otherwise the
        request and its reservation are read again: a takeover, or a late original signer)."""
        if request is None:
            with self.app.db.read() as conn:
                request = self._request(conn, request_id)
                reservation = mint_repo.reservation(conn, request_id)
        else:
            reservation = Reservation(request.id, request.nonce, request.digest, request.chain_id, request.amount,
                                      self.app.mint_signer.address, None, self.app.now(), None, None)
        digest = self._digest(request)
        if reservation is None or digest != reservation.digest:
            raise PolicyViolation("the reserved digest does not match the request")
        # The token's checkpoint head moves over the reservation's audit entry before the HSM signs: fail closed,
        # and a log rolled back or rewritten behind the token stops minting (503). Its note is signed below.
        self.audit.cover(at_least=entry + 1)
        try:
            signature = "0x" + self.app.mint_signer.sign_eth_digest(bytes.fromhex(digest[2:])).hex()
        except ApplianceError:
            metrics.SIGNATURES.labels("mint", "error").inc()
            metrics.MINT_AUTHORIZATIONS.labels("hsm-error").inc()
            raise
        metrics.SIGNATURES.labels("mint", "ok").inc()
        failpoints.reach("mint.sign.after-hsm")
        signed_entry = self.app.db.write(lambda conn: self._store_signature(conn, request, digest, signature),
                                         "mint-store")
        stored_now = signed_entry is not None
        if stored_now:
            metrics.MINT_AUTHORIZATIONS.labels("signed").inc()
        failpoints.reach("mint.sign.stored")
        self._checkpoint_after("a mint authorization", 0 if signed_entry is None else signed_entry + 1)
        if stored_now:
            return self._authorization_json(request, replace(reservation, signature=signature))  # type: ignore[return-value]
        stored = self._stored_authorization(request_id)
        if stored is None:  # the reservation was voided while the HSM signed: this signature is discarded
            raise Conflict(f"the authorization of request {request_id} was withdrawn while it was being signed")
        return stored

    def _store_signature(self, conn: Connection, request: MintRequest, digest: str, signature: str) -> int | None:
        """Store the signature; the index of its audit entry, or None when another caller stored one first."""
        now = self.app.now()
        if not mint_repo.store_signature(conn, request.id, digest, signature, now):
            return None  # a recovering caller stored its signature first: that one is the authorization
        mint_repo.close(conn, request.id, "authorized", "appliance", now)
        return self.audit.record(conn, actor="appliance", action="mint.authorization.signed", subject=request.id,
                                 details={"digest": digest, "signature": signature}, policy_hash=request.policy_hash)

    def authorization(self, request_id: str) -> dict[str, Any]:
        """The stored authorization; completes a reservation left unsigned by an earlier failure, or a pending
        request whose quorum is met but whose signing was refused or failed earlier (everything decided again).

        The first decision is read-only, so polling writes nothing; only a request that would be signed reaches
        a write. A reservation younger than the takeover delay may still be in the hands of the caller that
        made it, so it is left alone (409): only a stale one is taken over here."""
        now = self.app.now()
        with self.app.db.read() as conn:
            request = self._request(conn, request_id)
            judged = self._judge(conn, request, self.policies.current(conn), now)
        decision = judged.decision
        if isinstance(decision, md.InFlight):
            stale = now - decision.last_taken >= self.app.settings.reservation_takeover_seconds
            if stale and self._claim(request_id, decision.last_taken):
                return self._sign(request_id)
            raise Conflict(f"request {request_id} is being signed: ask again in a moment")
        if isinstance(decision, md.Sign):
            issued = self.authorize(request_id) or self._stored_authorization(request_id)
            if issued is not None:
                return issued
            raise Conflict(f"request {request_id} is being signed: ask again in a moment")
        issued = self._act(request_id, decision) if not isinstance(decision, md.Closed) else None
        if issued is not None:
            return issued
        if isinstance(decision, md.Pending):
            raise Conflict(f"request {request_id} is pending: its quorum is not met yet")
        raise Conflict(f"request {request_id} is {request.status_at(now)}: no authorization has been issued")

    def _claim(self, request_id: str, seen_last_taken: int) -> bool:
        """Take over a stale unsigned reservation (compare-and-set on claimed_at), durably and audited.

        Of several callers recovering the same reservation at once only one wins. The winner decides again at
        now, as a first signature would: the row's times only say whether the reservation is stale, never
        whether it may be signed (someone who writes the database could have inserted it); the approvals' TTL
        is judged when the reservation was made as the checkpointed log records it. If anything does not hold,
        the reservation is voided (audited, PolicyViolation) and nothing is signed."""
        now = self.app.now()

        def claim(conn: Connection) -> tuple[bool, list[str]]:
            audit_repo.lock_head(conn)  # first, as every mint transaction: the policy read below is current
            reservation = mint_repo.reservation(conn, request_id)
            if reservation is None or reservation.last_taken != seen_last_taken or not mint_repo.claim(
                    conn, request_id, reservation.claimed_at, now):
                return False, []
            policies = self.policies.current(conn)
            request = self._request(conn, request_id)
            reasons = self._takeover_refusals(conn, request, policies, reservation, now)
            if reasons:
                mint_repo.void(conn, request_id)
                self.audit.record(conn, actor="appliance", action="mint.authorization.voided", subject=request_id,
                                  details={"reasons": reasons}, policy_hash=policies.active.hash)
                return False, reasons
            self.audit.record(conn, actor="appliance", action="mint.authorization.recovered", subject=request_id,
                              details={"reserved_at": reservation.reserved_at}, policy_hash=request.policy_hash)
            return True, []

        taken, reasons = self.app.db.write(claim, "mint-reserve")
        if reasons:
            metrics.MINT_AUTHORIZATIONS.labels("refused").inc()
            raise PolicyViolation("the pending authorization was voided", [Problem("policy", r) for r in reasons])
        return taken

    def _takeover_refusals(self, conn: Connection, request: MintRequest, policies: Policies,
                           reservation: Reservation, now: int) -> list[str]:
        """Why a stale reservation may not be signed now (mint_decision.decide_takeover); empty: sign it."""
        covered = self.app.token.require().checkpoint
        at = self.audit.facts(conn).reserved_at(request.id, 0 if covered is None else covered.size)
        quorum_ = self._quorum(request, mint_repo.approvals(conn, request.id), policies, now if at is None else at)
        refusals = self._refusals(conn, request, policies, now) if quorum_.met else None
        if reservation.digest != request.digest and refusals is not None:
            refusals.append("the reserved digest does not match the request")
        decision = md.decide_takeover(request.status, quorum_, refusals,
                                      mint_repo.nonce_holder(conn, request.nonce, request.id))
        return list(decision.reasons) if isinstance(decision, md.Refuse) else []

    # -- reading --------------------------------------------------------------------------------------------

    def _request(self, conn: Connection, request_id: str, lock: bool = False) -> MintRequest:
        try:
            return mint_repo.get(conn, request_id, lock=lock)
        except mint_repo.NotFoundRow:
            raise NotFound(f"no mint request {request_id}") from None

    def _digest(self, request: MintRequest) -> str:
        """The EIP-712 digest recomputed from the stored canonical fields (never a stored or sent digest)."""
        return "0x" + eip712.mint_digest(self._domain(request), _message(request)).hex()

    def _domain(self, request: MintRequest) -> eip712.Eip712Domain:
        s = self.app.settings
        return eip712.Eip712Domain(s.eip712_name, s.eip712_version, request.chain_id, request.verifying_contract)

    def _stored_authorization(self, request_id: str) -> dict[str, Any] | None:
        with self.app.db.read() as conn:
            request = self._request(conn, request_id)
            reservation = mint_repo.reservation(conn, request_id)
        return None if reservation is None else self._authorization_json(request, reservation)

    def _authorization_json(self, request: MintRequest, reservation: Reservation) -> dict[str, Any] | None:
        """The stored signature with the typed data it is served with, once it verifies over exactly that typed
        data under the mint key: a request or reservation row edited after signing is never served as an
        authorization that a contract would refuse (or, worse, one that names other terms than were signed)."""
        if reservation.signature is None:
            return None
        digest = self._digest(request)
        mint_address = self.app.mint_signer.address
        try:
            signed_by = eip712.recover_address(bytes.fromhex(digest[2:]),
                                               bytes.fromhex(reservation.signature.removeprefix("0x")))
        except (ValueError, ApplianceError):
            signed_by = None
        if not reservation.digest == digest or not reservation.signer == signed_by == mint_address:
            metrics.INTEGRITY_FAILURES.labels("mint").inc()
            raise StoreInconsistent(f"the stored authorization of request {request.id} does not verify over the "
                                    "request's terms under the mint key: the store was changed outside the appliance")
        return {"typedData": eip712.typed_data(self._domain(request), _message(request)),
                "digest": digest, "signature": reservation.signature, "signer": mint_address}

    def get(self, request_id: str) -> dict[str, Any]:
        now = self.app.now()
        with self.app.db.read() as conn:
            request = self._request(conn, request_id)
            judged = self._judge_for_view(conn, request, now)
            reservation = mint_repo.reservation(conn, request_id)
        authorization = None if reservation is None else self._authorization_json(request, reservation)
        return self._view(judged, authorization, now)

    def _judge_for_view(self, conn: Connection, request: MintRequest, now: int) -> Judged:
        """The quorum and warnings shown to approvers: the decision without the velocity and reserve checks
        (judged at signing time; reading never needs the audit log's facts)."""
        policies = self.policies.current(conn)
        approvals = mint_repo.approvals(conn, request.id)
        judged_quorum = self._quorum(request, approvals, policies, now)
        open_ = request.status_at(now) == "pending"
        warnings = self._rule_refusals(request, policies, now, []) if open_ else []
        return Judged(request, approvals, judged_quorum, md.Pending(judged_quorum), warnings)

    def _view(self, judged: Judged, authorization: dict[str, Any] | None, now: int) -> dict[str, Any]:
        """The request object of the API, from what was loaded to decide on it."""
        r = judged.request
        vetoed_now = isinstance(judged.decision, md.Closed) and judged.decision.veto
        status = "authorized" if authorization is not None else "rejected" if vetoed_now else r.status_at(now)
        assert judged.quorum is not None
        return {
            "id": r.id, "status": status, "requester": r.requester, "chain_id": r.chain_id, "to": r.to_address,
            "amount": r.amount, "amount_tokens": amounts.format_units(int(r.amount), self.app.settings.token_decimals),
            "token": self.app.settings.token_symbol, "nonce": r.nonce, "valid_after": r.valid_after,
            "valid_before": r.valid_before, "digest": r.digest, "policy": r.policy_hash,
            "typedData": eip712.typed_data(self._domain(r), _message(r)), "required": judged.quorum.required(),
            "approvals": [{"operator": a.operator, "decision": a.decision, "iat": a.iat,
                           "by": "security key" if by_security_key(a.jws) else "software key"}
                          for a in judged.approvals],
            "quorum": judged.quorum.to_json(), "created_at": r.created_at, "expires_at": r.expires_at,
            "authorization": authorization, "request_jws": r.request_jws,
            "warnings": judged.warnings if status == "pending" else [],
        }

    def list(self, status: str | None, limit: int, offset: int) -> dict[str, Any]:
        if status is not None and status not in STATUSES:
            raise InvalidInput(f"status must be one of {', '.join(STATUSES)}")
        now = self.app.now()
        with self.app.db.read() as conn:
            total, rows = mint_repo.summaries(conn, status, now, min(limit, MAX_LIST), offset)
        return {"total": total, "items": [
            {"id": r.id, "status": "expired" if r.status == "pending" and now >= r.expires_at else r.status,
             "requester": r.requester, "chain_id": r.chain_id, "to": r.to_address, "amount": r.amount,
             "created_at": r.created_at, "expires_at": r.expires_at} for r in rows]}


def _message(request: MintRequest) -> eip712.MintAuthorization:
    """The MintAuthorization of a request's stored fields (amount a decimal string, nonce 0x-hex)."""
    return eip712.MintAuthorization(to=request.to_address, amount=int(request.amount),
                                    nonce=bytes.fromhex(request.nonce[2:]), valid_after=request.valid_after,
                                    valid_before=request.valid_before)
