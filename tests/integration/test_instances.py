"""Invariant 3 across instances: separate OS processes, each with its own appliance context, share one store.

Each instance is a process started with the "spawn" method: it loads the same appliance.toml, builds its own
context (its own Database and engine, its own PKCS#11 session on the same SoftHSM2 token, opened in the child,
never inherited) and answers through its own Flask app. The instances are released together by a barrier, so the
store (PostgreSQL; SQLite for the gunicorn workers of one instance) is the only thing that can keep a nonce from
being signed twice: no in-process lock or group commit is shared between them.

Signatures are counted in each instance twice over: its `appliance_signatures_total{key="mint",outcome="ok"}`
and every call its Hsm object makes with the mint key's label (whatever the service code then does with it).
"""

from __future__ import annotations

import json
import multiprocessing
import time
import traceback
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from sqlalchemy import select

from appliance.errors import HsmUnavailable
from tests.helpers import Harness, harness, metric, raising

RECOVERY_OFFSET = 45  # seconds the instances' clocks run ahead: past RECOVERY_AFTER_SECONDS (30) of a reservation
HSM_LATENCY = 0.05  # seconds each mint-key signature takes in the instances
CHILD_TIMEOUT = 90  # seconds: spawning imports the whole stack; a hung instance fails the test, never hangs it

pytestmark = pytest.mark.slow  # several processes and instances per test



def mint_signatures() -> float:
    return metric("appliance_signatures_total", key="mint", outcome="ok")


# -- the instance: runs in a spawned process ----------------------------------------------------------------------

def _instance(config_path: str, clock_offset: float, rounds: list[tuple[str, str, str | None]],
              barrier: Any, results: Any, name: str) -> None:
    """One appliance instance: build a context from the config, warm up, then one call per round at the barrier."""
    try:
        from prometheus_client import REGISTRY

        from appliance import config
        from appliance.api import create_app
        from appliance.services import context

        settings = config.load(Path(config_path))
        app_ctx = context.build(settings, clock=lambda: time.time() + clock_offset)
        mint_label = app_ctx.mint_signer.spec.label
        hsm_calls = {"mint": 0}
        hsm_sign = app_ctx.hsm.sign

        def counting_sign(spec: Any, data: bytes) -> bytes:
            if spec.label == mint_label:
                hsm_calls["mint"] += 1
                time.sleep(HSM_LATENCY)  # a network HSM, not SoftHSM2's microseconds: widens any double-sign window
            return hsm_sign(spec, data)

        app_ctx.hsm.sign = counting_sign  # type: ignore[method-assign]
        from tests.helpers import reading
        from tests.served import reader

        client = reading(create_app(app_ctx)).test_client()
        client.reader = reader(Path(config_path).parent / "operators" / "grace.pem")  # type: ignore[attr-defined]
        # warm up before the race: PKCS#11 session and the mint key's public point, the engine's pool, the policy
        address = app_ctx.mint_signer.address
        assert client.get(f"/v1/mint-requests/{rounds[0][1]}").status_code == 200
        out = []
        for op, request_id, token in rounds:
            barrier.wait(timeout=CHILD_TIMEOUT)
            started = time.monotonic()
            if op == "approve":
                response = client.post(f"/v1/mint-requests/{request_id}/approvals", json={"jws": token})
            else:
                response = client.get(f"/v1/mint-requests/{request_id}/authorization")
            out.append({"op": op, "request": request_id, "status": response.status_code,
                        "mimetype": response.mimetype, "body": response.get_json(),
                        "started": started, "ended": time.monotonic()})
        signatures = REGISTRY.get_sample_value("appliance_signatures_total", {"key": "mint", "outcome": "ok"})
        results.put({"name": name, "address": address, "rounds": out, "signatures": signatures or 0.0,
                     "hsm_mint_signs": hsm_calls["mint"]})
    except BaseException:  # noqa: BLE001 - whatever went wrong reaches the test as text
        try:
            barrier.abort()
        finally:
            results.put({"name": name, "error": traceback.format_exc()})


