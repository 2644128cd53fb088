"""The attacker of the threat model: someone who writes the database (T1), alone or with one officer's key (T2).

Fixtures give an appliance on SQLite and on PostgreSQL, an `attacker` connection of its own to the same store
(not the appliance's engine: another client, raw SQL), and a count of the signatures the HSM makes with each key
(the real SoftHSM2 token: `Hsm.sign` is wrapped to count, never replaced).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine

from tests.e2e.test_cli import service  # noqa: F401 - `appliance serve` on a dev-init environment
from tests.helpers import Harness, harness


@pytest.fixture(autouse=True, scope="session")
def _session_token(softhsm_home: Any) -> Any:
    """Every test here may open the session's SoftHSM2 token: it is created before the first of them runs."""
    return softhsm_home


@pytest.fixture(params=["sqlite", "postgresql"])
def h(request: pytest.FixtureRequest) -> Harness:
    env = request.getfixturevalue("env" if request.param == "sqlite" else "pg_env")
    return harness(env.directory, env.summary)


@pytest.fixture
def attacker(h: Harness) -> Iterator[Engine]:
    """A connection of the attacker's own to the appliance's store, with every right on every table."""
    engine = create_engine(h.app_ctx.db.engine.url)
    yield engine
    engine.dispose()


@pytest.fixture
def hsm_signs(h: Harness) -> Iterator[Counter[str]]:
    """How many signatures the HSM made with each key (by label) from here on."""
    counts: Counter[str] = Counter()
    hsm = h.app_ctx.hsm
    original = hsm.sign
    names = {h.app_ctx.mint_signer.spec.label: "mint", h.app_ctx.attestation_signer.spec.label: "attestation",
             h.app_ctx.audit_signer.spec.label: "audit"}

    def counting(spec: Any, data: bytes) -> bytes:
        signature = original(spec, data)
        counts[names.get(spec.label, spec.label)] += 1
        return signature

    hsm.sign = counting  # type: ignore[method-assign]
    yield counts
    del hsm.sign
