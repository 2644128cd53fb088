"""What regulators and operations run against the real service, with their own tools: promtool on the served
/metrics, start-up refusal of unfit HSM keys, openssl on the exported PEM, jwcrypto and eth-keys on the JWKS, and
`appliance verify chain` on real signed attestation histories with faults in them.

One `appliance serve` (gunicorn, 2 workers, its own dev token) for the whole module, from tests/e2e/test_cli.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import pytest
import tomli_w
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from eth_keys.datatypes import PublicKey
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak
from jwcrypto import jwk
from prometheus_client.parser import text_string_to_metric_families

from appliance.operator import load_key, sign_reserve_report
from tests.conftest import IN_CI
from tests.e2e import test_cli
from tests.e2e.test_cli import APPLIANCE, Service, free_port

service = test_cli.service  # the module-scoped `appliance serve` fixture: one service for this module

T = TypeVar("T")
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
ATTESTATION_TYP = "reserve-attestation+jws"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("SOFTHSM2_CONF", None)  # each config names its own token directory
    return env


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as r:  # noqa: S310 - a local test URL
        assert r.status == 200, url
        return bytes(r.read())


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _payload(jws: str) -> dict[str, Any]:
    return dict(json.loads(_b64url_decode(jws.strip().split(".")[1])))


def _parallel(*calls: Callable[[], T]) -> list[T]:
    """Run independent CLI calls (each a subprocess) concurrently; results in order.

    At most one of them may log in to the SoftHSM2 token: every C_Login rewrites the token's token.object, and a
    process reading it meanwhile sees no token or fails with CKR_GENERAL_ERROR (about 2 % of 8 concurrent logins)."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [pool.submit(call) for call in calls]
        return [f.result() for f in futures]


