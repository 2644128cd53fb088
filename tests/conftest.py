"""Shared fixtures: a real SoftHSM2 token per test session, fresh stores per test, SQLite and PostgreSQL.

SoftHSM2 reads SOFTHSM2_CONF once per process (at C_Initialize) and does not see tokens created later, so
every token this process uses is created by the session fixture `softhsm_home`, which the suites that open
the HSM (integration, e2e, adversarial) request first; the unit tests create none. The PIN below is a
THROWAWAY TEST PIN for a software token that lives in a temporary directory.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
VECTORS = Path(__file__).resolve().parent / "vectors"
TEST_PIN = "throwaway-test-pin"  # clearly a test PIN for a temporary SoftHSM2 token
TOKEN = "appliance-test"
BAD_TOKEN = "appliance-bad-keys"
IN_CI = os.environ.get("CI", "").lower() == "true"
PG_DSN = os.environ.get("APPLIANCE_TEST_PG_DSN", "")


@pytest.fixture(scope="session")
def softhsm_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's SoftHSM2 tokens, created before anything in this process loads the PKCS#11 library (the
    suites that use the HSM ask for this fixture first: see their conftest.py; the unit tests never do)."""
    home = tmp_path_factory.mktemp("softhsm")
    for label in (TOKEN, BAD_TOKEN):
        subprocess.run([str(ROOT / "softhsm" / "create-token.sh"), str(home), label], check=True,
                       capture_output=True, env={**os.environ, "SO_PIN": "so-" + TEST_PIN, "USER_PIN": TEST_PIN})
    os.environ["SOFTHSM2_CONF"] = str(home / "softhsm2.conf")
    return home


@pytest.fixture
def vector() -> Any:
    import json

    def load(name: str) -> Any:
        return json.loads((VECTORS / name).read_text())

    return load


# -- databases ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def pg_admin_dsn() -> str:
    if not PG_DSN:
        if IN_CI:
            pytest.fail("APPLIANCE_TEST_PG_DSN is not set; PostgreSQL tests must run under CI=true")
        pytest.skip("APPLIANCE_TEST_PG_DSN is not set")
    return PG_DSN


@pytest.fixture
def pg_url(pg_admin_dsn: str) -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    import psycopg

    name = "appliance_t_" + uuid.uuid4().hex[:12]
    try:
        admin = psycopg.connect(pg_admin_dsn, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        if IN_CI:
            pytest.fail(f"PostgreSQL at {pg_admin_dsn} is not reachable: {exc}")
        pytest.skip(f"PostgreSQL not reachable: {exc}")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base = pg_admin_dsn.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    with psycopg.connect(pg_admin_dsn, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each repository test runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return str(request.getfixturevalue("pg_url"))


# -- a whole appliance around the session token ------------------------------------------------------------

@dataclass
class Env:
    """A written environment: config, dev operators' keys, allowlisted addresses."""

    directory: Path
    config: Path
    summary: dict[str, Any]

    def key(self, name: str) -> Path:
        return self.directory / "operators" / f"{name}.pem"

    @property
    def allowlist(self) -> list[str]:
        return list(self.summary["allowlist"])


def write_env(directory: Path, storage_url: str | None = None, token: str = TOKEN) -> Env:
    from appliance.devenv import write_environment

    env = write_environment(directory, token, Path(os.environ["SOFTHSM2_CONF"]), TEST_PIN,
                            storage_url=storage_url or "sqlite:///appliance.db")
    return Env(directory, env.config, env.summary())


def drop_token_state(config_path: Path) -> None:
    """Destroy an environment's anchor and state objects in the session token: every environment has labels of
    its own, and a token holding hundreds of data objects makes each search of it slower."""
    from appliance import config
    from appliance.hsm import Hsm

    settings = config.load(config_path)
    hsm = Hsm(settings.hsm.module, settings.hsm.token_label, settings.hsm.pin)
    try:
        for label in (settings.hsm.policy_anchor, settings.hsm.policy_anchor + ".state"):
            hsm.destroy_data(label)
    finally:
        hsm.close()


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    """A fresh, initialized environment on SQLite (keys are shared through the session token)."""
    from appliance import config
    from appliance.services import setup

    e = write_env(tmp_path / "env")
    setup.init(config.load(e.config))
    yield e
    drop_token_state(e.config)


@pytest.fixture
def pg_env(tmp_path: Path, pg_url: str) -> Iterator[Env]:
    from appliance import config
    from appliance.services import setup

    e = write_env(tmp_path / "env", storage_url=pg_url)
    setup.init(config.load(e.config))
    yield e
    drop_token_state(e.config)


@pytest.fixture
def h(env: Env) -> Any:
    """An appliance (Flask app + controllable clock) around a fresh SQLite environment."""
    from tests.helpers import harness

    return harness(env.directory, env.summary)


@pytest.fixture
def pg_h(pg_env: Env) -> Any:
    from tests.helpers import harness

    return harness(pg_env.directory, pg_env.summary)


# -- how long each part of the suite takes (printed at the end of every run) -------------------------------

_PART_SECONDS: dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    parts = Path(report.fspath).parts
    part = parts[parts.index("tests") + 1] if "tests" in parts and parts.index("tests") + 2 < len(parts) else "tests"
    _PART_SECONDS[part] = _PART_SECONDS.get(part, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _LEAKS:
        terminalreporter.write_sep("!", "secrets found in the logs of this session (the run fails)")
        for leak in _LEAKS:
            terminalreporter.write_line(leak)
    if _PART_SECONDS:
        terminalreporter.write_sep("-", "seconds per part of the suite (setup + call + teardown)")
        for part, seconds in sorted(_PART_SECONDS.items(), key=lambda kv: -kv[1]):
            terminalreporter.write_line(f"{part:<14} {seconds:8.1f}")


# -- no secret in any log the suite produced (checked when the session ends; a leak fails the run) ------------

def _secrets_under(base: Path) -> set[str]:
    found = {TEST_PIN, "so-" + TEST_PIN}
    for name in ("hsm-pin", "so-pin", "liabilities.secret", "console.secret"):
        for path in base.rglob(name):
            value = path.read_text(errors="replace").strip()
            if len(value) >= 6:
                found.add(value)
    for pem in base.rglob("operators/*.pem"):  # the officers' private keys, line by line
        found.update(line for line in pem.read_text(errors="replace").splitlines()
                     if len(line) >= 40 and not line.startswith("-----"))
    return found


def leaked_secrets(base: Path) -> list[str]:
    """(log file, secret prefix) of every secret of the session found in a log file under `base`."""
    secrets_ = _secrets_under(base)
    leaks = []
    for log in [*base.rglob("*.log"), *base.rglob("*.out")]:
        text = log.read_text(errors="replace")
        leaks += [f"{log.relative_to(base)}: {s[:6]}..." for s in secrets_ if s in text]
    return leaks


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is None or os.environ.get("PYTEST_XDIST_WORKER"):
        return
    try:
        base = factory.getbasetemp()
    except (OSError, ValueError):
        return
    leaks = leaked_secrets(Path(base))
    _LEAKS.extend(leaks)
    if leaks:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


_LEAKS: list[str] = []
