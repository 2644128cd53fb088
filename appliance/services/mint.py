"""Mint requests, approvals and authorizations: the HSM signs only after a quorum of distinct officers.

Order of a signature, each step fail-closed:
1. One write transaction (holding the audit head lock, which serializes every reservation across instances):
   re-evaluate the quorum under the request's recorded policy AND the current policy and operator set,
   re-check velocity and the reserve guard, insert the nonce reservation (unique), append the audit entry.
   Committed durably, or nothing is signed (503).
2. The HSM signs the EIP-712 digest recomputed from the stored fields; the signature is normalised to low-s
   and recovered to the mint key's address before it is kept.
3. A second transaction stores the signature and appends the "signed" audit entry.
Asking again returns the stored signature without an HSM call. If step 3 cannot be written, the reservation
stays without a signature and the next request for the authorization signs the same digest again (the
on-chain nonce makes a second signature over the same authorization harmless).
"""

from __future__ import annotations

import functools
import secrets
import uuid
from types import SimpleNamespace
from typing import Any

from sqlalchemy import Connection, and_, delete, func, insert, not_, or_, select, update
from sqlalchemy import exc as sa_exc

from appliance import metrics
from appliance.domain import amounts, eip712, mint_rules, quorum
from appliance.domain.attestation import parse_utc
from appliance.domain.attestation import prev_digest as att_prev_digest
from appliance.domain.policy import (
    MINT_REQUESTER_ROLES,
    PolicyBundle,
    ReserveFacts,
    check_new_request,
    reserve_guard_reasons,
)
from appliance.errors import (
    ApplianceError,
    Conflict,
    Forbidden,
    InfrastructureError,
    InvalidInput,
    NotFound,
    PolicyViolation,
    Problem,
)
from appliance.services import auth
from appliance.services.audit import AuditLog
from appliance.services.context import Appliance
from appliance.services.policy import ActiveBundle, PolicyService
from appliance.store import audit_repo
from appliance.store.tables import attestations, mint_approvals, mint_authorizations, mint_requests
from appliance.verify import verify_attestation

REQUESTER_ROLES = MINT_REQUESTER_ROLES
CANCEL_ROLES = frozenset({"treasury", "cfo", "security-admin"})
STATUSES = ("pending", "authorized", "rejected", "cancelled", "expired")
MAX_LIST = 200
RECOVERY_AFTER_SECONDS = 30  # longer than any HSM call may take (a signature is milliseconds)


