"""T1 on every table: each column edited, a row inserted and a row deleted, at the moments that matter.

The targeted attacks in `test_database_writer.py` are the ones a reviewer thought of; this sweep is the ones
nobody picked. For every table of the store, at each moment where it matters (a request pending one approval
short of its quorum, a reservation whose signature was never stored, a request already signed, a policy change
half voted), the attacker rewrites one column of the rows that moment is about (every column in turn), inserts
a copy of such a row under a new key, or deletes them; then the honest officers carry on as if nothing
happened. Whatever the appliance answers (it may refuse, or detect a rollback and stop), after every case:

- every mint signature the HSM made is over the EIP-712 digest of a request as its requester created it, approved
  by a quorum of honest officers under the policy in force, and no digest was signed twice;
- the HSM never signed two checkpoints of one size with different roots, nor two attestations of one seq;
- every HSM signature went through the appliance's signers (nothing else reached the token);
- no response was a 500: refusals are problems (4xx, or 503 for a detected rollback or fork).
"""

from __future__ import annotations

import base64
import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import SQLAlchemyError

from appliance.domain.canonical import canonical_json
from appliance.errors import ApplianceError, HsmUnavailable
from appliance.services import registry
from appliance.services.mint import RECOVERY_AFTER_SECONDS
from appliance.store import tables
from tests.authenticator import SoftAuthenticator
from tests.helpers import Harness, digest_of, enrol_security_keys, harness, raising

pytestmark = pytest.mark.slow

ELSEWHERE = "0x000000000000000000000000000000000000dEaD"
JWS = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+$")
HEX = re.compile(r"^(0x)?[0-9a-fA-F]+$")
ALTERNATIVES = {  # enumerations the appliance stores: the attacker picks the value that would help most
    ("mint_requests", "status"): ("pending", "authorized"),
    ("mint_approvals", "decision"): ("approve", "reject"),
    ("policy_approvals", "decision"): ("approve", "reject"),
    ("policy_bundles", "status"): ("active", "proposed"),
    ("attestations", "status"): ("FULLY_BACKED", "UNDER_BACKED"),
}
NAMES = ("requester", "operator", "proposed_by", "requested_by", "closed_by")

# which moments each table matters at (a table's rows about a request matter at each of its stages)
MOMENTS = {
    "mint_requests": ("pending", "reserved", "signed"),
    "mint_approvals": ("pending", "reserved", "signed", "security-key"),
    "mint_authorizations": ("reserved", "signed"),
    "policy_bundles": ("enacted", "policy-change"),
    "policy_approvals": ("enacted", "policy-change"),
    "audit_entries": ("pending", "signed"),
    "audit_head": ("pending", "signed"),
    "audit_checkpoints": ("pending", "signed"),
    "seen_tokens": ("pending",),
    "attestations": ("attested",),
    "webauthn_sign_counts": ("security-key",),  # bob and carol approve with security keys
    "webauthn_enrolments": ("enrolment",),  # bob registered a security key in the console; not enrolled yet
}
assert set(MOMENTS) == set(tables.metadata.tables), "a new table needs its moments here"


# a careful attacker edits a request's terms and recomputes its digest, so the row is consistent with itself
COHERENT = ("to_address", "amount", "valid_after", "valid_before", "verifying_contract", "chain_id", "nonce")


def _on_postgresql(table: str, edit: str) -> bool:
    """The code is the same on both backends; what differs is the store's own enforcement (PostgreSQL checks
    foreign keys and unique keys on every statement, and locks differently). So PostgreSQL gets the edits that
    meet it where keys tie rows together, inserts and deletes of the mint tables at every moment; SQLite gets
    every edit (each PostgreSQL case costs a database of its own, about 1.3 s)."""
    return edit in ("insert", "delete") and table.startswith("mint_")


def cases() -> Iterator[Any]:
    for name, table in tables.metadata.tables.items():
        edits = [f"update:{c.name}" for c in table.columns] + ["insert", "delete"]
        if name == "mint_requests":
            edits += [f"update:{c}+digest" for c in COHERENT]
        for moment in MOMENTS[name]:
            for edit in edits:
                for backend in ("sqlite", "postgresql"):
                    if backend == "sqlite" or _on_postgresql(name, edit):
                        yield pytest.param(backend, name, moment, edit, id=f"{backend}-{name}-{moment}-{edit}")


# -- what the attacker writes -------------------------------------------------------------------------------

def _flip_hex(value: str) -> str:
    last = value[-1]
    return value[:-1] + ("1" if last != "1" else "2")


