"""The audit log as a transparency log: tampering is detected, signing fails closed, metrics are valid."""

from __future__ import annotations

import base64
import re
import shutil
import sqlite3
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from appliance.domain import checkpoint as notes
from appliance.domain import merkle
from appliance.domain.canonical import canonical_json
from appliance.errors import VerificationFailed
from appliance.verify import verify_log
from tests.conftest import ROOT
from tests.helpers import Harness, metric


class FlaskSource:
    """The auditor's view of the service, through the Flask test client instead of HTTP."""

    def __init__(self, h: Harness, canonical: bool = False) -> None:
        self.c = h.client
        self.format = "&format=canonical" if canonical else ""  # canonical: the exact texts, as the CLI reads

    def verifier_key(self) -> str:
        return self.c.get("/v1/audit/verifier-key").get_data(as_text=True).strip()

    def checkpoint(self) -> str:
        return self.c.get("/v1/audit/checkpoint").get_data(as_text=True)

    def audit_entries(self, start: int, end: int) -> list[dict[str, Any]]:
        return self.c.get(f"/v1/audit/entries?start={start}&end={end}{self.format}").get_json()["entries"]  # type: ignore[no-any-return]

    def consistency(self, old: int, new: int) -> dict[str, Any]:
        return self.c.get(f"/v1/audit/proof/consistency?old={old}&new={new}").get_json()  # type: ignore[no-any-return]

    def jwks(self) -> dict[str, Any]:
        return self.c.get("/.well-known/jwks.json").get_json()  # type: ignore[no-any-return]


def activity(h: Harness, mints: int = 2) -> None:
    """Some audited activity: requests, approvals, authorizations, then a signed checkpoint."""
    from appliance.services.audit import AuditLog

    for _ in range(mints):
        req = h.request().get_json()
        h.approve("bob", req)
        h.approve("carol", req)
    AuditLog(h.app_ctx).checkpoint()


def db(h: Harness) -> sqlite3.Connection:
    url = h.app_ctx.settings.storage_url
    return sqlite3.connect(url[len("sqlite:///"):])


def verified_state(h: Harness) -> dict[str, Any]:
    activity(h)
    state, _ = verify_log(FlaskSource(h), {})
    return state


def test_checkpoint_is_a_signed_note_over_the_entries(h: Harness) -> None:
    activity(h)
    note = h.client.get("/v1/audit/checkpoint")
    assert note.mimetype == "text/plain"
    key = notes.parse_verifier_key(h.client.get("/v1/audit/verifier-key").get_data(as_text=True))
    cp = notes.open_checkpoint(note.get_data(as_text=True), [key])
    assert cp.origin == h.app_ctx.settings.audit_origin
    entries = h.client.get(f"/v1/audit/entries?start=0&end={cp.size}").get_json()["entries"]
    assert merkle.root([merkle.leaf_hash(canonical_json(e)) for e in entries]) == cp.root
    actions = [e["action"] for e in entries]
    assert "mint.authorization.reserved" in actions
    assert actions.index("mint.authorization.reserved") < actions.index("mint.authorization.signed")


def test_inclusion_and_consistency_proofs_verify(h: Harness) -> None:
    activity(h)
    size = int(h.client.get("/v1/audit/checkpoint").get_data(as_text=True).split("\n")[1])
    entries = h.client.get(f"/v1/audit/entries?start=0&end={size}").get_json()["entries"]
    for index in range(size):
        p = h.client.get(f"/v1/audit/proof/inclusion?index={index}&size={size}").get_json()
        merkle.verify_inclusion(merkle.leaf_hash(canonical_json(entries[index])), index, size,
                                [base64.b64decode(x) for x in p["proof"]], base64.b64decode(p["root"]))
    for old in range(1, size + 1):
        p = h.client.get(f"/v1/audit/proof/consistency?old={old}&new={size}").get_json()
        merkle.verify_consistency(old, size, base64.b64decode(p["old_root"]), base64.b64decode(p["new_root"]),
                                  [base64.b64decode(x) for x in p["proof"]])


