"""The end-of-session check that no secret of the session reached a log (tests/conftest.py)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from tests.conftest import TEST_PIN, leaked_secrets


def test_a_pin_or_a_key_line_in_any_log_is_found() -> None:
    with tempfile.TemporaryDirectory() as tmp:  # not under the session's own directory: that is checked for real
        _check(Path(tmp))


def _check(tmp_path: Path) -> None:
    dev = tmp_path / "dev"
    (dev / "operators").mkdir(parents=True)
    (dev / "hsm-pin").write_text("4711-dev-pin\n")
    key = "-----BEGIN PRIVATE KEY-----\n" + "M" * 64 + "\n-----END PRIVATE KEY-----\n"
    (dev / "operators" / "alice.pem").write_text(key)
    (dev / "serve.log").write_text("GET /healthz 200\n")
    assert leaked_secrets(tmp_path) == []
    (dev / "serve.log").write_text(f"login with {TEST_PIN}\n")
    (dev / "other.log").write_text("pin 4711-dev-pin and " + "M" * 64 + "\n")
    found = leaked_secrets(tmp_path)
    assert sorted(found) == sorted(["dev/serve.log: thrott...".replace("thrott", TEST_PIN[:6]),
                                    "dev/other.log: 4711-d...", "dev/other.log: MMMMMM..."])