def _bump_json(value: Any) -> tuple[Any, bool]:
    """The document with its first number raised (or, without numbers, its first string changed)."""
    if isinstance(value, bool):
        return value, False
    if isinstance(value, int):
        return value + 1, True
    if isinstance(value, dict):
        for key in sorted(value):
            new, done = _bump_json(value[key])
            if done:
                return {**value, key: new}, True
    if isinstance(value, list):
        for i, item in enumerate(value):
            new, done = _bump_json(item)
            if done:
                return [*value[:i], new, *value[i + 1:]], True
    if isinstance(value, str) and value.isdigit():
        return str(int(value) * 10), True
    return value, False


def forged(table: str, column: str, value: Any, others: list[Any], officers: list[str]) -> Any:
    """A value for `column` that differs from `value` and that an attacker would hope the appliance believes:
    a genuine value from another row where there is one (a real signature over something else), otherwise the
    stored value minimally changed (so that its length and type still fit the column)."""
    if (table, column) in ALTERNATIVES:
        return next(v for v in ALTERNATIVES[table, column] if v != value)
    if column in NAMES:
        return next(o for o in officers if o != value)
    genuine = [o for o in others if o is not None and o != value]
    if value is None:
        return genuine[0] if genuine else 1
    if isinstance(value, bytes | memoryview):
        raw = bytes(value)
        return bytes([raw[0] ^ 1]) + raw[1:]
    if isinstance(value, int):
        return value - 3600 if column.endswith(("_at", "iat", "_ts")) or column.startswith("valid_") else value + 1
    text_value = str(value)
    if JWS.match(text_value):
        if genuine:
            return genuine[0]
        head, payload, signature = text_value.split(".")
        return ".".join((head, payload, _flip_hex(signature)))
    if text_value.startswith(("{", "[")):
        document, changed = _bump_json(json.loads(text_value))
        return canonical_json(document).decode() if changed else text_value + " "
    if re.fullmatch(r"0x[0-9a-fA-F]{40}", text_value):
        return ELSEWHERE
    if text_value.isdigit():
        return str(int(text_value) * 10)
    if HEX.match(text_value) or re.fullmatch(r"[0-9a-f-]{36}", text_value):
        return _flip_hex(text_value)
    if genuine:
        return genuine[0]
    return text_value[:-1] + ("x" if text_value[-1] != "x" else "y")


def candidates(table: str, column: str, value: Any, others: list[Any], officers: list[str]) -> list[Any]:
    """`forged`'s value first, then the others an attacker would try when a constraint refuses it."""
    out = [forged(table, column, value, others, officers), forged(table, column, value, [], officers)]
    out += [o for o in officers if column in NAMES] + [o for o in others if o is not None]
    numbers = [o for o in others if isinstance(o, int)]
    if numbers and (value is None or isinstance(value, int)):
        out.append(max(numbers) + 1)  # a value no other row holds (unique columns)
    unique: list[Any] = []
    for v in out:
        if v != value and v not in unique:
            unique.append(v)
    return unique


# -- the world each case runs in -----------------------------------------------------------------------------

