"""Several `appliance serve` instances on one PostgreSQL, as `bench/instances.py` runs them (1,000 requests there,
fewer here): every final approval is sent to two instances at once; exactly one signature per request."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.postgres


def test_four_served_instances_racing_final_approvals_sign_each_request_once(pg_admin_dsn: str) -> None:
    from bench.instances import measure

    total = 40
    figures = measure(total, count=4, threads=8)
    assert figures["signatures"] == total, figures
    assert figures["verified"] == total, figures
    assert figures["exactly_one_201"] == total, figures  # each JWS accepted once; the other caller told 409
    assert figures["statuses"] == {201: total, 409: total}, figures  # no 5xx, no deadlock, no store timeout
