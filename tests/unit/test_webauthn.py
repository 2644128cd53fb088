"""WebAuthn assertions as operator signatures (domain/webauthn.py, domain/signed.py, policy and quorum)."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.domain import quorum, signed, webauthn
from appliance.domain.messages import TYP_MINT_APPROVAL, TYP_MINT_REQUEST
from appliance.domain.policy import PolicyBundle, parse_operators, parse_policy
from appliance.errors import InvalidInput, Unauthenticated
from tests.authenticator import SoftAuthenticator

RP = webauthn.RelyingParty("localhost", ("http://localhost:8080",))
JWK = {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
PAYLOAD = {"request_id": "r-1", "digest": "0x" + "ab" * 32, "decision": "approve", "policy": "cd" * 32,
           "iat": 1_700_000_000, "jti": "a-unique-jti-0001"}


def _credential(key: SoftAuthenticator) -> webauthn.Credential:
    c = key.credential()
    return webauthn.Credential(c["id"], c["public_key"])


def _envelope(key: SoftAuthenticator, payload: dict[str, Any] = PAYLOAD, typ: str = TYP_MINT_APPROVAL,
              **options: Any) -> webauthn.Envelope:
    return webauthn.parse(key.envelope(typ, payload, **options))


def test_a_genuine_assertion_verifies_and_returns_its_sign_count() -> None:
    key = SoftAuthenticator()
    assert webauthn.verify(_envelope(key), _credential(key), RP) == 1
    assert webauthn.verify(_envelope(key), _credential(key), RP, current_sign_count=1) == 2


def test_the_challenge_commits_to_typ_and_every_payload_member() -> None:
    base = webauthn.challenge(TYP_MINT_APPROVAL, PAYLOAD)
    assert webauthn.challenge(TYP_MINT_REQUEST, PAYLOAD) != base
    for member in PAYLOAD:
        changed = {**PAYLOAD, member: "other" if isinstance(PAYLOAD[member], str) else 1}
        assert webauthn.challenge(TYP_MINT_APPROVAL, changed) != base
    # canonical: the order members are written in does not matter
    assert webauthn.challenge(TYP_MINT_APPROVAL, dict(reversed(list(PAYLOAD.items())))) == base


@pytest.mark.parametrize("member", ["request_id", "digest", "decision", "policy"])
def test_an_assertion_whose_challenge_names_another_statement_is_refused(member: str) -> None:
    key = SoftAuthenticator()
    other = {**PAYLOAD, member: "reject" if member == "decision" else PAYLOAD[member][:-1] + "0"}
    envelope = _envelope(key, PAYLOAD, challenge_of=(TYP_MINT_APPROVAL, other))
    with pytest.raises(Unauthenticated, match="challenge"):
        webauthn.verify(envelope, _credential(key), RP)


def test_an_assertion_over_another_type_of_statement_is_refused() -> None:
    key = SoftAuthenticator()
    envelope = _envelope(key, PAYLOAD, challenge_of=(TYP_MINT_REQUEST, PAYLOAD))
    with pytest.raises(Unauthenticated, match="challenge"):
        webauthn.verify(envelope, _credential(key), RP)


@pytest.mark.parametrize(("options", "reason"), [
    ({"origin": "https://evil.example"}, "another origin"),
    ({"origin": "http://localhost:9999"}, "another origin"),
    ({"rp_id": "evil.example"}, "another relying party"),
    ({"cross_origin": True}, "cross-origin"),
    ({"uv": False}, "user verification"),
    ({"client_type": "webauthn.create"}, "client data type"),
])
def test_assertions_from_elsewhere_or_without_user_verification_are_refused(options: dict[str, Any],
                                                                           reason: str) -> None:
    key = SoftAuthenticator()
    with pytest.raises(Unauthenticated, match=reason):
        webauthn.verify(_envelope(key, **options), _credential(key), RP)


def test_a_sign_count_that_does_not_increase_is_refused() -> None:
    key = SoftAuthenticator()
    envelope = _envelope(key, sign_count=5)
    assert webauthn.verify(envelope, _credential(key), RP, current_sign_count=4) == 5
    for current in (5, 6):
        with pytest.raises(Unauthenticated, match="sign count"):
            webauthn.verify(envelope, _credential(key), RP, current_sign_count=current)
    # a key that keeps no counter reports 0 every time: allowed while the recorded count is 0 too
    flat = SoftAuthenticator(counts=False)
    assert webauthn.verify(_envelope(flat), _credential(flat), RP) == 0


def test_another_key_or_another_credential_id_does_not_verify() -> None:
    key, other = SoftAuthenticator(), SoftAuthenticator()
    envelope = _envelope(key)
    with pytest.raises(Unauthenticated):
        webauthn.verify(envelope, _credential(other), RP)
    impostor = webauthn.Credential(_credential(key).id, _credential(other).public_key)
    with pytest.raises(Unauthenticated, match="does not verify"):
        webauthn.verify(envelope, impostor, RP)


_KEY = SoftAuthenticator()
_STORED = (_KEY, webauthn.encode(_envelope(_KEY)))


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_one_changed_byte_anywhere_in_a_stored_envelope_never_verifies(data: st.DataObject) -> None:
    key, text = _STORED
    stored = json.loads(text)
    member = data.draw(st.sampled_from(["authenticator_data", "client_data_json", "signature", "payload"]))
    if member == "payload":
        field = data.draw(st.sampled_from(sorted(PAYLOAD)))
        stored["payload"][field] = stored["payload"][field] + 1 if field == "iat" else stored["payload"][field] + "x"
    else:
        raw = bytearray(webauthn.parse(text).__getattribute__(member))
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] ^= data.draw(st.integers(1, 255))
        stored[member] = webauthn.b64url_encode(bytes(raw))
    try:
        envelope = webauthn.parse(stored)
    except InvalidInput:
        return
    with pytest.raises(Unauthenticated):
        webauthn.verify(envelope, _credential(key), RP)


def test_parse_refuses_malformed_envelopes_naming_each_member() -> None:
    key = SoftAuthenticator()
    good = key.envelope(TYP_MINT_APPROVAL, PAYLOAD)
    with pytest.raises(InvalidInput) as info:
        webauthn.parse({**good, "extra": 1, "signature": "not base64url!"})
    locations = {p.location for p in info.value.problems}
    assert {"webauthn.extra"} <= locations
    bad = copy.deepcopy(good)
    del bad["payload"]
    bad["signature"] = "***"
    with pytest.raises(InvalidInput) as info:
        webauthn.parse(bad)
    assert "webauthn.payload" in {p.location for p in info.value.problems}
    with pytest.raises(InvalidInput):
        webauthn.parse("[1, 2]")
    assert webauthn.parse(webauthn.encode(webauthn.parse(good))) == webauthn.parse(good)


# -- the policy: relying party, credentials, hardware-only tiers ------------------------------------------

def _policy(**overrides: Any) -> dict[str, Any]:
    policy: dict[str, Any] = {
        "version": 1, "name": "t",
        "mint": {"max_per_request": "100", "velocity_limit": "1000", "velocity_window_seconds": 60,
                 "request_ttl_seconds": 60, "approval_ttl_seconds": 60, "authorization_validity_seconds": 60,
                 "tiers": [{"up_to": "10", "approvals": 1, "eligible_roles": ["treasury"]},
                           {"approvals": 2, "eligible_roles": ["treasury", "cfo"], "hardware_keys_only": True}]},
        "governance": {"approvals": 1, "eligible_roles": ["security-admin"]},
        "reserve_guard": {"enabled": False},
        "webauthn": {"rp_id": "localhost", "origins": ["http://localhost:8080"]},
    }
    policy.update(overrides)
    return policy


def _operators(keys: dict[str, SoftAuthenticator]) -> dict[str, Any]:
    ops = []
    for i, name in enumerate(["alice", "bob", "carol", "erin"]):
        jwk = {**JWK, "x": webauthn.b64url_encode(bytes([i + 1]) * 32)}
        entry: dict[str, Any] = {"name": name, "roles": ["security-admin" if name == "erin" else "treasury"],
                                 "jwk": jwk}
        if name in keys:
            entry["webauthn"] = [keys[name].credential(f"{name}'s key")]
        ops.append(entry)
    return {"operators": ops}


def test_policy_and_operators_round_trip_with_security_keys_and_keep_old_hashes() -> None:
    keys = {"bob": SoftAuthenticator(), "carol": SoftAuthenticator()}
    bundle = PolicyBundle(parse_policy(_policy()), parse_operators(_operators(keys)))
    assert PolicyBundle.from_json(json.loads(json.dumps(bundle.to_json()))) == bundle
    assert bundle.policy.webauthn == RP
    assert bundle.policy.mint.tiers[1].hardware_keys_only and not bundle.policy.mint.tiers[0].hardware_keys_only
    found = bundle.operators.by_credential(keys["bob"].credential()["id"])
    assert found is not None and found[0].name == "bob"
    # a bundle without any of it is written exactly as before (its hash does not move)
    plain = _policy()
    del plain["webauthn"]
    plain["mint"]["tiers"][1].pop("hardware_keys_only")
    assert "webauthn" not in parse_policy(plain).to_json()
    assert "hardware_keys_only" not in json.dumps(parse_policy(plain).to_json())
    assert "webauthn" not in json.dumps(parse_operators(_operators({})).to_json())


def test_policy_parsing_refuses_bad_security_key_settings() -> None:
    plain = _policy()
    del plain["webauthn"]
    with pytest.raises(InvalidInput, match="problem") as info:
        parse_policy(plain)
    assert any(p.location == "policy.toml: webauthn" for p in info.value.problems)
    for rp, where in (({"rp_id": "127.0.0.1", "origins": ["http://localhost"]}, "rp_id"),
                      ({"rp_id": "localhost", "origins": ["http://console.example"]}, "origins"),
                      ({"rp_id": "localhost", "origins": []}, "origins"),
                      ({"rp_id": "localhost", "origins": ["https://a.example"], "x": 1}, "x")):
        with pytest.raises(InvalidInput) as info:
            parse_policy(_policy(webauthn=rp))
        assert any(p.location == f"policy.toml: webauthn.{where}" for p in info.value.problems), info.value


def test_operators_parsing_refuses_bad_credentials_and_one_key_under_two_names() -> None:
    key = SoftAuthenticator()
    ops = _operators({"bob": key})
    ops["operators"][2]["webauthn"] = [key.credential()]  # carol enrols bob's key
    with pytest.raises(InvalidInput, match="problem") as info:
        parse_operators(ops)
    assert any("one key, one person" in p.message for p in info.value.problems)
    broken = _operators({"bob": key})
    broken["operators"][1]["webauthn"][0]["public_key"] = webauthn.b64url_encode(b"not a cose key")
    broken["operators"][1]["webauthn"][0]["sign_count"] = -1
    with pytest.raises(InvalidInput) as info:
        parse_operators(broken)
    assert {p.location for p in info.value.problems} >= {"operators.toml: operators[1].webauthn[0].public_key",
                                                           "operators.toml: operators[1].webauthn[0].sign_count"}


def test_verify_stored_accepts_both_kinds_and_only_genuine_assertions() -> None:
    key = SoftAuthenticator()
    bundle = PolicyBundle(parse_policy(_policy()), parse_operators(_operators({"bob": key})))
    text = webauthn.encode(_envelope(key))
    verified = signed.verify_stored(text, bundle, TYP_MINT_APPROVAL)
    assert verified is not None and verified[0].name == "bob" and verified[1] == PAYLOAD
    assert signed.by_security_key(text)
    assert signed.verify_stored(text, bundle, TYP_MINT_REQUEST) is None  # another statement type
    edited = json.loads(text)
    edited["payload"]["decision"] = "reject"
    assert signed.verify_stored(json.dumps(edited), bundle, TYP_MINT_APPROVAL) is None
    no_rp = _policy()
    del no_rp["webauthn"]
    no_rp["mint"]["tiers"][1].pop("hardware_keys_only")
    assert signed.verify_stored(text, PolicyBundle(parse_policy(no_rp), bundle.operators), TYP_MINT_APPROVAL) is None
    assert signed.verify_stored(text, PolicyBundle(bundle.policy, parse_operators(_operators({}))),
                                TYP_MINT_APPROVAL) is None  # the key is not enrolled (removed)


def test_a_hardware_only_tier_ignores_software_approvals_but_not_their_vetoes() -> None:
    bundle = PolicyBundle(parse_policy(_policy()), parse_operators(_operators({})))
    facts = quorum.RequestFacts(id="r", requester="alice", amount=50, digest="d", created_at=0, expires_at=100,
                                policy_hash="p")

    def approval(name: str, decision: str = "approve", security_key: bool = False) -> quorum.Approval:
        return quorum.Approval(operator=name, decision=decision, request_id="r", digest="d", policy_hash="p", iat=0,
                               security_key=security_key)

    soft = quorum.evaluate(facts, [approval("bob"), approval("carol")], bundle.operators, bundle.policy, 10)
    assert not soft.met and soft.ignored == (("bob", quorum.SECURITY_KEY_REQUIRED),
                                             ("carol", quorum.SECURITY_KEY_REQUIRED))
    hard = quorum.evaluate(facts, [approval("bob", security_key=True), approval("carol", security_key=True)],
                           bundle.operators, bundle.policy, 10)
    assert hard.met and "by security key only" in hard.tier["text"]
    ignored = quorum.evaluate(facts, [approval("bob", security_key=True), approval("carol", security_key=True),
                                      approval("erin", "reject")], bundle.operators, bundle.policy, 10)
    assert ignored.met  # erin is not eligible: ignored; a software rejection by an eligible officer vetoes:
    vetoed = quorum.evaluate(facts, [approval("bob", security_key=True), approval("carol", "reject")],
                             bundle.operators, bundle.policy, 10)
    assert vetoed.vetoed and not vetoed.met
    small = quorum.RequestFacts(id="r", requester="alice", amount=5, digest="d", created_at=0, expires_at=100,
                                policy_hash="p")
    assert quorum.evaluate(small, [approval("bob")], bundle.operators, bundle.policy, 10).met
