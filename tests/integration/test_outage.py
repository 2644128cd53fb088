"""A store outage is audited once it can be (services/outage.py, lifecycle.record_outage): while the store refuses
writes nothing is signed and nothing can be audited; the first background tick after it takes writes again
records one `store.unavailable` entry saying how many writes failed, when, and of which kind."""

from __future__ import annotations

import json

from appliance.services import lifecycle
from appliance.services.outage import Outage
from appliance.store import audit_repo
from tests.helpers import Harness, metric
from tests.integration.test_store import write_lock_held


def _entries(h: Harness, action: str) -> list[dict[str, object]]:
    with h.app_ctx.db.read() as conn:
        entries = [json.loads(e) for e in audit_repo.entries(conn, 0, audit_repo.head(conn).size)]
    return [e for e in entries if e["action"] == action]


def test_a_store_outage_is_audited_once_the_store_takes_writes_again(h: Harness) -> None:
    h.app_ctx.db.timeout = 0.3  # writes give up quickly while another client holds the write lock
    req = h.request().get_json()
    assert h.approve("bob", req).status_code == 201
    signatures = metric("appliance_signatures_total", key="mint", outcome="ok")
    with write_lock_held(h.app_ctx.db.url):
        refused = h.approve("carol", req)
        assert refused.status_code == 503 and refused.get_json()["type"].endswith(":storage-unavailable")
        assert h.client.get("/readyz").status_code == 503
        assert not lifecycle.record_outage(h.app_ctx)  # still down: kept for later, not lost
    assert metric("appliance_signatures_total", key="mint", outcome="ok") == signatures  # nothing signed
    assert lifecycle.record_outage(h.app_ctx)
    assert not lifecycle.record_outage(h.app_ctx)  # recorded once
    [entry] = _entries(h, "store.unavailable")
    details = entry["details"]
    assert isinstance(details, dict) and details["failed_writes"] >= 2  # the approval, the first attempt to record
    assert details["first_failure"] <= details["last_failure"] and "audit" in details["operations"]
    assert h.approve("carol", req).get_json()["status"] == "authorized"  # and the service carries on


def test_an_outage_given_back_merges_with_what_failed_since() -> None:
    outage = Outage()
    assert outage.take() is None
    outage.note("mint", 100.0)
    outage.note("mint", 105.0)
    first = outage.take()
    assert first == {"first_failure": 100, "last_failure": 105, "failed_writes": 2, "operations": {"mint": 2}}
    outage.note("audit", 110.0)
    outage.give_back(first)
    assert outage.take() == {"first_failure": 100, "last_failure": 110, "failed_writes": 3,
                             "operations": {"audit": 1, "mint": 2}}
    for n in range(100):  # the kinds of operation kept stay bounded
        outage.note(f"op{n}", 1.0)
    taken = outage.take()
    assert taken is not None and len(taken["operations"]) == 16 and taken["failed_writes"] == 100
