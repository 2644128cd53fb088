"""The database writer against `appliance serve` (gunicorn workers, SQLite file), as issue 10's review tried it:
edit the real file under the running service with sqlite3, then use the CLI and the HTTP API as officers do.
Signatures are counted with the service's own Prometheus counter, summed across its workers."""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from appliance import config
from appliance.operator import load_key, sign_request
from appliance.services import auth
from tests.e2e.test_cli import Service
from tests.helpers import digest_of
from tests.served import signed_get

ELSEWHERE = "0x000000000000000000000000000000000000dEaD"

pytestmark = pytest.mark.slow  # several processes and instances per test



def mint_signatures(svc: Service) -> float:
    with urllib.request.urlopen(svc.url + "/metrics", timeout=5) as r:  # noqa: S310
        text = r.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("appliance_signatures_total{") and 'key="mint"' in line and 'outcome="ok"' in line)


def database(svc: Service) -> Path:
    settings = config.load(Path(svc.dev["config"]))
    return Path(settings.storage_url.removeprefix("sqlite:///"))


def post(svc: Service, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(svc.url + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:  # noqa: S310
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def get(svc: Service, path: str) -> dict[str, Any]:
    with urllib.request.urlopen(signed_get(svc.url, path, svc.key("grace")), timeout=10) as r:  # noqa: S310
        return json.loads(r.read())  # type: ignore[no-any-return]


def test_a_request_redirected_in_the_sqlite_file_is_refused_by_the_cli_and_never_signed(service: Service
                                                                                       ) -> None:
    svc = service
    settings = config.load(Path(svc.dev["config"]))
    to = svc.dev["allowlist"][0]
    req = json.loads(svc.cli("mint", "request", "--operator", "alice", "--key", svc.key("alice"), "--to", to,
                             "--amount", "250000000000", "--json").stdout)
    before = mint_signatures(svc)
    with sqlite3.connect(database(svc), timeout=10) as db:  # the attacker's own client on the live file
        db.execute("UPDATE mint_requests SET to_address = ?, amount = ? WHERE id = ?",
                   (ELSEWHERE, str(4 * int(req["amount"])), req["id"]))
        row = db.execute("SELECT chain_id, verifying_contract, to_address, amount, nonce, valid_after, "
                         "valid_before FROM mint_requests WHERE id = ?", (req["id"],)).fetchone()
        db.execute("UPDATE mint_requests SET digest = ? WHERE id = ?",
                   (digest_of(settings, *row), req["id"]))
    # bob's CLI checks alice's signature on his own machine and refuses to sign what she did not ask for
    out = svc.cli("mint", "approve", req["id"], "--operator", "bob", "--key", svc.key("bob"), "--yes", check=False)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "not what alice signed" in out.stderr, out.stderr
    shown = svc.cli("mint", "show", req["id"]).stdout
    assert "WARNING" in shown and "requester's signed JWS" in shown
    # a careless client that signs whatever GET shows gets its approvals recorded, and no signature
    seen = get(svc, f"/v1/mint-requests/{req['id']}")
    for name in ("bob", "carol"):
        jws = sign_request(load_key(svc.key(name)), auth.TYP_MINT_APPROVAL,
                           {"request_id": seen["id"], "digest": seen["digest"], "decision": "approve",
                            "policy": seen["policy"]})
        status, body = post(svc, f"/v1/mint-requests/{req['id']}/approvals", {"jws": jws})
        assert status in (201, 422), body
    assert status == 422 and "requester" in json.dumps(body)
    assert mint_signatures(svc) == before


def test_a_stale_reservation_inserted_into_the_sqlite_file_signs_nothing(service: Service) -> None:
    """A cancelled request, set back to pending, with approvals copied in and an old reservation row."""
    svc = service
    to = svc.dev["allowlist"][0]
    req = json.loads(svc.cli("mint", "request", "--operator", "alice", "--key", svc.key("alice"), "--to", to,
                             "--amount", "1000000", "--json").stdout)
    svc.cli("mint", "approve", req["id"], "--operator", "bob", "--key", svc.key("bob"), "--yes")
    svc.cli("mint", "cancel", req["id"], "--operator", "alice", "--key", svc.key("alice"))
    before = mint_signatures(svc)
    carol = sign_request(load_key(svc.key("carol")), auth.TYP_MINT_APPROVAL,
                         {"request_id": req["id"], "digest": req["digest"], "decision": "approve",
                          "policy": req["policy"]})
    with sqlite3.connect(database(svc), timeout=10) as db:
        now = int(time.time())
        db.execute("UPDATE mint_requests SET status = 'pending', closed_by = NULL, closed_at = NULL WHERE id = ?",
                   (req["id"],))
        db.execute("INSERT INTO mint_approvals VALUES (?, 'carol', 'approve', ?, ?, ?, ?, ?)",
                   (req["id"], req["digest"], req["policy"], now, carol, now))
        db.execute("INSERT INTO mint_authorizations (request_id, nonce, digest, chain_id, amount, signer, "
                   "reserved_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                   (req["id"], req["nonce"], req["digest"], req["chain_id"], req["amount"],
                    "0x" + secrets.token_hex(20), now - 3600))
    for _ in range(2):
        try:
            get(svc, f"/v1/mint-requests/{req['id']}/authorization")
            raise AssertionError("an authorization was served")
        except urllib.error.HTTPError as exc:
            assert exc.code in (409, 422), exc.read()
    assert mint_signatures(svc) == before


def test_a_pending_proposal_rewritten_in_the_sqlite_file_gets_no_admin_vote(service: Service,
                                                                           tmp_path: Path) -> None:
    """The blind vote: the attacker replaces a pending proposal's bundle and hash (a one-approval tier). The
    admins' CLI recomputes the bundle from the proposer's signature and refuses; votes sent anyway never
    activate it."""
    import tomli_w

    from appliance.domain.canonical import canonical_json
    from appliance.domain.policy import PolicyBundle

    svc = service
    shown = json.loads(svc.cli("policy", "show", "--json").stdout)
    policy = json.loads(json.dumps(shown["active"]["bundle"]["policy"]))
    policy["name"] = "an honest change"
    (tmp_path / "policy.toml").write_text(tomli_w.dumps(policy))
    proposal = json.loads(svc.cli("policy", "propose", str(tmp_path / "policy.toml"), "--operator", "erin",
                                  "--key", svc.key("erin"), "--json").stdout)
    evil = json.loads(json.dumps(shown["active"]["bundle"]))
    evil["policy"]["name"] = "an honest change"
    for tier in evil["policy"]["mint"]["tiers"]:
        tier["approvals"], tier["required"] = 1, {}
    forged = PolicyBundle.from_json(evil)
    with sqlite3.connect(database(svc), timeout=10) as db:
        db.execute("UPDATE policy_bundles SET bundle = ?, hash = ? WHERE id = ?",
                   (canonical_json(forged.to_json()).decode(), forged.hash, proposal["id"]))
    for admin in ("erin", "frank"):
        out = svc.cli("policy", "approve", proposal["id"], "--operator", admin, "--key", svc.key(admin), "--yes",
                      check=False)
        assert out.returncode != 0 and "not the one its proposer signed" in out.stderr, out.stderr
    for admin in ("erin", "frank"):  # a script that signs the listed hash without looking
        jws = sign_request(load_key(svc.key(admin)), auth.TYP_POLICY_APPROVAL,
                           {"proposal": proposal["id"], "hash": forged.hash, "decision": "approve"})
        status, body = post(svc, f"/v1/policy/proposals/{proposal['id']}/approvals", {"jws": jws})
        assert status == 409 and "not the one its proposer signed" in body["detail"], body
    assert json.loads(svc.cli("policy", "show", "--json").stdout)["active"]["hash"] == shown["active"]["hash"]
