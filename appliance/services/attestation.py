"""Signed, chained reserve attestations (JWS ES256 by the HSM's P-256 key) and the liabilities they commit to.

Order, fail-closed: (1) one transaction reserves the next `seq` for this `as_of` (unique constraints) and appends
the audit entry; (2) the HSM signs; (3) a second transaction stores the compact JWS and appends the "signed"
entry. If signing fails the reservation is removed and the failure audited: there is never a partial
attestation. The same `as_of` with the same figures returns the stored attestation; different figures are 409.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection
from sqlalchemy import exc as sa_exc

from appliance import failpoints, metrics
from appliance.domain import attestation as att
from appliance.domain import checkpoint as notes
from appliance.domain import heads, jose, reserves
from appliance.domain.canonical import canonical_json
from appliance.domain.jose import parse_compact
from appliance.domain.liabilities import LiabilityTree
from appliance.domain.policy import RESERVE_REPORTER_ROLE
from appliance.domain.rfc3339 import parse_utc, utc
from appliance.errors import ApplianceError, ConfigError, Conflict, InvalidInput, NotFound, PolicyViolation, Problem
from appliance.services import auth
from appliance.services.audit import AuditLog
from appliance.services.context import Appliance
from appliance.services.policy import PolicyService
from appliance.signing import sign_jws
from appliance.store import attestation_repo, audit_repo

TYP = "reserve-attestation+jws"
REQUESTER_ROLES = frozenset({"auditor"})  # not treasury: those who mint do not attest to the reserves
CUSTODIAN_ROLES = frozenset({RESERVE_REPORTER_ROLE})  # who vouches for the reserve figures


class AttestationInFlight(Conflict):
    """Another request or worker holds the reservation of the next attestation right now (409; try again)."""


AS_OF_SKEW_SECONDS = 86400  # reserve report and supply snapshot must describe the same day
FUTURE_AS_OF_SECONDS = 300  # clock skew allowed for as_of; a later one would block every real as_of after it
MAX_LIST = 200


@dataclass(frozen=True)
class _Order:
    """One validated request for an attestation (holders_csv: kept only when it built the liabilities tree)."""

    report: reserves.ReserveReport
    supply: reserves.SupplySnapshot
    liabilities: dict[str, Any] | None
    holders_csv: str | None
    digest: str
    as_of: str
    now: int
    requested_by: str
    token: auth.Authenticated | None


def _reservation(order: _Order, payload: dict[str, Any]) -> attestation_repo.StoredAttestation:
    """The row that reserves payload's seq (its JWS empty until the signature is stored)."""
    return attestation_repo.StoredAttestation(
        seq=int(payload["seq"]), as_of=order.as_of, as_of_ts=int(order.report.as_of.timestamp()),
        figures_digest=order.digest, status=payload["status"], coverage_bps=payload["coverage_bps"],
        reserves_total=payload["reserves"]["total"], reserves_decimals=payload["reserves"]["decimals"],
        supply_total=payload["supply"]["total"], supply_decimals=payload["supply"]["decimals"], jws="",
        issued_at=order.now, requested_by=order.requested_by)


