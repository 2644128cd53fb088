"""Every test here may open the session's SoftHSM2 token: it is created before the first of them runs."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True, scope="session")
def _session_token(softhsm_home: Path) -> Path:
    return softhsm_home


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every end-to-end test runs real processes (dev-init, serve, the CLI): slow, left out of make test-fast."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.path).parents:
            item.add_marker(pytest.mark.slow)
