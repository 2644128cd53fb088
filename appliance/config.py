"""Loads `appliance.toml` into typed, validated settings.

Every problem is reported with the file and the field (`appliance.toml: hsm.token_label: required`), all at
once, as a `ConfigError`. Relative paths are resolved against the directory of the config file. The HSM PIN
never lives in the config: only where to read it from (an environment variable or a file).
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.domain import patterns
from appliance.errors import ConfigError, Problem

DEFAULT_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
_LISTEN = re.compile(r"^(?P<host>[^:\s]+|\[[0-9a-fA-F:]+\]):(?P<port>[0-9]{1,5})$")


@dataclass(frozen=True)
class HsmSettings:
    module: str
    token_label: str
    pin_env: str | None
    pin_file: Path | None
    softhsm2_conf: Path | None
    mint_key: str
    attestation_key: str
    audit_key: str
    policy_anchor: str = "policy-anchor"

    def pin(self) -> str:
        """Read the user PIN from its source; ConfigError when it is not there."""
        if self.pin_env is not None:
            value = os.environ.get(self.pin_env)
            if not value:
                raise ConfigError(f"the HSM PIN environment variable {self.pin_env} is not set")
            return value
        assert self.pin_file is not None
        try:
            return self.pin_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"cannot read the HSM PIN file {self.pin_file}: {exc.strerror}") from exc


@dataclass(frozen=True)
class Chain:
    chain_id: int
    verifying_contract: str


@dataclass(frozen=True)
class AttestationSchedule:
    interval_minutes: int
    reserves: Path | None
    supply: Path | None
    holders: Path | None


#: a mint or attestation reservation whose signature was never stored (the signer crashed) is taken over, or
#: dropped, after this long: far longer than any HSM call and store write take (milliseconds)
DEFAULT_RESERVATION_TAKEOVER_SECONDS = 30


@dataclass(frozen=True)
class Tls:
    """`appliance serve` over HTTPS: the server's certificate chain and key (PEM), and, when set, the CA whose
    client certificates alone may connect (mutual TLS)."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None


def listen_host(listen: str) -> str | None:
    """The host of a HOST:PORT listen address (brackets removed), or None when it is not one."""
    match = _LISTEN.match(listen)
    if not match or not 0 < int(match["port"]) < 65536:
        return None
    return match["host"].strip("[]")


