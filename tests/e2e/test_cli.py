"""End to end as a user runs it: dev-init, `appliance serve` (gunicorn, 2 workers), the CLI over HTTP.

Each subprocess is a fresh process with its own SoftHSM2 token directory from dev-init.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import os
import re
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from eth_account import Account
from eth_account.messages import encode_typed_data

from tests.served import APPLIANCE, free_port
from tests.served import serve as serve_process


def run(*args: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*APPLIANCE, *args], capture_output=True, text=True, env=env or os.environ.copy(),
                            timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"appliance {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


@dataclass
class Service:
    url: str
    dev: dict[str, Any]
    directory: Path

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "APPLIANCE_URL": self.url, "APPLIANCE_TRUST_ANCHOR": self.dev["trust_anchor"],
               "APPLIANCE_READ_KEY": self.key("grace")}  # reads are signed by an enrolled operator
        env.pop("SOFTHSM2_CONF", None)  # the config names its own token directory
        return run(*args, env=env, check=check)

    def key(self, name: str) -> str:
        return next(op["key"] for op in self.dev["operators"] if op["name"] == name)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    directory = tmp_path_factory.mktemp("e2e") / "dev"
    env = {k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"}
    dev = json.loads(run("dev-init", str(directory), "--json", env=env).stdout)
    proc, url = serve(directory, dev, env)
    yield Service(url, dev, directory)
    proc.terminate()
    proc.wait(15)


def serve(directory: Path, dev: dict[str, Any], env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    """`appliance serve` of a dev-init environment on a free port, once /readyz says so; it logs to serve.log."""
    return serve_process(dev["config"], directory / "serve.log", env)


def test_serve_keeps_its_files_private_and_leaves_no_metrics_directory_behind(tmp_path: Path) -> None:
    """The store and its WAL are 0600; the per-run metrics directory goes when the server stops, and one left
    by a killed server goes at the next start."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    stale = tmp / "appliance-metrics-999999999"  # no such pid
    stale.mkdir()
    alive = tmp / f"appliance-metrics-{os.getpid()}"  # a running process's: kept
    alive.mkdir()
    env = {**{k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"}, "TMPDIR": str(tmp)}
    directory = tmp_path / "dev"
    dev = json.loads(run("dev-init", str(directory), "--json", env=env).stdout)
    proc, url = serve(directory, dev, env)
    try:
        ours = tmp / f"appliance-metrics-{proc.pid}"  # serve execs the server: same pid
        assert ours.is_dir() and not stale.exists() and alive.is_dir()
        with urllib.request.urlopen(url + "/metrics", timeout=5) as r:  # noqa: S310
            assert b"appliance_" in r.read()
        store = directory / "appliance.db"
        for path in (store, Path(f"{store}-wal")):
            assert path.exists() and path.stat().st_mode & 0o777 == 0o600, (path, oct(path.stat().st_mode))
    finally:
        proc.terminate()
        proc.wait(15)
    assert not ours.exists(), "the metrics directory outlived its server"


def test_dev_init_summary_has_the_documented_shape(service: Service) -> None:
    dev = service.dev
    assert set(dev) == {"config", "softhsm2_conf", "token", "user_pin", "chain_id", "verifying_contract",
                        "allowlist", "operators", "trust_anchor"}
    assert len(dev["trust_anchor"]) == 64 and int(dev["trust_anchor"], 16) >= 0
    assert Path(dev["config"]).is_absolute() and Path(dev["config"]).exists()
    roles = {op["name"]: op["roles"] for op in dev["operators"]}
    assert roles == {"alice": ["treasury"], "bob": ["treasury"], "carol": ["treasury"], "dave": ["cfo"],
                     "erin": ["security-admin"], "frank": ["security-admin"], "grace": ["auditor"],
                     "heidi": ["custodian"]}
    assert all(Path(op["key"]).exists() for op in dev["operators"])


def test_a_mint_through_the_cli_verifies_with_eth_account(service: Service) -> None:
    to = service.dev["allowlist"][0]
    req = json.loads(service.cli("mint", "request", "--operator", "alice", "--key", service.key("alice"),
                                 "--to", to, "--amount", "250000000000", "--json").stdout)
    assert req["status"] == "pending" and req["digest"].startswith("0x")
    shown = service.cli("mint", "approve", req["id"], "--operator", "bob", "--key", service.key("bob"), "--yes")
    assert "250,000 HKDS  (250,000,000,000 base units)" in shown.stdout and req["digest"] in shown.stdout
    assert "1 of 2 approvals, still needs 1 more approval" in shown.stdout
    service.cli("mint", "approve", req["id"], "--operator", "carol", "--key", service.key("carol"), "--json")
    final = json.loads(service.cli("mint", "show", req["id"], "--json").stdout)
    assert final["status"] == "authorized"
    authz = final["authorization"]
    assert Account.recover_message(encode_typed_data(full_message=authz["typedData"]),
                                   signature=authz["signature"]) == authz["signer"]
    jwks = json.loads(service.cli("keys", "export").stdout)
    assert authz["signer"] in [k.get("address") for k in jwks["keys"]]
    listing = json.loads(service.cli("mint", "list", "--status", "authorized", "--json").stdout)
    assert req["id"] in [i["id"] for i in listing["items"]]


def test_a_refused_request_prints_the_reason_and_exits_non_zero(service: Service) -> None:
    to = service.dev["allowlist"][0]
    out = service.cli("mint", "request", "--operator", "alice", "--key", service.key("alice"), "--to", to,
                      "--amount", "1e18", check=False)
    assert out.returncode != 0
    assert "amount" in out.stderr and "Traceback" not in out.stderr
    out = service.cli("mint", "request", "--operator", "bob", "--key", service.key("alice"), "--to", to,
                      "--amount", "1", check=False)
    assert out.returncode != 0 and "not the key enrolled for bob" in out.stderr
    # with --json a failure is a JSON object on stdout too; here one the service refused (422, not allowlisted)
    zero = "0x" + "0" * 40
    out = service.cli("mint", "request", "--operator", "alice", "--key", service.key("alice"), "--to", zero,
                      "--amount", "1", "--chain-id", str(service.dev["chain_id"]), "--json", check=False)
    assert out.returncode == 1 and "allowlist" in out.stderr
    failure = json.loads(out.stdout)
    assert failure["ok"] is False and failure["error"]["type"] == "policy-violation", failure
    assert "allowlist" in json.dumps(failure["error"])


def test_an_attestation_through_the_cli_verifies_offline_with_the_holder_proof(service: Service,
                                                                               tmp_path: Path) -> None:
    reports = service.directory / "reports"
    out = json.loads(service.cli("attest", "--operator", "grace", "--key", service.key("grace"),
                                 "--reserves", str(reports / "reserves.jws"), "--supply",
                                 str(reports / "supply.json"), "--holders", str(reports / "holders.csv"),
                                 "--json").stdout)
    assert out["seq"] == 1 and out["jws"].count(".") == 2
    evidence = tmp_path / "evidence"
    service.cli("attestations", "fetch", str(evidence))
    jwks = str(evidence / "jwks.json")
    single = json.loads(service.cli("verify", "attestation", str(evidence / "1.jws"), "--jwks", jwks,
                                    "--json").stdout)
    assert single["valid"] is True and single["status"] == "FULLY_BACKED"
    assert json.loads(service.cli("verify", "chain", str(evidence), "--jwks", jwks, "--json").stdout)["valid"]
    account = (reports / "holders.csv").read_text().splitlines()[1].split(",")[0]
    service.cli("--config", service.dev["config"], "liabilities", "proof", account, "--attestation", "1",
                "--out", str(tmp_path / "proof.json"))
    held = json.loads(service.cli("verify", "liability", str(tmp_path / "proof.json"), "--attestation",
                                  str(evidence / "1.jws"), "--jwks", jwks, "--json").stdout)
    assert held["valid"] is True and held["account"] == account
    (evidence / "1.jws").write_text(out["jws"][:-4] + ("AAAA" if not out["jws"].endswith("AAAA") else "BBBB"))
    tampered = service.cli("verify", "attestation", str(evidence / "1.jws"), "--jwks", jwks, check=False)
    assert tampered.returncode == 1 and "INVALID" in tampered.stderr
    payload = json.loads(base64.urlsafe_b64decode(out["jws"].split(".")[1] + "=="))
    vouched = [e for e in payload["evidence"] if e["name"].startswith("reserve report signed by custodian heidi (key ")]
    report = json.loads((reports / "reserves.json").read_text())
    assert vouched == [{"name": vouched[0]["name"], "sha256": hashlib.sha256(rfc8785.dumps(report)).hexdigest()}]
    dup = tmp_path / "dup.json"
    dup.write_text('{"as_of": "2026-11-24T16:00:00Z", "as_of": "2026-11-25T16:00:00Z"}')
    refused = service.cli("reserves", "sign", str(dup), "--operator", "heidi", "--key", service.key("heidi"),
                          "--out", str(tmp_path / "dup.jws"), check=False)
    assert refused.returncode != 0 and "duplicate" in refused.stderr and "Traceback" not in refused.stderr
    unsigned = service.cli("attest", "--operator", "grace", "--key", service.key("grace"), "--reserves",
                           str(reports / "reserves.json"), "--supply", str(reports / "supply.json"), check=False)
    assert unsigned.returncode != 0 and "reserves sign" in unsigned.stderr and "Traceback" not in unsigned.stderr
    not_custodian = service.cli("reserves", "sign", str(reports / "reserves.json"), "--operator", "grace", "--key",
                                service.key("grace"), "--out", str(tmp_path / "g.jws"), check=False)
    assert not_custodian.returncode != 0 and "not enrolled as a custodian" in not_custodian.stderr


def test_a_custodian_signs_the_report_an_auditor_attests_from(service: Service, tmp_path: Path) -> None:
    reports = service.directory / "reports"
    report = json.loads((reports / "reserves.json").read_text())
    report["as_of"] = "2026-11-25T16:00:00Z"
    (tmp_path / "r.json").write_text(json.dumps(report))
    supply = json.loads((reports / "supply.json").read_text())
    supply["as_of"] = "2026-11-25T16:00:00Z"
    (tmp_path / "s.json").write_text(json.dumps(supply))
    signed = service.cli("reserves", "sign", str(tmp_path / "r.json"), "--operator", "heidi", "--key",
                         service.key("heidi"), "--out", str(tmp_path / "r.jws"))
    assert "signed by heidi" in signed.stdout
    out = json.loads(service.cli("attest", "--operator", "grace", "--key", service.key("grace"), "--reserves",
                                 str(tmp_path / "r.jws"), "--supply", str(tmp_path / "s.json"), "--json").stdout)
    assert out["jws"].count(".") == 2


def test_commands_that_talk_to_the_service_take_url(service: Service, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"}
    env["APPLIANCE_URL"] = "http://127.0.0.1:9"  # nothing listens there: --url must win
    env["APPLIANCE_READ_KEY"] = service.key("grace")
    out = run("audit", "verify", "--url", service.url, "--state", str(tmp_path / "st.json"), env=env)
    assert "OK:" in out.stdout
    listed = json.loads(run("mint", "list", "--url", service.url, "--json", env=env).stdout)
    assert "items" in listed
    env.pop("APPLIANCE_READ_KEY")  # reads of requests are for enrolled operators: a clear refusal without a key
    refused = run("mint", "list", "--url", service.url, env=env, check=False)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr and "--read-key" in refused.stderr
    assert "keys" in json.loads(run("keys", "export", "--url", service.url, env=env).stdout)


def test_audit_verify_then_a_hand_edited_database_fails(service: Service) -> None:
    state = service.directory / "audit-state.json"
    first = service.cli("audit", "verify", "--state", str(state))
    assert "OK:" in first.stdout
    import sqlite3

    with sqlite3.connect(service.directory / "appliance.db") as conn:
        conn.execute("UPDATE audit_entries SET entry = replace(entry, 'alice', 'mallory') "
                     "WHERE idx = (SELECT min(idx) FROM audit_entries WHERE action = 'mint.requested')")
        index = conn.execute("SELECT min(idx) FROM audit_entries WHERE action = 'mint.requested'").fetchone()[0]
    out = service.cli("audit", "verify", "--state", str(state), check=False)
    assert out.returncode == 1
    assert f"at entry {index}" in out.stderr


def test_metrics_show_the_activity_across_workers(service: Service) -> None:
    with urllib.request.urlopen(service.url + "/metrics", timeout=5) as r:  # noqa: S310
        text = r.read().decode()
    assert 'appliance_mint_authorizations_total{outcome="signed"}' in text
    assert "appliance_hsm_up 1.0" in text
    for _ in range(40):  # spread over both worker processes; the scrape must add up what each counted
        with urllib.request.urlopen(service.url + "/openapi.json", timeout=5) as r:  # noqa: S310
            assert r.status == 200
    with urllib.request.urlopen(service.url + "/metrics", timeout=5) as r:  # noqa: S310
        text = r.read().decode()
    line = next(x for x in text.splitlines()
                if x.startswith("appliance_http_requests_total{") and 'route="/openapi.json"' in x)
    assert float(line.rsplit(" ", 1)[1]) == 40.0


def test_config_errors_are_clear_and_non_zero(tmp_path: Path) -> None:
    cfg = tmp_path / "appliance.toml"
    cfg.write_text('[hsm]\ntoken_label = ""\n')
    out = run("--config", str(cfg), "check", check=False)
    assert out.returncode != 0
    assert "appliance.toml: hsm.token_label" in out.stderr and "Traceback" not in out.stderr


def test_wrong_pin_and_missing_key_are_clear_and_refused(service: Service, tmp_path: Path) -> None:
    base = Path(service.dev["config"]).read_text()
    cases = {
        "wrong-pin": (base.replace('pin_file = "hsm-pin"', 'pin_file = "wrong-pin"'), "PIN"),
        "no-key": (base.replace('mint = "mint-secp256k1"', 'mint = "no-such-key"'), "no-such-key"),
    }
    (service.directory / "wrong-pin").write_text("0000\n")
    for name, (text, expected) in cases.items():
        cfg = service.directory / f"{name}.toml"
        cfg.write_text(text)
        out = run("--config", str(cfg), "check", check=False)
        assert out.returncode != 0, name
        assert expected in out.stderr, (name, out.stderr)
        assert "Traceback" not in out.stderr, name
        serve = run("--config", str(cfg), "serve", "--listen", f"127.0.0.1:{free_port()}", check=False)
        assert serve.returncode != 0 and "refusing to serve" in serve.stderr, name


def test_a_token_that_is_not_there_is_clear_and_served_unready(service: Service, tmp_path: Path) -> None:
    """A token the module does not show (yet) is waited for: `check` says so (exit 3) and `serve` starts, unready,
    with 503 and /readyz naming the token, instead of refusing (a token being restored must not need a restart)."""
    cfg = service.directory / "no-token.toml"
    cfg.write_text(Path(service.dev["config"]).read_text().replace('token_label = "appliance-dev"',
                                                                   'token_label = "no-such-token"'))
    out = run("--config", str(cfg), "check", check=False)
    assert out.returncode == 3 and "no token" in out.stderr and "Traceback" not in out.stderr, out.stderr
    env = {k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"}
    proc, url = serve_process(cfg, tmp_path / "unready.log", env, ready=False)
    try:
        try:
            urllib.request.urlopen(url + "/readyz", timeout=10)  # noqa: S310
            raise AssertionError("ready without its token")
        except urllib.error.HTTPError as exc:
            assert exc.code == 503 and "no token" in exc.read().decode()
        assert "serving unready" in (tmp_path / "unready.log").read_text()
    finally:
        proc.terminate()
        proc.wait(30)


def test_policy_change_and_cancellation_through_the_cli(service: Service, tmp_path: Path) -> None:
    import tomllib

    import tomli_w

    shown = json.loads(service.cli("policy", "show", "--json").stdout)
    policy = copy.deepcopy(shown["active"]["bundle"]["policy"])
    policy["name"] = "changed through the cli"
    (tmp_path / "policy.toml").write_text(tomli_w.dumps(policy))
    assert tomllib.loads((tmp_path / "policy.toml").read_text())["name"] == policy["name"]
    proposal = json.loads(service.cli("policy", "propose", str(tmp_path / "policy.toml"), "--operator", "erin",
                                      "--key", service.key("erin"), "--json").stdout)
    assert proposal["status"] == "proposed" and proposal["warnings"] == []
    first = service.cli("policy", "approve", proposal["id"], "--operator", "erin", "--key", service.key("erin"),
                        "--yes")
    assert "proposed" in first.stdout
    # the admin reads the change, recomputed on their machine from erin's signed proposal, before signing
    assert '~ policy.name: ' in first.stdout and '-> "changed through the cli"' in first.stdout
    refused = service.cli("policy", "approve", proposal["id"], "--operator", "frank", "--key",
                          service.key("frank"), check=False)  # no terminal to confirm on: nothing is signed
    assert refused.returncode != 0 and "approve this change as frank?" in refused.stdout
    second = service.cli("policy", "approve", proposal["id"], "--operator", "frank", "--key", service.key("frank"),
                         "--yes")
    assert "active" in second.stdout
    assert json.loads(service.cli("policy", "show", "--json").stdout)["active"]["hash"] == proposal["hash"]
    history = json.loads(service.cli("policy", "history", "--json").stdout)  # verified from the pinned anchor
    assert history["pinned"] and history["anchor"] == service.dev["trust_anchor"]
    assert [(a["seq"], a["proposer"], a["approvers"]) for a in history["activations"]][-1] == (
        2, "erin", ["erin", "frank"])
    to = service.dev["allowlist"][0]
    req = json.loads(service.cli("mint", "request", "--operator", "alice", "--key", service.key("alice"),
                                 "--to", to, "--amount", "5", "--json").stdout)
    denied = service.cli("mint", "cancel", req["id"], "--operator", "bob", "--key", service.key("bob"), check=False)
    assert denied.returncode != 0 and "requester or a security admin" in denied.stderr
    cancelled = json.loads(service.cli("mint", "cancel", req["id"], "--operator", "alice", "--key",
                                       service.key("alice"), "--json").stdout)
    assert cancelled["status"] == "cancelled"


def test_the_real_server_refuses_a_chunked_body_over_the_limit(service: Service) -> None:
    """gunicorn de-chunks the body; the appliance must still refuse it whole (413), not act on its first MiB."""
    import http.client

    host, port = service.url.removeprefix("http://").split(":")
    limit = 1 << 20  # max_body_bytes of the dev configuration

    def send(body: bytes) -> tuple[int, str]:
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        chunks = (body[i:i + 65536] for i in range(0, len(body), 65536))
        conn.request("POST", "/v1/mint-requests", body=chunks, encode_chunked=True,
                     headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
        response = conn.getresponse()
        status, text = response.status, response.read().decode()
        conn.close()
        return status, text

    status, text = send(b'{"jws": "x"}' + b" " * limit + b"past the limit")
    assert status == 413, text
    assert "larger than 1048576 bytes" in text
    status, text = send(b'{"jws": "not.a.jws"}')  # a small chunked body is read as usual
    assert status in (400, 401), text


@pytest.mark.parametrize("bad", ["a b", "abc/authorization", "../x", "", "x" * 129, "id?q=1"])
@pytest.mark.parametrize("command", [["mint", "show"], ["mint", "approve"], ["mint", "cancel"],
                                     ["policy", "approve"]])
def test_a_malformed_id_is_a_clear_usage_error_never_a_traceback(command: list[str], bad: str) -> None:
    from click.testing import CliRunner

    from appliance.cli import cli

    key = ["--operator", "bob", "--key", __file__] if command != ["mint", "show"] else []
    out = CliRunner().invoke(cli, ["--url", "http://127.0.0.1:9", *command, bad, *key])
    assert out.exit_code == 2, out.output
    assert "is not an id" in out.output and "Traceback" not in out.output
    assert out.exception is None or isinstance(out.exception, SystemExit)


def test_the_cli_speaks_tokens_utc_prefixes_and_progress(service: Service) -> None:
    to = service.dev["allowlist"][1]
    alice = ["--operator", "alice", "--key", service.key("alice")]
    by_unit = json.loads(service.cli("mint", "request", *alice, "--to", to, "--amount", "1,234.5", "--unit", "tokens",
                                     "--json").stdout)
    assert by_unit["amount"] == "1234500000"
    shown = service.cli("mint", "request", *alice, "--to", to, "--amount", "250000 HKDS").stdout
    assert "amount    250,000 HKDS  (250,000,000,000 base units)" in shown
    assert re.search(r"valid     \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC to \d{4}-", shown), shown
    assert "progress  0 of 2 approvals, still needs 2 more approvals" in shown
    too_precise = service.cli("mint", "request", *alice, "--to", to, "--amount", "1.0000001 HKDS", check=False)
    assert too_precise.returncode != 0 and "decimal places" in too_precise.stderr

    prefix = by_unit["id"][:8]
    assert by_unit["id"] in service.cli("mint", "show", prefix).stdout
    own = service.cli("mint", "approve", prefix, *alice, check=False)  # told before anything is asked
    assert own.returncode != 0 and "the requester never approves their own" in own.stderr
    assert "approve this mint" not in own.stdout
    approved = service.cli("mint", "approve", prefix, "--operator", "bob", "--key", service.key("bob"), "--yes")
    assert "status pending; 1 of 2 approvals, still needs 1 more approval" in approved.stdout
    unknown = service.cli("mint", "show", "ffffffff", check=False)
    assert unknown.returncode != 0 and "no mint request id starts with 'ffffffff'" in unknown.stderr

    policy = service.cli("policy", "show").stdout
    assert "per request    at most 10,000,000 HKDS" in policy
    assert "tier 1         up to 1,000,000 HKDS: 2 approvals from treasury or cfo" in policy
    assert "tier 2         above 1,000,000 HKDS: 3 approvals from treasury or cfo, including 1 cfo" in policy
    assert re.search(r"  alice +treasury +software key", policy), policy
    assert "security keys    relying party localhost" in policy


def test_no_secret_reaches_the_service_log(service: Service) -> None:
    """Runs after the module's other tests, so the log holds their whole session: the user PIN, the liabilities
    secret and the officers' private keys appear nowhere in it."""
    log = (service.directory / "serve.log").read_text(errors="replace")
    assert "POST /v1/mint-requests" in log  # the log is the one the session wrote
    secrets_ = [service.dev["user_pin"], (service.directory / "hsm-pin").read_text().strip(),
                (service.directory / "liabilities.secret").read_text().strip()]
    for pem in (service.directory / "operators").glob("*.pem"):
        secrets_ += [line for line in pem.read_text().splitlines() if line and not line.startswith("-----")]
    leaked = [s[:6] + "..." for s in secrets_ if s and s in log]
    assert not leaked, leaked
