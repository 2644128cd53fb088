"""The every-row sweep again, against `appliance serve` (gunicorn workers) and its real SQLite file.

`test_every_row.py` runs the sweep in-process, where it can watch every HSM call. Here the attacker is where the
threat model puts them: beside a served instance, with their own client on the live database file, while officers
use the HTTP API as their workstations do (each signs locally with their own key). What the test can see is what
anyone outside can: the responses, and the service's own count of mint signatures (`appliance_signatures_total`,
summed across workers). After each case:

- every authorization served is over the digest of a request as its requester created it, approved by a quorum
  of honest officers, and verifies with eth-account to the HSM's mint address;
- the service made exactly as many mint signatures as there are distinct authorizations served (none hidden, none
  made twice);
- no response was a 500, and every refusal is a problem document.

The rows of one request (`mint_requests`, `mint_approvals`, `mint_authorizations`, and the newest `seen_tokens`)
are swept in one served instance, every column, an insert and a delete, at "pending" and "signed", each case on a
request of its own. The tables every request depends on (policy, audit log, attestations) get an insert and a
delete each, each in a fresh instance copied from one dev-init environment (their every-column sweep is in-process).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from Crypto.Hash import keccak
from eth_account import Account
from eth_account.messages import encode_typed_data
from sqlalchemy import create_engine, text
from sqlalchemy.exc import SQLAlchemyError

from appliance import config
from appliance.domain import messages
from appliance.operator import load_key, sign_request, sign_reserve_report
from appliance.store import tables
from tests.adversarial import test_every_row as sweep
from tests.served import APPLIANCE, call, serve

pytestmark = pytest.mark.slow

REQUEST_SCOPED = ("mint_requests", "mint_approvals", "mint_authorizations", "seen_tokens")
SHARED = {"policy_bundles": "policy-change", "policy_approvals": "policy-change", "audit_entries": "signed",
          "audit_head": "signed", "audit_checkpoints": "signed", "attestations": "attested"}
# Served officers sign with software keys (the CLI): the security keys' sign counts are swept in process only.
IN_PROCESS_ONLY = {"webauthn_sign_counts", "webauthn_enrolments"}
assert set(REQUEST_SCOPED) | set(SHARED) | IN_PROCESS_ONLY == set(tables.metadata.tables), "a new table needs a place"


def request_cases() -> Iterator[Any]:
    for name in REQUEST_SCOPED:
        table = tables.metadata.tables[name]
        edits = [f"update:{c.name}" for c in table.columns] + ["insert", "delete"]
        if name == "mint_requests":
            edits += [f"update:{c}+digest" for c in sweep.COHERENT]
        for moment in [m for m in sweep.MOMENTS[name] if m in ("pending", "signed")]:
            for edit in edits:
                yield pytest.param(name, moment, edit, id=f"{name}-{moment}-{edit}")


def shared_cases() -> Iterator[Any]:
    for name, moment in SHARED.items():
        for edit in ("insert", "delete"):
            yield pytest.param(name, moment, edit, id=f"{name}-{moment}-{edit}")


# -- a served instance on a copy of one dev-init environment ----------------------------------------------------

@dataclass
class Served:
    directory: Path
    dev: dict[str, Any]
    url: str
    proc: subprocess.Popen[bytes]
    settings: Any
    keys: dict[str, Any] = field(default_factory=dict)

    def key(self, name: str) -> Any:
        if name not in self.keys:
            self.keys[name] = load_key(self.directory / "operators" / f"{name}.pem")
        return self.keys[name]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(15)


def _copy(golden: Path, dev: dict[str, Any], target: Path, workers: int) -> dict[str, Any]:
    """The golden environment under `target`, its paths rewritten (its own token files, its own database)."""
    shutil.copytree(golden, target, symlinks=True)
    for name in ("appliance.toml", "softhsm/softhsm2.conf"):
        path = target / name
        path.write_text(path.read_text().replace(str(golden), str(target)).replace("workers = 2",
                                                                                   f"workers = {workers}"))
    return json.loads(json.dumps(dev).replace(str(golden), str(target)))


def start(golden: Path, dev: dict[str, Any], target: Path, workers: int = 2) -> Served:
    dev = _copy(golden, dev, target, workers)
    proc, url = serve(dev["config"], target / "serve.log")
    return Served(target, dev, url, proc, config.load(Path(dev["config"])))


@pytest.fixture(scope="module")
def golden(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    directory = tmp_path_factory.mktemp("golden") / "dev"
    env = {k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"}
    out = subprocess.run([*APPLIANCE, "dev-init", str(directory), "--json"], capture_output=True, text=True,
                         env=env, timeout=120, check=True)
    return directory, json.loads(out.stdout)


# -- the world: officers over HTTP, the attacker on the file, the outside view of signatures --------------------

@dataclass
class World:
    svc: Served
    honest: set[str] = field(default_factory=set)
    served: dict[str, str] = field(default_factory=dict)  # digest -> the signature served for it
    statuses: list[tuple[str, int, Any]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.engine = create_engine(self.svc.settings.storage_url)
        self.h = SimpleNamespace(allowlist=self.svc.dev["allowlist"],
                                 app_ctx=SimpleNamespace(settings=self.svc.settings))

    # the attacker's own client on the live file (what test_every_row's editing helpers call)
    def sql(self, statement: str, **params: Any) -> list[Any]:
        with self.engine.begin() as conn:
            result = conn.execute(text(statement), params)
            return list(result) if result.returns_rows else []

    def http(self, what: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        status, raw = call(self.svc.url, method, path, body, self.svc.key("grace"))
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = None
        self.statuses.append((what, status, parsed))
        if isinstance(parsed, dict):
            authz = parsed.get("authorization") if "authorization" in parsed else (
                parsed if "signature" in parsed and "typedData" in parsed else None)
            if isinstance(authz, dict) and authz.get("signature"):
                self._saw(authz)
        return status, parsed

    def _saw(self, authz: dict[str, Any]) -> None:
        signable = encode_typed_data(full_message=authz["typedData"])
        digest = "0x" + keccak.new(data=b"\x19" + signable.version + signable.header + signable.body,
                                   digest_bits=256).hexdigest()
        assert Account.recover_message(signable, signature=authz["signature"]) == self.mint_address
        assert self.served.setdefault(digest, authz["signature"]) == authz["signature"], "two signatures, one mint"

    @property
    def mint_address(self) -> str:
        if not hasattr(self, "_mint_address"):
            with urllib.request.urlopen(self.svc.url + "/.well-known/jwks.json", timeout=10) as r:  # noqa: S310
                keys = json.loads(r.read())["keys"]
            self._mint_address = next(k["address"] for k in keys if k.get("address"))
        return self._mint_address

    def sign(self, name: str, typ: str, payload: dict[str, Any]) -> str:
        return sign_request(self.svc.key(name), typ, payload)

    def request(self, by: str = "alice") -> dict[str, Any] | None:
        payload = {"to": self.svc.dev["allowlist"][0], "amount": "1000000", "chain_id": self.svc.dev["chain_id"]}
        status, body = self.http(f"request by {by}", "POST", "/v1/mint-requests",
                                 {"jws": self.sign(by, messages.TYP_MINT_REQUEST, payload)})
        return body if status == 201 else None

    def approve(self, who: str, req: dict[str, Any]) -> int:
        jws = self.sign(who.split()[0], messages.TYP_MINT_APPROVAL,
                        {"request_id": req["id"], "digest": req["digest"], "decision": "approve",
                         "policy": req["policy"]})
        return self.http(f"{who} approves", "POST", f"/v1/mint-requests/{req['id']}/approvals", {"jws": jws})[0]

    def approve_what_is_shown(self, who: str, req: dict[str, Any]) -> None:
        status, view = self.http(f"{who} looks", "GET", f"/v1/mint-requests/{req['id']}")
        if status == 200 and isinstance(view, dict) and view.get("digest") not in (None, req["digest"]):
            self.approve(f"{who} (as shown)", {**req, "digest": view["digest"], "policy": view.get("policy")})

    def authorization(self, req: dict[str, Any]) -> int:
        return self.http("authorization", "GET", f"/v1/mint-requests/{req['id']}/authorization")[0]

    def flow(self) -> None:
        req = self.request("carol")
        if req is not None:
            self.approve("alice", req)
            self.honest.add(req["digest"])
            self.approve("dave", req)
            self.authorization(req)

    def mint_signatures(self) -> float:
        with urllib.request.urlopen(self.svc.url + "/metrics", timeout=10) as r:  # noqa: S310
            lines = r.read().decode().splitlines()
        return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith("appliance_signatures_total{")
                   and 'key="mint"' in line and 'outcome="ok"' in line)

    def check(self) -> None:
        fivehundreds = [s for s in self.statuses if s[1] >= 500 and s[1] != 503]
        assert not fivehundreds, fivehundreds
        for what, status, body in self.statuses:
            if status >= 400:
                assert isinstance(body, dict) and str(body.get("type", "")).startswith("urn:appliance:problem:"), (
                    what, status, body)
        unapproved = set(self.served) - self.honest
        assert not unapproved, f"the service served a mint no honest quorum approved: {unapproved}"
        assert self.mint_signatures() == len(self.served), "the HSM made a mint signature that was not served once"


def tamper(w: World, table: str, edit: str, req: dict[str, Any], proposal_id: str | None) -> bool:
    where, params = sweep._targets(w, table, req["id"], proposal_id)  # type: ignore[arg-type]
    try:
        return sweep._tamper(w, table, edit, where, params)  # type: ignore[arg-type]
    except SQLAlchemyError:
        return False


def carry_on(w: World, req: dict[str, Any]) -> None:
    """The honest officers go on as if nothing happened; some approve whatever the service now shows."""
    w.honest.add(req["digest"])  # bob and carol make its quorum
    w.approve("carol", req)
    for who in ("bob", "carol", "dave"):
        w.approve_what_is_shown(who, req)
    w.authorization(req)
    w.approve("dave", req)
    w.authorization(req)
    w.flow()
    w.http("checkpoint", "GET", "/v1/audit/checkpoint")


# -- the rows of one request, in one served instance ---------------------------------------------------------

@pytest.fixture(scope="module")
def shared_world(golden: tuple[Path, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    svc = start(*golden, tmp_path_factory.mktemp("served") / "dev")
    w = World(svc)
    w.flow()
    yield w
    svc.stop()
    w.engine.dispose()


@pytest.mark.parametrize(("table", "moment", "edit"), list(request_cases()))
def test_a_database_writer_beside_a_served_instance_gets_no_signature_the_quorum_did_not_approve(
        shared_world: World, table: str, moment: str, edit: str) -> None:
    w = shared_world
    req = w.request("alice")
    assert req is not None, w.statuses[-1]
    assert w.approve("bob", req) == 201
    if moment == "signed":
        w.honest.add(req["digest"])
        assert w.approve("carol", req) == 201
    if not tamper(w, table, edit, req, None):
        pytest.skip(f"the store's own constraints refuse {edit} on {table}: {w.refused[-1:]}")
    carry_on(w, req)
    w.check()


# -- the tables every request depends on, each case in a fresh served instance -------------------------------

def _attest(w: World, day: str) -> int:
    reports = w.svc.directory / "reports"
    reserves = json.loads((reports / "reserves.json").read_text())
    supply = json.loads((reports / "supply.json").read_text())
    reserves["as_of"] = supply["as_of"] = f"2026-11-{day}T00:00:00Z"
    jws = w.sign("grace", messages.TYP_ATTESTATION_REQUEST,
                 {"reserves": sign_reserve_report(w.svc.key("heidi"), reserves), "supply": supply})
    return w.http(f"attest {day}", "POST", "/v1/attestations", {"jws": jws})[0]


@pytest.mark.parametrize(("table", "moment", "edit"), list(shared_cases()))
def test_a_database_writer_on_the_shared_tables_of_a_served_instance_gets_no_unapproved_signature(
        golden: tuple[Path, dict[str, Any]], tmp_path: Path, table: str, moment: str, edit: str) -> None:
    w = World(start(*golden, tmp_path / "dev", workers=1))  # one worker: a fresh instance per case, quicker
    try:
        w.flow()
        proposal_id = None
        proposal: dict[str, Any] = {}
        if moment == "attested":
            assert _attest(w, "01") == 201 and _attest(w, "02") == 201
        if moment == "policy-change":
            _, shown = w.http("policy", "GET", "/v1/policy")
            operators = json.loads(json.dumps(shown["active"]["bundle"]["operators"]))
            for op in operators["operators"]:
                op["enabled"] = op["enabled"] and op["name"] != "bob"
            status, proposal = w.http("propose", "POST", "/v1/policy/proposals", {"jws": w.sign(
                "erin", messages.TYP_POLICY_PROPOSAL, {"policy": shown["active"]["bundle"]["policy"],
                                                       "operators": operators, "base": shown["active"]["hash"]})})
            assert status == 201, proposal
            proposal_id = proposal["id"]
            vote = w.sign("erin", messages.TYP_POLICY_APPROVAL,
                          {"proposal": proposal_id, "hash": proposal["hash"], "decision": "approve"})
            path = f"/v1/policy/proposals/{proposal_id}/approvals"
            assert w.http("erin votes", "POST", path, {"jws": vote})[0] == 201
        req = w.request("alice")
        assert req is not None
        assert w.approve("bob", req) == 201
        if not tamper(w, table, edit, req, proposal_id):
            pytest.skip(f"the store's own constraints refuse {edit} on {table}: {w.refused[-1:]}")
        bob_disabled = False
        if moment == "policy-change":
            vote = w.sign("frank", messages.TYP_POLICY_APPROVAL,
                          {"proposal": proposal_id, "hash": proposal["hash"], "decision": "approve"})
            status, body = w.http("frank votes", "POST", f"/v1/policy/proposals/{proposal_id}/approvals",
                                  {"jws": vote})
            bob_disabled = status == 201 and body["status"] == "active"
        if moment == "attested":
            _attest(w, "03")
            _attest(w, "02")
        if bob_disabled:  # bob's approval no longer counts: carol's alone is not a quorum, dave's makes it
            w.approve("carol", req)
            w.authorization(req)
            assert req["digest"] not in w.served, "a disabled officer's approval counted"
        carry_on(w, req)
        w.check()
    finally:
        w.svc.stop()
        w.engine.dispose()
