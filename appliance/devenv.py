"""`appliance dev-init DIR`: a complete throwaway environment for development and tests.

A SoftHSM2 token with the three keys, appliance.toml (SQLite in DIR), policy.toml, operators.toml and the dev
operators' private keys. Everything in DIR is a throwaway test secret: the user PIN, the SO PIN, the operator
keys and the liabilities secret. Never point a production config at it.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import tomli_w
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from appliance.domain import eip712, jose
from appliance.errors import ConfigError

TOKEN_LABEL = "appliance-dev"  # noqa: S105 - a token label, not a secret
DEV_CHAIN_ID = 31337
DEV_PORT = 8080
DEV_OPERATORS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("alice", ("treasury",), "Ed25519"),
    ("bob", ("treasury",), "P-256"),
    ("carol", ("treasury",), "Ed25519"),
    ("dave", ("cfo",), "P-256"),
    ("erin", ("security-admin",), "Ed25519"),
    ("frank", ("security-admin",), "P-256"),
    ("grace", ("auditor",), "Ed25519"),
    ("heidi", ("custodian",), "P-256"),
)
DEV_CUSTODIAN = "heidi"
MILLION_TOKENS = str(1_000_000 * 10**6)  # base units at 6 decimals


@dataclass(frozen=True)
class DevEnvironment:
    config: Path
    softhsm2_conf: Path
    token: str
    user_pin: str
    chain_id: int
    verifying_contract: str
    allowlist: list[str]
    operators: list[dict[str, Any]]
    trust_anchor: str = ""  # the first policy bundle's hash, as pinned in the token by init

    def summary(self) -> dict[str, Any]:
        return {"config": str(self.config), "softhsm2_conf": str(self.softhsm2_conf), "token": self.token,
                "user_pin": self.user_pin, "chain_id": self.chain_id,
                "verifying_contract": self.verifying_contract, "allowlist": self.allowlist,
                "operators": self.operators, "trust_anchor": self.trust_anchor}


def create_token_script() -> Path:
    """softhsm/create-token.sh of the source checkout (dev-init is a development tool)."""
    script = Path(__file__).resolve().parents[1] / "softhsm" / "create-token.sh"
    if not script.exists():
        raise ConfigError(f"{script} not found: run dev-init from a source checkout")
    return script


def random_address() -> str:
    return eip712.to_checksum_address(secrets.token_bytes(20))


def _operator_key(kind: str) -> Any:
    return ed25519.Ed25519PrivateKey.generate() if kind == "Ed25519" else ec.generate_private_key(ec.SECP256R1())


def dev_policy(allowlist: list[str]) -> dict[str, Any]:
    return {
        "version": 1,
        "name": "development",
        "mint": {
            "max_per_request": str(10_000_000 * 10**6),
            "velocity_limit": str(50_000_000 * 10**6),
            "velocity_window_seconds": 86400,
            "request_ttl_seconds": 86400,
            "approval_ttl_seconds": 3600,
            "authorization_validity_seconds": 86400,
            "veto_on_reject": True,
            "tiers": [
                {"up_to": MILLION_TOKENS, "approvals": 2, "eligible_roles": ["treasury", "cfo"]},
                {"approvals": 3, "eligible_roles": ["treasury", "cfo"], "required": {"cfo": 1}},
            ],
            "allowlist": [{"chain_id": DEV_CHAIN_ID, "address": a, "label": f"dev wallet {i + 1}"}
                          for i, a in enumerate(allowlist)],
        },
        "governance": {"approvals": 2, "eligible_roles": ["security-admin"]},
        "reserve_guard": {"enabled": False, "max_attestation_age_seconds": 172800},
        # the console of `make run` (http://localhost:8080/console/): officers may enrol security keys there
        "webauthn": {"rp_id": "localhost", "origins": [f"http://localhost:{DEV_PORT}"]},
    }


POLICY_HEADER = """\
# Development policy written by `appliance dev-init` (a throwaway environment).
# Up to 1,000,000 tokens (10^12 base units at 6 decimals) a request needs 2 approvals from treasury or cfo;
# more needs 3, including one cfo. The requester never counts.
# The reserve guard is OFF here so that mints work before the first attestation, and software keys count on
# every tier (the officers' PEM files in operators/); the example policy in firmware-config/ has the guard on
# and demands security keys above the smallest tier and for governance, as a production deployment should.
# Editing this file does not change what a running appliance enforces: propose it with
# `appliance policy propose` and have security admins approve it.