def is_loopback(host: str) -> bool:
    """A listen host only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def plaintext_refusal(settings: Settings, host: str) -> str | None:
    """Why `serve` must not listen on `host`, or None: plain HTTP only on loopback, unless the configuration says
    `allow_plaintext = true` (behind a TLS-terminating proxy on the same host, say)."""
    if settings.tls is None and not is_loopback(host) and not settings.allow_plaintext:
        return (f"refusing plain HTTP on {host}, which other machines can reach: set [service] tls_cert_file and "
                "tls_key_file, or allow_plaintext = true if a TLS proxy in front terminates it")
    return None


DEFAULT_CONSOLE_IDLE_SECONDS = 900
# Per client address: writes (any POST) at this rate on average, in bursts of up to 5 seconds' worth; and this many
# failed authentications, refilled at one per AUTH_FAILURE_REFILL_SECONDS, before its writes are refused (429).
DEFAULT_CLIENT_WRITES_PER_SECOND = 50.0
DEFAULT_CLIENT_AUTH_FAILURES_BURST = 20
AUTH_FAILURE_REFILL_SECONDS = 5.0
DEFAULT_BODY_READ_SECONDS = 20.0  # a request body must arrive within this (408 otherwise)
DEFAULT_HEADER_READ_SECONDS = 10.0  # a request line and its headers must arrive within this (connection closed)
DEFAULT_CLIENT_WRITES_IN_PROGRESS = 4  # per client address and process: a trickler holds at most this many threads


@dataclass(frozen=True)
class Console:
    """The officers' web console (`/console/`): whether it is served, the file holding the key that signs its
    session cookies and enrolment records (created, mode 0600, on first start), and the idle timeout."""

    enabled: bool
    secret_file: Path
    idle_timeout_seconds: int


@dataclass(frozen=True)
class Settings:
    path: Path
    hsm: HsmSettings
    storage_url: str
    storage_timeout_seconds: float
    listen_host: str
    listen_port: int
    workers: int
    threads: int
    max_body_bytes: int
    max_attestation_body_bytes: int
    issuer: str
    token_symbol: str
    token_name: str
    token_decimals: int
    currency: str
    eip712_name: str
    eip712_version: str
    chains: tuple[Chain, ...]
    audit_origin: str
    checkpoint_interval_seconds: int
    policy_file: Path
    operators_file: Path
    data_dir: Path
    liabilities_secret_file: Path
    attestation_schedule: AttestationSchedule
    metrics_dir: Path | None = None
    tls: Tls | None = None
    allow_plaintext: bool = False
    reservation_takeover_seconds: int = DEFAULT_RESERVATION_TAKEOVER_SECONDS
    client_writes_per_second: float = DEFAULT_CLIENT_WRITES_PER_SECOND
    client_auth_failures_burst: int = DEFAULT_CLIENT_AUTH_FAILURES_BURST
    body_read_seconds: float = DEFAULT_BODY_READ_SECONDS
    header_read_seconds: float = DEFAULT_HEADER_READ_SECONDS
    client_writes_in_progress: int = DEFAULT_CLIENT_WRITES_IN_PROGRESS
    console: Console = field(default_factory=lambda: Console(True, Path("console.secret"),
                                                              DEFAULT_CONSOLE_IDLE_SECONDS))
    extra: Mapping[str, Any] = field(default_factory=dict)

    def chain(self, chain_id: int) -> Chain | None:
        return next((c for c in self.chains if c.chain_id == chain_id), None)


class _Reader:
    """Pulls typed fields out of nested TOML tables, collecting a Problem for each bad one."""

    def __init__(self, data: Mapping[str, Any], source: str, base: Path) -> None:
        self.data, self.source, self.base = data, source, base
        self.problems: list[Problem] = []

    def _loc(self, dotted: str) -> str:
        return f"{self.source}: {dotted}"

    def _raw(self, dotted: str) -> tuple[bool, Any]:
        node: Any = self.data
        for part in dotted.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return False, None
            node = node[part]
        return True, node

    def fail(self, dotted: str, message: str) -> None:
        self.problems.append(Problem(self._loc(dotted), message))

    def get(self, dotted: str, kind: type, default: Any = ..., check: Callable[[Any], str | None] | None = None) -> Any:
        present, value = self._raw(dotted)
        if not present:
            if default is ...:
                self.fail(dotted, "required")
            return None if default is ... else default
        if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            self.fail(dotted, f"must be an integer, not {value!r}")
            return None
        if kind is float and (isinstance(value, bool) or not isinstance(value, (int, float))):
            self.fail(dotted, f"must be a number, not {value!r}")
            return None
        if kind not in (int, float) and not isinstance(value, kind):
            self.fail(dotted, f"must be a {kind.__name__}, not {type(value).__name__}")
            return None
        if check is not None:
            message = check(value)
            if message:
                self.fail(dotted, message)
                return None
        return value

    def path(self, dotted: str, default: Any = ...) -> Path | None:
        value = self.get(dotted, str, default, check=lambda v: None if v else "must not be empty")
        if value is None:
            return None
        p = Path(os.path.expandvars(value)).expanduser()
        return p if p.is_absolute() else (self.base / p).resolve()

    def unknown(self, allowed: Mapping[str, set[str] | None]) -> None:
        """Refuse unknown tables and keys: a typo must not silently fall back to a default."""
        for key, value in self.data.items():
            if key not in allowed:
                self.fail(key, "unknown setting")
                continue
            keys = allowed[key]
            if keys is not None and isinstance(value, Mapping):
                for sub in value:
                    if sub not in keys:
                        self.fail(f"{key}.{sub}", "unknown setting")


def _checksummed(address: str) -> bool:
    from appliance.domain.eip712 import to_checksum_address

    return to_checksum_address(address) == address


def _positive(v: Any) -> str | None:
    return None if v > 0 else "must be positive"


def _non_negative(v: Any) -> str | None:
    return None if v >= 0 else "must not be negative"


_ALLOWED: dict[str, set[str] | None] = {
    "hsm": {"module", "token_label", "pin_env", "pin_file", "softhsm2_conf"},
    "keys": {"mint", "attestation", "audit", "policy_anchor"},
    "storage": {"url", "write_timeout_seconds"},
    "service": {"listen", "workers", "threads", "max_body_bytes", "max_attestation_body_bytes",
                "metrics_dir", "tls_cert_file", "tls_key_file", "tls_client_ca_file", "allow_plaintext",
                "reservation_takeover_seconds", "client_writes_per_second", "client_auth_failures_burst",
                "body_read_seconds", "header_read_seconds", "client_writes_in_progress"},
    "issuer": {"name", "token_symbol", "token_name", "token_decimals", "currency"},
    "eip712": {"name", "version"},
    "chains": None,
    "audit": {"origin", "checkpoint_interval_seconds"},
    "policy": {"policy_file", "operators_file"},
    "console": {"enabled", "secret_file", "idle_timeout_seconds"},
    "attestation": {"data_dir", "liabilities_secret_file", "schedule_minutes", "reserves", "supply", "holders"},
}


def load(path: str | os.PathLike[str]) -> Settings:
    """Read and validate a config file; raises ConfigError listing every problem."""
    file = Path(path).resolve()
    source = file.name
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {file} not found") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read config file {file}: {exc.strerror}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source} is not valid TOML: {exc}") from exc
    return parse(data, file)


def parse(data: Mapping[str, Any], file: Path) -> Settings:
    """Validate already-parsed TOML; `file` names the source and anchors relative paths."""
    r = _Reader(data, file.name, file.parent)
    r.unknown(_ALLOWED)

    pin_env = r.get("hsm.pin_env", str, None)
    pin_file = r.path("hsm.pin_file", None)
    if (pin_env is None) == (pin_file is None):
        r.fail("hsm", "set exactly one of pin_env or pin_file (the PIN itself never goes in the config)")
    hsm = HsmSettings(
        module=r.get("hsm.module", str, DEFAULT_MODULE),
        token_label=r.get("hsm.token_label", str, check=lambda v: None if 0 < len(v) <= 32 else "1 to 32 characters"),
        pin_env=pin_env, pin_file=pin_file, softhsm2_conf=r.path("hsm.softhsm2_conf", None),
        mint_key=r.get("keys.mint", str, "mint-secp256k1"),
        attestation_key=r.get("keys.attestation", str, "attestation-p256"),
        audit_key=r.get("keys.audit", str, "audit-ed25519"),
        policy_anchor=r.get("keys.policy_anchor", str, "policy-anchor"),
    )
    labels = [hsm.mint_key, hsm.attestation_key, hsm.audit_key]
    if len(set(labels)) != 3:
        r.fail("keys", "each key needs its own label (one key, one purpose)")

    url = r.get("storage.url", str, "sqlite:///appliance.db")
    if url and url.startswith("sqlite:///") and not url.startswith("sqlite:////") and url != "sqlite:///:memory:":
        url = "sqlite:///" + str((file.parent / url[len("sqlite:///"):]).resolve())
    if url and not (url.startswith("sqlite") or url.startswith("postgresql")):
        r.fail("storage.url", "must be a sqlite:/// or postgresql:// URL")

    listen = r.get("service.listen", str, "127.0.0.1:8080")
    host, port = "127.0.0.1", 8080
    if listen is not None:
        match = _LISTEN.match(listen)
        if not match or not 0 < int(match["port"]) < 65536:
            r.fail("service.listen", f"must be HOST:PORT, not {listen!r}")
        else:
            host, port = match["host"].strip("[]"), int(match["port"])

    chains: list[Chain] = []
    raw_chains = data.get("chains", [])
    if not isinstance(raw_chains, list) or not raw_chains:
        r.fail("chains", "at least one [[chains]] entry with chain_id and verifying_contract")
        raw_chains = []
    for i, entry in enumerate(raw_chains):
        where = f"chains[{i}]"
        if not isinstance(entry, Mapping):
            r.fail(where, "must be a table")
            continue
        for key in entry:
            if key not in {"chain_id", "verifying_contract"}:
                r.fail(f"{where}.{key}", "unknown setting")
        cid = entry.get("chain_id")
        contract = entry.get("verifying_contract")
        if isinstance(cid, bool) or not isinstance(cid, int) or cid <= 0:
            r.fail(f"{where}.chain_id", "must be a positive integer")
        elif not isinstance(contract, str) or not patterns.ADDRESS.fullmatch(contract):
            r.fail(f"{where}.verifying_contract", "must be a 0x-prefixed 20-byte hex address")
        elif not _checksummed(contract):
            r.fail(f"{where}.verifying_contract", "must be EIP-55 checksummed")
        elif any(c.chain_id == cid for c in chains):
            r.fail(f"{where}.chain_id", f"chain {cid} is listed twice")
        else:
            chains.append(Chain(cid, contract))

    currency = r.get("issuer.currency", str, "HKD",
                     check=lambda v: None if re.fullmatch(r"[A-Z]{3}", v) else "must be an ISO 4217 code like HKD")
    data_dir = r.path("attestation.data_dir", "data")
    metrics_dir = r.path("service.metrics_dir", None)
    tls = _tls(r)
    schedule = AttestationSchedule(
        interval_minutes=r.get("attestation.schedule_minutes", int, 0, check=_non_negative),
        reserves=r.path("attestation.reserves", None), supply=r.path("attestation.supply", None),
        holders=r.path("attestation.holders", None))
    if schedule.interval_minutes and (schedule.reserves is None or schedule.supply is None):
        r.fail("attestation", "schedule_minutes needs reserves and supply paths")

    settings = Settings(
        path=file, hsm=hsm, storage_url=url,
        storage_timeout_seconds=r.get("storage.write_timeout_seconds", float, 5.0, check=_positive),
        listen_host=host, listen_port=port,
        workers=r.get("service.workers", int, 2, check=_positive),
        threads=r.get("service.threads", int, 8, check=_positive),
        max_body_bytes=r.get("service.max_body_bytes", int, 1 << 20, check=_positive),
        max_attestation_body_bytes=r.get("service.max_attestation_body_bytes", int, 64 << 20, check=_positive),
        issuer=r.get("issuer.name", str), token_symbol=r.get("issuer.token_symbol", str),
        token_name=r.get("issuer.token_name", str),
        token_decimals=r.get("issuer.token_decimals", int, 6,
                             check=lambda v: None if 0 <= v <= 18 else "must be 0 to 18"),
        currency=currency,
        eip712_name=r.get("eip712.name", str), eip712_version=r.get("eip712.version", str, "1"),
        chains=tuple(chains),
        audit_origin=r.get("audit.origin", str,
                           check=lambda v: None if v and v.isprintable() and not any(c.isspace() for c in v)
                           and "+" not in v else "non-empty, printable, no whitespace and no '+' (a note key name)"),
        checkpoint_interval_seconds=r.get("audit.checkpoint_interval_seconds", int, 60, check=_positive),
        policy_file=r.path("policy.policy_file", "policy.toml") or file.parent / "policy.toml",
        operators_file=r.path("policy.operators_file", "operators.toml") or file.parent / "operators.toml",
        data_dir=data_dir or file.parent / "data",
        liabilities_secret_file=(r.path("attestation.liabilities_secret_file", "liabilities.secret")
                                 or file.parent / "liabilities.secret"),
        attestation_schedule=schedule, metrics_dir=metrics_dir, tls=tls,
        allow_plaintext=bool(r.get("service.allow_plaintext", bool, False)),
        reservation_takeover_seconds=r.get("service.reservation_takeover_seconds", int,
                                           DEFAULT_RESERVATION_TAKEOVER_SECONDS, check=_positive),
        client_writes_per_second=float(r.get("service.client_writes_per_second", float,
                                             DEFAULT_CLIENT_WRITES_PER_SECOND, check=_positive) or 1),
        body_read_seconds=float(r.get("service.body_read_seconds", float, DEFAULT_BODY_READ_SECONDS,
                                      check=_positive) or DEFAULT_BODY_READ_SECONDS),
        header_read_seconds=float(r.get("service.header_read_seconds", float, DEFAULT_HEADER_READ_SECONDS,
                                        check=_positive) or DEFAULT_HEADER_READ_SECONDS),
        client_writes_in_progress=r.get("service.client_writes_in_progress", int,
                                        DEFAULT_CLIENT_WRITES_IN_PROGRESS, check=_positive),
        client_auth_failures_burst=r.get("service.client_auth_failures_burst", int,
                                         DEFAULT_CLIENT_AUTH_FAILURES_BURST, check=_positive),
        console=Console(bool(r.get("console.enabled", bool, True)),
                        r.path("console.secret_file", "console.secret") or file.parent / "console.secret",
                        r.get("console.idle_timeout_seconds", int, DEFAULT_CONSOLE_IDLE_SECONDS, check=_positive)),
    )
    if r.problems:
        raise ConfigError(f"{file} has {len(r.problems)} problem(s)", r.problems)
    return settings


def _tls(r: _Reader) -> Tls | None:
    cert, key = r.path("service.tls_cert_file", None), r.path("service.tls_key_file", None)
    client_ca = r.path("service.tls_client_ca_file", None)
    if cert is None and key is None:
        if client_ca is not None:
            r.fail("service.tls_client_ca_file", "needs tls_cert_file and tls_key_file (client certificates are "
                                                 "asked for over TLS only)")
        return None
    if cert is None or key is None:
        r.fail("service.tls_cert_file" if cert is None else "service.tls_key_file",
               "tls_cert_file and tls_key_file go together")
        return None
    for name, path in (("tls_cert_file", cert), ("tls_key_file", key), ("tls_client_ca_file", client_ca)):
        if path is not None and not path.is_file():
            r.fail(f"service.{name}", f"{path} is not a readable file")
    return Tls(cert, key, client_ca)


def apply_environment(settings: Settings) -> None:
    """Point SoftHSM2 at the configured token directory (dev and CI convenience); the config wins."""
    if settings.hsm.softhsm2_conf is not None:
        os.environ["SOFTHSM2_CONF"] = str(settings.hsm.softhsm2_conf)
