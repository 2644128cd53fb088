"""Per-client budgets on writes and on failed authentications (api/limits.py), through the real app."""

from __future__ import annotations

from typing import Any

from appliance.api import create_app
from appliance.services import auth
from tests.helpers import Harness, metric


def _client(h: Harness, address: str, app: Any = None) -> Any:
    client = h.client if app is None else app.test_client()
    client.environ_base["REMOTE_ADDR"] = address
    return client


def test_failed_authentications_lock_out_that_client_only(h: Harness) -> None:
    burst = h.app_ctx.settings.client_auth_failures_burst
    guesser, honest = _client(h, "203.0.113.7"), _client(h, "198.51.100.2")
    before = metric("appliance_rate_limited_total", budget="auth-failures")
    forged = h.jws("alice", auth.TYP_MINT_REQUEST, {}, header={"kid": "a-key-nobody-enrolled"})
    statuses = [guesser.post("/v1/mint-requests", json={"jws": forged}).status_code for _ in range(burst + 5)]
    assert statuses[:burst] == [401] * burst and statuses[burst:] == [429] * 5, statuses
    refused = guesser.post("/v1/mint-requests", json={"jws": forged})
    assert refused.headers["Retry-After"] == "5" and refused.get_json()["type"].endswith(":rate-limited")
    assert metric("appliance_rate_limited_total", budget="auth-failures") >= before + 6
    # another client is served as usual; the locked-out one can still read what is public, but not (even with
    # a valid read token) what is for operators
    payload = {"to": h.allowlist[0], "amount": "1000", "chain_id": h.chain_id}
    assert honest.post("/v1/mint-requests", json={"jws": h.jws("alice", auth.TYP_MINT_REQUEST, payload)}
                       ).status_code == 201
    assert guesser.get("/v1/audit/checkpoint").status_code == 200
    assert guesser.get("/v1/policy").status_code == 429 and honest.get("/v1/policy").status_code == 200


def test_writes_beyond_a_clients_rate_are_refused(h: Harness) -> None:
    from dataclasses import replace

    settings = replace(h.app_ctx.settings, client_writes_per_second=1.0)  # a burst of 5 writes
    h.app_ctx.settings = settings
    app = create_app(h.app_ctx)
    client = _client(h, "192.0.2.9", app)
    statuses = [client.post("/v1/mint-requests", json={}).status_code for _ in range(8)]
    assert statuses[:5] == [400] * 5 and statuses[5:] == [429] * 3, statuses
    other = _client(h, "192.0.2.10", app)
    assert other.post("/v1/mint-requests", json={}).status_code == 400
