"""The HSM adapter against real SoftHSM2: key attributes, refusal of unfit keys, concurrency, openssl."""

from __future__ import annotations

import hashlib
import os
import subprocess
import threading
import uuid
from pathlib import Path

import pkcs11
import pytest
from cryptography.hazmat.primitives import serialization
from pkcs11 import Attribute, KeyType, Mechanism
from pkcs11.util.ec import encode_named_curve_parameters

from appliance.domain import eip712, jose
from appliance.errors import ConfigError
from appliance.hsm import Curve, Hsm, KeySpec, check_keys
from appliance.signing import HsmSigner, public_key_from_point
from tests.conftest import BAD_TOKEN, TEST_PIN, TOKEN

MODULE = "/usr/lib/softhsm/libsofthsm2.so"


@pytest.fixture(scope="module")
def hsm() -> Hsm:
    return Hsm(MODULE, TOKEN, lambda: TEST_PIN)


def fresh(hsm: Hsm, curve: Curve) -> KeySpec:
    spec = KeySpec(f"t-{curve.name.lower()}-{uuid.uuid4().hex[:8]}", curve)
    hsm.generate(spec)
    return spec


@pytest.mark.parametrize("curve", list(Curve))
def test_generated_keys_are_sensitive_non_extractable_and_sign_only(hsm: Hsm, curve: Curve) -> None:
    spec = fresh(hsm, curve)
    attrs = hsm.attributes(spec.label)
    assert attrs.token and attrs.private and attrs.sensitive and attrs.sign
    assert not attrs.extractable and attrs.never_extractable and attrs.always_sensitive and attrs.local
    assert not attrs.derive and not attrs.decrypt and not attrs.unwrap
    assert attrs.problems() == []
    check_keys(hsm, [spec])


