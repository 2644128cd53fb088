"""Crash safety, exactly once: `appliance serve` killed with SIGKILL (its whole process group, as a power cut
would) at the crash points along the signing paths (`appliance/failpoints.py`), restarted, and the flows carried
on. After every restart:

- the audit log verifies against the state an auditor saved before the crash (`appliance audit verify --state`);
- every approval that was acknowledged (201) is still there;
- every request whose quorum was met gets exactly one authorization, the same one however often it is asked
  for and across restarts, verifying with eth-account to the mint key (a nonce is never served with two
  signatures), and every stored signature and attestation has its audit entry;
- the token still opens (the restart passes `check`).

`make test` runs 5 of the points once (QUICK). `APPLIANCE_CRASH_ROUNDS=220 pytest tests/reliability` (`make
test-crash`) runs 220 kills,
cycling through the points and through the first, second and third time a process reaches each. One server per
round: it is started, the last crash is checked on it, then it is armed (`APPLIANCE_CRASH_FILE`) and worked until
it dies.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from eth_account import Account
from eth_account.messages import encode_typed_data
from sqlalchemy import create_engine, text

from appliance import config
from appliance.cli import cli
from appliance.domain import messages
from appliance.failpoints import POINTS
from appliance.operator import load_key, sign_request, sign_reserve_report
from tests.e2e.test_cli import run
from tests.served import reader, serve

# make test: one point on each signing path where a lost write would matter most (about 20 s); the full run
# (APPLIANCE_CRASH_ROUNDS, make test-crash) cycles through every point
QUICK = ("mint.reserve.committed", "mint.sign.after-hsm", "mint.sign.stored", "checkpoint.after-hsm",
         "attestation.after-hsm")
FULL = int(os.environ.get("APPLIANCE_CRASH_ROUNDS", "0"))
ROTATION = POINTS if FULL else QUICK
ROUNDS = FULL or len(QUICK)


@dataclass
class Rig:
    directory: Path
    dev: dict[str, Any]
    url: str = ""
    proc: subprocess.Popen[bytes] | None = None
    keys: dict[str, Any] = field(default_factory=dict)
    acknowledged: set[tuple[str, str]] = field(default_factory=set)  # (request id, officer) answered 201
    quorate: dict[str, str] = field(default_factory=dict)  # request id -> digest, once two approvals were sent
    served: dict[str, str] = field(default_factory=dict)  # request id -> the signature served for it
    kills: int = 0
    day: int = 0

    @property
    def crash_file(self) -> Path:
        return self.directory / "crash-at"

    def arm(self, point: str | None) -> None:
        """Write the crash point the running server dies at (None: disarm)."""
        self.crash_file.write_text(point or "")

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"}
        env["APPLIANCE_CRASH_FILE"] = str(self.crash_file)
        self.arm(None)
        try:  # in a process group of its own: the crash kills only the server
            self.proc, self.url = serve(self.dev["config"], self.directory / "serve.log", env, new_session=True)
        except AssertionError as exc:
            raise AssertionError(f"the service did not come back (is the token intact?): {exc}") from exc

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.alive():
            assert self.proc is not None
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(30)

    def http(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """(status, body); (0, None) when the service died under the call (the crash)."""
        data = None if body is None else json.dumps(body).encode()
        grace = self.directory / "operators" / "grace.pem"
        req = urllib.request.Request(self.url + path, data=data, method=method,  # noqa: S310
                                     headers={"Content-Type": "application/json"} if data else
                                     {"Authorization": reader(grace)(method, path)})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:  # noqa: S310
                status, raw = r.status, r.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return 0, None
        assert status < 500 or status == 503, (method, path, status, raw[:500])
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode(errors="replace")  # the checkpoint is a text note

    def sign(self, name: str, typ: str, payload: dict[str, Any]) -> str:
        if name not in self.keys:
            self.keys[name] = load_key(self.directory / "operators" / f"{name}.pem")
        return sign_request(self.keys[name], typ, payload)

    def approve(self, name: str, req: dict[str, Any]) -> int:
        jws = self.sign(name, messages.TYP_MINT_APPROVAL, {"request_id": req["id"], "digest": req["digest"],
                                                          "decision": "approve", "policy": req["policy"]})
        status, body = self.http("POST", f"/v1/mint-requests/{req['id']}/approvals", {"jws": jws})
        if status == 201:
            self.acknowledged.add((req["id"], name))
            self.saw(req["id"], body.get("authorization"))
        return status

    def saw(self, request_id: str, authz: Any) -> None:
        if not isinstance(authz, dict) or not authz.get("signature"):
            return
        signer = Account.recover_message(encode_typed_data(full_message=authz["typedData"]),
                                         signature=authz["signature"])
        assert signer == authz["signer"]
        assert request_id in self.quorate and authz["digest"] == self.quorate[request_id]
        first = self.served.setdefault(request_id, authz["signature"])
        assert first == authz["signature"], f"request {request_id} was served with two signatures"

    def flows(self) -> None:
        """Honest work until the service dies (or it is all done): mints, an attestation, checkpoints."""
        for _ in range(3):
            payload = {"to": self.dev["allowlist"][0], "amount": "1000000", "chain_id": self.dev["chain_id"]}
            status, req = self.http("POST", "/v1/mint-requests",
                                    {"jws": self.sign("alice", messages.TYP_MINT_REQUEST, payload)})
            if status != 201:
                return
            if self.approve("bob", req) != 201:
                return
            self.quorate[req["id"]] = req["digest"]
            if self.approve("carol", req) == 0:
                return
            status, authz = self.http("GET", f"/v1/mint-requests/{req['id']}/authorization")
            if status == 0:
                return
            self.saw(req["id"], authz)
        if self.attest() == 0 or self.http("GET", "/v1/audit/checkpoint")[0] == 0:
            return

    def attest(self) -> int:
        self.day += 1
        reports = self.directory / "reports"
        reserves = json.loads((reports / "reserves.json").read_text())
        supply = json.loads((reports / "supply.json").read_text())
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(1_700_000_000 + 3600 * self.day))
        reserves["as_of"] = supply["as_of"] = stamp
        jws = self.sign("grace", messages.TYP_ATTESTATION_REQUEST,
                        {"reserves": sign_reserve_report(self.keys.setdefault("heidi", load_key(
                            self.directory / "operators" / "heidi.pem")), reserves), "supply": supply})
        return self.http("POST", "/v1/attestations", {"jws": jws})[0]

    def audit_verify(self, state: Path) -> None:
        out = CliRunner().invoke(cli, ["--url", self.url, "audit", "verify", "--state", str(state)])
        assert out.exit_code == 0, out.output

    def check_after_restart(self, state: Path, takeover: float) -> None:
        self.audit_verify(state)  # against the state saved before the crash
        time.sleep(takeover)  # a reservation the crash left unsigned may now be taken over
        for request_id in self.quorate:
            status, shown = self.http("GET", f"/v1/mint-requests/{request_id}")
            assert status == 200, shown
            approvals = {a["operator"] for a in shown["approvals"]}
            lost = {name for rid, name in self.acknowledged if rid == request_id} - approvals
            assert not lost, f"acknowledged approvals of {request_id} lost: {lost}"
            if {"bob", "carol"} <= approvals:
                status, authz = self.http("GET", f"/v1/mint-requests/{request_id}/authorization")
                assert status == 200, (request_id, authz)
                self.saw(request_id, authz)
            elif "bob" in approvals:  # carol's approval died with the process before it committed: send it again
                assert self.approve("carol", shown) == 201
        self.check_store()

    def check_store(self) -> None:
        settings = config.load(Path(self.dev["config"]))
        engine = create_engine(settings.storage_url)
        try:
            with engine.connect() as conn:
                entries = [json.loads(r.entry) for r in conn.execute(text("SELECT entry FROM audit_entries"))]
                signed = {r.request_id: r.signature for r in conn.execute(text(
                    "SELECT request_id, signature FROM mint_authorizations WHERE signature IS NOT NULL"))}
                seqs = [r.seq for r in conn.execute(text("SELECT seq FROM attestations WHERE jws <> ''"))]
        finally:
            engine.dispose()
        audited = {(e["subject"], e["details"].get("signature")) for e in entries
                   if e["action"] == "mint.authorization.signed"}
        assert {(rid, sig) for rid, sig in signed.items()} <= audited, "a stored signature without its audit entry"
        attested = {int(e["subject"]) for e in entries if e["action"] == "attestation.signed"}
        assert set(seqs) <= attested, f"attestations without their audit entry: {set(seqs) - attested}"
        for rid, sig in signed.items():
            assert self.served.get(rid, sig) == sig, f"request {rid}: another signature than the one served"


@pytest.fixture
def rig(tmp_path: Path) -> Any:
    directory = tmp_path / "dev"
    env = {k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"}
    dev = json.loads(run("dev-init", str(directory), "--json", env=env).stdout)
    settings_file = Path(dev["config"])
    settings_file.write_text(settings_file.read_text().replace(  # one worker: quicker restarts
        "max_body_bytes = 1048576", "max_body_bytes = 1048576\nreservation_takeover_seconds = 1").replace(
        "workers = 2", "workers = 1"))
    r = Rig(directory, dev)
    yield r
    r.stop()


def test_sigkill_at_every_crash_point_loses_nothing_and_signs_nothing_twice(rig: Rig, tmp_path: Path) -> None:
    state = tmp_path / "audit-state.json"
    rig.start()
    rig.audit_verify(state)  # the auditor's state, saved before the first crash and carried through all of them
    for i in range(ROUNDS):
        point = ROTATION[i % len(ROTATION)]
        nth = 1 + (i // len(ROTATION)) % 3
        rig.arm(f"{point}:{nth}")
        for _ in range(4):
            if not rig.alive():
                break
            rig.flows()
        assert rig.proc is not None
        try:
            rig.proc.wait(10)
        except subprocess.TimeoutExpired:
            pytest.fail(f"round {i}: the crash point {point}:{nth} was never reached")
        assert rig.proc.returncode == -signal.SIGKILL, (point, rig.proc.returncode)
        rig.kills += 1
        rig.start()  # the token still opens: `serve` runs `check` first
        try:
            rig.check_after_restart(state, takeover=1.05)
        except AssertionError as exc:
            raise AssertionError(f"after a crash at {point}:{nth} (round {i}): {exc}") from exc
    assert rig.kills == ROUNDS
    assert len(rig.served) >= ROUNDS  # mints kept being signed throughout
