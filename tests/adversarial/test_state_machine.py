"""A hypothesis state machine: honest officers and a database writer interleaved at random (SQLite).

The honest side keeps its own record, outside the database: the requests it made (with the digest the
requester's signed terms give), the approvals it signed, and the vetoes and cancellations the appliance
acknowledged. The attacker edits, inserts and deletes rows of the real store between steps, as T1 and as T1+T2
(copying an officer's genuine approval elsewhere). Every HSM mint signature is checked as it is made: its digest
is one the requester asked for, at least two distinct officers other than the requester honestly approved that
digest, and no acknowledged veto or cancellation closed it. And no response is ever a 500.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from sqlalchemy import Engine, create_engine, text

from appliance.services.mint import RECOVERY_AFTER_SECONDS
from tests.conftest import drop_token_state, write_env
from tests.helpers import Harness, digest_of, harness

OFFICERS = ("alice", "bob", "carol", "dave")
ELSEWHERE = "0x000000000000000000000000000000000000dEaD"


@dataclass
class Honest:
    """What the honest side knows, whatever the database says."""

    requests: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> the creation response
    approved: dict[str, set[str]] = field(default_factory=dict)  # digest -> officers who signed an approval of it
    closed: set[str] = field(default_factory=set)  # digests of requests vetoed or cancelled (acknowledged)
    signed: list[str] = field(default_factory=list)  # digests the HSM signed
    violations: list[str] = field(default_factory=list)


class Appliance(RuleBasedStateMachine):
    """One fresh environment per example (the session token, a new SQLite store)."""

    directory: Path
    signatures = 0  # across examples: the machine must reach real signatures, not only refusals

    def __init__(self) -> None:
        super().__init__()
        self.honest = Honest()
        self.env = write_env(Appliance.directory / f"env-{id(self)}")
        from appliance import config
        from appliance.services import setup

        setup.init(config.load(self.env.config))
        self.h: Harness = harness(self.env.directory, self.env.summary)
        self.attacker: Engine = create_engine(self.h.app_ctx.db.engine.url)
        self._watch_the_hsm()

    def _watch_the_hsm(self) -> None:
        hsm, label = self.h.app_ctx.hsm, self.h.app_ctx.mint_signer.spec.label
        original, honest = hsm.sign, self.honest

        def sign(spec: Any, data: bytes) -> bytes:
            if spec.label == label:
                digest = "0x" + data.hex()
                requesters = [r["requester"] for r in honest.requests.values() if r["digest"] == digest]
                if not requesters:
                    honest.violations.append(f"signed {digest}, which no requester asked for")
                elif len(honest.approved.get(digest, set()) - set(requesters)) < 2:
                    honest.violations.append(f"signed {digest} without two honest approvals")
                if digest in honest.closed:
                    honest.violations.append(f"signed {digest} after a veto or cancellation")
                honest.signed.append(digest)
            return original(spec, data)

        hsm.sign = sign  # type: ignore[method-assign]

    def teardown(self) -> None:
        Appliance.signatures += len(self.honest.signed)
        del self.h.app_ctx.hsm.sign
        self.attacker.dispose()
        drop_token_state(self.env.config)

    # -- helpers ------------------------------------------------------------------------------------------

    def _ok(self, response: Any) -> Any:
        assert response.status_code < 500 or response.get_json()["type"].endswith(
            ("rollback-detected", "policy-history-invalid", "audit-log-inconsistent")), response.get_json()
        return response

    def _sql(self, statement: str, **params: Any) -> list[Any]:
        with self.attacker.begin() as conn:
            result = conn.execute(text(statement), params)
            return list(result) if result.returns_rows else []

    def _ids(self) -> list[str]:
        return list(self.honest.requests)  # in the order made (ids are random: sorting them is not replayable)

    # -- honest officers ----------------------------------------------------------------------------------

    @initialize()
    def first_request(self) -> None:
        self.request("alice")

    @rule(requester=st.sampled_from(("alice", "bob")))
    def request(self, requester: str) -> None:
        response = self._ok(self.h.request(requester, amount="250000000000"))
        if response.status_code == 201:
            body = response.get_json()
            self.honest.requests[body["id"]] = body

    @precondition(lambda self: self.honest.requests)
    @rule(data=st.data(), officer=st.sampled_from(OFFICERS), reject=st.booleans())
    def decide(self, data: st.DataObject, officer: str, reject: bool) -> None:
        """An officer signs the request as it was created (a careful client that checks the requester's JWS)."""
        req = self.honest.requests[data.draw(st.sampled_from(self._ids()))]
        decision = "reject" if reject and data.draw(st.integers(0, 3)) == 0 else "approve"
        if decision == "approve":
            self.honest.approved.setdefault(req["digest"], set()).add(officer)
        response = self._ok(self.h.approve(officer, req, decision=decision))
        if decision == "reject" and response.status_code == 201 and officer != req["requester"]:
            self.honest.closed.add(req["digest"])

    @precondition(lambda self: self.honest.requests)
    @rule(data=st.data())
    def two_officers_approve(self, data: st.DataObject) -> None:
        """The honest path to a signature: two officers other than the requester approve."""
        req = self.honest.requests[data.draw(st.sampled_from(self._ids()))]
        for officer in [o for o in ("bob", "carol", "alice") if o != req["requester"]][:2]:
            self.honest.approved.setdefault(req["digest"], set()).add(officer)
            self._ok(self.h.approve(officer, req))

    @precondition(lambda self: self.honest.requests)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        from appliance.services import auth

        req = self.honest.requests[data.draw(st.sampled_from(self._ids()))]
        jws = self.h.jws(req["requester"], auth.TYP_MINT_CANCEL, {"request_id": req["id"]})
        response = self._ok(self.h.client.post(f"/v1/mint-requests/{req['id']}/cancel", json={"jws": jws}))
        if response.status_code == 200:
            self.honest.closed.add(req["digest"])

    @precondition(lambda self: self.honest.requests)
    @rule(data=st.data())
    def ask_for_the_authorization(self, data: st.DataObject) -> None:
        request_id = data.draw(st.sampled_from(self._ids()))
        self._ok(self.h.client.get(f"/v1/mint-requests/{request_id}/authorization"))

    @rule(seconds=st.sampled_from((1, RECOVERY_AFTER_SECONDS + 1, 600)))
    def time_passes(self, seconds: int) -> None:
        self.h.clock.advance(seconds)

    # -- the database writer ------------------------------------------------------------------------------

    @precondition(lambda self: self.honest.requests)
    @rule(data=st.data(), column=st.sampled_from(("to_address", "amount", "valid_before", "verifying_contract",
                                                  "status", "requester", "policy_hash")),
          fix_digest=st.booleans())
    def edit_request(self, data: st.DataObject, column: str, fix_digest: bool) -> None:
        request_id = data.draw(st.sampled_from(self._ids()))
        value: Any = {"to_address": ELSEWHERE, "amount": "999999999999", "valid_before": 4102444800,
                      "verifying_contract": ELSEWHERE, "status": "pending", "requester": "dave",
                      "policy_hash": "0" * 64}[column]
        self._sql(f"UPDATE mint_requests SET {column} = :v WHERE id = :id", v=value, id=request_id)  # noqa: S608
        if fix_digest:
            row = self._sql("SELECT * FROM mint_requests WHERE id = :id", id=request_id)[0]
            s = self.h.app_ctx.settings
            digest = digest_of(s, row.chain_id, row.verifying_contract,
                                row.to_address, row.amount, row.nonce, row.valid_after, row.valid_before)
            self._sql("UPDATE mint_requests SET digest = :d WHERE id = :id", d=digest, id=request_id)

    @precondition(lambda self: self.honest.requests)
    @rule(data=st.data())
    def resurrect(self, data: st.DataObject) -> None:
        request_id = data.draw(st.sampled_from(self._ids()))
        self._sql("DELETE FROM mint_approvals WHERE request_id = :id AND decision = 'reject'", id=request_id)
        self._sql("UPDATE mint_requests SET status = 'pending', closed_by = NULL, closed_at = NULL WHERE id = :id",
                  id=request_id)

    @precondition(lambda self: len(self.honest.requests) >= 2)
    @rule(data=st.data())
    def copy_an_approval(self, data: st.DataObject) -> None:
        """T1+T2: a genuine approval row moved to another request (or the officer's own JWS, re-labelled)."""
        order = {request_id: i for i, request_id in enumerate(self._ids())}
        rows = sorted(self._sql("SELECT * FROM mint_approvals"), key=lambda r: (order.get(r.request_id, -1),
                                                                               r.operator))
        if not rows:
            return
        row = data.draw(st.sampled_from(rows))
        target = data.draw(st.sampled_from([i for i in self._ids() if i != row.request_id]))
        name = data.draw(st.sampled_from(OFFICERS))
        self._sql("DELETE FROM mint_approvals WHERE request_id = :id AND operator = :op", id=target, op=name)
        self._sql("INSERT INTO mint_approvals (request_id, operator, decision, digest, policy_hash, iat, jws, "
                  "created_at) VALUES (:id, :op, 'approve', :digest, :policy, :iat, :jws, :iat)", id=target,
                  op=name, digest=self.honest.requests[target]["digest"], policy=row.policy_hash, iat=row.iat,
                  jws=row.jws)

    @precondition(lambda self: self.honest.requests)
    @rule(data=st.data())
    def insert_a_stale_reservation(self, data: st.DataObject) -> None:
        request_id = data.draw(st.sampled_from(self._ids()))
        row = self._sql("SELECT * FROM mint_requests WHERE id = :id", id=request_id)[0]
        self._sql("DELETE FROM mint_authorizations WHERE request_id = :id AND signature IS NULL", id=request_id)
        if self._sql("SELECT 1 FROM mint_authorizations WHERE request_id = :id OR nonce = :n", id=request_id,
                     n=row.nonce):
            return
        self._sql("INSERT INTO mint_authorizations (request_id, nonce, digest, chain_id, amount, signer, "
                  "reserved_at) VALUES (:id, :n, :d, :c, :a, :s, :at)", id=request_id, n=row.nonce, d=row.digest,
                  c=row.chain_id, a=row.amount, s=self.h.app_ctx.mint_signer.address,
                  at=int(self.h.clock()) - 3600)

    @rule(table=st.sampled_from(("mint_approvals", "audit_checkpoints", "seen_tokens")), data=st.data())
    def delete_rows(self, table: str, data: st.DataObject) -> None:
        count = self._sql(f"SELECT COUNT(*) FROM {table}")[0][0]  # noqa: S608
        if count:
            keep = data.draw(st.integers(0, count - 1))
            self._sql(f"DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} "  # noqa: S608
                      f"ORDER BY rowid LIMIT -1 OFFSET :k)", k=keep)

    # -- the promise --------------------------------------------------------------------------------------

    @invariant()
    def every_signature_was_approved_by_the_quorum(self) -> None:
        assert self.honest.violations == [], self.honest.violations


@pytest.mark.slow
def test_honest_officers_and_a_database_writer_interleaved(tmp_path: Path) -> None:
    Appliance.directory = tmp_path
    machine = Appliance.TestCase
    machine.settings = settings(max_examples=25, stateful_step_count=30, deadline=None,
                                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    Appliance.signatures = 0
    machine().runTest()
    print("HSM mint signatures across examples:", Appliance.signatures)
    assert Appliance.signatures > 0
