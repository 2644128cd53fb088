"""The physical limit: raw python-pkcs11 signatures per second for each key type, one process, one thread."""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
import time
from pathlib import Path

from bench.common import ROOT, Result

PIN = "bench-throwaway-pin"


def measure(seconds: float = 2.0) -> dict[str, float]:
    """Signatures per second straight through python-pkcs11 (no adapter), in a fresh token."""
    import pkcs11
    from pkcs11 import Attribute, KeyType, Mechanism
    from pkcs11.util.ec import encode_named_curve_parameters

    home = Path(tempfile.mkdtemp(prefix="bench-hsm-"))
    subprocess.run([str(ROOT / "softhsm" / "create-token.sh"), str(home), "bench"], check=True, capture_output=True,
                   env={**os.environ, "SO_PIN": "so-" + PIN, "USER_PIN": PIN})
    os.environ["SOFTHSM2_CONF"] = str(home / "softhsm2.conf")
    lib = pkcs11.lib("/usr/lib/softhsm/libsofthsm2.so")
    session = lib.get_token(token_label="bench").open(user_pin=PIN, rw=True)
    rates: dict[str, float] = {}
    for name, kt, oid, gen, mech, prehash in (
            ("P-256", KeyType.EC, "secp256r1", Mechanism.EC_KEY_PAIR_GEN, Mechanism.ECDSA, True),
            ("secp256k1", KeyType.EC, "secp256k1", Mechanism.EC_KEY_PAIR_GEN, Mechanism.ECDSA, True),
            ("Ed25519", KeyType.EC_EDWARDS, "1.3.101.112", Mechanism.EC_EDWARDS_KEY_PAIR_GEN, Mechanism.EDDSA, False)):
        params = session.create_domain_parameters(kt, {Attribute.EC_PARAMS: encode_named_curve_parameters(oid)},
                                                  local=True)
        _, priv = params.generate_keypair(store=False, mechanism=gen)
        data = hashlib.sha256(b"x").digest() if prehash else b"x" * 200
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            for _ in range(100):
                priv.sign(data, mechanism=mech)
            count += 100
        rates[name] = count / (time.perf_counter() - started)
    session.close()
    return rates


def adapter_rate(seconds: float = 2.0) -> dict[str, float]:
    """The same through the appliance's adapter and signer (lock, verification after signing)."""
    from appliance.hsm import Curve, Hsm, KeySpec
    from appliance.signing import HsmSigner

    hsm = Hsm("/usr/lib/softhsm/libsofthsm2.so", "bench", lambda: PIN)
    rates = {}
    for name, curve in (("P-256", Curve.P256), ("secp256k1", Curve.SECP256K1), ("Ed25519", Curve.ED25519)):
        spec = KeySpec(f"bench-{name}", curve)
        if not hsm.has_key(spec.label):
            hsm.generate(spec)
        signer = HsmSigner(hsm, spec)
        sign = (lambda s=signer: s.sign_eth_digest(b"\x01" * 32)) if curve is Curve.SECP256K1 else (
            lambda s=signer: s.sign(b"x" * 200))
        sign()
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            for _ in range(50):
                sign()
            count += 50
        rates[name] = count / (time.perf_counter() - started)
    return rates


def run(quick: bool) -> tuple[dict[str, float], list[Result]]:
    seconds = 0.5 if quick else 2.0
    raw = measure(seconds)
    through = adapter_rate(seconds)
    results = [Result(f"adapter sign {k} (verified)", through[k], "sig/s", raw[k], f"raw python-pkcs11 {k}",
                      extra={"raw": raw[k]}) for k in raw]
    return raw, results
