"""Every test here opens the session's SoftHSM2 token: it is created before the first of them runs."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True, scope="session")
def _session_token(softhsm_home: Path) -> Path:
    return softhsm_home