def run_instances(config: Path, plans: dict[str, list[tuple[str, str, str | None]]],
                  clock_offset: float = 0.0) -> dict[str, dict[str, Any]]:
    """Start one spawned instance per plan, all released together at each round; their reports by name."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(len(plans))
    results = ctx.Queue()
    procs = [ctx.Process(target=_instance, args=(str(config), clock_offset, rounds, barrier, results, name),
                         name=f"appliance-{name}") for name, rounds in plans.items()]
    for p in procs:
        p.start()
    reports: dict[str, dict[str, Any]] = {}
    try:
        for _ in procs:
            report = results.get(timeout=CHILD_TIMEOUT)
            reports[report["name"]] = report
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join()
    errors = {name: r["error"] for name, r in reports.items() if "error" in r}
    assert not errors, "\n".join(f"instance {name}:\n{text}" for name, text in errors.items())
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    return reports


# -- the parent's view of the shared store -------------------------------------------------------------------------

def created(h: Harness, **kw: Any) -> dict[str, Any]:
    response = h.request(**kw)
    assert response.status_code == 201, response.get_json()
    return response.get_json()  # type: ignore[no-any-return]


def authorizations(h: Harness, request_id: str) -> list[Any]:
    from appliance.store.tables import mint_authorizations

    with h.app_ctx.db.engine.connect() as conn:
        return list(conn.execute(select(mint_authorizations)
                                 .where(mint_authorizations.c.request_id == request_id)).all())


def audit_actions(h: Harness, subject: str) -> list[str]:
    from appliance.store.tables import audit_entries

    with h.app_ctx.db.engine.connect() as conn:
        rows = conn.execute(select(audit_entries.c.entry).order_by(audit_entries.c.idx)).all()
    return [e["action"] for e in (json.loads(r.entry) for r in rows) if e["subject"] == subject]


def verified(authz: dict[str, Any]) -> bool:
    """eth-account (written by nobody on this team) recomputes the digest and recovers the signer."""
    signable = encode_typed_data(full_message=authz["typedData"])
    return bool(Account.recover_message(signable, signature=authz["signature"]) == authz["signer"])


def assert_signed_exactly_once(h: Harness, request_id: str) -> dict[str, Any]:
    """One reservation holding one signature, one "signed" audit entry, and it verifies; returns it."""
    rows = authorizations(h, request_id)
    assert len(rows) == 1 and rows[0].signature is not None, rows
    assert audit_actions(h, request_id).count("mint.authorization.signed") == 1, audit_actions(h, request_id)
    response = h.client.get(f"/v1/mint-requests/{request_id}/authorization")
    assert response.status_code == 200, response.get_json()
    authz = response.get_json()
    assert authz["signature"] == rows[0].signature and authz["digest"] == rows[0].digest
    assert verified(authz)
    assert h.client.get(f"/v1/mint-requests/{request_id}").get_json()["status"] == "authorized"
    return authz  # type: ignore[no-any-return]


def total_signatures(reports: dict[str, dict[str, Any]]) -> tuple[float, int]:
    return (sum(r["signatures"] for r in reports.values()), sum(r["hsm_mint_signs"] for r in reports.values()))


def stale_reservation(h: Harness) -> dict[str, Any]:
    """A request whose final approval reserved the nonce, then the HSM failed: an unsigned reservation."""
    req = created(h)
    assert h.approve("bob", req).status_code == 201
    with raising(h.app_ctx.mint_signer, "sign_eth_digest", HsmUnavailable("HSM sign failed: DeviceRemoved")):
        assert h.approve("carol", req).status_code == 503
    rows = authorizations(h, req["id"])
    assert len(rows) == 1 and rows[0].signature is None
    return req


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def shared(request: pytest.FixtureRequest) -> Harness:
    """The test's own instance (for set-up and checks) around a store the spawned instances share: PostgreSQL
    (several instances), or SQLite (the several worker processes of one instance)."""
    return request.getfixturevalue("h" if request.param == "sqlite" else "pg_h")  # type: ignore[no-any-return]


# -- 1. two instances race ---------------------------------------------------------------------------------------

RACES = 5


def test_two_instances_racing_final_approvals_and_recoveries_sign_each_nonce_once(shared: Harness) -> None:
    """Per request, carol's final approval goes to one instance and dave's to the other at the same moment; then
    both instances are asked at once to recover the same stale reservation. One HSM signature per request."""
    h = shared
    racing = [created(h) for _ in range(RACES)]
    for req in racing:
        assert h.approve("bob", req).status_code == 201  # the dev policy needs 2 (treasury or cfo) up to 1M tokens
        assert req["required"]["approvals"] == 2
    stale = [stale_reservation(h) for _ in range(3)]
    parent_before = mint_signatures()
    plans: dict[str, list[tuple[str, str, str | None]]] = {"one": [], "two": []}
    for req in racing:
        plans["one"].append(("approve", req["id"], h.approval("carol", req)))
        plans["two"].append(("approve", req["id"], h.approval("dave", req)))
    for req in stale:
        for rounds in plans.values():
            rounds.append(("authorization", req["id"], None))

    started = time.monotonic()
    reports = run_instances(h.directory / "appliance.toml", plans, clock_offset=RECOVERY_OFFSET)
    elapsed = time.monotonic() - started

    assert mint_signatures() == parent_before  # the test's own instance signed nothing
    assert {r["address"] for r in reports.values()} == {h.app_ctx.mint_signer.address}  # same key, same token
    signatures, hsm_signs = total_signatures(reports)
    assert (signatures, hsm_signs) == (RACES + len(stale), RACES + len(stale)), \
        {n: (r["signatures"], r["hsm_mint_signs"]) for n, r in reports.items()}
    for i, req in enumerate(racing):
        answers = [reports[n]["rounds"][i] for n in ("one", "two")]
        # both approvals are recorded; or one came after the other had already authorized the request (409)
        assert sorted(a["status"] for a in answers) in ([201, 201], [201, 409]), answers
        recorded = [a for a in answers if a["status"] == 201]
        assert any(a["body"]["authorization"] is not None for a in recorded), answers
        authz = assert_signed_exactly_once(h, req["id"])
        for a in recorded:  # whoever showed an authorization showed the one stored
            assert a["body"]["authorization"] in (None, authz)
        for a in answers:
            if a["status"] == 409:
                assert a["mimetype"] == "application/problem+json" and "authorized" in a["body"]["detail"]
        approvers = sorted(o["operator"] for o in h.client.get(f"/v1/mint-requests/{req['id']}").get_json()
                           ["approvals"])
        assert approvers in (["bob", "carol", "dave"], ["bob", "carol"], ["bob", "dave"]), approvers
    for j, req in enumerate(stale, start=RACES):
        answers = [reports[n]["rounds"][j] for n in ("one", "two")]
        assert sorted(a["status"] for a in answers) in ([200, 200], [200, 409]), answers
        for a in answers:
            assert a["mimetype"] == ("application/json" if a["status"] == 200 else "application/problem+json")
        authz = assert_signed_exactly_once(h, req["id"])
        assert all(a["body"] == authz for a in answers if a["status"] == 200)
        assert audit_actions(h, req["id"]).count("mint.authorization.recovered") == 1
    # the race was real: in some round both instances were inside their call at the same time
    overlapping = [i for i in range(RACES + len(stale))
                   if max(reports[n]["rounds"][i]["started"] for n in reports)
                   < min(reports[n]["rounds"][i]["ended"] for n in reports)]
    assert overlapping, "the two instances never overlapped: the race did not happen"
    assert elapsed < 60


# -- 2. restarts -------------------------------------------------------------------------------------------------

def test_a_restarted_instance_returns_the_stored_signature_without_signing_again(shared: Harness) -> None:
    """An instance reserves and signs; brand-new processes (fresh Database, fresh PKCS#11 session, as after a
    restart) asked for the same authorization return the stored signature and never call the HSM's mint key. One
    of them also finishes, exactly once, a reservation a crash left unsigned."""
    h = shared
    req = created(h)
    assert h.approve("bob", req).status_code == 201
    before = mint_signatures()
    signed = h.approve("carol", req).get_json()["authorization"]
    assert mint_signatures() - before == 1 and verified(signed)
    crashed = stale_reservation(h)  # reserved durably, then the instance lost its HSM before signing
    h.app_ctx.db.dispose()  # the first instance goes away
    h.app_ctx.hsm.close()

    first = run_instances(h.directory / "appliance.toml",
                          {"restarted": [("authorization", req["id"], None), ("authorization", crashed["id"], None),
                                         ("approve", req["id"], h.approval("dave", req))]},
                          clock_offset=RECOVERY_OFFSET)["restarted"]
    stored, recovered, late = first["rounds"]
    assert stored["status"] == 200 and stored["body"] == signed
    assert recovered["status"] == 200 and verified(recovered["body"])
    assert late["status"] == 409 and late["mimetype"] == "application/problem+json"  # already authorized
    assert (first["signatures"], first["hsm_mint_signs"]) == (1, 1)  # the crashed one only

    again = run_instances(h.directory / "appliance.toml",
                          {"restarted-again": [("authorization", req["id"], None),
                                               ("authorization", crashed["id"], None)]},
                          clock_offset=2 * RECOVERY_OFFSET)["restarted-again"]
    assert [r["status"] for r in again["rounds"]] == [200, 200]
    assert [r["body"] for r in again["rounds"]] == [signed, recovered["body"]]
    assert (again["signatures"], again["hsm_mint_signs"]) == (0, 0)

    fresh = harness(h.directory, h.summary)  # and a fresh context in this process
    assert assert_signed_exactly_once(fresh, req["id"]) == signed
    assert assert_signed_exactly_once(fresh, crashed["id"]) == recovered["body"]
    assert mint_signatures() - before == 1


# -- 3. one nonce, two requests ------------------------------------------------------------------------------------

def _second_request_with_the_same_nonce(h: Harness) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Request A authorized; then someone with the database gives request B (pending, same recipient, another
    amount) A's nonce, with the digest recomputed so the row is consistent. The first defence, the unique nonce
    of mint_requests, refuses that edit, so it is dropped first (a hand-made migration, or a hostile DBA). Officers
    review B as the service now shows it and bob approves it; carol's approval would complete the quorum."""
    from sqlalchemy import text, update

    from appliance.store.tables import mint_requests
    from tests.helpers import digest_of

    a = created(h)
    assert h.approve("bob", a).status_code == 201
    authz_a = h.approve("carol", a).get_json()["authorization"]
    assert authz_a is not None
    b = created(h, amount="123456789")
    with h.app_ctx.db.engine.begin() as conn:
        conn.execute(text("ALTER TABLE mint_requests DROP CONSTRAINT uq_mint_requests_nonce"))
        row = conn.execute(select(mint_requests).where(mint_requests.c.id == b["id"])).one()
        digest = digest_of(h.app_ctx.settings, row.chain_id, row.verifying_contract, row.to_address, row.amount,
                           a["nonce"], row.valid_after, row.valid_before)
        conn.execute(update(mint_requests).where(mint_requests.c.id == b["id"]).values(nonce=a["nonce"], digest=digest))
    b = h.client.get(f"/v1/mint-requests/{b['id']}").get_json()
    assert b["nonce"] == a["nonce"] and b["digest"] != a["digest"]  # same nonce, different payload
    assert h.approve("bob", b).status_code == 201
    return a, authz_a, b


