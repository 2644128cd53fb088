"""Policy and operator bundles under quorum.

The first bundle is pinned from the TOML files at `init`. After that the TOML on disk is only a draft:
a new bundle takes effect when a quorum of the CURRENT security admins (the active bundle's governance rule)
has approved its hash, and it applies to requests created afterwards (each request records its bundle hash).

The database is not trusted with the policy. `init` writes the first bundle's hash into the HSM token (a private,
non-modifiable data object) and every read of the active bundle checks the history back to it: each activated
bundle's text hashes to its recorded hash, and each one after the first is exactly what a security admin of the
previous bundle signed as a proposal on that bundle (its `base`) and carries verifying approvals by a quorum
of the previous bundle's security admins. Someone who can write the database but holds no admin's key cannot
install a policy or operator set of their own; the appliance refuses to act (503) instead.
"""

from __future__ import annotations

import json
import tomllib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, func, insert, select, update

from appliance import metrics
from appliance.domain import heads, policy_history
from appliance.domain.attestation import prev_digest
from appliance.domain.canonical import canonical_json
from appliance.domain.policy import (
    POLICY_PROPOSER_ROLE,
    PolicyBundle,
    parse_operators,
    parse_policy,
    unreachable_mint_tiers,
)
from appliance.errors import (
    ConfigError,
    Conflict,
    InfrastructureError,
    InvalidInput,
    NotFound,
    PolicyViolation,
)
from appliance.services import auth
from appliance.services.audit import AuditLog
from appliance.services.context import Appliance
from appliance.store import attestation_repo
from appliance.store.tables import policy_approvals, policy_bundles


@dataclass(frozen=True)
class ActiveBundle:
    id: str
    hash: str
    bundle: PolicyBundle
    activated_seq: int


@dataclass(frozen=True)
class Policies:
    """The bundle in force and the verified, anchored history it ends (by bundle hash)."""

    active: ActiveBundle
    bundles: dict[str, PolicyBundle]

    def by_hash(self, digest: str) -> PolicyBundle:
        """A bundle of the verified history (never any other stored row with that hash); NotFound otherwise."""
        bundle = self.bundles.get(digest)
        if bundle is None:
            raise NotFound(f"no activated policy bundle with hash {digest}")
        return bundle


def load_bundle_files(policy_file: Path, operators_file: Path) -> PolicyBundle:
    """Parse and validate policy.toml and operators.toml (including each public key)."""
    data = {}
    for name, path in (("policy", policy_file), ("operators", operators_file)):
        try:
            data[name] = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"{path} not found") from exc
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path.name} cannot be read as TOML: {exc}") from exc
    return policy_history.checked(PolicyBundle(parse_policy(data["policy"], policy_file.name),
                                parse_operators(data["operators"], operators_file.name)))


class PolicyHistoryInvalid(InfrastructureError):
    """The stored policy history does not descend from the anchor in the HSM: the database was altered."""

    slug = "policy-history-invalid"
    title = "The stored policy history does not verify"


