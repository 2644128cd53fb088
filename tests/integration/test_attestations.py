"""Reserve attestations through the service: independent verification, chaining, liabilities, schedule, guard."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from jwcrypto import jwk, jws

from appliance import verify as offline
from appliance.domain import jose
from appliance.domain.canonical import canonical_json
from appliance.errors import VerificationFailed
from appliance.services import auth
from appliance.signing import public_key_from_point, sign_jws
from tests.helpers import Harness, failing_write, metric, raising


def inputs(h: Harness) -> tuple[dict[str, Any], dict[str, Any], str]:
    reports = h.directory / "reports"
    return (json.loads((reports / "reserves.json").read_text()), json.loads((reports / "supply.json").read_text()),
            (reports / "holders.csv").read_text())


def later(data: dict[str, Any], as_of: str) -> dict[str, Any]:
    out = copy.deepcopy(data)
    out["as_of"] = as_of
    return out


def attest(h: Harness, reserves: dict[str, Any], supply: dict[str, Any], holders: str | None = None,
           by: str = "grace") -> Any:
    from datetime import datetime

    for data in (reserves, supply):  # the inputs describe the past: let the clock reach their as_of
        try:
            as_of = datetime.fromisoformat(str(data["as_of"]).replace("Z", "+00:00")).timestamp()
        except (KeyError, TypeError, ValueError):
            continue
        h.clock.now = max(h.clock.now, as_of + 60)
    token = h.jws(by, auth.TYP_ATTESTATION_REQUEST,
                  {"reserves": h.report(reserves), "supply": supply, "holders_csv": holders})
    return h.client.post("/v1/attestations", json={"jws": token})


def jwks(h: Harness) -> dict[str, Any]:
    return h.client.get("/.well-known/jwks.json").get_json()  # type: ignore[no-any-return]


def jwcrypto_verify(token: str, keyset: dict[str, Any]) -> dict[str, Any]:
    keys = jwk.JWKSet.from_json(json.dumps(keyset))
    parsed = jws.JWS()
    parsed.deserialize(token)
    parsed.verify(keys.get_key(parsed.jose_header["kid"]), alg="ES256")
    return json.loads(parsed.payload)  # type: ignore[no-any-return]


def test_an_attestation_verifies_with_jwcrypto_and_with_ours(h: Harness) -> None:
    reserves, supply, holders = inputs(h)
    response = attest(h, reserves, supply, holders)
    assert response.status_code == 201, response.get_json()
    token = response.get_json()["jws"]
    assert response.get_json()["seq"] == 1
    fetched = h.client.get("/v1/attestations/1")
    assert fetched.mimetype == "application/jose" and fetched.get_data(as_text=True) == token
    keyset = jwks(h)
    payload = jwcrypto_verify(token, keyset)
    assert payload == offline.verify_attestation(token, keyset)
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert header["alg"] == "ES256" and header["typ"] == "reserve-attestation+jws"
    assert header["kid"] in [k["kid"] for k in keyset["keys"] if k["crv"] == "P-256"]
    assert payload["seq"] == 1 and payload["prev"] is None
    assert payload["status"] == "FULLY_BACKED" and payload["coverage_bps"] == 10536
    assert payload["reserves"]["total"] == "100100000000" and payload["supply"]["total"] == "950000000000000"
    assert payload["liabilities"]["leaves"] == 5 and payload["liabilities"]["total"] == "950000000000000"
    assert set(payload["audit"]) == {"size", "root"}
    assert payload["policy"] == h.client.get("/v1/policy").get_json()["active"]["hash"]
    assert token.split(".")[1] == base64.urlsafe_b64encode(canonical_json(payload)).rstrip(b"=").decode()


def flip(token: str, part: int) -> str:
    parts = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(parts[part] + "=="))
    raw[len(raw) // 2] ^= 0x01
    parts[part] = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    return ".".join(parts)


@pytest.mark.parametrize("part", [0, 1, 2])
def test_one_changed_byte_fails_both_verifiers(h: Harness, part: int) -> None:
    reserves, supply, _ = inputs(h)
    token = attest(h, reserves, supply).get_json()["jws"]
    bad = flip(token, part)
    with pytest.raises(Exception):  # noqa: B017 - jwcrypto raises its own exception types
        jwcrypto_verify(bad, jwks(h))
    with pytest.raises((VerificationFailed, Exception)):
        offline.verify_attestation(bad, jwks(h))


def test_the_signature_verifies_with_openssl(h: Harness, tmp_path: Path) -> None:
    reserves, supply, _ = inputs(h)
    token = attest(h, reserves, supply).get_json()["jws"]
    head, body, sig = token.split(".")
    from appliance.domain.jose import raw_to_der
    from appliance.services.keys import public_pems

    # the PEM that `appliance keys export --format pem` prints, from the HSM or from the served JWKS alike
    published = offline.jwks_pem(jwks(h))
    assert public_pems(h.app_ctx) == published
    blocks = published.split("# ")[1:]
    assert [b.split(";")[0] for b in blocks] == ["mint", "attestation", "audit"]
    pem = blocks[1].split("\n", 1)[1]
    signer = h.app_ctx.attestation_signer
    assert pem.encode() == public_key_from_point(signer.spec.curve, signer.point).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "pub.pem").write_text(pem)
    (tmp_path / "input").write_bytes(f"{head}.{body}".encode())
    (tmp_path / "sig").write_bytes(raw_to_der(base64.urlsafe_b64decode(sig + "==")))
    out = subprocess.run(["openssl", "dgst", "-sha256", "-verify", str(tmp_path / "pub.pem"), "-signature",
                          str(tmp_path / "sig"), str(tmp_path / "input")], capture_output=True, text=True)
    assert out.returncode == 0 and "Verified OK" in out.stdout, out.stderr


def test_attestations_chain_and_the_chain_verifies(h: Harness) -> None:
    reserves, supply, _ = inputs(h)
    first = attest(h, reserves, supply).get_json()["jws"]
    second = attest(h, later(reserves, "2026-11-25T16:00:00Z"), later(supply, "2026-11-25T16:00:00Z")).get_json()
    assert second["seq"] == 2
    payload = offline.verify_attestation(second["jws"], jwks(h), prev=first)
    assert payload["prev"] == hashlib.sha256(first.encode()).hexdigest()
    assert [p["seq"] for p in offline.verify_chain([second["jws"], first], jwks(h))] == [1, 2]
    listing = h.client.get("/v1/attestations").get_json()
    assert [i["seq"] for i in listing["items"]] == [2, 1]
    assert h.client.get("/v1/attestations/latest").get_data(as_text=True) == second["jws"]
    page = h.client.get("/v1/attestations?limit=1").get_json()
    assert [i["seq"] for i in page["items"]] == [2] and page["next"].endswith("before=2")


def test_one_attestation_per_as_of(h: Harness) -> None:
    reserves, supply, _ = inputs(h)
    first = attest(h, reserves, supply)
    assert first.status_code == 201
    again = attest(h, reserves, supply)
    assert again.status_code == 200 and again.get_json()["jws"] == first.get_json()["jws"]  # idempotent
    changed = copy.deepcopy(reserves)
    changed["holdings"][0]["amount"] = "1"
    refused = attest(h, changed, supply)
    assert refused.status_code == 409
    assert "already issued (seq 1) with other figures" in refused.get_json()["detail"]  # names the one issued
    assert attest(h, later(reserves, "2026-11-01T00:00:00Z"), later(supply, "2026-11-01T00:00:00Z")).status_code \
        == 409
    assert len(h.client.get("/v1/attestations").get_json()["items"]) == 1


def test_under_backed_is_reported(h: Harness) -> None:
    reserves, supply, _ = inputs(h)
    supply["chains"][0]["total_supply"] = str(100100000000 * 10**4 + 1)  # one base unit above reserves
    payload = offline.verify_attestation(attest(h, reserves, supply).get_json()["jws"], jwks(h))
    assert payload["status"] == "UNDER_BACKED" and payload["coverage_bps"] == 9999
    supply["chains"][0]["total_supply"] = str(100100000000 * 10**4)
    reserves["as_of"] = supply["as_of"] = "2026-11-25T16:00:00Z"
    payload = offline.verify_attestation(attest(h, reserves, supply).get_json()["jws"], jwks(h))
    assert payload["status"] == "FULLY_BACKED" and payload["coverage_bps"] == 10000


def test_bad_inputs_are_refused_with_locations(h: Harness) -> None:
    reserves, supply, _ = inputs(h)
    bad = copy.deepcopy(reserves)
    bad["holdings"][1]["amount"] = "-5"
    bad["holdings"][2]["amount"] = 1.5
    bad["currency"] = "USD"
    response = attest(h, bad, supply)
    assert response.status_code == 400
    assert "Traceback" not in response.get_data(as_text=True)
    assert attest(h, reserves, supply, holders="account,balance\nx,-1\n").status_code == 400
    assert attest(h, reserves, supply, by="erin").status_code == 403  # security admins do not attest
    assert attest(h, reserves, supply, by="bob").status_code == 403  # nor does treasury: minters do not attest
    assert attest(h, reserves, supply, by="grace").status_code == 201  # the auditor does
    assert h.client.get("/v1/attestations/99").status_code == 404


def test_a_holder_proves_inclusion_offline(h: Harness) -> None:
    from appliance.services.attestation import AttestationService

    reserves, supply, holders = inputs(h)
    token = attest(h, reserves, supply, holders).get_json()["jws"]
    proof = AttestationService(h.app_ctx).liability_proof("holder-0002", 1)
    assert "holder-0001" not in json.dumps(proof)
    payload = offline.verify_liability(proof, token, jwks(h))
    assert payload["seq"] == 1
    proof["balance"] = str(int(proof["balance"]) + 1)
    with pytest.raises(VerificationFailed):
        offline.verify_liability(proof, token, jwks(h))


def test_hsm_failure_leaves_no_partial_attestation(h: Harness) -> None:
    from appliance.errors import HsmUnavailable

    reserves, supply, _ = inputs(h)
    with raising(h.app_ctx.attestation_signer, "sign", HsmUnavailable("HSM sign failed (simulated)")):
        assert attest(h, reserves, supply).status_code == 503
    assert h.client.get("/v1/attestations").get_json()["items"] == []
    assert attest(h, reserves, supply).get_json()["seq"] == 1  # the retry takes seq 1


def test_the_schedule_attests_and_counts_failures(h: Harness, tmp_path: Path) -> None:
    import dataclasses

    from appliance.services import lifecycle

    reports = h.directory / "reports"
    schedule = dataclasses.replace(h.app_ctx.settings.attestation_schedule, interval_minutes=60,
                                   reserves=reports / "reserves.jws", supply=reports / "supply.json",
                                   holders=None)
    h.app_ctx.settings = dataclasses.replace(h.app_ctx.settings, attestation_schedule=schedule)
    result = lifecycle.scheduled_attestation(h.app_ctx)
    assert result is not None and result["seq"] == 1
    assert lifecycle.scheduled_attestation(h.app_ctx)["seq"] == 1  # same inputs: nothing new  # type: ignore[index]
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "reserves.json").write_text("{not json")
    broken = dataclasses.replace(schedule, reserves=inbox)
    h.app_ctx.settings = dataclasses.replace(h.app_ctx.settings, attestation_schedule=broken)
    before = metric("appliance_attestations_total", trigger="schedule", outcome="failed")
    assert lifecycle.scheduled_attestation(h.app_ctx) is None
    assert metric("appliance_attestations_total", trigger="schedule", outcome="failed") == before + 1
    assert len(h.client.get("/v1/attestations").get_json()["items"]) == 1
    heidi = h.signer("heidi")
    duplicated = jose.sign_compact({"alg": heidi.alg, "kid": heidi.key_id, "typ": auth.TYP_RESERVE_REPORT},
                                   b'{"as_of": "2026-11-24T16:00:00Z", "as_of": "2026-11-25T16:00:00Z"}', heidi.sign)
    (inbox / "reserves.json").unlink()
    (inbox / "reserves.jws").write_text(duplicated)
    assert lifecycle.scheduled_attestation(h.app_ctx) is None  # duplicate keys: refused, not last-one-wins
    assert metric("appliance_attestations_total", trigger="schedule", outcome="failed") == before + 2


def test_the_schedule_leaves_an_in_flight_attestation_to_the_other_worker(h: Harness,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    from appliance.services import lifecycle
    from appliance.services.attestation import AttestationInFlight, AttestationService

    reports = h.directory / "reports"
    schedule = dataclasses.replace(h.app_ctx.settings.attestation_schedule, interval_minutes=60,
                                   reserves=reports / "reserves.jws", supply=reports / "supply.json",
                                   holders=None)
    h.app_ctx.settings = dataclasses.replace(h.app_ctx.settings, attestation_schedule=schedule)

    def in_flight(*_args: Any, **_kwargs: Any) -> Any:
        raise AttestationInFlight("the attestation for 2026-11-24T16:00:00Z is being signed")

    monkeypatch.setattr(AttestationService, "attest", in_flight)
    before = metric("appliance_attestations_total", trigger="schedule", outcome="failed")
    assert lifecycle.scheduled_attestation(h.app_ctx) is None
    assert metric("appliance_attestations_total", trigger="schedule", outcome="failed") == before


def signed(h: Harness, payload: dict[str, Any]) -> str:
    return sign_jws(h.app_ctx.attestation_signer, canonical_json(payload), "reserve-attestation+jws")


def test_verify_chain_reports_gaps_wrong_links_and_repeated_as_of(h: Harness) -> None:
    reserves, supply, _ = inputs(h)
    t1 = attest(h, reserves, supply).get_json()["jws"]
    t2 = attest(h, later(reserves, "2026-11-25T16:00:00Z"), later(supply, "2026-11-25T16:00:00Z")).get_json()["jws"]
    t3 = attest(h, later(reserves, "2026-11-26T16:00:00Z"), later(supply, "2026-11-26T16:00:00Z")).get_json()["jws"]
    keys = jwks(h)
    offline.verify_chain([t1, t2, t3], keys)
    p2 = offline.verify_attestation(t2, keys)
    p3 = offline.verify_attestation(t3, keys)
    with pytest.raises(VerificationFailed, match="seq 2"):  # a gap
        offline.verify_chain([t1, t3], keys)
    wrong_prev = signed(h, {**p3, "prev": hashlib.sha256(t1.encode()).hexdigest()})  # points past seq 2
    with pytest.raises(VerificationFailed, match="prev"):
        offline.verify_chain([t1, t2, wrong_prev], keys)
    repeated = signed(h, {**p3, "as_of": p2["as_of"]})
    with pytest.raises(VerificationFailed, match="as_of"):
        offline.verify_chain([t1, t2, repeated], keys)
    with pytest.raises(VerificationFailed):
        offline.verify_attestation(t3, keys, prev=t1)  # a link that skips one


def test_the_reserve_guard_gates_mints(h: Harness) -> None:
    from tests.integration.test_policy_changes import enact, tables

    policy, _ = tables(h)
    policy["reserve_guard"]["enabled"] = True
    enact(h, policy)
    refused = h.request(amount="1000000")
    assert refused.status_code == 422 and "reserve" in json.dumps(refused.get_json())
    reserves, supply, _ = inputs(h)
    now = h.clock()
    from datetime import UTC, datetime

    stamp = datetime.fromtimestamp(now - 60, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    supply["chains"][0]["total_supply"] = str(100100000000 * 10**4 - 5_000_000 * 10**6)  # 5M tokens of headroom
    assert attest(h, later(reserves, stamp), later(supply, stamp)).status_code == 201
    too_much = h.request(amount=str(6_000_000 * 10**6))  # within the per-request maximum, beyond the headroom
    assert too_much.status_code == 422 and "exceed reserves" in json.dumps(too_much.get_json())
    assert h.request(amount=str(4_000_000 * 10**6)).status_code == 201
    h.clock.advance(172801)  # the attestation grows stale
    assert "older than" in json.dumps(h.request(amount="1000000").get_json())


def test_the_reserve_guard_judges_the_age_of_the_figures_not_of_the_signature(h: Harness) -> None:
    """An attestation signed now over a report three days old is three days old evidence: the guard refuses."""
    from datetime import UTC, datetime

    from tests.integration.test_policy_changes import enact, tables

    policy, _ = tables(h)
    policy["reserve_guard"]["enabled"] = True  # max_attestation_age_seconds: 2 days
    enact(h, policy)
    reserves, supply, _ = inputs(h)
    as_of = datetime.fromisoformat(reserves["as_of"].replace("Z", "+00:00")).timestamp()
    h.clock.now = max(h.clock.now, as_of + 3 * 86400)
    assert attest(h, reserves, supply).status_code == 201  # issued now, as of three days ago
    refused = h.request(amount="1000000")
    assert refused.status_code == 422
    assert "figures are older than 172800 s" in json.dumps(refused.get_json())
    stamp = datetime.fromtimestamp(h.clock.now - 60, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert attest(h, later(reserves, stamp), later(supply, stamp)).status_code == 201  # fresh figures
    assert h.request(amount="1000000").status_code == 201


def test_verify_cli_reports_a_malformed_file_by_name_as_a_failed_verification(h: Harness, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from appliance.cli import cli

    reserves, supply, _ = inputs(h)
    (tmp_path / "1.jws").write_text(attest(h, reserves, supply).get_json()["jws"])
    (tmp_path / "2.jws").write_text("this is not a JWS")
    (tmp_path / "jwks.json").write_text(json.dumps(jwks(h)))
    runner = CliRunner()
    out = runner.invoke(cli, ["verify", "chain", str(tmp_path), "--jwks", str(tmp_path / "jwks.json"), "--json"])
    assert out.exit_code == 1, out.output
    body = json.loads(out.output)
    assert body["valid"] is False and any("2.jws" in f for f in body["failures"])
    single = runner.invoke(cli, ["verify", "attestation", str(tmp_path / "2.jws"), "--jwks",
                                 str(tmp_path / "jwks.json"), "--json"])
    assert single.exit_code == 1 and json.loads(single.output)["valid"] is False


@pytest.mark.parametrize("seq", ["9223372036854775808", "99999999999999999999999", "0"])
def test_an_out_of_range_seq_is_not_found_not_a_500(h: Harness, seq: str) -> None:
    response = h.client.get(f"/v1/attestations/{seq}")
    assert response.status_code == 404 and response.mimetype == "application/problem+json"


def test_an_as_of_in_the_future_is_refused(h: Harness) -> None:
    from datetime import UTC, datetime

    reserves, supply, _ = inputs(h)
    future = datetime.fromtimestamp(h.clock.now + 86400, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    token = h.jws("grace", auth.TYP_ATTESTATION_REQUEST,
                  {"reserves": h.report(later(reserves, future)), "supply": later(supply, future), "holders_csv": None})
    response = h.client.post("/v1/attestations", json={"jws": token})
    assert response.status_code == 400 and "future" in response.get_json()["detail"]
    assert h.client.get("/v1/attestations/latest").status_code == 404


def test_a_store_failure_after_signing_does_not_block_attestations(h: Harness) -> None:
    reserves, supply, _ = inputs(h)
    with failing_write(h.app_ctx.db, "attestation-store"):
        assert attest(h, reserves, supply).status_code == 503
    assert h.client.get("/v1/attestations/1").status_code == 404  # nothing partial is published
    assert attest(h, reserves, supply).status_code == 409  # may still be in flight elsewhere
    h.clock.advance(31)
    again = attest(h, reserves, supply)
    assert again.status_code == 201, again.get_json()
    assert again.get_json()["seq"] == 1
    assert offline.verify_attestation(again.get_json()["jws"], jwks(h))["seq"] == 1


def test_supply_on_a_chain_or_contract_not_configured_is_refused(h: Harness) -> None:
    reserves, supply, _ = inputs(h)
    foreign = copy.deepcopy(supply)
    foreign["chains"].append({"chain_id": 424242, "contract": foreign["chains"][0]["contract"],
                              "total_supply": "1"})
    response = attest(h, reserves, foreign)
    assert response.status_code == 400
    assert any("424242" in e["location"] for e in response.get_json()["errors"])
    wrong = copy.deepcopy(supply)
    wrong["chains"][0]["contract"] = "0x" + "ab" * 20
    assert attest(h, reserves, wrong).status_code == 400
    assert h.client.get("/v1/attestations/latest").status_code == 404


def test_a_holders_csv_with_other_line_breaks_is_refused_with_its_line(h: Harness) -> None:
    reserves, supply, holders = inputs(h)
    cr_only = holders.replace("\n", "\r")  # one long line to a CSV reader that splits on "\n" only
    response = attest(h, reserves, supply, cr_only)
    assert response.status_code == 400, response.get_json()
    assert any("holders" in e["location"] for e in response.get_json()["errors"])


def test_holder_balances_that_do_not_add_up_to_the_supply_are_refused(h: Harness) -> None:
    reserves, supply, holders = inputs(h)
    header, first, *rest = holders.strip().split("\n")
    account, balance = first.split(",")
    short = "\n".join([header, f"{account},{int(balance) - 1}", *rest]) + "\n"
    response = attest(h, reserves, supply, short)
    assert response.status_code == 422
    assert "do not add up" in response.get_json()["detail"]
    assert attest(h, reserves, supply, holders).status_code == 201


def test_problems_in_both_inputs_are_reported_together_with_their_locations(h: Harness) -> None:
    reserves, supply, _ = inputs(h)
    bad_reserves = copy.deepcopy(reserves)
    bad_reserves["currency"] = "usd"
    bad_supply = copy.deepcopy(supply)
    bad_supply["chains"][0]["total_supply"] = "1.5"
    response = attest(h, bad_reserves, bad_supply)
    assert response.status_code == 400
    locations = [e["location"] for e in response.get_json()["errors"]]
    assert any(loc.startswith("reserves") and "currency" in loc for loc in locations), locations
    assert any(loc.startswith("supply") and "total_supply" in loc for loc in locations), locations


def test_a_signer_slower_than_the_abandon_window_cannot_fork_the_chain(h: Harness) -> None:
    """T1 reserves seq 1 and its HSM call stalls past 30 s; T2 drops the reservation, takes seq 1 for another
    as_of and stores it. T1's JWS must then be discarded, not written over T2's row."""
    reserves, supply, _ = inputs(h)
    signer = h.app_ctx.attestation_signer
    original = signer.sign
    nested: list[Any] = []

    def stalling(message: bytes) -> bytes:
        if not nested:
            nested.append(None)
            h.clock.advance(31)
            other = attest(h, later(reserves, "2026-11-25T16:00:00Z"), later(supply, "2026-11-25T16:00:00Z"))
            nested.append(other)
        return original(message)

    signer.sign = stalling  # type: ignore[method-assign]
    try:
        first = attest(h, reserves, supply)
    finally:
        del signer.sign
    assert nested[1].status_code == 201 and nested[1].get_json()["seq"] == 1
    assert first.status_code == 409
    stored = h.client.get("/v1/attestations/1").get_data(as_text=True)
    assert stored == nested[1].get_json()["jws"]
    assert [p["seq"] for p in offline.verify_chain([stored], jwks(h))] == [1]


def test_a_future_supply_as_of_is_named_as_the_supply(h: Harness) -> None:
    from datetime import UTC, datetime

    reserves, supply, _ = inputs(h)
    # the clock at the reports' own as_of, so that only the supply's as_of is wrong whatever today's date is
    h.clock.now = datetime.fromisoformat(reserves["as_of"].replace("Z", "+00:00")).timestamp() + 60
    future = datetime.fromtimestamp(h.clock.now + 3600, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    token = h.jws("grace", auth.TYP_ATTESTATION_REQUEST,
                  {"reserves": h.report(reserves), "supply": later(supply, future), "holders_csv": None})
    response = h.client.post("/v1/attestations", json={"jws": token})
    assert response.status_code == 400
    assert [e["location"] for e in response.get_json()["errors"]] == ["supply.as_of"]


def test_large_attestation_bodies_are_read_one_at_a_time(h: Harness) -> None:
    """Anyone can send a large body before any signature is checked: while one is being read, another large one
    is refused (503 busy, nothing read), a small one is not; the slot is given back after each request."""
    from appliance.api.attestations import LARGE

    large = {"jws": "x" * (h.app_ctx.settings.max_body_bytes + 10)}
    slot = h.flask.extensions[LARGE]
    assert slot.acquire(blocking=False)  # another request is reading its large body
    try:
        busy = h.client.post("/v1/attestations", json=large)
        assert busy.status_code == 503 and busy.get_json()["type"] == "urn:appliance:problem:busy"
        assert busy.headers["Retry-After"]
        assert h.client.post("/v1/attestations", json={"jws": "x"}).status_code == 400
    finally:
        slot.release()
    for _ in range(3):  # each one gives the slot back
        refused = h.client.post("/v1/attestations", json=large)
        assert refused.status_code == 400, refused.get_json()
    too_large = h.client.post("/v1/attestations",
                              json={"jws": "x" * (h.app_ctx.settings.max_attestation_body_bytes + 1)})
    assert too_large.status_code == 413