@pytest.mark.postgres
def test_a_second_request_carrying_a_consumed_nonce_is_never_signed(pg_h: Harness) -> None:
    h = pg_h
    a, authz_a, b = _second_request_with_the_same_nonce(h)
    before = mint_signatures()
    final = h.approve("carol", b)  # B's quorum is met now
    assert final.status_code < 500, final.get_json()
    url = f"/v1/mint-requests/{b['id']}/authorization"
    for _ in range(3):  # asking again (and again) never signs, never fails with a 500
        response = h.client.get(url)
        assert 400 <= response.status_code < 500, response.get_json()
        assert response.mimetype == "application/problem+json"
        assert response.status_code == 409, response.get_json()
    assert mint_signatures() == before
    assert authorizations(h, b["id"]) == []
    assert "mint.authorization.signed" not in audit_actions(h, b["id"])
    shown = h.client.get(f"/v1/mint-requests/{b['id']}").get_json()
    assert shown["status"] != "authorized" and shown["authorization"] is None
    assert h.client.get(f"/v1/mint-requests/{a['id']}/authorization").get_json() == authz_a  # A is untouched
    # and a second instance, asked for B, does not sign it either
    other = run_instances(h.directory / "appliance.toml", {"other": [("authorization", b["id"], None)]})["other"]
    assert other["rounds"][0]["status"] == 409 and (other["signatures"], other["hsm_mint_signs"]) == (0, 0)


@pytest.mark.postgres
def test_the_final_approval_of_a_request_carrying_a_consumed_nonce_is_refused_409(pg_h: Harness) -> None:
    h = pg_h
    _a, _authz_a, b = _second_request_with_the_same_nonce(h)
    before = mint_signatures()
    final = h.approve("carol", b)
    assert mint_signatures() == before
    assert final.status_code == 409, (final.status_code, final.get_json())
    assert final.mimetype == "application/problem+json"
    assert "nonce" in final.get_json()["detail"]
    again = h.client.get(f"/v1/mint-requests/{b['id']}/authorization")  # and asking again says why, too
    assert again.status_code == 409 and "nonce" in again.get_json()["detail"]
    assert mint_signatures() == before