class AttestationService:
    def __init__(self, app: Appliance, audit: AuditLog | None = None, policies: PolicyService | None = None) -> None:
        self.app = app
        self.audit = audit or AuditLog(app)
        self.policies = policies or PolicyService(app, self.audit)

    # -- inputs ---------------------------------------------------------------------------------------------

    def liabilities_secret(self) -> bytes:
        path = self.app.settings.liabilities_secret_file
        try:
            return path.read_text(encoding="utf-8").strip().encode("utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read the liabilities secret {path}: {exc.strerror}") from exc

    def holders_path(self, seq: int) -> Path:
        return self.app.settings.data_dir / "liabilities" / f"{seq}.csv"

    # -- signing --------------------------------------------------------------------------------------------

    def request(self, token: object) -> dict[str, Any]:
        """An auditor's signed request carrying the inputs."""
        now = self.app.now()
        active = self.policies.active()
        who = auth.authenticate(token, active.bundle, typ=auth.TYP_ATTESTATION_REQUEST, roles=REQUESTER_ROLES,
                                now=now)
        payload = who.payload
        unknown = set(payload) - {"reserves", "supply", "holders_csv", "iat", "jti"}
        if unknown:
            raise InvalidInput(f"unknown members in the request: {', '.join(sorted(unknown))}")
        holders = payload.get("holders_csv")
        if holders is not None and not isinstance(holders, str):
            raise InvalidInput("jws.payload.holders_csv must be CSV text or null")
        return self.attest(payload.get("reserves"), payload.get("supply"), holders, requested_by=who.operator.name,
                           trigger="api", token=who)

    def attest(self, reserves_jws: Any, supply_data: Any, holders_csv: str | None, *, requested_by: str,
               trigger: str, token: auth.Authenticated | None = None) -> dict[str, Any]:
        """Validate the inputs, then reserve, sign and store the next attestation; returns {"seq", "jws", ...}.

        `reserves_jws` is a custodian's signed reserve report (see `custodian_report`). `token` is the
        operator's request, whose jti is consumed in the same transaction as the reservation.
        """
        try:
            reserves_data = self.custodian_report(reserves_jws)
            result = self._attest(reserves_data, supply_data, holders_csv, requested_by, token)
        except ApplianceError:
            metrics.ATTESTATIONS.labels(trigger, "refused").inc()
            raise
        metrics.ATTESTATIONS.labels(trigger, "signed" if result["created"] else "existing").inc()
        return result

    def custodian_report(self, reserves_jws: Any) -> dict[str, Any]:
        """The reserve report a custodian signed: a compact JWS of type reserve-report+jws whose payload is the
        report (iat and jti, which operator tools add, are dropped), verifying under the key of an enabled
        operator with the custodian role in the active bundle. The report's evidence gains one entry naming the
        custodian and their key (RFC 7638 thumbprint) with the SHA-256 of the report's RFC 8785 form: the
        attestation commits to who vouched for which figures, and the same report signed again (a retry) gives
        the same attestation.

        Neither those who mint (treasury) nor the auditor who asks, nor whoever writes the database or the
        inbox, can invent the reserve figures the HSM signs."""
        if isinstance(reserves_jws, dict):
            raise InvalidInput("the reserve report must be signed by a custodian", [Problem(
                "reserves", f"give the custodian's compact JWS of type {auth.TYP_RESERVE_REPORT!r} (`appliance "
                            "reserves sign`), not the report's JSON")])
        operator, payload = auth.verify_statement(reserves_jws, self.policies.active().bundle,
                                                  typ=auth.TYP_RESERVE_REPORT, roles=CUSTODIAN_ROLES,
                                                  location="reserves")
        report = {k: v for k, v in payload.items() if k not in ("iat", "jti")}
        evidence = report.get("evidence", [])
        if isinstance(evidence, list):  # anything else is refused, located, by the report's parser
            key = jose.thumbprint(operator.jwk)
            signed = {"name": f"reserve report signed by custodian {operator.name} (key {key})",
                      "sha256": hashlib.sha256(canonical_json(report)).hexdigest()}
            report["evidence"] = [*evidence, signed]
        return report

    def _attest(self, reserves_data: Any, supply_data: Any, holders_csv: str | None, requested_by: str,
                token: auth.Authenticated | None) -> dict[str, Any]:
        problems: list[Problem] = []  # every problem of both inputs at once, each with its location
        report = supply = None
        try:
            report = reserves.parse_reserve_report(reserves_data, "reserves")
        except InvalidInput as exc:
            problems += exc.problems or [Problem("reserves", exc.detail)]
        try:
            supply = reserves.parse_supply_snapshot(supply_data, "supply")
        except InvalidInput as exc:
            problems += exc.problems or [Problem("supply", exc.detail)]
        if report is None or supply is None:
            raise InvalidInput(f"the inputs have {len(problems)} problem(s)", problems)
        settings = self.app.settings
        reserves.check_consistency(report, supply, settings.currency, tolerance_seconds=AS_OF_SKEW_SECONDS)
        reserves.check_supply_chains(supply, {c.chain_id: c.verifying_contract for c in settings.chains})
        now = self.app.now()
        stamp = utc(datetime.fromtimestamp(now, UTC))
        future = [Problem(f"{name}.as_of", f"{utc(when)} is later than now ({stamp})")
                  for name, when in (("reserves", report.as_of), ("supply", supply.as_of))
                  if when.timestamp() > now + FUTURE_AS_OF_SECONDS]
        if future:
            raise InvalidInput("as_of is in the future", future)
        tree = None
        if holders_csv is not None:
            tree = LiabilityTree.build(reserves.iter_holders_csv(holders_csv, "holders"),
                                       self.liabilities_secret())
        liabilities = tree.summary() if tree is not None else None
        if tree is not None and tree.total != supply.total:  # every token outstanding is owed to a holder
            raise PolicyViolation("the holder balances do not add up to the supply", [Problem(
                "holders", f"they total {tree.total} base units; the supply snapshot totals {supply.total}")])
        digest = att.figures_digest(report, supply, liabilities)
        order = _Order(report, supply, liabilities, holders_csv if tree is not None else None, digest,
                       utc(report.as_of), now, requested_by, token)
        with self.app.token.exclusive() as current:
            return self._issue(current, order)

    def check_head(self) -> None:
        """RollbackDetected unless the store holds the attestation chain as far as the token records it (for
        readiness: the same check every attestation and every reserve-guarded mint makes)."""
        with self.app.token.exclusive() as current:
            self._head(current)

    def _head(self, current: heads.Heads) -> tuple[heads.Heads, Any]:
        """The token's attestation head checked against the store (under the state lock); returns the heads
        (rolled forward over an attestation stored just before a crash) and the stored row at the head.

        RollbackDetected when the store lacks the head's attestation or holds another JWS for its seq, or holds
        a signed attestation beyond it that the token never recorded (a fork)."""
        head = current.attestation
        with self.app.db.read() as conn:
            rows = attestation_repo.signed_from(conn, max(head.seq, 1))
        at_head = rows[0] if rows and rows[0].seq == head.seq else None
        if head.seq > 0 and (at_head is None or att.prev_digest(at_head.jws) != head.hash):
            metrics.INTEGRITY_FAILURES.labels("attestation").inc()
            raise heads.RollbackDetected(f"the store does not hold attestation {head.seq} as the token records it: "
                                         "the attestation chain was rolled back or rewritten")
        beyond = [r for r in rows if r.seq > head.seq]
        if beyond and head.pending is not None and beyond[0].seq == head.seq + 1 and _payload_of(
                beyond[0].jws) == head.pending.encode("utf-8") and len(beyond) == 1:
            nxt = beyond[0]  # stored, then the process stopped before the token was told: roll forward
            current = current.newer(attestation=heads.AttestationHead(nxt.seq, att.prev_digest(nxt.jws)))
            self.app.token.write(current)
            return current, nxt
        if beyond:
            metrics.INTEGRITY_FAILURES.labels("attestation").inc()
            raise heads.RollbackDetected(f"the store holds attestation {beyond[0].seq}, which the token never "
                                         "recorded: the attestation chain was forked")
        return current, at_head

    def _issue(self, current: heads.Heads, order: _Order) -> dict[str, Any]:
        """Reserve, sign and store attestation head + 1, the token's head moving with it (see the module)."""
        current, last = self._head(current)
        checkpoint = self._checkpoint()
        try:
            outcome, data = self.app.db.write(lambda conn: self._reserve(conn, order, last, checkpoint),
                                              "attestation-reserve")
        except sa_exc.IntegrityError as exc:
            raise AttestationInFlight("another attestation was reserved at the same time: ask again") from exc
        if outcome == "same":
            return {"seq": data.seq, "jws": data.jws, "as_of": data.as_of, "status": data.status, "created": False}
        return self._sign_and_store(current, order, data)

    def _reserve(self, conn: Connection, order: _Order, last: attestation_repo.StoredAttestation | None,
                 checkpoint: dict[str, Any]) -> tuple[str, Any]:
        """("same", the stored attestation) for a retry of a signed as_of; ("new", payload) once the next seq is
        reserved for this as_of and audited; AttestationInFlight or Conflict otherwise."""
        audit_repo.lock_head(conn)  # serializes attestations across threads and instances
        if order.token is not None:
            auth.consume_jti(conn, order.token, order.now)
        self._drop_abandoned(conn, order.now)
        same = attestation_repo.by_as_of(conn, order.as_of)
        decision = att.decide_attestation(  # the head's as_of as signed, never its column
            None if last is None else att.Issued(last.seq, _parse_utc(json.loads(_payload_of(last.jws))["as_of"]),
                                                 last.figures_digest),
            None if same is None else att.Issued(same.seq, _parse_utc(same.as_of), same.figures_digest),
            order.report.as_of, order.digest)
        if decision.action == "reuse":  # decide_attestation refuses (409) this as_of with other figures
            assert same is not None  # "reuse" only when this as_of exists
            if not same.signed:
                raise AttestationInFlight(f"the attestation for {order.as_of} is being signed: ask again in a moment")
            return "same", same
        active = self.policies.active(conn)
        payload = self._payload(order, last, active.hash, checkpoint)
        attestation_repo.reserve(conn, _reservation(order, payload))
        self.audit.record(conn, actor=order.requested_by, action="attestation.reserved", subject=str(payload["seq"]),
                          details={"as_of": order.as_of, "figures": order.digest, "status": payload["status"],
                                   "coverage_bps": payload["coverage_bps"]}, policy_hash=active.hash)
        return "new", payload

    def _payload(self, order: _Order, last: attestation_repo.StoredAttestation | None, policy_hash: str,
                 checkpoint: dict[str, Any]) -> dict[str, Any]:
        settings = self.app.settings
        return att.build_payload(
            order.report, order.supply, seq=1 if last is None else last.seq + 1,
            prev_jws=None if last is None else last.jws, issued_at=datetime.fromtimestamp(order.now, UTC),
            issuer=settings.issuer, token={"symbol": settings.token_symbol, "name": settings.token_name,
                                           "decimals": settings.token_decimals},
            policy_hash=policy_hash, audit=checkpoint, liabilities=order.liabilities)

    def _sign_and_store(self, current: heads.Heads, order: _Order, payload: dict[str, Any]) -> dict[str, Any]:
        """The token records the one payload that may be signed as this seq BEFORE the HSM signs it; then the
        JWS is stored (the last write) and the token's head moves to it."""
        seq = int(payload["seq"])
        if order.holders_csv is not None:
            self._keep_holders(seq, order.holders_csv)
        else:
            self.holders_path(seq).unlink(missing_ok=True)  # left by an abandoned reservation of this seq
        text = canonical_json(payload)
        intent = current.newer(attestation=replace(current.attestation, pending=text.decode("utf-8")))
        self.app.token.write(intent)
        failpoints.reach("attestation.before-hsm")
        try:
            jws = sign_jws(self.app.attestation_signer, text, TYP)
        except ApplianceError:
            metrics.SIGNATURES.labels("attestation", "error").inc()
            self.app.token.write(intent.newer(attestation=current.attestation))
            self._unreserve(seq, order.requested_by, order.now)
            raise
        metrics.SIGNATURES.labels("attestation", "ok").inc()
        failpoints.reach("attestation.after-hsm")
        self.app.db.write(lambda conn: self._store(conn, order, payload, jws), "attestation-store")
        failpoints.reach("attestation.stored")
        self.app.token.write(intent.newer(attestation=heads.AttestationHead(seq, att.prev_digest(jws))))
        try:
            self.audit.checkpoint()
        except ApplianceError:
            pass  # the periodic checkpoint covers it; the attestation is durable
        return {"seq": seq, "jws": jws, "as_of": payload["as_of"], "status": payload["status"], "created": True}

    def _store(self, conn: Connection, order: _Order, payload: dict[str, Any], jws: str) -> None:
        seq = int(payload["seq"])
        if not attestation_repo.store_signature(conn, seq, order.now, order.digest, jws):
            # Signing outlasted reservation_takeover_seconds and the reservation was dropped (perhaps seq reserved
            # again): this JWS is discarded, never stored or returned. Nothing forks the chain.
            raise AttestationInFlight(f"the reservation of attestation {seq} was abandoned while it was being "
                                      "signed: ask again")
        self.audit.record(conn, actor=order.requested_by, action="attestation.signed", subject=str(seq),
                          details={"jws_sha256": att.prev_digest(jws)}, policy_hash=payload["policy"])

    def _drop_abandoned(self, conn: Connection, now: int) -> None:
        """Remove a reservation whose signature was never stored (its JWS was never returned to anyone)."""
        cutoff = now - self.app.settings.reservation_takeover_seconds
        for seq in attestation_repo.abandoned(conn, cutoff):
            attestation_repo.unreserve(conn, seq)
            self.audit.record(conn, actor="appliance", action="attestation.abandoned", subject=str(seq),
                              details={"reason": "reserved but never signed and stored"}, policy_hash=None)

    def _checkpoint(self) -> dict[str, Any]:
        """Size and root of the latest signed checkpoint (one is signed after every signing event)."""
        cp = notes.open_checkpoint(self.audit.latest_note(), [self.audit.verifier()])
        return {"size": cp.size, "root": base64.b64encode(cp.root).decode("ascii")}

    def _keep_holders(self, seq: int, holders_csv: str) -> None:
        path = self.holders_path(seq)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(holders_csv, encoding="utf-8")
        tmp.replace(path)

    def _unreserve(self, seq: int, requested_by: str, reserved_at: int) -> None:
        def undo(conn: Connection) -> None:
            if not attestation_repo.unreserve(conn, seq, reserved_at):
                return  # already dropped as abandoned (and audited then); this seq may be someone else's now
            self.audit.record(conn, actor=requested_by, action="attestation.failed", subject=str(seq),
                              details={"reason": "the HSM could not sign"}, policy_hash=None)

        self.app.db.write(undo, "attestation-unreserve")

    # -- reading --------------------------------------------------------------------------------------------

    def get(self, seq: int) -> str:
        if not 1 <= seq < 2**63:  # beyond any stored seq (and beyond what the store's integers can hold)
            raise NotFound(f"no attestation {seq}")
        with self.app.db.read() as conn:
            row = attestation_repo.signed_at(conn, seq)
        if row is None:
            raise NotFound(f"no attestation {seq}")
        return row.jws

    def latest(self) -> str:
        with self.app.db.read() as conn:
            row = attestation_repo.latest_signed_attestation(conn)
        if row is None:
            raise NotFound("no attestation yet")
        return row.jws

    def list(self, limit: int, before: int | None) -> dict[str, Any]:
        with self.app.db.read() as conn:
            total, rows = attestation_repo.page(conn, min(limit, MAX_LIST), before)
        items = [{"seq": r.seq, "as_of": r.as_of, "issued_at": r.issued_at, "status": r.status,
                  "coverage_bps": r.coverage_bps, "href": f"/v1/attestations/{r.seq}"} for r in rows]
        next_before = rows[-1].seq if rows and rows[-1].seq > 1 else None
        return {"total": total, "items": items, "next": None if next_before is None else
                f"/v1/attestations?limit={limit}&before={next_before}"}

    def liability_proof(self, account: str, seq: int) -> dict[str, Any]:
        """Rebuild the liabilities tree kept for `seq` and return one holder's inclusion proof."""
        path = self.holders_path(seq)
        if not path.exists():
            raise NotFound(f"attestation {seq} has no liabilities data on this appliance")
        payload = json.loads(_payload_of(self.get(seq)))
        tree = LiabilityTree.build(reserves.iter_holders_csv(path.read_text(encoding="utf-8"),
                                                             path.name), self.liabilities_secret())
        if payload.get("liabilities") != tree.summary():
            raise ConfigError(f"the kept holders file for attestation {seq} no longer matches its root")
        return {**tree.proof(account), "attestation": seq}


def _payload_of(jws: str) -> bytes:
    return parse_compact(jws).payload


def _parse_utc(text: str) -> datetime:
    """A stored time the appliance wrote (rfc3339.utc); ValueError when it is not one (a damaged row)."""
    moment = parse_utc(text)
    if moment is None:
        raise ValueError(f"not a time the appliance writes: {text!r}")
    return moment


def read_input(path: Path) -> Path:
    """A file, or the newest *.jws, *.json or *.csv in a directory: how the scheduler finds its inbox (the
    custodian's signed report is a .jws, the supply snapshot a .json, the holder balances a .csv)."""
    if path.is_dir():
        candidates = sorted(p for p in path.iterdir() if p.suffix in (".jws", ".json", ".csv") and p.is_file())
        if not candidates:
            raise NotFound(f"no input files in {path}")
        return max(candidates, key=lambda p: (p.stat().st_mtime, p.name))
    return path