def _unfit_key(label: str, **private: bool) -> None:
    """Create a key the appliance must refuse, directly through python-pkcs11 (not the adapter)."""
    lib = pkcs11.lib(MODULE)
    token = lib.get_token(token_label=BAD_TOKEN)
    try:
        session = token.open(user_pin=TEST_PIN, rw=True)
    except pkcs11.exceptions.UserAlreadyLoggedIn:  # login is per process and token
        session = token.open(rw=True)
    with session:
        params = session.create_domain_parameters(
            KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")}, local=True)
        template = {Attribute.TOKEN: True, Attribute.PRIVATE: True, Attribute.SIGN: True,
                    Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False, Attribute.DERIVE: False}
        template.update({getattr(Attribute, k.upper()): v for k, v in private.items()})
        params.generate_keypair(store=True, label=label, mechanism=Mechanism.EC_KEY_PAIR_GEN,
                                private_template=template)


@pytest.mark.parametrize(("unfit", "message"), [
    ({"extractable": True, "sensitive": False}, "is CKA_EXTRACTABLE"),
    ({"derive": True}, "allows derive"),
])
def test_unfit_keys_are_refused(unfit: dict[str, bool], message: str) -> None:
    label = f"unfit-{uuid.uuid4().hex[:8]}"
    _unfit_key(label, **unfit)
    bad = Hsm(MODULE, BAD_TOKEN, lambda: TEST_PIN)
    with pytest.raises(ConfigError) as caught:
        check_keys(bad, [KeySpec(label, Curve.P256)])
    assert message in str(caught.value)


def test_missing_key_is_refused(hsm: Hsm) -> None:
    with pytest.raises(ConfigError, match="missing from the token"):
        check_keys(hsm, [KeySpec("no-such-key", Curve.P256)])


def test_eight_threads_sign_concurrently_without_errors(hsm: Hsm) -> None:
    signer = HsmSigner(hsm, fresh(hsm, Curve.P256))
    signer.public_jwk()
    errors: list[BaseException] = []
    signatures: list[tuple[bytes, bytes]] = []
    lock = threading.Lock()

    def work(worker: int) -> None:
        for i in range(500):
            message = f"{worker}:{i}".encode()
            try:
                sig = signer.sign(message)
            except BaseException as exc:  # noqa: BLE001 - the test counts every failure
                errors.append(exc)
                continue
            with lock:
                signatures.append((message, sig))

    threads = [threading.Thread(target=work, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(signatures) == 4000
    jwk = signer.public_jwk()
    for message, sig in signatures:  # independently of the adapter's own check
        jose.verify_raw(jwk, "ES256", message, sig)


def test_p256_signature_verifies_with_openssl(hsm: Hsm, tmp_path: Path) -> None:
    spec = fresh(hsm, Curve.P256)
    signer = HsmSigner(hsm, spec)
    message = b"reserve attestation test message"
    raw = signer.sign(message)
    (tmp_path / "pub.pem").write_bytes(public_key_from_point(spec.curve, signer.point).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    (tmp_path / "msg").write_bytes(message)
    (tmp_path / "sig.der").write_bytes(jose.raw_to_der(raw, 32))
    result = subprocess.run(["openssl", "dgst", "-sha256", "-verify", str(tmp_path / "pub.pem"), "-signature",
                             str(tmp_path / "sig.der"), str(tmp_path / "msg")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "Verified OK" in result.stdout
    (tmp_path / "msg").write_bytes(message + b"!")
    tampered = subprocess.run(["openssl", "dgst", "-sha256", "-verify", str(tmp_path / "pub.pem"), "-signature",
                               str(tmp_path / "sig.der"), str(tmp_path / "msg")], capture_output=True, text=True)
    assert tampered.returncode != 0


def test_ed25519_signature_verifies_with_openssl(hsm: Hsm, tmp_path: Path) -> None:
    spec = fresh(hsm, Curve.ED25519)
    signer = HsmSigner(hsm, spec)
    message = b"checkpoint body\n"
    (tmp_path / "pub.pem").write_bytes(public_key_from_point(spec.curve, signer.point).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    (tmp_path / "msg").write_bytes(message)
    (tmp_path / "sig").write_bytes(signer.sign(message))
    result = subprocess.run(["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(tmp_path / "pub.pem"),
                             "-rawin", "-in", str(tmp_path / "msg"), "-sigfile", str(tmp_path / "sig")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr + result.stdout


def test_secp256k1_signatures_are_low_s_and_recover_to_the_key(hsm: Hsm) -> None:
    from eth_account import Account

    signer = HsmSigner(hsm, fresh(hsm, Curve.SECP256K1))
    raw_high = 0
    for i in range(40):
        digest = hashlib.sha256(f"mint {i}".encode()).digest()
        raw = hsm.sign(signer.spec, digest)
        raw_high += int.from_bytes(raw[32:], "big") > eip712.SECP256K1_N // 2
        sig = signer.sign_eth_digest(digest)
        s = int.from_bytes(sig[32:64], "big")
        assert s <= eip712.SECP256K1_N // 2
        assert sig[64] in (27, 28)
        assert Account._recover_hash(digest, signature=sig) == signer.address
    assert raw_high > 0  # SoftHSM really does return high-s signatures, which the signer normalised


def test_lost_session_is_reopened(hsm: Hsm) -> None:
    signer = HsmSigner(hsm, fresh(hsm, Curve.ED25519))
    signer.sign(b"before")
    hsm._session.close()  # simulate the HSM dropping our session
    assert len(signer.sign(b"after")) == 64


def test_wrong_token_label_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no token labelled"):
        Hsm(MODULE, "no-such-token", lambda: TEST_PIN).ping()


def test_wrong_pin_is_a_clear_error_in_a_fresh_process() -> None:
    code = ("from appliance.hsm import Hsm\n"
            "from appliance.errors import ConfigError\n"
            "try:\n"
            f"    Hsm({MODULE!r}, {TOKEN!r}, lambda: 'wrong-pin').ping()\n"
            "except ConfigError as e:\n"
            "    print('ConfigError:', e)\n")
    out = subprocess.run([os.sys.executable, "-c", code], capture_output=True, text=True, env=os.environ)
    assert "ConfigError: the PIN for token" in out.stdout, out.stderr


def test_create_token_is_idempotent_and_never_prints_a_pin_it_did_not_set(tmp_path: Path) -> None:
    import os
    import subprocess

    script = Path(__file__).resolve().parents[2] / "softhsm" / "create-token.sh"
    first = subprocess.run([str(script), str(tmp_path), "twice"], capture_output=True, text=True, check=True,
                           env={**os.environ, "SO_PIN": "so-1234", "USER_PIN": "user-1234"})
    assert "user PIN: user-1234" in first.stdout
    again = subprocess.run([str(script), str(tmp_path), "twice"], capture_output=True, text=True, check=True)
    assert "already exists" in again.stderr and "PIN" not in again.stdout
    slots = subprocess.run(["softhsm2-util", "--show-slots"], capture_output=True, text=True, check=True,
                           env={**os.environ, "SOFTHSM2_CONF": str(tmp_path / "softhsm2.conf")}).stdout
    assert sum(1 for line in slots.splitlines() if line.split(":")[-1].strip() == "twice") == 1


def test_create_token_takes_pins_only_from_the_environment(tmp_path: Path) -> None:
    """Every user can read a command line in /proc: PINs given as arguments are refused, and nothing the script
    runs gets a PIN as an argument (softhsm2-util --init-token would; init_token.py reads its environment)."""
    import subprocess

    softhsm = Path(__file__).resolve().parents[2] / "softhsm"
    refused = subprocess.run([str(softhsm / "create-token.sh"), str(tmp_path), "argv", "so-1234", "user-1234"],
                             capture_output=True, text=True, check=False)
    assert refused.returncode == 2 and "environment" in refused.stderr
    assert "--pin" not in (softhsm / "create-token.sh").read_text()
    assert "--so-pin" not in (softhsm / "create-token.sh").read_text()


@pytest.mark.slow
def test_processes_opening_the_token_while_another_logs_in_and_out_all_get_a_session(tmp_path: Path) -> None:
    """At every login SoftHSM2 rewrites `token.object`, truncating it before it takes its lock; a process listing
    tokens at that moment sees the token without its label (see `softhsm_open_lock`). Measured here with the other
    core kept busy and no retry at all: 12 of 40 fresh processes failed without the open lock, 0 of 190 with it.
    So this runs with the retry switched off and a busy loop beside it: the lock alone must make it pass.

    A throwaway token of its own: a process killed while SoftHSM2 rewrites a token leaves it empty, so the churning
    process is never killed here, it stops by itself when asked."""
    import sys
    import time

    script = Path(__file__).resolve().parents[2] / "softhsm" / "create-token.sh"
    subprocess.run([str(script), str(tmp_path), "churn"], check=True, capture_output=True,
                   env={**os.environ, "SO_PIN": "so-" + TEST_PIN, "USER_PIN": TEST_PIN})
    env = {**os.environ, "SOFTHSM2_CONF": str(tmp_path / "softhsm2.conf")}
    stop = tmp_path / "stop"
    churn_code = ("import sys, pathlib\n"
                  "from appliance.hsm import Hsm\n"
                  f"h = Hsm({MODULE!r}, 'churn', lambda: {TEST_PIN!r})\n"
                  "stop = pathlib.Path(sys.argv[1])\n"
                  "while not stop.exists():\n"
                  "    h.ping(); h.close()\n")
    open_code = ("from appliance.hsm import pkcs11_adapter\n"
                 "pkcs11_adapter._OPEN_ATTEMPTS = 1  # no retry: only the open lock stands between it and the race\n"
                 f"pkcs11_adapter.Hsm({MODULE!r}, 'churn', lambda: {TEST_PIN!r}).ping()\n")
    churn = subprocess.Popen([sys.executable, "-c", churn_code, str(stop)], env=env, stderr=subprocess.PIPE,
                             text=True)
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])  # the other core, as on a busy CI machine
    try:
        time.sleep(0.5)
        failures = []
        for _ in range(24):
            opened = subprocess.run([sys.executable, "-c", open_code], capture_output=True, text=True, env=env,
                                    timeout=30)
            if opened.returncode != 0:
                failures.append(opened.stderr.strip().splitlines()[-1])
        assert churn.poll() is None, churn.stderr.read() if churn.stderr else ""  # the churning one survives too
        assert failures == []
    finally:
        busy.kill()
        stop.touch()
        churn.wait(30)


def test_the_open_lock_sits_beside_the_softhsm_token_directory(tmp_path: Path) -> None:
    from appliance.hsm.pkcs11_adapter import softhsm_open_lock

    conf = tmp_path / "softhsm2.conf"
    conf.write_text("# comment\ndirectories.tokendir = /var/lib/tokens/\nobjectstore.backend = file\n")
    assert softhsm_open_lock(MODULE, str(conf)) == Path("/var/lib/tokens.open.lock")
    assert softhsm_open_lock("/usr/lib/vendor/libcloudhsm_pkcs11.so", str(conf)) is None
    assert softhsm_open_lock(MODULE, str(tmp_path / "missing.conf")) is None
    conf.write_text("objectstore.backend = file\n")
    assert softhsm_open_lock(MODULE, str(conf)) is None


def test_a_worker_told_to_stop_starts_no_hsm_call_and_still_runs_gunicorns_handler() -> None:
    """The SIGKILL that follows a grace period must never land inside an HSM call (SoftHSM2 truncates a token file
    before rewriting it): once SIGTERM arrives, the worker's Hsm refuses new calls, then gunicorn's handler runs."""
    import sys

    code = ("import os, signal\n"
            "from appliance.errors import HsmUnavailable\n"
            "from appliance.hsm import Hsm\n"
            "from appliance.server import drain_on_stop\n"
            "seen = []\n"
            "signal.signal(signal.SIGTERM, lambda s, f: seen.append(s))  # stands in for gunicorn's handler\n"
            f"h = Hsm({MODULE!r}, {TOKEN!r}, lambda: {TEST_PIN!r})\n"
            "h.ping()\n"
            "drain_on_stop(h)\n"
            "os.kill(os.getpid(), signal.SIGTERM)\n"
            "assert seen == [signal.SIGTERM], seen\n"
            "try:\n"
            "    h.ping()\n"
            "except HsmUnavailable as exc:\n"
            "    print('refused:', exc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert "refused: this process is shutting down" in out.stdout