class MintService:
    def __init__(self, app: Appliance) -> None:
        self.app = app
        self.audit = AuditLog(app)
        self.policies = PolicyService(app)

    # -- helpers --------------------------------------------------------------------------------------------

    def _domain(self, chain_id: int, contract: str) -> eip712.Eip712Domain:
        s = self.app.settings
        return eip712.Eip712Domain(s.eip712_name, s.eip712_version, chain_id, contract)

    def _message(self, row: Any) -> eip712.MintAuthorization:
        return _mint_message(row.to_address, row.amount, row.nonce, row.valid_after, row.valid_before)

    def _digest(self, row: Any) -> str:
        """The EIP-712 digest recomputed from the stored canonical fields (never a stored or sent digest)."""
        s = self.app.settings
        return _digest_of(s.eip712_name, s.eip712_version, row.chain_id, row.verifying_contract, row.to_address,
                          row.amount, row.nonce, row.valid_after, row.valid_before)

    def _typed_data(self, row: Any) -> dict[str, Any]:
        return eip712.typed_data(self._domain(row.chain_id, row.verifying_contract), self._message(row))

    @staticmethod
    def _facts(row: Any) -> quorum.RequestFacts:
        return quorum.RequestFacts(id=row.id, requester=row.requester, amount=int(row.amount), digest=row.digest,
                                   created_at=row.valid_after, expires_at=row.expires_at,
                                   policy_hash=row.policy_hash)

    @staticmethod
    def _approvals(conn: Connection, request_id: str, bundle: PolicyBundle) -> list[quorum.Approval]:
        """The request's approvals as their JWS say, each signature verified again against `bundle`'s keys.

        The columns are only an index: who approved what is read from the verified JWS, so a row inserted or
        edited by someone holding the database (but no officer's key) never counts.
        """
        rows = conn.execute(select(mint_approvals).where(mint_approvals.c.request_id == request_id)
                            .order_by(mint_approvals.c.created_at, mint_approvals.c.operator))
        out = []
        for r in rows:
            verified = auth.verify_stored(r.jws, bundle, auth.TYP_MINT_APPROVAL)
            iat = verified[1].get("iat") if verified else None
            if verified is None or isinstance(iat, bool) or not isinstance(iat, int):
                out.append(quorum.Approval(operator=r.operator, decision=r.decision, request_id=r.request_id,
                                           digest=r.digest, policy_hash=r.policy_hash, iat=r.iat, authentic=False))
                continue
            operator, payload = verified
            out.append(quorum.Approval(operator=operator.name, decision=payload.get("decision", ""),
                                       request_id=payload.get("request_id", ""), digest=payload.get("digest", ""),
                                       policy_hash=payload.get("policy", ""), iat=iat))
        return out

    def _signed_terms(self, conn: Connection, row: Any) -> mint_rules.SignedTerms | None:
        """What the requester signed, from the stored JWS verified under the requester's key in the policy the
        request names, looked up only within the verified, anchored history (None: it does not verify)."""
        try:
            bundle = self.policies.by_hash(conn, row.policy_hash)
        except NotFound:
            return None
        verified = auth.verify_stored(row.request_jws, bundle, auth.TYP_MINT_REQUEST)
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
        return mint_rules.SignedTerms(operator.name, int(chain_id), to, amount, int(iat))  # type: ignore[arg-type]

    @staticmethod
    def _stored_terms(row: Any) -> mint_rules.StoredTerms:
        return mint_rules.StoredTerms(row.requester, row.chain_id, row.verifying_contract, row.to_address,
                                      int(row.amount), row.valid_after, row.valid_before, row.expires_at)

    def _evaluate(self, conn: Connection, row: Any, active: ActiveBundle, now: int) -> quorum.QuorumResult:
        """The stricter of: the policy the request was made under, and the current policy and operators."""
        approvals = self._approvals(conn, row.id, active.bundle)
        facts = self._facts(row)
        current = quorum.evaluate(facts, approvals, active.bundle.operators, active.bundle.policy, now)
        if row.policy_hash == active.hash:
            return current
        recorded = self.policies.by_hash(conn, row.policy_hash)
        under_recorded = quorum.evaluate(facts, approvals, active.bundle.operators, recorded.policy, now)
        return current if not current.met else under_recorded  # both must hold

    def _reserve_reasons(self, conn: Connection, bundle: PolicyBundle, amount: int, now: int,
                         facts: mint_rules.LogFacts) -> list[str]:
        """The reserve guard, judged from the latest attestation as the HSM signed it (its JWS verified under
        the attestation key, never the table's columns) and the authorizations the verified log records."""
        if not bundle.policy.reserve_guard.enabled:
            return []
        head = self.app.token.require().attestation  # the last attestation signed, as the token records it
        row = conn.execute(select(attestations.c.jws).where(attestations.c.seq == head.seq)).first()
        payload = None if row is None or head.hash is None or not row.jws or att_prev_digest(
            row.jws) != head.hash else self._signed_attestation(row.jws)
        if payload is None:
            return reserve_guard_reasons(bundle.policy, None, authorized_since=0, amount=amount, now=now)
        token_dec = self.app.settings.token_decimals
        reserves_dec, supply_dec = int(payload["reserves"]["decimals"]), int(payload["supply"]["decimals"])
        common = max(reserves_dec, supply_dec, token_dec)
        scale = 10 ** common
        reserves = int(payload["reserves"]["total"]) * scale // 10 ** reserves_dec
        supply = int(payload["supply"]["total"]) * scale // 10 ** supply_dec
        as_of = int(parse_utc(payload["as_of"]).timestamp())  # type: ignore[union-attr] # checked by verify
        authorized = sum(a.amount for a in facts.authorized if a.at > as_of)
        reserve = ReserveFacts(as_of=as_of, status=str(payload["status"]), reserves=reserves, supply=supply)
        return reserve_guard_reasons(bundle.policy, reserve, authorized_since=authorized * scale // 10 ** token_dec,
                                     amount=amount * scale // 10 ** token_dec, now=now)

    def _signed_attestation(self, token: str) -> dict[str, Any] | None:
        """The payload of an attestation JWS that verifies under the HSM's attestation key and whose figures hold
        (the regulator's own check, appliance.verify); None otherwise."""
        signer = self.app.attestation_signer
        try:
            return verify_attestation(token, {"keys": [{**signer.public_jwk(), "kid": signer.key_id}]})
        except ApplianceError:
            return None

    def _row(self, conn: Connection, request_id: str, lock: bool = False) -> Any:
        query = select(mint_requests).where(mint_requests.c.id == request_id)
        row = conn.execute(query.with_for_update() if lock else query).first()
        if row is None:
            raise NotFound(f"no mint request {request_id}")
        return row

    # -- requests -------------------------------------------------------------------------------------------

    def create(self, token: object) -> dict[str, Any]:
        """Validate and store a mint request signed by a treasury officer; returns the request object."""
        now = self.app.now()
        active = self.policies.active()
        try:
            who = auth.authenticate(token, active.bundle, typ=auth.TYP_MINT_REQUEST, roles=REQUESTER_ROLES, now=now)
            chain_id, to, amount = self._request_fields(who.payload)
        except ApplianceError:
            metrics.MINT_REQUESTS.labels("refused").inc()
            raise
        chain = self.app.settings.chain(chain_id)
        assert chain is not None
        policy = active.bundle.policy
        request_id = str(uuid.uuid4())
        nonce = "0x" + secrets.token_bytes(32).hex()
        valid_before = now + policy.mint.request_ttl_seconds + policy.mint.authorization_validity_seconds
        values: dict[str, Any] = dict(
            id=request_id, requester=who.operator.name, chain_id=chain_id,
            verifying_contract=chain.verifying_contract, to_address=to, amount=str(amount), nonce=nonce,
            valid_after=now, valid_before=valid_before, policy_hash=active.hash, status="pending",
            request_jws=who.token, created_at=now, expires_at=now + policy.mint.request_ttl_seconds)
        values["digest"] = self._digest(SimpleNamespace(**values))

        def store(conn: Connection) -> None:
            audit_repo.lock_head(conn)  # serializes against authorizations so the velocity sum is current
            window = now - policy.mint.velocity_window_seconds
            facts = self.audit.facts(conn)
            check_new_request(policy, chain_id=chain_id, to=to, amount=amount,
                              authorized_in_window=sum(a.amount for a in facts.authorized if a.at > window))
            reasons = self._reserve_reasons(conn, active.bundle, amount, now, facts)
            if reasons:
                raise PolicyViolation("the reserve guard refuses this mint", [Problem("reserve_guard", r)
                                                                              for r in reasons])
            auth.consume_jti(conn, who, now)
            conn.execute(insert(mint_requests).values(**values))
            self.audit.record(conn, actor=who.operator.name, action="mint.requested", subject=request_id,
                              details={"chain_id": chain_id, "to": to, "amount": str(amount),
                                       "digest": values["digest"], "nonce": nonce}, policy_hash=active.hash)

        try:
            self.app.db.write(store, "mint-request")
        except ApplianceError:
            metrics.MINT_REQUESTS.labels("refused").inc()
            raise
        metrics.MINT_REQUESTS.labels("created").inc()
        return self.get(request_id)

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

    # -- approvals ------------------------------------------------------------------------------------------

    def approve(self, request_id: str, token: object) -> dict[str, Any]:
        """Record one officer's approval or rejection; sign the authorization once the quorum is met."""
        now = self.app.now()

        def record(conn: Connection) -> tuple[bool, bool]:
            active = self.policies.active(conn)
            row = self._row(conn, request_id, lock=True)
            who = auth.authenticate(token, active.bundle, typ=auth.TYP_MINT_APPROVAL,
                                    roles=REQUESTER_ROLES, now=now)
            payload = who.payload
            decision = payload.get("decision")
            if decision not in ("approve", "reject"):
                raise InvalidInput("jws.payload.decision must be approve or reject")
            if payload.get("request_id") != request_id:
                raise PolicyViolation("the approval names another request")
            digest = self._digest(row)
            if payload.get("digest") != digest:
                raise PolicyViolation("the approval's digest is not the digest of this request",
                                      [Problem("jws.payload.digest", f"expected {digest}")])
            if payload.get("policy") != row.policy_hash:
                raise PolicyViolation("the approval names another policy than the request's",
                                      [Problem("jws.payload.policy", f"expected {row.policy_hash}")])
            if who.operator.name == row.requester:
                raise Forbidden("the requester cannot approve or reject their own request")
            self._check_open(conn, row, now)
            auth.consume_jti(conn, who, now)
            try:
                with conn.begin_nested():
                    conn.execute(insert(mint_approvals).values(
                        request_id=request_id, operator=who.operator.name, decision=decision, digest=digest,
                        policy_hash=row.policy_hash, iat=who.iat, jws=who.token, created_at=now))
            except sa_exc.IntegrityError as exc:
                raise Conflict(f"{who.operator.name} has already decided on this request") from exc
            self.audit.record(conn, actor=who.operator.name, action=f"mint.{auth.PAST_TENSE[decision]}",
                              subject=request_id, details={"digest": digest}, policy_hash=active.hash)
            result = self._evaluate(conn, row, active, now)
            if result.vetoed:
                self._close(conn, row, "rejected", who.operator.name, now, active.hash,
                            {"quorum": result.to_json()})
            return result.met, result.vetoed

        try:
            met, vetoed = self.app.db.write(record, "mint-approval")
        except ApplianceError:
            metrics.MINT_APPROVALS.labels("refused").inc()
            raise
        metrics.MINT_APPROVALS.labels("recorded").inc()
        if met:
            self.authorize(request_id)
        elif vetoed:
            self._cover_closure()
        return self.get(request_id)

    def _cover_closure(self) -> None:
        """Sign a checkpoint over a veto or cancellation just recorded: once the token's head covers it, nobody
        who writes the database can erase it (the log's closures refuse any later signature of the request)."""
        try:
            self.audit.checkpoint()
        except ApplianceError:
            pass  # durable already; the periodic checkpoint covers it

    def _check_open(self, conn: Connection, row: Any, now: int) -> None:
        if row.status != "pending":
            raise Conflict(f"request {row.id} is {row.status}")
        if now >= row.expires_at:  # expiry follows from the clock: readers derive it (get, list) too
            raise Conflict(f"request {row.id} expired")

    def _close(self, conn: Connection, row: Any, status: str, by: str, now: int, policy_hash: str,
               details: dict[str, Any]) -> None:
        conn.execute(update(mint_requests).where(mint_requests.c.id == row.id, mint_requests.c.status == "pending")
                     .values(status=status, closed_by=by, closed_at=now))
        self.audit.record(conn, actor=by, action=f"mint.{status}", subject=row.id,
                          details={**details, "status": status}, policy_hash=policy_hash)

    def cancel(self, request_id: str, token: object) -> dict[str, Any]:
        now = self.app.now()

        def do_cancel(conn: Connection) -> None:
            active = self.policies.active(conn)
            row = self._row(conn, request_id, lock=True)
            who = auth.authenticate(token, active.bundle, typ=auth.TYP_MINT_CANCEL, roles=CANCEL_ROLES, now=now)
            if who.payload.get("request_id") != request_id:
                raise PolicyViolation("the cancellation names another request")
            if who.operator.name != row.requester and "security-admin" not in who.operator.roles:
                raise Forbidden("only the requester or a security admin can cancel a request")
            self._check_open(conn, row, now)
            if conn.execute(select(mint_authorizations.c.request_id)
                            .where(mint_authorizations.c.request_id == request_id)).first() is not None:
                raise Conflict(f"request {request_id} is being authorized")
            auth.consume_jti(conn, who, now)
            self._close(conn, row, "cancelled", who.operator.name, now, active.hash, {})

        self.app.db.write(do_cancel, "mint-cancel")
        self._cover_closure()
        return self.get(request_id)

    # -- authorization --------------------------------------------------------------------------------------

    def authorize(self, request_id: str) -> dict[str, Any] | None:
        """Sign the authorization if the quorum holds now; returns it, or None when not (yet) allowed."""
        now = self.app.now()
        signer = self.app.mint_signer

        def reserve(conn: Connection) -> tuple[str, Any]:
            audit_repo.lock_head(conn)
            existing = conn.execute(select(mint_authorizations)
                                    .where(mint_authorizations.c.request_id == request_id)).first()
            if existing is not None:
                return ("stored" if existing.signature else "unsigned"), existing
            active = self.policies.active(conn)
            row = self._row(conn, request_id)
            if row.status != "pending" or now >= row.expires_at:
                return "closed", None
            result, reasons = self._refusals(conn, row, active, now)
            if not result.met:
                return "not-met", None
            digest = self._digest(row)
            if reasons:
                self.audit.record(conn, actor="appliance", action="mint.authorization.refused", subject=row.id,
                                  details={"reasons": reasons}, policy_hash=active.hash)
                return "refused", reasons
            conn.execute(insert(mint_authorizations).values(
                request_id=row.id, nonce=row.nonce, digest=digest, chain_id=row.chain_id, amount=row.amount,
                signer=signer.address, reserved_at=now))
            self.audit.record(conn, actor="appliance", action="mint.authorization.reserved", subject=row.id,
                              details={"digest": digest, "nonce": row.nonce, "amount": str(row.amount),
                                       "reserved_at": now, "quorum": result.to_json(),
                                       "signer": signer.address}, policy_hash=active.hash)
            return "reserved", None

        try:
            outcome, data = self.app.db.write(reserve, "mint-reserve")
        except sa_exc.IntegrityError:
            return self._stored_authorization(request_id)  # another thread or instance reserved it first
        except InfrastructureError:
            metrics.MINT_AUTHORIZATIONS.labels("failed-closed").inc()
            raise
        if outcome == "stored":
            metrics.MINT_AUTHORIZATIONS.labels("replayed").inc()
            return self._stored_authorization(request_id)
        if outcome in ("closed", "not-met", "unsigned"):
            return None  # "unsigned": another thread or instance holds the reservation and is signing it
        if outcome == "refused":
            metrics.MINT_AUTHORIZATIONS.labels("refused").inc()
            raise _refusal(data)
        return self._sign(request_id)

    def _refusals(self, conn: Connection, row: Any, active: ActiveBundle, now: int, quorum_at: int | None = None
                  ) -> tuple[quorum.QuorumResult, list[str]]:
        """(quorum result, reasons to refuse signing now); the reasons are only looked for once quorum is met.

        The one check every path to the HSM goes through (first signature, retry, takeover of a stale
        reservation), always at `now`: the quorum under the recorded and the active policy, every rule of both
        (mint_rules.signing_refusals), closures and reservations as the verified audit log has them, the reserve
        guard from the signed attestation, and the nonce. `quorum_at` (a takeover only) is when the request's
        reservation was made as the checkpointed audit log records it: the approvals' TTL is judged then."""
        result = self._evaluate(conn, row, active, now if quorum_at is None else quorum_at)
        if not result.met:
            return result, []
        facts = self.audit.facts(conn)
        reasons = self._rule_refusals(conn, row, active, now, facts.authorized)
        if row.id in facts.closed:
            reasons.append(f"the audit log records {facts.closed[row.id]} for this request")
        reasons += self._reserve_reasons(conn, active.bundle, int(row.amount), now, facts)
        if self._digest(row) != row.digest:
            reasons.append("the stored digest does not match the stored fields")
        other = conn.execute(select(mint_authorizations.c.request_id).where(
            mint_authorizations.c.nonce == row.nonce, mint_authorizations.c.request_id != row.id)).first()
        if other is not None:  # a nonce is signed at most once: another payload under it is refused for good
            reasons.append(f"{NONCE_CONSUMED}: request {other.request_id} holds its authorization")
        return result, reasons

    def _sign(self, request_id: str) -> dict[str, Any]:
        """Sign a reserved authorization and store the signature; returns the authorization object."""
        with self.app.db.read() as conn:
            row = self._row(conn, request_id)
            reservation = conn.execute(select(mint_authorizations)
                                       .where(mint_authorizations.c.request_id == request_id)).one()
        digest = self._digest(row)
        if digest != reservation.digest:
            raise PolicyViolation("the reserved digest does not match the request")
        # The reservation's audit entry is covered by a checkpoint (the token's head moves to it) before the HSM
        # signs: fail closed, and a log rolled back or rewritten behind the token stops minting (503).
        self.audit.checkpoint()
        try:
            signature = self.app.mint_signer.sign_eth_digest(bytes.fromhex(digest[2:]))
        except ApplianceError:
            metrics.SIGNATURES.labels("mint", "error").inc()
            metrics.MINT_AUTHORIZATIONS.labels("hsm-error").inc()
            raise
        metrics.SIGNATURES.labels("mint", "ok").inc()
        now = self.app.now()

        def store(conn: Connection) -> bool:
            stored_now = conn.execute(update(mint_authorizations)
                                      .where(mint_authorizations.c.request_id == request_id,
                                             mint_authorizations.c.digest == digest,
                                             mint_authorizations.c.signature.is_(None))
                                      .values(signature="0x" + signature.hex(), signed_at=now)).rowcount == 1
            if not stored_now:  # a recovering caller stored its signature first: that one is the authorization
                return False
            conn.execute(update(mint_requests).where(mint_requests.c.id == request_id)
                         .values(status="authorized", closed_by="appliance", closed_at=now))
            self.audit.record(conn, actor="appliance", action="mint.authorization.signed", subject=request_id,
                              details={"digest": digest, "signature": "0x" + signature.hex()},
                              policy_hash=row.policy_hash)
            return True

        if self.app.db.write(store, "mint-store"):
            metrics.MINT_AUTHORIZATIONS.labels("signed").inc()
        try:
            self.audit.checkpoint()
        except ApplianceError:
            pass  # the periodic checkpoint will cover it; the authorization itself is durable
        stored = self._stored_authorization(request_id)
        if stored is None:  # the reservation was voided while the HSM signed: this signature is discarded
            raise Conflict(f"the authorization of request {request_id} was withdrawn while it was being signed")
        return stored

    def _stored_authorization(self, request_id: str) -> dict[str, Any] | None:
        with self.app.db.read() as conn:
            row = self._row(conn, request_id)
            auth_row = conn.execute(select(mint_authorizations)
                                    .where(mint_authorizations.c.request_id == request_id)).first()
        if auth_row is None or auth_row.signature is None:
            return None
        return {"typedData": self._typed_data(row), "digest": auth_row.digest, "signature": auth_row.signature,
                "signer": auth_row.signer}

    def authorization(self, request_id: str) -> dict[str, Any]:
        """The stored authorization; completes a reservation left unsigned by an earlier failure, or a pending
        request whose quorum is met but whose signing was refused or failed earlier (everything re-evaluated).

        A reservation younger than RECOVERY_AFTER_SECONDS may still be in the hands of the thread that made
        it, so it is left alone (409): only a stale one is signed here.
        """
        stored = self._stored_authorization(request_id)
        if stored is not None:
            metrics.MINT_AUTHORIZATIONS.labels("replayed").inc()
            return stored
        with self.app.db.read() as conn:
            reserved = conn.execute(select(mint_authorizations.c.reserved_at, mint_authorizations.c.claimed_at)
                                    .where(mint_authorizations.c.request_id == request_id)).first()
            row = self._row(conn, request_id)
        if reserved is not None:
            last_taken = reserved.claimed_at if reserved.claimed_at is not None else reserved.reserved_at
            if self.app.now() - last_taken >= RECOVERY_AFTER_SECONDS and self._claim(
                    request_id, reserved.reserved_at, reserved.claimed_at, row.policy_hash):
                return self._sign(request_id)
            raise Conflict(f"request {request_id} is being signed: ask again in a moment")
        now = self.app.now()
        if row.status == "pending" and now < row.expires_at:
            # Quorum may have been met while signing was refused (velocity, reserve guard) or failed (store
            # down): asking again re-evaluates everything and signs if it all holds now. The evaluation is
            # read-only; only a request that would be signed reaches a write (so polling writes nothing).
            with self.app.db.read() as conn:
                result, reasons = self._refusals(conn, row, self.policies.active(conn), now)
            if not result.met:
                raise Conflict(f"request {request_id} is pending: its quorum is not met yet")
            if reasons:
                raise _refusal(reasons)
            issued = self.authorize(request_id) or self._stored_authorization(request_id)
            if issued is not None:
                return issued
            raise Conflict(f"request {request_id} is being signed: ask again in a moment")
        raise Conflict(f"request {request_id} is {self._status(row, self.app.now())}: no authorization has been issued")

    @staticmethod
    def _status(row: Any, now: int) -> str:
        """The request's status as of now: a pending request past its TTL is expired (derived, not stored)."""
        return "expired" if row.status == "pending" and now >= row.expires_at else str(row.status)

    def _claim(self, request_id: str, reserved_at: int, seen_claimed_at: int | None, policy_hash: str) -> bool:
        """Take over a stale unsigned reservation (compare-and-set on claimed_at), durably and audited.

        Of several callers recovering the same reservation at once only one wins. The winner runs the same check
        as a first signature (_refusals) at now: the row's reserved_at only says whether the reservation is
        stale, never whether it may be signed (someone who writes the database could have inserted it). If
        anything does not hold, the reservation is voided (audited, PolicyViolation) and nothing is signed."""
        now = self.app.now()

        def claim(conn: Connection) -> tuple[bool, list[str]]:
            audit_repo.lock_head(conn)  # first, as reserve() does: the policy read below is then current
            unclaimed = (mint_authorizations.c.claimed_at.is_(None) if seen_claimed_at is None
                         else mint_authorizations.c.claimed_at == seen_claimed_at)
            taken = conn.execute(update(mint_authorizations)
                                 .where(mint_authorizations.c.request_id == request_id,
                                        mint_authorizations.c.signature.is_(None), unclaimed)
                                 .values(claimed_at=now)).rowcount == 1
            if not taken:
                return False, []
            row = self._row(conn, request_id)
            active = self.policies.active(conn)
            # the same check as the first signature, at now; only the approvals' TTL is judged when the
            # reservation was made, as the log a signed checkpoint covers says (never a time a row says)
            covered = self.app.token.require().checkpoint
            at = self.audit.facts(conn).reserved_at(request_id, 0 if covered is None else covered.size)
            result, reasons = self._refusals(conn, row, active, now, quorum_at=at)
            if not result.met:
                reasons = ["its quorum does not hold now under the request's and the current policy"]
            if row.status != "pending":
                reasons.append(f"the request is {row.status}")
            if reasons:
                conn.execute(delete(mint_authorizations).where(mint_authorizations.c.request_id == request_id,
                                                               mint_authorizations.c.signature.is_(None)))
                self.audit.record(conn, actor="appliance", action="mint.authorization.voided", subject=request_id,
                                  details={"reasons": reasons}, policy_hash=active.hash)
                return False, reasons
            self.audit.record(conn, actor="appliance", action="mint.authorization.recovered",
                              subject=request_id, details={"reserved_at": reserved_at},
                              policy_hash=policy_hash)
            return True, []

        taken, reasons = self.app.db.write(claim, "mint-reserve")
        if reasons:
            metrics.MINT_AUTHORIZATIONS.labels("refused").inc()
            raise PolicyViolation("the pending authorization was voided", [Problem("policy", r) for r in reasons])
        return bool(taken)

    # -- reading --------------------------------------------------------------------------------------------

    def get(self, request_id: str) -> dict[str, Any]:
        now = self.app.now()
        with self.app.db.read() as conn:
            row = self._row(conn, request_id)
            active = self.policies.active(conn)
            result = self._evaluate(conn, row, active, now)
            approvals = conn.execute(select(mint_approvals.c.operator, mint_approvals.c.decision,
                                            mint_approvals.c.iat).where(mint_approvals.c.request_id == request_id)
                                     .order_by(mint_approvals.c.created_at, mint_approvals.c.operator)).all()
            tier = active.bundle.policy.tier_for(int(row.amount))
            required = active.bundle.policy.describe(tier)
            if row.policy_hash != active.hash:  # both the recorded and the active policy's quorum must hold
                recorded = self.policies.by_hash(conn, row.policy_hash).policy
                earlier = recorded.describe(recorded.tier_for(int(row.amount)))
                if earlier["text"] != required["text"]:
                    required = {**required, "text": f"{required['text']} (active policy); and "
                                f"{earlier['text']} (policy the request was made under)", "recorded": earlier}
            status = self._status(row, now)
            warnings = self._warnings(conn, row, active, now) if status == "pending" else []
        return {
            "id": row.id, "status": status, "requester": row.requester, "chain_id": row.chain_id,
            "to": row.to_address, "amount": row.amount,
            "amount_tokens": amounts.format_units(int(row.amount), self.app.settings.token_decimals),
            "token": self.app.settings.token_symbol, "nonce": row.nonce, "valid_after": row.valid_after,
            "valid_before": row.valid_before, "digest": row.digest, "policy": row.policy_hash,
            "typedData": self._typed_data(row), "required": required,
            "approvals": [{"operator": a.operator, "decision": a.decision, "iat": a.iat} for a in approvals],
            "quorum": result.to_json(), "created_at": row.created_at, "expires_at": row.expires_at,
            "authorization": self._stored_authorization(request_id),
            "request_jws": row.request_jws, "warnings": warnings,
        }

    def _warnings(self, conn: Connection, row: Any, active: ActiveBundle, now: int) -> list[str]:
        """Why the appliance would refuse to sign the request as stored, whatever the approvals (shown to
        approvers before they sign): a row that is not what its requester signed, or rules no longer met.
        The velocity limit and the reserve guard are judged at signing time and left out here."""
        return self._rule_refusals(conn, row, active, now, authorized=[])

    def _rule_refusals(self, conn: Connection, row: Any, active: ActiveBundle, now: int,
                       authorized: list[mint_rules.Authorized]) -> list[str]:
        """mint_rules.signing_refusals for the stored row, under its recorded and the active policy."""
        recorded = self.policies.by_hash(conn, row.policy_hash)
        contract = self.app.settings.chain(row.chain_id)
        return mint_rules.signing_refusals(
            self._signed_terms(conn, row), self._stored_terms(row), recorded=recorded.policy,
            active=active.bundle.policy, contract=None if contract is None else contract.verifying_contract,
            authorized=authorized, request_id=row.id, now=now)

    def list(self, status: str | None, limit: int, offset: int) -> dict[str, Any]:
        if status is not None and status not in STATUSES:
            raise InvalidInput(f"status must be one of {', '.join(STATUSES)}")
        query = select(mint_requests.c.id, mint_requests.c.status, mint_requests.c.requester,
                       mint_requests.c.chain_id, mint_requests.c.to_address, mint_requests.c.amount,
                       mint_requests.c.created_at, mint_requests.c.expires_at)
        count = select(func.count()).select_from(mint_requests)
        now = self.app.now()
        stored, open_ = mint_requests.c.status, mint_requests.c.expires_at > now
        if status is not None:
            # A pending request past its TTL is expired (the same rule as get()).
            condition = {"pending": and_(stored == "pending", open_),
                         "expired": or_(stored == "expired", and_(stored == "pending", not_(open_)))
                         }.get(status, stored == status)
            query = query.where(condition)
            count = count.where(condition)
        with self.app.db.read() as conn:
            total = conn.execute(count).scalar_one()
            rows = conn.execute(query.order_by(mint_requests.c.created_at.desc(), mint_requests.c.id)
                                .limit(min(limit, MAX_LIST)).offset(offset)).all()
        return {"total": total, "items": [
            {"id": r.id, "status": self._status(r, now),
             "requester": r.requester, "chain_id": r.chain_id, "to": r.to_address,
             "amount": r.amount, "created_at": r.created_at, "expires_at": r.expires_at} for r in rows]}


@functools.lru_cache(maxsize=4096)
def _digest_of(name: str, version: str, chain_id: int, contract: str, to: str, amount: str, nonce: str,
               valid_after: int, valid_before: int) -> str:
    """The EIP-712 digest of exactly these field values. Pure, so remembered: a request's fields are hashed
    again at every approval, reservation and signature, and each time costs checksum and struct keccaks.
    Raises (and remembers nothing) for fields that do not make a MintAuthorization."""
    domain = eip712.Eip712Domain(name, version, chain_id, contract)
    return "0x" + eip712.mint_digest(domain, _mint_message(to, amount, nonce, valid_after, valid_before)).hex()


def _mint_message(to: str, amount: str, nonce: str, valid_after: int, valid_before: int) -> eip712.MintAuthorization:
    """The MintAuthorization of a request's stored fields (amount a decimal string, nonce 0x-hex)."""
    return eip712.MintAuthorization(to=to, amount=int(amount), nonce=bytes.fromhex(nonce[2:]),
                                    valid_after=valid_after, valid_before=valid_before)


NONCE_CONSUMED = "the nonce of this request was already consumed"


def _refusal(reasons: list[str]) -> ApplianceError:
    """The error for reasons not to sign: 409 when the nonce is taken (the same nonce with another payload is a
    conflict that no later change resolves), 422 for the policy's refusals (velocity, reserve guard, tampering)."""
    problems = [Problem("policy", r) for r in reasons]
    nonce = [r for r in reasons if r.startswith(NONCE_CONSUMED)]
    if nonce:
        return Conflict(f"the authorization is refused: {nonce[0]}", problems)
    return PolicyViolation("the authorization is refused", problems)