@dataclass
class World:
    h: Harness
    attacker: Engine
    honest: set[str] = field(default_factory=set)  # digests the honest officers got to their quorum
    mint_digests: Counter[str] = field(default_factory=Counter)
    checkpoints: dict[int, set[str]] = field(default_factory=dict)
    attestations: dict[int, set[str]] = field(default_factory=dict)
    hsm_calls: int = 0
    signer_calls: int = 0
    statuses: list[tuple[str, int, Any]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # the attacker's statements the store refused
    registered: set[tuple[str, str]] = field(default_factory=set)  # (officer, public key) registered honestly

    def register_key(self, name: str) -> None:
        """`name` registers a security key in the console (it waits there for an enrolment quorum)."""
        console = registry.of(self.h.app_ctx).console
        key = SoftAuthenticator()
        _, challenge = console.registration_options(name)
        done = console.register(name, challenge, key.register(base64.urlsafe_b64decode(challenge + "==")), "key")
        self.registered.add((name, done["credential"]["public_key"]))

    def call(self, what: str, response: Any) -> Any:
        self.statuses.append((what, response.status_code, response.get_json(silent=True)))
        return response

    def sql(self, statement: str, **params: Any) -> list[Any]:
        with self.attacker.begin() as conn:
            result = conn.execute(text(statement), params)
            return list(result) if result.returns_rows else []

    def request(self, by: str) -> dict[str, Any] | None:
        response = self.call(f"request by {by}", self.h.request(by))
        return response.get_json() if response.status_code == 201 else None

    def approve(self, who: str, req: dict[str, Any]) -> Any:
        return self.call(f"{who} approves", self.h.approve(who.split()[0], req))

    def approve_what_is_shown(self, who: str, req: dict[str, Any]) -> None:
        """T1 + T2: an officer who trusts the server's view approves the digest it now shows, if that is not the
        digest of the request as it was created (the honest set keeps only the latter)."""
        shown = self.h.client.get(f"/v1/mint-requests/{req['id']}")
        view = shown.get_json(silent=True) or {}
        if shown.status_code == 200 and view.get("digest") not in (None, req["digest"]):
            self.approve(f"{who} (as shown)", {**req, "digest": view["digest"], "policy": view.get("policy")})

    def authorization(self, req: dict[str, Any]) -> Any:
        return self.call("authorization", self.h.client.get(f"/v1/mint-requests/{req['id']}/authorization"))

    def flow(self, by: str, approvers: tuple[str, str]) -> dict[str, Any] | None:
        req = self.request(by)
        if req is not None:
            self.approve(approvers[0], req)
            self.honest.add(req["digest"])
            self.approve(approvers[1], req)
            self.authorization(req)
        return req


@pytest.fixture
def world(request: pytest.FixtureRequest, backend: str) -> Iterator[World]:
    env = request.getfixturevalue("env" if backend == "sqlite" else "pg_env")
    h = harness(env.directory, env.summary)
    engine = create_engine(h.app_ctx.db.engine.url)
    w = World(h, engine)
    hsm = h.app_ctx.hsm
    raw_sign = hsm.sign

    def hsm_sign(spec: Any, data: bytes) -> bytes:
        w.hsm_calls += 1
        return raw_sign(spec, data)

    hsm.sign = hsm_sign  # type: ignore[method-assign]
    mint, audit, attestation = h.app_ctx.mint_signer, h.app_ctx.audit_signer, h.app_ctx.attestation_signer
    mint_sign, audit_sign, attestation_sign = mint.sign_eth_digest, audit.sign, attestation.sign

    def sign_mint(digest: bytes) -> bytes:
        signature = mint_sign(digest)
        w.signer_calls += 1
        w.mint_digests["0x" + digest.hex()] += 1
        return signature

    def sign_note(message: bytes) -> bytes:
        signature = audit_sign(message)
        w.signer_calls += 1
        lines = message.decode().split("\n")
        w.checkpoints.setdefault(int(lines[1]), set()).add(lines[2])
        return signature

    def sign_attestation(message: bytes) -> bytes:
        signature = attestation_sign(message)
        w.signer_calls += 1
        payload = json.loads(base64.urlsafe_b64decode(message.split(b".")[1] + b"=="))
        w.attestations.setdefault(int(payload["seq"]), set()).add(message.split(b".")[1].decode())
        return signature

    mint.sign_eth_digest = sign_mint  # type: ignore[method-assign]
    audit.sign = sign_note  # type: ignore[method-assign]
    attestation.sign = sign_attestation  # type: ignore[method-assign]
    yield w
    engine.dispose()
    del hsm.sign, mint.sign_eth_digest, audit.sign, attestation.sign


def _disable_bob(h: Harness) -> tuple[dict[str, Any], dict[str, Any]]:
    from tests.integration.test_policy_changes import tables as bundle_tables

    policy, operators = bundle_tables(h)
    for op in operators["operators"]:
        if op["name"] == "bob":
            op["enabled"] = False
    return policy, operators


def _attest(w: World, day: str) -> Any:
    from tests.integration.test_attestations import attest, inputs, later

    reserves, supply, _ = inputs(w.h)
    stamp = f"{day}T00:00:00Z"
    return w.call(f"attest {day}", attest(w.h, later(reserves, stamp), later(supply, stamp)))


def _targets(w: World, table: str, request_id: str, proposal_id: str | None) -> tuple[str, dict[str, Any]]:
    """The WHERE clause picking the rows this moment is about, and its parameters."""
    if table == "mint_requests":
        return "id = :rid", {"rid": request_id}
    if table in ("mint_approvals", "mint_authorizations"):
        return "request_id = :rid", {"rid": request_id}
    if table == "policy_bundles":
        if proposal_id:
            return "id = :pid", {"pid": proposal_id}
        return "status = 'active'", {}
    if table == "policy_approvals" and proposal_id:
        return "bundle_id = :pid", {"pid": proposal_id}
    newest = {"audit_entries": "idx", "audit_head": "id", "audit_checkpoints": "size", "seen_tokens": "seen_at",
              "policy_approvals": "created_at", "attestations": "seq", "webauthn_sign_counts": "updated_at",
              "webauthn_enrolments": "created_at"}[table]
    top = w.sql(f"SELECT MAX({newest}) FROM {table}")[0][0]
    return f"{newest} = :top", {"top": top}


def _tamper(w: World, table: str, edit: str, where: str, params: dict[str, Any]) -> bool:
    """Make the edit; False if the store itself refuses it (a constraint), which leaves nothing to test."""
    officers = ["alice", "bob", "carol", "dave"]
    columns = [c.name for c in tables.metadata.tables[table].columns]
    rows = w.sql(f"SELECT * FROM {table} WHERE {where}", **params)
    assert rows, f"no {table} row at this moment"
    try:
        if edit == "delete":  # with the rows that refer to them, as the foreign keys demand
            for child in tables.metadata.tables.values():
                for fk in child.foreign_keys:
                    if fk.column.table.name == table:
                        w.sql(f"DELETE FROM {child.name} WHERE {fk.parent.name} IN "
                              f"(SELECT {fk.column.name} FROM {table} WHERE {where})", **params)
            w.sql(f"DELETE FROM {table} WHERE {where}", **params)
            return True
        if edit == "insert":
            row = rows[0]._asdict()
            key = [c.name for c in tables.metadata.tables[table].columns if c.primary_key or c.unique]
            if table == "mint_approvals":
                key = ["operator"]  # the same signature, counted again under another officer's name
            others = {c: [r[0] for r in w.sql(f"SELECT {c} FROM {table}")] for c in key}
            options = {c: sorted(candidates(table, c, row[c], others[c], officers), key=lambda v, c=c: v in others[c])
                       for c in key}  # values no row holds first
            for attempt in range(max(len(o) for o in options.values())):
                copy = {**row, **{c: o[min(attempt, len(o) - 1)] for c, o in options.items()}}
                names = ", ".join(copy)
                if _try(w, f"INSERT INTO {table} ({names}) VALUES ({', '.join(':' + c for c in copy)})", copy):
                    return True
            return False
        column, _, coherent = edit.split(":", 1)[1].partition("+")
        assert column in columns
        if coherent:
            return _redirect(w, rows[0], column)
        others = [r[0] for r in w.sql(f"SELECT {column} FROM {table}")]
        keys = [c.name for c in tables.metadata.tables[table].primary_key.columns]
        match = " AND ".join(f"{k} = :k_{k}" for k in keys)
        for row in rows:
            where_row = {f"k_{k}": getattr(row, k) for k in keys}
            if not any(_try(w, f"UPDATE {table} SET {column} = :new WHERE {match}", {"new": new, **where_row})
                       for new in candidates(table, column, getattr(row, column), others, officers)):
                return False
        return True
    except SQLAlchemyError:
        return False


def _redirect(w: World, row: Any, column: str) -> bool:
    """Change one of a request's terms to what would profit the attacker and recompute its EIP-712 digest (and
    the reservation's copy of them), so that the stored row is consistent with itself, not with its JWS."""
    terms = row._asdict()
    allowlist = w.h.allowlist
    terms[column] = {
        "to_address": next(a for a in allowlist if a.lower() != str(row.to_address).lower()),
        "amount": str(int(row.amount) * 4),  # within the per-request maximum: only the requester's JWS says no
        "valid_after": int(row.valid_after) - 3600,
        "valid_before": int(row.valid_before) + 86400,
        "verifying_contract": ELSEWHERE,
        "chain_id": int(row.chain_id) + 1,
        "nonce": "0x" + "ab" * 32,
    }[column]
    s = w.h.app_ctx.settings
    terms["digest"] = digest_of(s, terms["chain_id"], terms["verifying_contract"], terms["to_address"],
                                terms["amount"], terms["nonce"], terms["valid_after"], terms["valid_before"])
    if not _try(w, f"UPDATE mint_requests SET {column} = :v, digest = :d WHERE id = :id",
                {"v": terms[column], "d": terms["digest"], "id": row.id}):
        return False
    shared = {c: terms[c] for c in ("nonce", "digest", "chain_id", "amount") if c in (column, "digest")}
    sets = ", ".join(f"{c} = :{c}" for c in shared)
    return _try(w, f"UPDATE mint_authorizations SET {sets} WHERE request_id = :id", {**shared, "id": row.id})


def _try(w: World, statement: str, params: dict[str, Any]) -> bool:
    try:
        w.sql(statement, **params)
        return True
    except SQLAlchemyError as exc:
        w.refused.append(str(exc.orig) if hasattr(exc, "orig") else str(exc))
        return False


def _check(w: World) -> None:
    fivehundreds = [(what, status, body) for what, status, body in w.statuses if status >= 500 and status != 503]
    assert not fivehundreds, fivehundreds
    for what, status, body in w.statuses:
        if status >= 400:
            assert body and str(body.get("type", "")).startswith("urn:appliance:problem:"), (what, status, body)
    assert w.hsm_calls == w.signer_calls, "something reached the HSM around the appliance's signers"
    unapproved = set(w.mint_digests) - w.honest
    assert not unapproved, f"the HSM signed a mint no honest quorum approved: {unapproved}"
    twice = [d for d, n in w.mint_digests.items() if n > 1]
    assert not twice, f"the HSM signed one mint twice: {twice}"
    try:
        waiting = registry.of(w.h.app_ctx).console.enrolments()
    except ApplianceError:
        waiting = []  # the appliance refuses to act on this store (a detected rollback): it offers nothing
    offered = {(e["operator"], e["credential"].public_key) for e in waiting}
    assert offered <= w.registered, f"the console offers a key nobody registered for enrolment: {offered}"
    forks = {size: roots for size, roots in w.checkpoints.items() if len(roots) > 1}
    assert not forks, f"two checkpoints of one size: {forks}"
    seqs = {seq: p for seq, p in w.attestations.items() if len(p) > 1}
    assert not seqs, f"two attestations of one seq: {sorted(seqs)}"


@pytest.mark.parametrize(("backend", "table", "moment", "edit"), list(cases()))
def test_a_database_writer_gets_no_signature_the_quorum_did_not_approve(world: World, backend: str, table: str,
                                                                       moment: str, edit: str) -> None:
    w, h = world, world.h
    if moment == "security-key":
        enrol_security_keys(h, ["bob", "carol"])  # their approvals are WebAuthn assertions from here on
    if moment == "enrolment":
        w.register_key("bob")  # the dev policy names the relying party; nobody has a key yet
    assert w.flow("alice", ("bob", "carol")) is not None  # an earlier, honest mint: rows for the attacker to reuse
    proposal_id = None
    if moment == "attested":
        assert _attest(w, "2026-01-01").status_code == 201
        assert _attest(w, "2026-01-02").status_code == 201
    if moment == "enacted":
        from tests.integration.test_policy_changes import enact
        from tests.integration.test_policy_changes import tables as bundle_tables

        policy, _ = bundle_tables(h)
        enact(h, {**policy, "name": "enacted"})
    if moment == "policy-change":
        from tests.integration.test_policy_changes import propose, vote

        proposal = propose(h, *_disable_bob(h)).get_json()
        proposal_id = proposal["id"]
        assert vote(h, proposal, "erin").status_code == 201
    req = w.request("alice")
    assert req is not None
    assert w.approve("bob", req).status_code == 201
    if moment in ("reserved", "signed"):
        w.honest.add(req["digest"])
        if moment == "reserved":
            with raising(h.app_ctx.hsm, "sign", HsmUnavailable("the HSM went away (simulated)")):
                assert w.approve("carol", req).status_code == 503
            assert w.sql("SELECT COUNT(*) FROM mint_authorizations WHERE request_id = :r AND signature IS NULL",
                         r=req["id"])[0][0] == 1
        else:
            assert w.approve("carol", req).status_code == 201
            assert w.authorization(req).status_code == 200

    where, params = _targets(w, table, req["id"], proposal_id)
    if not _tamper(w, table, edit, where, params):
        pytest.skip(f"the store's own constraints refuse {edit} on {table}: {w.refused[-1:]}")

    # the honest officers carry on
    bob_disabled = False
    if moment == "policy-change":
        from tests.integration.test_policy_changes import vote

        voted = w.call("frank votes", vote(h, proposal, "frank"))
        bob_disabled = voted.status_code == 201 and voted.get_json()["status"] == "active"
    if not bob_disabled:
        w.honest.add(req["digest"])  # bob and carol make the quorum
    w.approve("carol", req)
    for who in ("bob", "carol", "dave"):
        w.approve_what_is_shown(who, req)
    w.authorization(req)
    h.clock.advance(RECOVERY_AFTER_SECONDS + 1)
    w.authorization(req)
    assert not bob_disabled or req["digest"] not in w.mint_digests, "a disabled officer's approval counted"
    w.honest.add(req["digest"])  # with dave's, carol's makes a quorum under either policy
    w.approve("dave", req)
    w.authorization(req)
    w.flow("carol", ("alice", "dave"))
    if moment == "attested":
        _attest(w, "2026-01-03")
        _attest(w, "2026-01-02")
    w.call("checkpoint", h.client.get("/v1/audit/checkpoint"))
    _check(w)