def test_proofs_stay_right_as_the_log_grows_and_after_it_is_rewritten(h: Harness) -> None:
    """Proofs come from a per-process copy of the leaves with remembered subtrees: it must follow new entries,
    and rows rewritten behind it (a restored or tampered database) must not leave it serving the old tree."""
    from appliance.services.audit import AuditLog

    log = AuditLog(h.app_ctx)

    def check(size: int) -> None:
        entries = h.client.get(f"/v1/audit/entries?start=0&end={size}").get_json()["entries"]
        leaves = [merkle.leaf_hash(canonical_json(e)) for e in entries]
        for index in (0, size // 2, size - 1):
            p = h.client.get(f"/v1/audit/proof/inclusion?index={index}&size={size}").get_json()
            assert base64.b64decode(p["root"]) == merkle.root(leaves)
            merkle.verify_inclusion(leaves[index], index, size, [base64.b64decode(x) for x in p["proof"]],
                                    merkle.root(leaves))

    for mints in (1, 2, 3):
        activity(h, mints)
        check(log.head().size)
    size = log.head().size
    with db(h) as conn:  # rewrite one leaf hash and the head to match, as a restore from another copy would
        conn.execute("UPDATE audit_entries SET leaf_hash = ? WHERE idx = 1", (merkle.leaf_hash(b"other"),))
        leaves = [bytes(r[0]) for r in conn.execute("SELECT leaf_hash FROM audit_entries ORDER BY idx")]
        conn.execute("UPDATE audit_head SET root = ?", (merkle.root(leaves),))
    # leaves are computed from the entries' text, never read: the stored head no longer matches them
    r = h.client.get(f"/v1/audit/proof/inclusion?index=1&size={size}")
    assert r.status_code == 503 and r.get_json()["type"].endswith(":audit-log-inconsistent")
    with db(h) as conn:  # now rewrite an entry's text itself, with its leaf and the head recomputed
        text = conn.execute("SELECT entry FROM audit_entries WHERE idx = 1").fetchone()[0]
        forged = text.replace('"actor":"', '"actor":"x', 1)
        conn.execute("UPDATE audit_entries SET entry = ?, leaf_hash = ? WHERE idx = 1",
                     (forged, merkle.leaf_hash(forged.encode())))
        leaves = [merkle.leaf_hash(r[0].encode()) for r in conn.execute("SELECT entry FROM audit_entries ORDER BY idx")]
        conn.execute("UPDATE audit_head SET root = ?", (merkle.root(leaves),))
    # consistent in itself, but not with the checkpoint the token vouches for: a detected rewrite
    r = h.client.get(f"/v1/audit/proof/inclusion?index=1&size={size}")
    assert r.status_code == 503 and r.get_json()["type"].endswith(":rollback-detected")


def test_bad_proof_queries_get_4xx(h: Harness) -> None:
    c = h.client
    assert c.get("/v1/audit/proof/inclusion?index=5&size=2").status_code == 400
    assert c.get("/v1/audit/proof/inclusion?index=0&size=99999").status_code == 404
    assert c.get("/v1/audit/proof/consistency?old=3&new=1").status_code == 400
    assert c.get("/v1/audit/proof/inclusion?index=-1&size=2").status_code == 400
    assert c.get("/v1/audit/proof/inclusion?index=x&size=2").status_code == 400
    assert c.get("/v1/audit/entries?start=0&end=100000").status_code == 400


def test_a_clean_log_verifies_and_stays_consistent(h: Harness) -> None:
    state = verified_state(h)
    activity(h, 1)
    new_state, remarks = verify_log(FlaskSource(h), state)
    assert new_state["size"] > state["size"]
    assert any("consistent" in r for r in remarks)


def _expect_divergence(h: Harness, state: dict[str, Any], index: int) -> None:
    for canonical in (False, True):  # entry objects, and the exact canonical texts `audit verify` fetches
        with pytest.raises(VerificationFailed, match=f"at entry {index}"):
            verify_log(FlaskSource(h, canonical), state)


def test_edited_entry_is_detected_at_its_index(h: Harness) -> None:
    state = verified_state(h)
    with db(h) as conn:
        conn.execute("UPDATE audit_entries SET entry = replace(entry, '250000000000', '950000000000') "
                     "WHERE action = 'mint.requested' AND idx = (SELECT min(idx) FROM audit_entries "
                     "WHERE action = 'mint.requested')")
        index = conn.execute("SELECT min(idx) FROM audit_entries WHERE action = 'mint.requested'").fetchone()[0]
    _expect_divergence(h, state, index)


def test_deleted_entry_is_detected(h: Harness) -> None:
    state = verified_state(h)
    with db(h) as conn:
        conn.execute("DELETE FROM audit_entries WHERE idx = 3")
    _expect_divergence(h, state, 3)
    # and the service itself refuses to serve proofs from entries that no longer give its head (503, not 400)
    response = h.client.get(f"/v1/audit/proof/inclusion?index=0&size={state['size']}")
    assert response.status_code == 503 and "audit-log-inconsistent" in response.get_json()["type"]


def test_swapped_entries_are_detected(h: Harness) -> None:
    state = verified_state(h)
    with db(h) as conn:
        a = conn.execute("SELECT entry FROM audit_entries WHERE idx = 4").fetchone()[0]
        b = conn.execute("SELECT entry FROM audit_entries WHERE idx = 6").fetchone()[0]
        conn.execute("UPDATE audit_entries SET entry = ? WHERE idx = 4", (b,))
        conn.execute("UPDATE audit_entries SET entry = ? WHERE idx = 6", (a,))
    _expect_divergence(h, state, 4)


def test_truncated_and_reappended_log_is_detected(h: Harness) -> None:
    from appliance.domain.merkle import CompactRange

    state = verified_state(h)
    keep = state["size"] - 3
    with db(h) as conn:  # an insider with the database rolls the log back and rebuilds the head
        conn.execute("DELETE FROM audit_entries WHERE idx >= ?", (keep,))
        conn.execute("DELETE FROM audit_checkpoints")
        leaves = [bytes(r[0]) for r in conn.execute("SELECT leaf_hash FROM audit_entries ORDER BY idx")]
        compact = CompactRange.empty()
        for leaf in leaves:
            compact = compact.append(leaf)
        conn.execute("UPDATE audit_head SET size = ?, compact = ?, root = ?",
                     (compact.size, compact.encode(), compact.root()))
    from appliance.domain.heads import RollbackDetected
    from appliance.services.audit import AuditLog

    signatures = metric("appliance_signatures_total", key="mint", outcome="ok")
    refused = h.request()  # the appliance reads the log it checks every mint against, and sees it shortened
    assert refused.status_code == 503 and refused.get_json()["type"].endswith(":rollback-detected")
    assert metric("appliance_signatures_total", key="mint", outcome="ok") == signatures
    with pytest.raises(RollbackDetected):
        AuditLog(h.app_ctx).checkpoint()  # the token vouches for the longer log: no checkpoint of this one
    note = FlaskSource(h).checkpoint()  # what is served is still the checkpoint of the log the token vouches for
    assert note.splitlines()[1] == str(h.app_ctx.token.require().checkpoint.size)  # type: ignore[union-attr]
    assert int(note.splitlines()[1]) >= state["size"]


def test_a_whole_different_but_consistent_log_is_detected(h: Harness, tmp_path: Path) -> None:
    state = verified_state(h)
    state_without_leaves = {k: v for k, v in state.items() if k != "leaves"}
    with db(h) as conn:  # replace every entry with a fabricated history and rebuild the head
        conn.execute("DELETE FROM audit_entries")
        conn.execute("DELETE FROM audit_checkpoints")
        conn.execute("UPDATE audit_head SET size = 0, compact = '0:', root = ?", (merkle.EMPTY_ROOT,))
    from appliance.services.audit import AuditLog

    log = AuditLog(h.app_ctx)
    for i in range(state["size"] + 2):
        log.record_standalone(actor="forger", action="fabricated", subject=str(i), details={}, policy_hash=None)
    from appliance.domain.heads import RollbackDetected
    with pytest.raises(RollbackDetected):  # self-consistent, but not an extension of what the token vouches for
        log.checkpoint()
    _expect_divergence(h, state, 0)
    with pytest.raises(VerificationFailed):  # an auditor who kept only the checkpoint
        verify_log(FlaskSource(h), state_without_leaves)


def test_first_use_trusts_only_the_audit_key_the_jwks_publishes(h: Harness) -> None:
    activity(h, 1)

    class Impostor(FlaskSource):
        def jwks(self) -> dict[str, Any]:  # the JWKS without the audit key: the verifier key is unvouched for
            keys = super().jwks()["keys"]
            return {"keys": [k for k in keys if k.get("purpose") != "audit"]}

    with pytest.raises(VerificationFailed, match="published in the JWKS"):
        verify_log(Impostor(h), {})
    _, remarks = verify_log(FlaskSource(h), {})
    assert any("matches the service's own JWKS" in r for r in remarks)
    given = FlaskSource(h).jwks()  # what a regulator obtained out of band: it is what counts when given
    _, remarks = verify_log(Impostor(h), {}, jwks=given)
    assert any("matches the JWKS given" in r for r in remarks)
    other = {"keys": [{**k, "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"} if k.get("purpose") == "audit"
                      else k for k in given["keys"]]}
    with pytest.raises(VerificationFailed, match="published in the JWKS"):
        verify_log(FlaskSource(h), {}, jwks=other)


def test_a_checkpoint_signed_by_another_key_is_refused(h: Harness) -> None:
    state = verified_state(h)
    from cryptography.hazmat.primitives.asymmetric import ed25519

    other = ed25519.Ed25519PrivateKey.generate()
    from cryptography.hazmat.primitives import serialization

    pub = other.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    with pytest.raises(VerificationFailed):
        verify_log(FlaskSource(h), state, key=notes.verifier_key(h.app_ctx.settings.audit_origin, pub))


# -- fail closed ---------------------------------------------------------------------------------------------------

def hold_write_lock(h: Harness) -> tuple[threading.Event, threading.Thread]:
    """Another process's transaction holding the SQLite write lock (a stuck writer, a backup, an attacker)."""
    release, held = threading.Event(), threading.Event()

    def holder() -> None:
        conn = db(h)
        conn.isolation_level = None
        conn.execute("BEGIN EXCLUSIVE")
        held.set()
        release.wait(60)
        conn.execute("ROLLBACK")
        conn.close()

    thread = threading.Thread(target=holder)
    thread.start()
    held.wait(5)
    return release, thread


def awaiting_final_approval(h: Harness, count: int) -> tuple[list[dict[str, Any]], list[str]]:
    """`count` requests approved by bob, and carol's final approval of each, signed but not sent."""
    requests = []
    for _ in range(count):
        req = h.request().get_json()
        assert h.approve("bob", req).status_code == 201
        requests.append(req)
    return requests, [h.approval("carol", r) for r in requests]


@pytest.mark.slow
def test_unwritable_audit_store_signs_nothing(h: Harness) -> None:
    h.app_ctx.db.timeout = 0.05  # the configured bound on any wait for the store (default 5 s)
    requests, final = awaiting_final_approval(h, 100)
    before_sig = metric("appliance_signatures_total", key="mint", outcome="ok")
    before_fail = metric("appliance_audit_write_failures_total", operation="mint-approval")
    release, thread = hold_write_lock(h)
    try:
        statuses, slowest = [], 0.0
        for req, jws in zip(requests, final, strict=True):
            started = time.perf_counter()
            response = h.client.post(f"/v1/mint-requests/{req['id']}/approvals", json={"jws": jws})
            slowest = max(slowest, time.perf_counter() - started)
            statuses.append(response.status_code)
            assert response.mimetype == "application/problem+json"
        assert h.client.get("/readyz").status_code == 503
    finally:
        release.set()
        thread.join()
    assert statuses == [503] * 100
    assert slowest < 2.0
    assert metric("appliance_signatures_total", key="mint", outcome="ok") == before_sig
    assert metric("appliance_audit_write_failures_total", operation="mint-approval") - before_fail == 100
    # once the store is writable again, the same approvals go through and sign exactly once each
    assert h.client.post(f"/v1/mint-requests/{requests[0]['id']}/approvals",
                         json={"jws": final[0]}).get_json()["status"] == "authorized"


@pytest.mark.parametrize("broken", ["read-only file", "database down"])
def test_a_read_only_or_unreachable_store_signs_nothing(h: Harness, broken: str) -> None:
    """Not only a held lock: a store opened read-only, or one that cannot be reached at all, fails closed too."""
    from appliance import metrics as app_metrics
    from appliance.store.db import Database

    requests, final = awaiting_final_approval(h, 20)
    path = h.app_ctx.settings.storage_url.removeprefix("sqlite:///")
    url = (f"sqlite:///file:{path}?mode=ro&uri=true" if broken == "read-only file"
           else "postgresql://postgres@127.0.0.1:9/unreachable")  # nothing listens on the discard port
    working, failing = h.app_ctx.db, Database(url, timeout_seconds=0.5)
    failing.on_failure = lambda operation: app_metrics.AUDIT_WRITE_FAILURES.labels(operation).inc()
    before_sig = metric("appliance_signatures_total", key="mint", outcome="ok")
    before_fail = metric("appliance_audit_write_failures_total", operation="mint-approval")
    h.app_ctx.db = failing
    try:
        responses = [h.client.post(f"/v1/mint-requests/{req['id']}/approvals", json={"jws": jws})
                     for req, jws in zip(requests, final, strict=True)]
        assert h.client.get("/readyz").status_code == 503
    finally:
        h.app_ctx.db = working
        failing.dispose()
    assert [r.status_code for r in responses] == [503] * 20
    assert all(r.mimetype == "application/problem+json" for r in responses)
    assert metric("appliance_signatures_total", key="mint", outcome="ok") == before_sig
    assert metric("appliance_audit_write_failures_total", operation="mint-approval") - before_fail == 20
    with h.app_ctx.db.read() as conn:  # nothing of it reached the store
        assert conn.exec_driver_sql("SELECT count(*) FROM mint_authorizations").scalar() == 0
    assert h.client.post(f"/v1/mint-requests/{requests[0]['id']}/approvals",
                         json={"jws": final[0]}).get_json()["status"] == "authorized"


def test_unwritable_store_signs_no_attestation(h: Harness) -> None:
    """The attestation's reservation (seq, prev, audit entry) is the first write: it fails, nothing is signed."""
    import json as _json

    from appliance.services import auth

    reports = h.directory / "reports"
    body = {"reserves": h.report(_json.loads((reports / "reserves.json").read_text())),
            "supply": _json.loads((reports / "supply.json").read_text()), "holders_csv": None}
    h.app_ctx.db.timeout = 0.05
    before_sig = metric("appliance_signatures_total", key="attestation", outcome="ok")
    before_fail = metric("appliance_audit_write_failures_total", operation="attestation-reserve")
    release, thread = hold_write_lock(h)
    try:
        statuses = [h.client.post("/v1/attestations", json={
            "jws": h.jws("grace", auth.TYP_ATTESTATION_REQUEST, body)}).status_code for _ in range(5)]
    finally:
        release.set()
        thread.join()
    assert statuses == [503] * 5
    assert metric("appliance_signatures_total", key="attestation", outcome="ok") == before_sig
    assert metric("appliance_audit_write_failures_total", operation="attestation-reserve") - before_fail == 5
    assert h.client.get("/v1/attestations/latest").status_code == 404
    ok = h.client.post("/v1/attestations", json={"jws": h.jws("grace", auth.TYP_ATTESTATION_REQUEST, body)})
    assert ok.status_code == 201 and ok.get_json()["seq"] == 1


def test_reservation_is_durable_before_the_hsm_signs(h: Harness) -> None:
    """The audit entry of the reservation exists, committed, in another connection before signing."""
    req = h.request().get_json()
    h.approve("bob", req)
    seen: list[list[str]] = []
    signer = h.app_ctx.mint_signer
    original = signer.sign_eth_digest

    def observing(digest: bytes) -> bytes:
        with db(h) as conn:  # a separate connection sees only committed data
            seen.append([r[0] for r in conn.execute("SELECT action FROM audit_entries ORDER BY idx")])
            assert conn.execute("SELECT count(*) FROM mint_authorizations WHERE request_id = ?",
                                (req["id"],)).fetchone()[0] == 1
        return original(digest)

    signer.sign_eth_digest = observing  # type: ignore[method-assign]
    try:
        assert h.approve("carol", req).get_json()["status"] == "authorized"
    finally:
        signer.sign_eth_digest = original  # type: ignore[method-assign]
    assert seen and seen[0][-1] == "mint.authorization.reserved"


# -- metrics --------------------------------------------------------------------------------------------------------

def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is missing: `make test` installs Debian's prometheus package")
    return path


def test_metrics_pass_promtool_and_show_activity(h: Harness) -> None:
    activity(h, 1)
    response = h.client.get("/metrics")
    text = response.get_data(as_text=True)
    result = subprocess.run([promtool(), "check", "metrics"], input=text, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    for name in ("appliance_mint_authorizations_total", "appliance_signatures_total", "appliance_hsm_up",
                 "appliance_audit_entries", "appliance_audit_checkpoint_size", "appliance_policy_info",
                 "appliance_http_requests_total", "appliance_hsm_operation_seconds_bucket",
                 "appliance_mint_requests_pending"):
        assert name in text, name
    assert 'route="/v1/mint-requests/<request_id>/approvals"' in text  # bounded: the rule, never the id


def test_http_metric_labels_stay_bounded_for_invented_methods(h: Harness) -> None:
    for method in ("FOO1", "BAR2", "X" * 100):
        assert h.client.open("/healthz", method=method).status_code == 405
    text = h.client.get("/metrics").get_data(as_text=True)
    assert "FOO1" not in text and "BAR2" not in text and "X" * 100 not in text
    assert 'method="other"' in text


def test_alert_rules_pass_promtool() -> None:
    rules = ROOT / "firmware-config" / "prometheus" / "alerts.yml"
    result = subprocess.run([promtool(), "check", "rules", str(rules)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("damage", [
    {"size": "x"}, {"size": -1}, {"root": "***"}, {"root": "AAAA"}, {"leaves": "AAAA"}, {"verifier_key": 7},
    {"verifier_key": "not a key"},
])
def test_a_damaged_state_file_is_named_not_a_traceback(h: Harness, damage: dict[str, Any]) -> None:
    from appliance.errors import InvalidInput

    state = verified_state(h)
    with pytest.raises(InvalidInput, match="damaged"):
        verify_log(FlaskSource(h), {**state, **damage})


def test_the_cli_reports_a_damaged_state_file(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from appliance.cli import cli

    state = tmp_path / "state.json"
    state.write_text('{"size": "twelve"}')
    out = CliRunner().invoke(cli, ["--url", "http://127.0.0.1:9", "audit", "verify", "--state", str(state)])
    assert out.exit_code == 1 and "damaged" in out.output and "Traceback" not in out.output


def test_every_entry_after_the_first_policy_names_the_policy_in_force(h: Harness) -> None:
    from appliance.services import lifecycle
    from appliance.services.audit import AuditLog

    activity(h, 1)
    lifecycle.on_start(h.app_ctx)
    forged = h.jws("bob", "mint-request+jws", {"to": "x"}).rsplit(".", 1)[0] + ".AAAA"
    assert h.client.post("/v1/mint-requests", json={"jws": forged}).status_code == 401
    active = h.client.get("/v1/policy").get_json()["active"]["hash"]
    size = AuditLog(h.app_ctx).head().size
    entries = h.client.get(f"/v1/audit/entries?start=0&end={size}").get_json()["entries"]
    pinned = next(i for i, e in enumerate(entries) if e["action"] == "policy.pinned")
    assert all(e["policy"] is not None for e in entries[pinned:]), [e["action"] for e in entries[pinned:]
                                                                     if e["policy"] is None]
    by_action = {e["action"]: e for e in entries}
    assert by_action["service.start"]["policy"] == active
    assert by_action["auth.failed"]["policy"] == active


@pytest.mark.slow
def test_an_unreachable_hsm_fails_readiness_and_signing_then_recovers(h: Harness) -> None:
    """The token disappears (real SoftHSM, wrong label after the session is dropped): /readyz and hsm_up say
    so, a final approval gets 503 with nothing signed or stored; when the token is back the service recovers."""
    hsm = h.app_ctx.hsm
    label = hsm._token_label  # noqa: SLF001 - make the real token unreachable, no mock
    req = h.request().get_json()
    h.approve("bob", req)
    before = metric("appliance_signatures_total", key="mint", outcome="ok")
    hsm.close()
    hsm._token_label = "no-such-token"  # noqa: SLF001
    try:
        assert h.client.get("/readyz").status_code == 503
        assert "appliance_hsm_up 0.0" in h.client.get("/metrics").get_data(as_text=True)
        approval = h.approval("carol", req)
        response = h.client.post(f"/v1/mint-requests/{req['id']}/approvals", json={"jws": approval})
        assert response.status_code == 503 and response.mimetype == "application/problem+json"
    finally:
        hsm._token_label = label  # noqa: SLF001
    from appliance.services.audit import AuditLog

    size = AuditLog(h.app_ctx).head().size
    entries = h.client.get(f"/v1/audit/entries?start=0&end={size}").get_json()["entries"]
    assert any(e["action"] == "service.misconfigured" and "no-such-token" in e["details"]["reason"] for e in entries)
    assert metric("appliance_signatures_total", key="mint", outcome="ok") == before
    assert h.client.get("/readyz").status_code == 200
    assert "appliance_hsm_up 1.0" in h.client.get("/metrics").get_data(as_text=True)
    # Without the token's heads the approval could not be checked against the verified history: it was refused
    # whole (503, nothing stored), so the officer sends the same approval again
    assert h.client.get(f"/v1/mint-requests/{req['id']}/authorization").status_code == 409
    again = h.client.post(f"/v1/mint-requests/{req['id']}/approvals", json={"jws": approval})
    assert again.status_code == 201 and again.get_json()["authorization"]["signature"], again.get_json()
    assert metric("appliance_signatures_total", key="mint", outcome="ok") == before + 1


def test_a_checkpoint_covering_it_is_signed_after_every_signature(h: Harness) -> None:
    from appliance.services.audit import AuditLog

    req = h.request().get_json()
    h.approve("bob", req)
    assert h.approve("carol", req).get_json()["status"] == "authorized"
    log = AuditLog(h.app_ctx)
    cp = notes.open_checkpoint(h.client.get("/v1/audit/checkpoint").get_data(as_text=True), [log.verifier()])
    assert cp.size == log.head().size  # the authorization's own entries are covered at once


def test_a_flood_of_forged_signatures_cannot_grow_the_log_faster_than_its_limit(h: Harness) -> None:
    """Without any key: 300 forged mint requests with 4 KB of the caller's text in the URL. At most the burst
    reaches the durable log, each naming the route (never the caller's path) and a bounded reason; the rest are
    counted, and the next entry allowed says how many it stands for."""
    from appliance.api.problems import FAILURE_AUDIT_BURST
    from appliance.domain.rate import TokenBucket
    from appliance.services.audit import AuditLog

    forged = h.jws("bob", "mint-request+jws", {"x": 1}).rsplit(".", 1)[0] + ".AAAA"
    log = AuditLog(h.app_ctx)
    before = log.head().size
    suppressed = metric("appliance_audit_suppressed_total", action="auth.failed")
    for i in range(300):  # from many addresses: one address is locked out after a few (test_rate_limits.py)
        assert h.client.post("/v1/mint-requests?" + "a" * 4096, json={"jws": forged},
                             environ_base={"REMOTE_ADDR": f"10.0.{i // 200}.{i % 200}"}).status_code == 401
    entries = h.client.get(f"/v1/audit/entries?start={before}&end={log.head().size}").get_json()["entries"]
    failed = [e for e in entries if e["action"] == "auth.failed"]
    assert 1 <= len(failed) <= FAILURE_AUDIT_BURST + 5  # the burst, and what the rate refilled meanwhile
    assert {e["subject"] for e in failed} == {"/v1/mint-requests"}
    assert all(len(canonical_json(e)) < 1024 for e in failed)
    limiter = h.flask.extensions["failure_audit"]["auth.failed"]
    counted = sum(e["details"].get("suppressed_before", 0) for e in failed) + limiter.suppressed
    assert counted == 300 - len(failed)  # every other refusal counted, none lost
    assert metric("appliance_audit_suppressed_total", action="auth.failed") - suppressed == counted
    missed = limiter.suppressed
    h.flask.extensions["failure_audit"]["auth.failed"].bucket = TokenBucket(1, 1)  # time passes: the budget is back
    assert h.client.post("/v1/mint-requests", json={"jws": forged}).status_code == 401
    last = h.client.get(f"/v1/audit/entries?start={log.head().size - 1}&end={log.head().size}").get_json()
    assert last["entries"][0]["details"]["suppressed_before"] == missed


def test_a_probe_flood_costs_at_most_one_store_write_per_second(h: Harness) -> None:
    """/readyz and /metrics each try a durable write; anyone can call them, so a process runs each at most once a
    second and answers the rest with that result."""
    from appliance.domain.rate import Recent

    writes: list[float] = []
    ping = h.app_ctx.db.ping

    def counted(fn: Any) -> Any:
        writes.append(time.monotonic())
        return ping(fn)

    h.app_ctx.db.ping = counted  # type: ignore[method-assign]
    try:
        started = time.monotonic()
        for _ in range(100):
            assert h.client.get("/readyz").status_code == 200
            assert h.client.get("/metrics").status_code == 200
        elapsed = time.monotonic() - started
    finally:
        del h.app_ctx.db.ping
    assert 2 <= len(writes) <= 2 * (2 + int(elapsed)), (len(writes), elapsed)  # one per probe, per second

    ticks = iter([0.0, 0.5, 0.99, 1.0, 1.2, 0.3, 0.4])  # a clock that goes back recomputes too
    recent: Recent[int] = Recent(1.0, clock=lambda: next(ticks))
    calls = iter(range(100))
    assert [recent.get(lambda: next(calls)) for _ in range(6)] == [0, 0, 0, 1, 1, 2]
    recent.forget()
    assert recent.get(lambda: 99) == 99


def test_a_flood_of_forged_signatures_does_not_use_up_the_budget_of_hsm_errors(h: Harness) -> None:
    from appliance.errors import HsmUnavailable
    from appliance.services.audit import AuditLog
    from tests.helpers import raising

    forged = h.jws("bob", "mint-request+jws", {"x": 1}).rsplit(".", 1)[0] + ".AAAA"
    for i in range(60):
        h.client.post("/v1/mint-requests", json={"jws": forged}, environ_base={"REMOTE_ADDR": f"10.1.0.{i}"})
    log = AuditLog(h.app_ctx)
    before = log.head().size
    with raising(h.app_ctx.hsm, "sign", HsmUnavailable("the HSM went away (simulated)")):
        response = h.client.post("/v1/attestations", json={"jws": forged})
    assert response.status_code in (401, 503)
    req = h.request("alice").get_json()
    h.approve("bob", req)
    with raising(h.app_ctx.hsm, "sign", HsmUnavailable("the HSM went away (simulated)")):
        assert h.approve("carol", req).status_code == 503
    entries = h.client.get(f"/v1/audit/entries?start={before}&end={log.head().size}").get_json()["entries"]
    assert "hsm.error" in [e["action"] for e in entries]


def test_the_openapi_document_describes_every_route_of_the_api(h: Harness) -> None:
    """Every route of the JSON API (the console is HTML for people, not the API) with each of its methods."""
    document = h.client.get("/openapi.json").get_json()
    paths = document["paths"]
    for rule in h.flask.url_map.iter_rules():
        if rule.endpoint.startswith(("console.", "static")):
            continue
        path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", lambda m: "{" + ("id" if m[1].endswith("_id") else m[1]) + "}",
                      rule.rule)
        assert path in paths, f"{rule.rule} is not in /openapi.json"
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            operation = paths[path].get(method.lower())
            assert operation is not None, f"{method} {rule.rule} is not in /openapi.json"
            if method == "POST":
                assert operation["requestBody"]["content"]["application/json"]["schema"] == {
                    "$ref": "#/components/schemas/Signed"}
                assert "429" in operation["responses"]