"""


def dev_init(directory: Path) -> DevEnvironment:
    """Create (or refuse to overwrite) a dev environment in `directory`, with its own token, and init it."""
    directory = directory.resolve()
    if (directory / "appliance.toml").exists():
        raise ConfigError(f"{directory} already holds a dev environment (appliance.toml exists)")
    directory.mkdir(parents=True, exist_ok=True)
    if shutil.which("softhsm2-util") is None:
        raise ConfigError("softhsm2-util not found: install SoftHSM2 (apt-get install softhsm2)")
    user_pin = secrets.token_hex(8)
    result = subprocess.run([str(create_token_script()), str(directory / "softhsm"), TOKEN_LABEL],  # noqa: S603
                            capture_output=True, text=True, check=False,  # PINs in the environment, not argv
                            env={**os.environ, "SO_PIN": secrets.token_hex(8), "USER_PIN": user_pin})
    if result.returncode != 0:
        raise ConfigError(f"cannot create the SoftHSM2 token: {result.stderr.strip()}")
    env = write_environment(directory, TOKEN_LABEL, directory / "softhsm" / "softhsm2.conf", user_pin)

    from appliance import config as config_module
    from appliance.services import setup

    initialised = setup.init(config_module.load(env.config))
    return replace(env, trust_anchor=initialised["trust_anchor"])


def write_environment(directory: Path, token: str, softhsm_conf: Path, user_pin: str,
                      storage_url: str = "sqlite:///appliance.db") -> DevEnvironment:
    """Write config, policy, operators and operator keys for an existing token (no HSM calls)."""
    directory.mkdir(parents=True, exist_ok=True)
    _write_secret(directory / "hsm-pin", user_pin + "\n")
    _write_secret(directory / "liabilities.secret", secrets.token_hex(32) + "\n")
    allowlist = [random_address(), random_address()]
    contract = random_address()
    keys_dir = directory / "operators"
    keys_dir.mkdir(exist_ok=True)
    operators_toml: list[dict[str, Any]] = []
    summary: list[dict[str, Any]] = []
    custodian_key = None
    for name, roles, kind in DEV_OPERATORS:
        key = _operator_key(kind)
        custodian_key = key if name == DEV_CUSTODIAN else custodian_key
        path = keys_dir / f"{name}.pem"
        _write_secret(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()).decode("ascii"))
        operators_toml.append({"name": name, "roles": list(roles), "enabled": True,
                               "jwk": jose.public_jwk(key.public_key())})
        summary.append({"name": name, "roles": list(roles), "key": str(path)})

    (directory / "operators.toml").write_text(
        "# Development operators written by `appliance dev-init`; private keys are in operators/.\n\n"
        + tomli_w.dumps({"operators": operators_toml}), encoding="utf-8")
    (directory / "policy.toml").write_text(POLICY_HEADER + tomli_w.dumps(dev_policy(allowlist)), encoding="utf-8")
    for sub in ("reports", "data"):
        (directory / sub).mkdir(exist_ok=True)
    write_example_reports(directory / "reports", contract, custodian_key)
    (directory / "reports" / "next-day").mkdir(exist_ok=True)  # the next report: a second, chained attestation
    write_example_reports(directory / "reports" / "next-day", contract, custodian_key, as_of="2026-11-25T16:00:00Z")
    config = {
        "hsm": {"module": _softhsm_module(), "token_label": token, "pin_file": "hsm-pin",
                "softhsm2_conf": str(softhsm_conf)},
        "keys": {"mint": "mint-secp256k1", "attestation": "attestation-p256", "audit": "audit-ed25519",
                 "policy_anchor": f"policy-anchor-{secrets.token_hex(6)}"},
        "storage": {"url": storage_url, "write_timeout_seconds": 5.0},
        "service": {"listen": f"127.0.0.1:{DEV_PORT}", "workers": 2, "threads": 8, "max_body_bytes": 1048576},
        "issuer": {"name": "Example HKD Stablecoin Issuer Ltd (dev)", "token_symbol": "HKDS",
                   "token_name": "HKD Stablecoin", "token_decimals": 6, "currency": "HKD"},
        "eip712": {"name": "HKD Stablecoin", "version": "1"},
        "chains": [{"chain_id": DEV_CHAIN_ID, "verifying_contract": contract}],
        "audit": {"origin": "dev.appliance.example/audit", "checkpoint_interval_seconds": 10},
        "policy": {"policy_file": "policy.toml", "operators_file": "operators.toml"},
        "attestation": {"data_dir": "data", "liabilities_secret_file": "liabilities.secret", "schedule_minutes": 0},
    }
    config_path = directory / "appliance.toml"
    config_path.write_text("# Development appliance written by `appliance dev-init` (throwaway).\n"
                           "# See firmware-config/appliance.toml for every setting explained.\n\n"
                           + tomli_w.dumps(config), encoding="utf-8")
    return DevEnvironment(config=config_path, softhsm2_conf=softhsm_conf, token=token, user_pin=user_pin,
                          chain_id=DEV_CHAIN_ID, verifying_contract=contract, allowlist=allowlist,
                          operators=summary)


def write_example_reports(directory: Path, contract: str, custodian_key: Any = None,
                          as_of: str = "2026-11-24T16:00:00Z") -> None:
    """Example custodian report, supply snapshot and holder balances, consistent with each other; with the
    custodian's key also the signed report (reserves.jws) an auditor attests from."""
    import json

    from appliance.operator import SoftwareSigner, sign_reserve_report

    reserves = {
        "as_of": as_of, "currency": "HKD", "decimals": 2,
        "holdings": [
            {"custodian": "HSBC Hong Kong", "account": "HK-001-OPS", "asset_class": "cash", "amount": "12500000000"},
            {"custodian": "Bank of China (HK)", "account": "BOCHK-TD-7", "asset_class": "deposit",
             "amount": "45000000000"},
            {"custodian": "HKMA CMU", "account": "CMU-EFB-22", "asset_class": "tbill", "amount": "40000000000"},
            {"custodian": "Standard Chartered HK", "account": "SC-RR-3", "asset_class": "repo",
             "amount": "2600000000"},
        ],
        "evidence": [{"name": "custodian-statements-2026-11-24.pdf",
                      "sha256": "9f2c1d0b1e4f5a6b7c8d9e0f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d"}],
    }
    supply = {"as_of": as_of, "decimals": 6,
              "chains": [{"chain_id": DEV_CHAIN_ID, "contract": contract, "total_supply": "950000000000000"}]}
    holders = "account,balance\n" + "".join(f"holder-{i:04d},{b}\n" for i, b in enumerate(
        (400000000000000, 300000000000000, 150000000000000, 99999000000000, 1000000000)))
    (directory / "reserves.json").write_text(json.dumps(reserves, indent=2) + "\n", encoding="utf-8")
    if custodian_key is not None:
        signed = sign_reserve_report(SoftwareSigner.for_key(custodian_key), reserves)
        (directory / "reserves.jws").write_text(signed + "\n", encoding="ascii")
    (directory / "supply.json").write_text(json.dumps(supply, indent=2) + "\n", encoding="utf-8")
    (directory / "holders.csv").write_text(holders, encoding="utf-8")


def _softhsm_module() -> str:
    for candidate in ("/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
                      "/usr/local/lib/softhsm/libsofthsm2.so"):
        if Path(candidate).exists():
            return candidate
    raise ConfigError("libsofthsm2.so not found: install SoftHSM2 (apt-get install softhsm2)")


def _write_secret(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
