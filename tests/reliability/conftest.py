"""Every test here runs real processes against the session's SoftHSM2 environment: slow, left out of
`make test-fast`."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True, scope="session")
def _session_token(softhsm_home: Path) -> Path:
    return softhsm_home


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.path).parents:
            item.add_marker(pytest.mark.slow)