def _hsm(dev: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """The PKCS#11 module of the dev environment, and an environment pointing SoftHSM2 at its own token."""
    module = tomllib.loads(Path(dev["config"]).read_text())["hsm"]["module"]
    return module, {**_env(), "SOFTHSM2_CONF": dev["softhsm2_conf"]}


def _pkcs11(dev: dict[str, Any], script: str, *args: str) -> str:
    """Run python-pkcs11 code against the dev token in a subprocess (this process's PKCS#11 state belongs to the
    session token of tests/conftest.py)."""
    module, env = _hsm(dev)
    out = subprocess.run([sys.executable, "-c", script, module, dev["token"], dev["user_pin"], *args],
                         capture_output=True, text=True, env=env, timeout=60)
    if out.returncode != 0:  # not an AssertionError: the xfail below must not hide a broken setup
        raise RuntimeError(f"python-pkcs11 script failed:\n{out.stderr}")
    return out.stdout


# -- 1. promtool on the real multiprocess /metrics ------------------------------------------------------------

def _counter(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def test_promtool_accepts_the_served_metrics_and_they_show_the_activity(service: Service) -> None:
    promtool = shutil.which("promtool") or ("/usr/bin/promtool" if Path("/usr/bin/promtool").exists() else None)
    if promtool is None:
        if IN_CI:
            pytest.fail("promtool is not installed (`make test` installs it); under CI=true this test must run")
        pytest.skip("promtool is not installed")
    # promtool itself refuses a bad exposition, so a pass below means something
    bad = subprocess.run([promtool, "check", "metrics"], input="# TYPE bad counter\nbad 1\n", capture_output=True,
                         text=True, timeout=30)
    assert bad.returncode != 0

    before = _get(service.url + "/metrics").decode()
    to = service.dev["allowlist"][0]
    req = json.loads(service.cli("mint", "request", "--operator", "alice", "--key", service.key("alice"),
                                 "--to", to, "--amount", "1000000", "--json").stdout)
    approved = json.loads(service.cli("mint", "approve", req["id"], "--operator", "bob", "--key", service.key("bob"),
                                      "--json").stdout)
    assert approved["status"] == "pending"  # one of two approvals
    text = _get(service.url + "/metrics").decode()

    checked = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, f"promtool check metrics:\n{checked.stdout}{checked.stderr}"
    assert (checked.stdout + checked.stderr).strip() == ""
    created = ("appliance_mint_requests_total", {"outcome": "created"})
    recorded = ("appliance_mint_approvals_total", {"outcome": "recorded"})
    for name, labels in (created, recorded):
        assert _counter(text, name, **labels) >= 1, (name, labels, text)
        assert _counter(text, name, **labels) == _counter(before, name, **labels) + 1, (name, labels)
    assert _counter(text, "appliance_mint_requests_pending") >= 1
    assert _counter(text, "appliance_hsm_up") == 1


# -- 2. start-up refusal of unfit keys ---------------------------------------------------------------------

UNFIT_KEY = r"""
import json, sys
import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism
from pkcs11.util.ec import encode_named_curve_parameters

module, token, pin, wanted = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
with pkcs11.lib(module).get_token(token_label=token).open(user_pin=pin, rw=True) as session:
    for label, flags in wanted.items():
        template = {Attribute.TOKEN: True, Attribute.PRIVATE: True, Attribute.SIGN: True, Attribute.SENSITIVE: True,
                    Attribute.EXTRACTABLE: False, Attribute.DERIVE: False, Attribute.DECRYPT: False,
                    Attribute.UNWRAP: False}
        template.update({getattr(Attribute, name.upper()): value for name, value in flags.items()})
        params = session.create_domain_parameters(
            KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")}, local=True)
        params.generate_keypair(store=True, label=label, mechanism=Mechanism.EC_KEY_PAIR_GEN,
                                private_template=template)
        private = session.get_key(object_class=pkcs11.ObjectClass.PRIVATE_KEY, label=label)
        for name, value in flags.items():  # the token really holds the unfit attribute
            assert bool(private[getattr(Attribute, name.upper())]) is value, (label, name)
"""

UNFIT = {  # label -> (attributes of the P-256 private key, what the refusal must say)
    "unfit-extractable": ({"extractable": True}, "is CKA_EXTRACTABLE"),
    "unfit-not-sensitive": ({"sensitive": False}, "is not CKA_SENSITIVE"),
    "unfit-derive": ({"derive": True}, "allows derive"),
    "unfit-decrypt": ({"decrypt": True}, "allows decrypt"),
}


def _start_up(config: Path) -> tuple[str, subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]:
    """`check` or `serve` with this config, bounded: a serve that does not exit is killed and reported."""
    results = []
    for args in (["check"], ["serve", "--listen", f"127.0.0.1:{free_port()}"]):
        proc = subprocess.Popen([*APPLIANCE, "--config", str(config), *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=_env(), start_new_session=True)
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            raise AssertionError(f"`appliance {args[0]}` with {config.name} did not exit within 60 s:\n{err}") from None
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return config.stem, results[0], results[1]


def test_check_and_serve_refuse_each_unfit_key_by_name(service: Service) -> None:
    _pkcs11(service.dev, UNFIT_KEY, json.dumps({label: flags for label, (flags, _) in UNFIT.items()}))
    base = Path(service.dev["config"]).read_text()
    assert 'attestation = "attestation-p256"' in base
    configs = []
    for label in UNFIT:
        cfg = service.directory / f"{label}.toml"
        cfg.write_text(base.replace('attestation = "attestation-p256"', f'attestation = "{label}"'))
        configs.append(cfg)
    for label, check, serve in map(_start_up, configs):  # one after the other: see _parallel
        _, expected = UNFIT[label]
        for command, out in (("check", check), ("serve", serve)):
            assert out.returncode != 0, (label, command, out.stdout, out.stderr)
            assert "Traceback" not in out.stdout + out.stderr, (label, command, out.stderr)
            assert f"{label}: {expected}" in out.stderr, (label, command, out.stderr)
            assert "not fit for signing" in out.stderr, (label, command, out.stderr)
            other = [m for _, m in UNFIT.values() if m != expected]
            assert not any(m in out.stderr for m in other), (label, command, out.stderr)  # only its own problem
        assert "refusing to serve" in serve.stderr, (label, serve.stderr)
        assert "serving on" not in serve.stderr, (label, serve.stderr)


IMPORTED_KEYS = r"""
import sys
import pkcs11
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.util.ec import encode_named_curve_parameters

module, token, pin = sys.argv[1], sys.argv[2], sys.argv[3]
params = encode_named_curve_parameters("secp256r1")
fit = {Attribute.TOKEN: True, Attribute.PRIVATE: True, Attribute.SIGN: True, Attribute.SENSITIVE: True,
       Attribute.EXTRACTABLE: False, Attribute.DERIVE: False, Attribute.DECRYPT: False, Attribute.UNWRAP: False}
with pkcs11.lib(module).get_token(token_label=token).open(user_pin=pin, rw=True) as session:
    # made outside the HSM (whoever made it knows d), then imported with the right flags
    outside = ec.generate_private_key(ec.SECP256R1())
    point = outside.public_key().public_bytes(serialization.Encoding.X962,
                                              serialization.PublicFormat.UncompressedPoint)
    common = {Attribute.KEY_TYPE: KeyType.EC, Attribute.LABEL: "unfit-imported", Attribute.EC_PARAMS: params}
    session.create_object({**common, **fit, Attribute.CLASS: ObjectClass.PRIVATE_KEY,
                           Attribute.VALUE: outside.private_numbers().private_value.to_bytes(32, "big")})
    session.create_object({**common, Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.TOKEN: True,
                           Attribute.VERIFY: True, Attribute.EC_POINT: bytes([4, len(point)]) + point})
    # generated inside, but extractable: its value read out, then flipped to sensitive and non-extractable
    _, private = session.create_domain_parameters(KeyType.EC, {Attribute.EC_PARAMS: params}, local=True)\
        .generate_keypair(store=True, label="unfit-was-extractable", mechanism=Mechanism.EC_KEY_PAIR_GEN,
                          private_template={**fit, Attribute.SENSITIVE: False, Attribute.EXTRACTABLE: True})
    assert len(bytes(private[Attribute.VALUE])) == 32  # the private value has left the HSM
    private[Attribute.SENSITIVE] = True
    private[Attribute.EXTRACTABLE] = False
    for label in ("unfit-imported", "unfit-was-extractable"):
        key = session.get_key(object_class=ObjectClass.PRIVATE_KEY, label=label)
        assert key[Attribute.SENSITIVE] and not key[Attribute.EXTRACTABLE], label
        assert not key[Attribute.ALWAYS_SENSITIVE] and not key[Attribute.NEVER_EXTRACTABLE], label
"""


def test_check_refuses_a_key_that_was_ever_outside_the_hsm(service: Service) -> None:
    """README: keys are generated inside the HSM, sensitive, non-extractable; the appliance refuses otherwise."""
    _pkcs11(service.dev, IMPORTED_KEYS)
    base = Path(service.dev["config"]).read_text()
    configs = []
    for label in ("unfit-imported", "unfit-was-extractable"):
        cfg = service.directory / f"{label}.toml"
        cfg.write_text(base.replace('attestation = "attestation-p256"', f'attestation = "{label}"'))
        configs.append(cfg)
    outs = [test_cli.run("--config", str(cfg), "check", env=_env(), check=False) for cfg in configs]
    for cfg, out in zip(configs, outs, strict=True):
        assert out.returncode != 0, (cfg.stem, out.stdout)
        assert cfg.stem in out.stderr and "Traceback" not in out.stderr, (cfg.stem, out.stderr)
    imported, was_extractable = (out.stderr for out in outs)
    assert "CKA_LOCAL is false" in imported
    assert "was CKA_EXTRACTABLE once" in was_extractable and "was not always CKA_SENSITIVE" in was_extractable


# -- a real chain of attestations, and a fork of it signed by the same key ----------------------------------

@dataclass
class Chain:
    evidence: Path  # `appliance attestations fetch` of the service: 1.jws 2.jws 3.jws jwks.json
    attested: list[dict[str, Any]]  # what `appliance attest --json` printed for seq 1, 2, 3
    fork: str  # seq 2 signed by the same key, from a copy of the store taken after seq 1
    forged: dict[str, str]  # attestations signed with the HSM key outside the service


@contextmanager
def _serve(config: Path, log_path: Path, probe: str = "/readyz") -> Iterator[Callable[[], str]]:
    """Start `appliance serve` now; the function yielded waits until `probe` answers 200 and returns its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([*APPLIANCE, "--config", str(config), "serve", "--listen", f"127.0.0.1:{port}"],
                                stdout=log, stderr=subprocess.STDOUT, env=_env(), start_new_session=True)

        def ready() -> str:
            deadline = time.monotonic() + 30
            while True:
                try:
                    _get(url + probe)
                    return url
                except OSError:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise AssertionError(f"{config.name}: the service did not become ready:\n" + log_path.read_text())
                time.sleep(0.2)

        try:
            yield ready
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


def _reports(service: Service, directory: Path, as_of: str) -> tuple[str, str]:
    """Copies of the dev environment's reserve report and supply snapshot, as of a later time."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in ("reserves.json", "supply.json"):
        data = json.loads((service.directory / "reports" / name).read_text())
        data["as_of"] = as_of
        if name == "reserves.json":  # as its custodian signs it
            signed = sign_reserve_report(load_key(service.key("heidi")), data)
            (directory / "reserves.jws").write_text(signed + "\n")
            paths.append(str(directory / "reserves.jws"))
            continue
        (directory / name).write_text(json.dumps(data, indent=2))
        paths.append(str(directory / name))
    return paths[0], paths[1]


def _attest(svc: Service, reserves: str, supply: str, *extra: str) -> dict[str, Any]:
    return dict(json.loads(svc.cli("attest", "--operator", "grace", "--key", svc.key("grace"), "--reserves",
                                   reserves, "--supply", supply, *extra, "--json").stdout))


FORGE = r"""
import base64, hashlib, json, sys
import pkcs11
from pkcs11 import Mechanism, ObjectClass

module, token, pin, label, todo = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], json.loads(sys.argv[5])
signed = {}
with pkcs11.lib(module).get_token(token_label=token).open(user_pin=pin) as session:
    key = session.get_key(object_class=ObjectClass.PRIVATE_KEY, label=label)
    for name, header, payload in todo:
        if str(payload.get("prev")).startswith("@"):  # the SHA-256 of one signed above
            payload["prev"] = hashlib.sha256(signed[payload["prev"][1:]].encode()).hexdigest()
        body = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        signing_input = header + "." + base64.urlsafe_b64encode(body).rstrip(b"=").decode()
        sig = bytes(key.sign(hashlib.sha256(signing_input.encode()).digest(), mechanism=Mechanism.ECDSA))
        signed[name] = signing_input + "." + base64.urlsafe_b64encode(sig).rstrip(b"=").decode()
print(json.dumps(signed))
"""


@pytest.fixture(scope="module")
def chain(service: Service, tmp_path_factory: pytest.TempPathFactory) -> Chain:
    work = tmp_path_factory.mktemp("chain")
    reports = service.directory / "reports"
    now = int(time.time())
    stamp = [datetime.fromtimestamp(now - s, UTC).strftime(TIME_FORMAT) for s in (7200, 5400, 3600)]
    first = _attest(service, str(reports / "reserves.jws"), str(reports / "supply.json"),
                    "--holders", str(reports / "holders.csv"))
    assert first["seq"] == 1, "the chain must start in this module's own service"
    # The store as it is after seq 1, for a second service on the same token and keys: a forked history.
    with sqlite3.connect(service.directory / "appliance.db") as src, \
            sqlite3.connect(service.directory / "fork.db") as dst:
        src.backup(dst)
    config = tomllib.loads(Path(service.dev["config"]).read_text())
    config["storage"]["url"] = "sqlite:///fork.db"
    config["attestation"]["data_dir"] = "fork-data"
    config["service"]["workers"] = 1
    fork_config = service.directory / "fork.toml"
    fork_config.write_text(tomli_w.dumps(config))

    evidence = work / "evidence"
    # (alive, but never ready once the token has moved past its store: /healthz, not /readyz)
    with _serve(fork_config, service.directory / "fork-serve.log", "/healthz") as fork_ready:  # starts meanwhile
        second = _attest(service, *_reports(service, work / "r2", stamp[0]))
        third = _attest(service, *_reports(service, work / "r3", stamp[2]))
        assert [second["seq"], third["seq"]] == [2, 3]
        # What the service refuses to sign (an as_of repeated, a pair of reports swapped), signed with its HSM
        # key directly: payloads as the service wrote them, with only those members changed.
        header = second["jws"].split(".")[0]
        p1, p2, p3 = (_payload(x["jws"]) for x in (first, second, third))
        todo = [("same-as-of", header, {**p2, "as_of": p1["as_of"]}),
                ("swapped-2", header, {**p3, "seq": 2, "prev": p2["prev"]}),  # the later report at seq 2
                ("swapped-3", header, {**p2, "seq": 3, "prev": "@swapped-2"}),  # the earlier one after it
                ("fork-2", header, {**p2, "as_of": stamp[1]})]  # another seq 2, linked to 1: a fork
        fork_reports = _reports(service, work / "f2", stamp[1])
        fork_service = Service(fork_ready(), service.dev, service.directory)  # logged in to the token: see _parallel
        refused, forged, _ = _parallel(
            lambda: fork_service.cli("attest", "--operator", "grace", "--key", fork_service.key("grace"),
                                     "--reserves", fork_reports[0], "--supply", fork_reports[1], "--json",
                                     check=False),
            lambda: json.loads(_pkcs11(service.dev, FORGE, config["keys"]["attestation"], json.dumps(todo))),
            lambda: service.cli("attestations", "fetch", str(evidence)))
        with pytest.raises(urllib.error.HTTPError) as not_ready:
            _get(fork_service.url + "/readyz")
        checks = json.loads(not_ready.value.read())["checks"]
        assert not_ready.value.code == 503 and not checks["integrity"]["ok"], checks
    # The service on the stale copy learns from the token that attestation 3 was signed: it refuses to fork.
    assert refused.returncode != 0 and "rollback-detected" in refused.stdout, refused.stdout + refused.stderr
    fork = {"seq": 2, "jws": forged["fork-2"]}  # what it would have signed, signed with the key directly
    assert _payload(fork["jws"])["prev"] == hashlib.sha256(first["jws"].encode()).hexdigest()
    assert sorted(p.name for p in evidence.iterdir()) == ["1.jws", "2.jws", "3.jws", "jwks.json"]
    for seq, out in enumerate((first, second, third), start=1):
        assert (evidence / f"{seq}.jws").read_text().strip() == out["jws"]
    return Chain(evidence, [first, second, third], fork["jws"], forged)


# -- 3. openssl verifies an attestation with the exported PEM ----------------------------------------------

def _pem_blocks(text: str) -> list[tuple[str, str]]:
    """(comment line, PEM) for each key of `keys export --format pem`."""
    blocks, comment, pem = [], "", []
    for line in text.splitlines(keepends=True):
        if line.startswith("-----BEGIN"):
            pem = [line]
        elif pem:
            pem.append(line)
            if line.startswith("-----END"):
                blocks.append((comment, "".join(pem)))
                comment, pem = "", []
        elif line.strip():
            comment = line.strip()
    return blocks


def test_openssl_verifies_an_attestation_with_the_exported_pem(service: Service, chain: Chain,
                                                              tmp_path: Path) -> None:
    # a regulator's way (from the service's JWKS, no HSM) and the operator's (--config: from the HSM) agree
    published, from_hsm = _parallel(partial(service.cli, "keys", "export", "--format", "pem"),
                                    partial(service.cli, "--config", service.dev["config"], "keys", "export",
                                            "--format", "pem"))
    out = published.stdout
    assert out == from_hsm.stdout
    blocks = _pem_blocks(out)
    assert len(blocks) == 3, out
    p256 = []
    for comment, pem in blocks:
        key = serialization.load_pem_public_key(pem.encode())
        if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1":
            p256.append((comment, pem))
    assert len(p256) == 1, out
    comment, pem = p256[0]
    jws = chain.attested[0]["jws"]
    head, body, sig = jws.split(".")
    header = json.loads(_b64url_decode(head))
    assert header["alg"] == "ES256" and header["typ"] == ATTESTATION_TYP
    assert "attestation" in comment and f"kid {header['kid']}" in comment, comment

    raw = _b64url_decode(sig)
    assert len(raw) == 64  # JWS ES256: raw r||s
    (tmp_path / "key.pem").write_text(pem)
    (tmp_path / "sig.der").write_bytes(encode_dss_signature(int.from_bytes(raw[:32], "big"),
                                                            int.from_bytes(raw[32:], "big")))
    (tmp_path / "input").write_bytes(f"{head}.{body}".encode("ascii"))
    (tmp_path / "other").write_bytes(f"{head}.{body}x".encode("ascii"))

    def openssl(name: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["openssl", "dgst", "-sha256", "-verify", str(tmp_path / "key.pem"), "-signature",
                               str(tmp_path / "sig.der"), str(tmp_path / name)], capture_output=True, text=True,
                              timeout=30)

    good, tampered = openssl("input"), openssl("other")
    assert good.returncode == 0 and "Verified OK" in good.stdout, good.stdout + good.stderr
    assert tampered.returncode != 0 and "Verification failure" in tampered.stdout + tampered.stderr


# -- 4. kids are RFC 7638 thumbprints (jwcrypto); the mint address is derived independently (eth-keys) -------

def test_published_kids_are_rfc7638_thumbprints_and_the_mint_address_matches(service: Service) -> None:
    served = json.loads(_get(service.url + "/.well-known/jwks.json"))
    fetched, from_hsm = _parallel(partial(service.cli, "keys", "export", "--format", "jwks"),
                                  partial(service.cli, "--config", service.dev["config"], "keys", "export",
                                          "--format", "jwks"))
    for jwks in (json.loads(fetched.stdout), json.loads(from_hsm.stdout)):
        assert jwks == served
    keys = served["keys"]
    assert sorted((k["kty"], k["crv"]) for k in keys) == [("EC", "P-256"), ("EC", "secp256k1"), ("OKP", "Ed25519")]
    for k in keys:
        assert k["kid"] == jwk.JWK(**k).thumbprint(), k
        assert "d" not in k  # public keys only
    mint = next(k for k in keys if k["crv"] == "secp256k1")
    point = _b64url_decode(mint["x"]) + _b64url_decode(mint["y"])
    assert len(point) == 64
    derived = PublicKey(point).to_checksum_address()
    assert mint["address"] == derived
    assert to_checksum_address(keccak(point)[-20:]) == derived  # keccak-256 of x||y, last 20 bytes, EIP-55


# -- 5. `appliance verify chain` names each fault of a real signed history -----------------------------------

def _history(root: Path, name: str, files: dict[str, str], jwks: Path) -> Path:
    directory = root / name
    directory.mkdir()
    for file, jws in files.items():
        (directory / file).write_text(jws.strip() + "\n")
    shutil.copy(jwks, directory / "jwks.json")
    return directory


def test_verify_chain_names_each_fault_of_real_signed_attestations(service: Service, chain: Chain,
                                                                   tmp_path: Path) -> None:
    jwks = chain.evidence / "jwks.json"
    a1, a2, a3 = ((chain.evidence / f"{seq}.jws").read_text() for seq in (1, 2, 3))
    p1, p2, p3 = (_payload(x) for x in (a1, a2, a3))
    cases = {  # name -> (files, the failures `verify chain` must list, and nothing else)
        "whole": ({"1.jws": a1, "2.jws": a2, "3.jws": a3}, []),
        "gap": ({"1.jws": a1, "3.jws": a3}, ["seq 2 missing"]),
        # a real attestation 2 by the same key, from a forked store: valid itself, but 3 does not link to it
        "wrong-prev": ({"1.jws": a1, "2.jws": chain.fork, "3.jws": a3},
                       ["seq 3: prev is not the SHA-256 of attestation 2"]),
        # both attestations 2 of the fork, each signed by the key and linked to 1: equivocation
        "two-seq-2": ({"1.jws": a1, "2.jws": a2, "2-fork.jws": chain.fork, "3.jws": a3}, ["seq 2 appears twice"]),
        "repeated-as-of": ({"1.jws": a1, "2.jws": chain.forged["same-as-of"]},
                           [f"seq 2: as_of {p1['as_of']} is not after {p1['as_of']} (seq 1)"]),
        "swapped-reports": ({"1.jws": a1, "2.jws": chain.forged["swapped-2"], "3.jws": chain.forged["swapped-3"]},
                            [f"seq 3: as_of {p2['as_of']} is not after {p3['as_of']} (seq 2)"]),
        # file names are labels: the signed seq orders the history, so swapping files changes nothing
        "swapped-files": ({"1.jws": a1, "2.jws": a3, "3.jws": a2}, []),
    }
    directories = {name: _history(tmp_path, name, files, jwks) for name, (files, _) in cases.items()}
    calls = {(name, flag): partial(service.cli, "verify", "chain", str(d), "--jwks", str(d / "jwks.json"),
                                   *flag, check=False)
             for name, d in directories.items() for flag in (("--json",), ()) if flag or cases[name][1]}
    results = dict(zip(calls, _parallel(*calls.values()), strict=True))
    for name, (_, expected) in cases.items():
        as_json = results[name, ("--json",)]
        report = json.loads(as_json.stdout)
        if not expected:
            assert as_json.returncode == 0, (name, as_json.stdout, as_json.stderr)
            assert report["valid"] is True and report["attestations"] == 3 and report["latest_seq"] == 3, name
            continue
        text = results[name, ()]
        assert text.returncode == 1 and as_json.returncode == 1, (name, text.stdout, text.stderr, as_json.stdout)
        assert "Traceback" not in text.stderr + as_json.stderr, name
        assert report["valid"] is False and report["failures"] == expected, (name, report)
        assert text.stderr.startswith("INVALID: the attestation chain does not hold"), (name, text.stderr)
        for failure in expected:
            assert failure in text.stderr, (name, text.stderr)