class PolicyService:
    def __init__(self, app: Appliance, audit: AuditLog | None = None) -> None:
        self.app = app
        self.audit = audit or AuditLog(app)
        #: histories verified by this service, each keyed by everything its check read from the rows: the
        #: anchor and, per activation, seq, id, hash, the hash of the parsed text and the proposer's JWS
        #: (the votes are verified once per activation: see _verified)
        self._verified_keys: set[tuple[Any, ...]] = set()
        #: parsed bundles by their exact stored text (parsing is pure; a bundle's text never changes)
        self._parsed: dict[str, PolicyBundle] = {}

    # -- reading --------------------------------------------------------------------------------------------

    def active(self, conn: Connection | None = None) -> ActiveBundle:
        """The bundle in force; ConfigError when `init` never pinned one."""
        return self.current(conn).active

    def current(self, conn: Connection | None = None) -> Policies:
        """The bundle in force and every bundle of its verified history, read once: the activation history is
        checked back to the HSM anchor (see the module) and against the policy head the token holds (so a
        deleted activation is a detected rollback). ConfigError when `init` never pinned a bundle."""
        if conn is None:
            with self.app.db.read() as c:
                return self.current(c)
        row = conn.execute(select(policy_bundles).where(policy_bundles.c.status == "active")).first()
        if row is None:
            raise ConfigError("no active policy: run `appliance init`")
        rows = self._history_rows(conn)
        if not rows or rows[-1].id != row.id:
            self._integrity_failure()
            raise PolicyHistoryInvalid("the active policy bundle is not the last one activated")
        bundles = self._verified(conn, rows)
        self._check_head([r.hash for r in rows])
        return Policies(ActiveBundle(row.id, row.hash, bundles[-1], row.activated_seq),
                        {r.hash: b for r, b in zip(rows, bundles, strict=True)})

    @staticmethod
    def _history_rows(conn: Connection) -> list[Any]:
        return list(conn.execute(select(policy_bundles).where(policy_bundles.c.activated_seq.is_not(None))
                                 .order_by(policy_bundles.c.activated_seq)).all())

    def _verified(self, conn: Connection, rows: list[Any]) -> list[PolicyBundle]:
        """The bundles of the activation history `rows`, each checked back to the anchor (PolicyHistoryInvalid)."""
        anchor = self.anchor()
        if anchor is None:
            if self.app.token.blind():  # the token cannot show its objects now: an outage, not a broken history
                raise self.app.token.missing(f"policy anchor {self.app.settings.hsm.policy_anchor!r}")
            self._integrity_failure()
            raise PolicyHistoryInvalid(f"the HSM token holds no policy anchor "
                                       f"{self.app.settings.hsm.policy_anchor!r}: run `appliance init`")
        if not rows:
            self._integrity_failure()
            raise PolicyHistoryInvalid("the store holds no activated policy bundle")
        bundles = []
        for r in rows:
            try:
                bundles.append(self._parse(r.bundle))
            except (InvalidInput, ValueError) as exc:
                self._integrity_failure()
                raise PolicyHistoryInvalid(f"the stored policy bundle {r.hash} does not parse") from exc
        # A vote row edited or deleted after its bundle was verified here cannot give anyone power (the bundle
        # was activated by genuine votes); a restarted process checks the votes again and refuses such a history.
        key = (anchor, *((r.activated_seq, r.id, r.hash, b.hash, r.proposal_jws)
                         for r, b in zip(rows, bundles, strict=True)))
        if key not in self._verified_keys:
            try:
                self._check_history(conn, anchor, rows, bundles)
            except PolicyHistoryInvalid:
                self._integrity_failure()
                raise
            self._verified_keys.add(key)
        return bundles

    @staticmethod
    def _integrity_failure() -> None:
        metrics.INTEGRITY_FAILURES.labels("policy").inc()

    def history(self, conn: Connection) -> dict[str, PolicyBundle]:
        """Every bundle of the verified, anchored activation history by hash (checked against the token's head):
        the only bundles a stored request, approval or vote is ever judged under."""
        rows = self._history_rows(conn)
        bundles = self._verified(conn, rows)
        self._check_head([r.hash for r in rows])
        return {r.hash: b for r, b in zip(rows, bundles, strict=True)}

    @staticmethod
    def _check_history(conn: Connection, anchor: str, rows: Sequence[Any], bundles: list[PolicyBundle]) -> None:
        try:
            policy_history.verify_history(anchor, _activations(conn, rows, bundles))
        except policy_history.HistoryBroken as exc:
            raise PolicyHistoryInvalid(str(exc)) from exc

    def anchor(self) -> str | None:
        """The hash of the first bundle, as pinned in the HSM token (None before `init`); read once a process."""
        return self.app.token.anchor()

    def _check_head(self, hashes: list[str]) -> None:
        """The verified history `hashes` against the policy head in the token: shorter, or another bundle at the
        head's seq, is a rollback or fork (RollbackDetected, 503). Longer is an activation the token was not told
        of yet (its commit came first): the head moves forward to it, under the deployment's state lock."""
        try:
            head = self.app.token.require().policy
            heads.check_policy(head, hashes)
            if head is not None and head.seq == len(hashes):
                return
            with self.app.token.exclusive() as current:
                heads.check_policy(current.policy, hashes)
                if current.policy is not None and current.policy.seq < len(hashes):
                    self.app.token.write(current.newer(policy=heads.PolicyHead(len(hashes), hashes[-1])))
        except (heads.RollbackDetected, heads.HeadsInvalid):
            metrics.INTEGRITY_FAILURES.labels("policy").inc()
            raise

    def pin_anchor(self) -> str:
        """Write the first bundle's hash into the token, and the state object holding the heads (init;
        idempotent). ConfigError when the token already anchors another history: this database does not belong
        to this token. A deployment from before the state object gets one from its verified history."""
        with self.app.db.read() as conn:
            first = conn.execute(select(policy_bundles.c.hash).where(policy_bundles.c.activated_seq == 1)).first()
        if first is None:
            raise ConfigError("no policy bundle was pinned: run `appliance init`")
        label = self.app.settings.hsm.policy_anchor
        existing = self.anchor()
        if existing is None:
            self.app.hsm.store_data(label, first.hash.encode("ascii"))
        elif existing != first.hash:
            raise ConfigError(f"the token's policy anchor {label!r} names bundle {existing}, but this database "
                              f"starts from {first.hash}: wrong database or token")
        with self.app.token.exclusive(initializing=True) as current:
            if current.version == 0:
                with self.app.db.read() as conn:
                    rows = self._history_rows(conn)
                    self._verified(conn, rows)
                    last = attestation_repo.latest_signed_attestation(conn)
                chain = heads.AttestationHead(0, None) if last is None else heads.AttestationHead(
                    last.seq, prev_digest(last.jws))
                self.app.token.write(current.newer(policy=heads.PolicyHead(len(rows), rows[-1].hash),
                                                   attestation=chain))
        return str(first.hash)

    def by_hash(self, conn: Connection, digest: str) -> PolicyBundle:
        """A bundle of the verified, anchored history (never any other stored row with that hash)."""
        bundle = self.history(conn).get(digest)
        if bundle is None:
            raise NotFound(f"no activated policy bundle with hash {digest}")
        return bundle

    def _parse(self, text: str) -> PolicyBundle:
        bundle = self._parsed.get(text)
        if bundle is None:
            if len(self._parsed) >= 64:
                self._parsed.clear()
            bundle = self._parsed[text] = PolicyBundle.from_json(json.loads(text))
        return bundle

    def served_history(self) -> dict[str, Any]:
        """The verified, anchored activation history with everything a client needs to verify it again from its
        own pinned anchor: each bundle, its proposer's JWS and every vote JWS recorded for it. Served only once it
        verified here (PolicyHistoryInvalid or RollbackDetected otherwise, 503)."""
        with self.app.db.read() as conn:
            rows = self._history_rows(conn)
            bundles = self._verified(conn, rows)
            self._check_head([r.hash for r in rows])
            history = _activations(conn, rows, bundles)
        return {"anchor": history[0].hash, "head": {"seq": len(history), "hash": history[-1].hash},
                "activations": [{"seq": a.seq, "id": a.id, "hash": a.hash, "bundle": a.bundle.to_json(),
                                 "proposal_jws": a.proposal_jws, "votes": list(a.votes)} for a in history]}

    def describe(self) -> dict[str, Any]:
        with self.app.db.read() as conn:
            active = self.active(conn)
            rows = conn.execute(select(policy_bundles).where(policy_bundles.c.status == "proposed")
                                .order_by(policy_bundles.c.created_at)).all()
            proposals = [self._proposal_json(conn, r, active) for r in rows]
        return {"active": {"id": active.id, "hash": active.hash, "activated_seq": active.activated_seq,
                           "bundle": active.bundle.to_json()},
                "governance": _governance_text(active.bundle), "proposals": proposals,
                "token": {"symbol": self.app.settings.token_symbol, "name": self.app.settings.token_name,
                          "decimals": self.app.settings.token_decimals}}

    def _proposal_json(self, conn: Connection, row: Any, active: ActiveBundle) -> dict[str, Any]:
        votes = conn.execute(select(policy_approvals.c.operator, policy_approvals.c.decision)
                             .where(policy_approvals.c.bundle_id == row.id).order_by(policy_approvals.c.operator))
        return {"id": row.id, "hash": row.hash, "status": row.status, "proposed_by": row.proposed_by,
                "approvals": [{"operator": v.operator, "decision": v.decision} for v in votes],
                "bundle": json.loads(row.bundle), "proposal_jws": row.proposal_jws,
                **self._proposal_state(row, active)}

    @staticmethod
    def _proposal_state(row: Any, active: ActiveBundle) -> dict[str, Any]:
        """base and expires_at as the proposer signed them, or why the proposal can no longer be approved."""
        proposal = policy_history.vouched_proposal(row.proposal_jws, row.hash, active.hash, active.bundle)
        if isinstance(proposal, str):
            return {"base": None, "expires_at": None, "problem": proposal}
        ttl = active.bundle.policy.governance.proposal_ttl_seconds
        return {"base": proposal["base"], "expires_at": int(proposal["iat"]) + ttl, "problem": None}

    # -- writing --------------------------------------------------------------------------------------------

    def pin_initial(self, bundle: PolicyBundle) -> tuple[str, bool]:
        """Pin the first bundle at init (idempotent); returns (hash, pinned_now)."""

        def pin(conn: Connection) -> tuple[str, bool]:
            row = conn.execute(select(policy_bundles.c.hash).where(policy_bundles.c.status == "active")).first()
            if row is not None:
                return row.hash, False
            digest = bundle.hash
            conn.execute(insert(policy_bundles).values(
                id=str(uuid.uuid4()), hash=digest, bundle=canonical_json(bundle.to_json()).decode("utf-8"),
                status="active", proposed_by="init", created_at=self.app.now(), activated_seq=1,
                activated_at=self.app.now()))
            self.audit.record(conn, actor="init", action="policy.pinned", subject=digest,
                              details={"operators": sorted(op.name for op in bundle.operators)}, policy_hash=digest,
                              guard=False)  # init's own note: pin_anchor next tells a wrong database clearly
            return digest, True

        return self.app.db.write(pin, "policy")

    def propose(self, token: object) -> dict[str, Any]:
        now = self.app.now()
        active = self.active()
        who = auth.authenticate(token, active.bundle, typ=auth.TYP_POLICY_PROPOSAL,
                                roles=frozenset({POLICY_PROPOSER_ROLE}), now=now)
        base = who.payload.get("base")
        if not isinstance(base, str):
            raise InvalidInput("jws.payload.base must be the hash of the active bundle this proposal changes")
        if base != active.hash:
            raise Conflict(f"the proposal is built on bundle {base}, but the active bundle is {active.hash}: "
                           "fetch the policy again and propose on it")
        proposed = policy_history.proposed_bundle(who.payload, active.bundle)
        digest = proposed.hash
        proposal_id = str(uuid.uuid4())

        def store(conn: Connection) -> None:
            auth.consume_jti(conn, who, now)
            exists = conn.execute(select(policy_bundles.c.id).where(policy_bundles.c.hash == digest)).first()
            if exists is not None:
                raise Conflict(f"a bundle with hash {digest} exists already ({exists.id})")
            conn.execute(insert(policy_bundles).values(
                id=proposal_id, hash=digest, bundle=canonical_json(proposed.to_json()).decode("utf-8"),
                status="proposed", proposed_by=who.operator.name, created_at=now, proposal_jws=who.token))
            self.audit.record(conn, actor=who.operator.name, action="policy.proposed", subject=digest,
                              details={"proposal": proposal_id}, policy_hash=active.hash)

        self.app.db.write(store, "policy")
        metrics.POLICY_CHANGES.labels("proposed").inc()
        return {"id": proposal_id, "hash": digest, "status": "proposed", "base": active.hash,
                "expires_at": who.iat + active.bundle.policy.governance.proposal_ttl_seconds,
                "governance": _governance_text(active.bundle),
                "warnings": [str(p) for p in unreachable_mint_tiers(proposed)]}

    def approve(self, proposal_id: str, token: object) -> dict[str, Any]:
        """Record a security admin's vote; activate the bundle when the current governance quorum is met."""
        now = self.app.now()

        def vote(conn: Connection) -> dict[str, Any]:
            active = self.active(conn)
            who = auth.authenticate(token, active.bundle, typ=auth.TYP_POLICY_APPROVAL,
                                    roles=frozenset(active.bundle.policy.governance.eligible_roles), now=now)
            row = self._open_proposal(conn, proposal_id, active, now)
            payload = who.payload
            if payload.get("proposal") != proposal_id or payload.get("hash") != row.hash:
                raise PolicyViolation("the approval does not name this proposal and its bundle hash")
            decision = payload.get("decision")
            if decision not in ("approve", "reject"):
                raise InvalidInput("decision must be approve or reject")
            auth.consume_jti(conn, who, now)
            done = conn.execute(select(policy_approvals.c.operator).where(
                policy_approvals.c.bundle_id == proposal_id, policy_approvals.c.operator == who.operator.name)).first()
            if done is not None:
                raise Conflict(f"{who.operator.name} has already voted on this proposal")
            conn.execute(insert(policy_approvals).values(bundle_id=proposal_id, operator=who.operator.name,
                                                         decision=decision, iat=who.iat, jws=who.token,
                                                         created_at=now))
            self.audit.record(conn, actor=who.operator.name, action=f"policy.{auth.PAST_TENSE[decision]}",
                              subject=row.hash, details={"proposal": proposal_id}, policy_hash=active.hash)
            return self._maybe_activate(conn, active, row, now)

        result = self.app.db.write(vote, "policy")
        metrics.POLICY_CHANGES.labels(result["status"]).inc()
        if result["status"] == "active":
            self.active()  # the token's policy head moves to the new activation now (see _check_head)
        return result

    @staticmethod
    def _open_proposal(conn: Connection, proposal_id: str, active: ActiveBundle, now: int) -> Any:
        """The proposal's row, locked, if it can still be voted on: proposed, vouched for by its proposer's JWS on
        the active bundle, not expired (NotFound, Conflict otherwise)."""
        row = conn.execute(select(policy_bundles).where(policy_bundles.c.id == proposal_id).with_for_update()).first()
        if row is None:
            raise NotFound(f"no policy proposal {proposal_id}")
        if row.status != "proposed":
            raise Conflict(f"proposal {proposal_id} is {row.status}")
        proposal = policy_history.vouched_proposal(row.proposal_jws, row.hash, active.hash, active.bundle)
        if isinstance(proposal, str):
            raise Conflict(f"proposal {proposal_id} cannot be approved: {proposal}")
        ttl = active.bundle.policy.governance.proposal_ttl_seconds
        if now >= int(proposal["iat"]) + ttl:
            raise Conflict(f"proposal {proposal_id} expired {ttl} s after it was proposed "
                           "(governance.proposal_ttl_seconds): propose it again")
        return row

    def _maybe_activate(self, conn: Connection, active: ActiveBundle, row: Any, now: int) -> dict[str, Any]:
        governance = active.bundle.policy.governance
        # Counted exactly as the history check will count them later: only votes whose stored JWS verifies
        # under the active bundle's keys (an admin's key may have been rotated since they voted).
        approvers, rejecters = policy_history.tally(row.id, row.hash, row.proposal_jws, _votes(conn, row.id),
                                                    active.bundle)
        if rejecters:
            conn.execute(update(policy_bundles).where(policy_bundles.c.id == row.id).values(status="rejected"))
            self.audit.record(conn, actor="appliance", action="policy.rejected", subject=row.hash,
                              details={"proposal": row.id}, policy_hash=active.hash)
            return {"id": row.id, "hash": row.hash, "status": "rejected", "approvals": sorted(approvers)}
        if len(approvers) < governance.approvals:
            return {"id": row.id, "hash": row.hash, "status": "proposed", "approvals": sorted(approvers),
                    "needed": governance.approvals - len(approvers)}
        seq = conn.execute(select(func.max(policy_bundles.c.activated_seq))).scalar_one() + 1
        conn.execute(update(policy_bundles).where(policy_bundles.c.id == active.id).values(status="superseded"))
        conn.execute(update(policy_bundles).where(policy_bundles.c.id == row.id).values(
            status="active", activated_seq=seq, activated_at=now))
        self.audit.record(conn, actor="appliance", action="policy.activated", subject=row.hash,
                          details={"proposal": row.id, "previous": active.hash, "approvers": sorted(approvers)},
                          policy_hash=row.hash)
        return {"id": row.id, "hash": row.hash, "status": "active", "approvals": sorted(approvers)}


def _votes(conn: Connection, bundle_id: str) -> tuple[str, ...]:
    """Every vote JWS stored for the proposal `bundle_id` (each one counts only if it verifies)."""
    return tuple(conn.execute(select(policy_approvals.c.jws).where(policy_approvals.c.bundle_id == bundle_id)
                              .order_by(policy_approvals.c.operator)).scalars())


def _activations(conn: Connection, rows: Sequence[Any], bundles: Sequence[PolicyBundle]
                 ) -> list[policy_history.Activation]:
    """The stored activation history as the pure verifier takes it (the first bundle's votes are never read)."""
    return [policy_history.Activation(r.activated_seq, r.id, r.hash, b, r.proposal_jws,
                                      _votes(conn, r.id) if i else ())
            for i, (r, b) in enumerate(zip(rows, bundles, strict=True))]


def _governance_text(bundle: PolicyBundle) -> str:
    g = bundle.policy.governance
    return f"{g.approvals} approvals from {' or '.join(sorted(g.eligible_roles))} of the active bundle"
