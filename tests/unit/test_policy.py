"""The policy model: parsing with every problem located, one key per person, the bundle hash and its JSON round
trip, tiers, the rules on new requests and the reserve guard."""

from __future__ import annotations

import base64
import copy
import json
import tomllib
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from appliance.domain import eip712, jose
from appliance.domain.canonical import canonical_json
from appliance.domain.policy import (
    ROLES,
    Operator,
    OperatorSet,
    Policy,
    PolicyBundle,
    ReserveFacts,
    Tier,
    check_new_request,
    describe,
    parse_operators,
    parse_policy,
    reserve_guard_reasons,
    unreachable_governance,
    unreachable_mint_tiers,
)
from appliance.errors import InvalidInput, PolicyViolation, Problem

FIRMWARE_CONFIG = Path(__file__).resolve().parents[2] / "firmware-config"
TOKEN = 10**6  # base units per token (6 decimals)
MILLION = 1_000_000 * TOKEN
MAX_PER_REQUEST = 10_000_000 * TOKEN
VELOCITY_LIMIT = 50_000_000 * TOKEN
CHAIN = 1
OTHER_CHAIN = 42161
ADDR_A = eip712.to_checksum_address(bytes(range(1, 21)))
ADDR_B = eip712.to_checksum_address(bytes(range(101, 121)))
ADDR_C = eip712.to_checksum_address(bytes(range(201, 221)))

# Deterministic test keys (fixed seeds and scalars), used nowhere else; only their public JWKs are enrolled.
_ED = [ed25519.Ed25519PrivateKey.from_private_bytes(bytes([i]) * 32) for i in (1, 2, 3, 4, 5)]
_P256 = [ec.derive_private_key(0x5EED_1000 + i, ec.SECP256R1()) for i in (1, 2, 3, 4, 5)]
JWKS = [jose.public_jwk(k.public_key()) for pair in zip(_ED, _P256, strict=True) for k in pair]  # OKP, EC, OKP...


def policy_dict() -> dict[str, Any]:
    """A complete valid policy.toml table."""
    return {
        "version": 3,
        "name": "test policy",
        "mint": {
            "max_per_request": str(MAX_PER_REQUEST),
            "velocity_limit": str(VELOCITY_LIMIT),
            "velocity_window_seconds": 86400,
            "request_ttl_seconds": 43200,
            "approval_ttl_seconds": 3600,
            "authorization_validity_seconds": 1800,
            "veto_on_reject": True,
            "tiers": [
                {"up_to": str(MILLION), "approvals": 2, "eligible_roles": ["treasury", "cfo"]},
                {"approvals": 3, "eligible_roles": ["treasury", "cfo"], "required": {"cfo": 1}},
            ],
            "allowlist": [
                {"chain_id": CHAIN, "address": ADDR_A, "label": "issuance wallet"},
                {"chain_id": OTHER_CHAIN, "address": ADDR_B, "label": "arbitrum wallet"},
            ],
        },
        "governance": {"approvals": 2, "eligible_roles": ["security-admin"]},
        "reserve_guard": {"enabled": True, "max_attestation_age_seconds": 172800},
    }


def operators_dict() -> dict[str, Any]:
    """A valid operators.toml table with real Ed25519 and P-256 public JWKs."""
    spec = [("alice", ["treasury"]), ("bob", ["treasury"]), ("carol", ["cfo", "treasury"]), ("dave", ["cfo"]),
            ("erin", ["security-admin"]), ("frank", ["security-admin"]), ("grace", ["auditor"])]
    ops: list[dict[str, Any]] = [{"name": n, "roles": r, "jwk": dict(JWKS[i])} for i, (n, r) in enumerate(spec)]
    ops.append({"name": "hank", "roles": ["treasury"], "enabled": False, "jwk": dict(JWKS[len(spec)])})
    return {"operators": ops}


def problems(exc: pytest.ExceptionInfo[InvalidInput]) -> dict[str, str]:
    found = {p.location: p.message for p in exc.value.problems}
    assert len(found) == len(exc.value.problems), "two problems at one location"
    return found


def set_path(data: dict[str, Any], path: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    """A deep copy of data with the member at path replaced (or added)."""
    out = copy.deepcopy(data)
    target: Any = out
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return out


def del_path(data: dict[str, Any], path: tuple[str | int, ...]) -> dict[str, Any]:
    out = copy.deepcopy(data)
    target: Any = out
    for step in path[:-1]:
        target = target[step]
    del target[path[-1]]
    return out


def dotted(path: tuple[str | int, ...]) -> str:
    """("mint", "tiers", 0, "up_to") -> "mint.tiers[0].up_to"."""
    out = ""
    for step in path:
        out += f"[{step}]" if isinstance(step, int) else (f".{step}" if out else step)
    return out


def bundle(policy: dict[str, Any] | None = None, operators: dict[str, Any] | None = None) -> PolicyBundle:
    return PolicyBundle(parse_policy(policy_dict() if policy is None else policy),
                        parse_operators(operators_dict() if operators is None else operators))


# -- the examples of the brief, as TOML text ----------------------------------------------------------------------

EXAMPLE_POLICY = f"""
version = 3                    # positive int, informative
name = "production"
[mint]
max_per_request = "5000000000000000"     # base units
velocity_limit = "20000000000000000"     # total authorized in the rolling window
velocity_window_seconds = 86400
request_ttl_seconds = 86400              # a request expires this long after creation
approval_ttl_seconds = 3600              # an approval counts for this long after its iat
authorization_validity_seconds = 86400   # validBefore - validAfter of the signed authorization
veto_on_reject = true                    # a single valid rejection by an eligible approver vetoes the request

[[mint.tiers]]
up_to = "1000000000000"
approvals = 2
eligible_roles = ["treasury", "cfo"]
required = {{ cfo = 0 }}

[[mint.tiers]]
approvals = 3
eligible_roles = ["treasury", "cfo"]
required = {{ cfo = 1 }}

[[mint.allowlist]]
chain_id = 1
address = "{ADDR_A}"
label = "Treasury hot wallet"

[governance]
approvals = 2
eligible_roles = ["security-admin"]

[reserve_guard]
enabled = true
max_attestation_age_seconds = 172800
"""

EXAMPLE_OPERATORS = f"""
[[operators]]
name = "alice"
roles = ["treasury"]
enabled = true
jwk = {{ kty = "OKP", crv = "Ed25519", x = "{JWKS[0]['x']}" }}

[[operators]]
name = "bob"
roles = ["cfo", "treasury"]
jwk = {{ kty = "EC", crv = "P-256", x = "{JWKS[1]['x']}", y = "{JWKS[1]['y']}" }}
"""


def test_the_example_policy_parses_every_field() -> None:
    p = parse_policy(tomllib.loads(EXAMPLE_POLICY))
    assert (p.version, p.name) == (3, "production")
    m = p.mint
    assert (m.max_per_request, m.velocity_limit) == (5_000_000_000_000_000, 20_000_000_000_000_000)
    assert (m.velocity_window_seconds, m.request_ttl_seconds, m.approval_ttl_seconds) == (86400, 86400, 3600)
    assert (m.authorization_validity_seconds, m.veto_on_reject) == (86400, True)
    assert m.tiers == (Tier(1_000_000_000_000, 2, frozenset({"treasury", "cfo"}), (("cfo", 0),)),
                       Tier(None, 3, frozenset({"treasury", "cfo"}), (("cfo", 1),)))
    assert [(e.chain_id, e.address, e.label) for e in m.allowlist] == [(1, ADDR_A, "Treasury hot wallet")]
    assert (p.governance.approvals, p.governance.eligible_roles) == (2, {"security-admin"})
    assert (p.reserve_guard.enabled, p.reserve_guard.max_attestation_age_seconds) == (True, 172800)


def test_the_example_operators_parse() -> None:
    ops = parse_operators(tomllib.loads(EXAMPLE_OPERATORS))
    assert [op.name for op in ops] == ["alice", "bob"]
    alice, bob = ops.get("alice"), ops.get("bob")
    assert alice == Operator("alice", frozenset({"treasury"}), JWKS[0], True)
    assert bob is not None and bob.roles == {"cfo", "treasury"} and bob.enabled is True  # enabled defaults to true
    assert dict(bob.jwk) == JWKS[1]
    assert ops.get("carol") is None and ops.get("Alice") is None
    assert [op.name for op in ops.with_role("treasury")] == ["alice", "bob"]
    assert [op.name for op in ops.with_role("cfo")] == ["bob"]
    assert ops.with_role("auditor") == []
    assert len(ops) == 2


def test_operators_are_hashable_values() -> None:
    a = Operator("alice", frozenset({"treasury"}), JWKS[0], True)
    b = Operator("alice", frozenset({"treasury"}), dict(reversed(list(JWKS[0].items()))), True)
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert parse_operators(operators_dict()) == parse_operators(operators_dict())
    assert hash(parse_operators(operators_dict())) == hash(parse_operators(operators_dict()))


def test_operators_iterate_in_name_order_whatever_the_file_order() -> None:
    data = operators_dict()
    data["operators"].reverse()
    assert [op.name for op in parse_operators(data)] == sorted(e["name"] for e in data["operators"])


def test_every_real_enrolled_key_is_accepted_by_the_shell_key_check() -> None:
    for op in parse_operators(operators_dict()):
        assert jose.jwk_alg(dict(op.jwk)) in {"EdDSA", "ES256"}
        jose.public_key_from_jwk(dict(op.jwk))


def test_optional_jwk_members_are_tolerated_and_dropped() -> None:
    data = set_path(operators_dict(), ("operators", 0, "jwk"), {**JWKS[0], "kid": "alice-2026", "use": "sig",
                                                                "alg": "EdDSA", "key_ops": ["verify"]})
    alice = parse_operators(data).get("alice")
    assert alice is not None and dict(alice.jwk) == JWKS[0]


def test_optional_fields_take_their_documented_defaults() -> None:
    data = del_path(policy_dict(), ("mint", "veto_on_reject"))
    data = del_path(data, ("mint", "allowlist", 0, "label"))
    data = del_path(data, ("mint", "tiers", 1, "required"))
    p = parse_policy(data)
    assert p.mint.veto_on_reject is True  # fail safe: a rejection vetoes unless explicitly turned off
    assert p.mint.allowlist[0].label == ""
    assert p.mint.tiers[1].required == ()
    no_allowlist = parse_policy(del_path(policy_dict(), ("mint", "allowlist")))
    assert no_allowlist.mint.allowlist == ()  # fails closed: nothing is allowlisted


# -- every problem, with file and field, at once -------------------------------------------------------------------

def test_every_policy_problem_is_reported_with_file_and_field_at_once() -> None:
    data = policy_dict()
    data["name"] = ""
    data["mint"]["max_per_request"] = 1000
    data["mint"]["velocity_window_seconds"] = 0
    data["mint"]["veto_on_reject"] = "yes"
    data["mint"]["tiers"][0]["approvals"] = "2"
    data["mint"]["tiers"][1]["eligible_roles"] = ["treasury", "cfo", "ceo"]
    data["mint"]["tiers"][1]["required"] = {"cfo": 4}
    data["mint"]["allowlist"][1]["address"] = "0x1234"
    data["governance"]["eligible_roles"] = []
    data["reserve_guard"]["enabled"] = 1
    data["reserve_guard"]["max_age"] = 5
    with pytest.raises(InvalidInput) as exc:
        parse_policy(data)
    assert problems(exc) == {
        "policy.toml: name": "must be a non-empty string",
        "policy.toml: mint.max_per_request": 'must be a decimal string of base units, e.g. "1000000", not a TOML '
                                             'integer',
        "policy.toml: mint.velocity_window_seconds": f"must be an integer from 1 to {2**53 - 1}",
        "policy.toml: mint.veto_on_reject": "must be true or false",
        "policy.toml: mint.tiers[0].approvals": "must be an integer",
        "policy.toml: mint.tiers[1].eligible_roles":
            "unknown role(s) ceo (roles: treasury, cfo, security-admin, auditor, custodian)",
        "policy.toml: mint.tiers[1].required.cfo": "must be from 0 to the tier's approvals (3)",
        "policy.toml: mint.allowlist[1].address": "must be a 0x-prefixed 20-byte hex address",
        "policy.toml: governance.eligible_roles":
            "must be a non-empty list of roles (treasury, cfo, security-admin, auditor, custodian)",
        "policy.toml: reserve_guard.enabled": "must be true or false",
        "policy.toml: reserve_guard.max_age": "unknown key",
    }
    assert exc.value.detail == "policy.toml: 11 problem(s) in the policy"
    assert "policy.toml: mint.tiers[0].approvals: must be an integer" in str(exc.value)
    assert exc.value.status == 400


def test_the_source_name_given_by_the_caller_names_the_file() -> None:
    with pytest.raises(InvalidInput) as exc:
        parse_policy(set_path(policy_dict(), ("governance", "approvals"), 0), "/etc/appliance/policy.toml")
    assert list(problems(exc)) == ["/etc/appliance/policy.toml: governance.approvals"]


def test_every_operator_problem_is_reported_with_file_and_field_at_once() -> None:
    data = operators_dict()
    ops = data["operators"]
    ops[0]["name"] = "Alice"
    ops[1]["roles"] = ["treasury", "root"]
    ops[2]["jwk"] = {**JWKS[2], "d": "c2VjcmV0"}
    ops[3]["jwk"] = {"kty": "RSA", "n": "AQAB", "e": "AQAB"}
    ops[4]["jwk"] = {"kty": "EC", "crv": "P-256", "x": JWKS[1]["x"]}
    ops[5]["enabled"] = "true"
    ops[6]["roles"] = ["auditor", "auditor"]
    ops[7]["jwk"] = "MCowBQYDK2VwAyEA"
    with pytest.raises(InvalidInput) as exc:
        parse_operators(data)
    key_types = "must be an Ed25519 (kty OKP, crv Ed25519) or P-256 (kty EC, crv P-256) public JWK"
    assert problems(exc) == {
        "operators.toml: operators[0].name": "must match ^[a-z][a-z0-9_-]{0,31}$",
        "operators.toml: operators[1].roles": "unknown role(s) root (roles: treasury, cfo, security-admin, auditor, "
                                              "custodian)",
        "operators.toml: operators[2].jwk.d": "a private key member: enrol public keys only",
        "operators.toml: operators[3].jwk": key_types,
        "operators.toml: operators[4].jwk.y": "required",
        "operators.toml: operators[5].enabled": "must be true or false",
        "operators.toml: operators[6].roles": "lists a role twice",
        "operators.toml: operators[7].jwk": "must be a public JWK table",
    }
    assert exc.value.detail == "operators.toml: 8 problem(s) in the operators"


@pytest.mark.parametrize("name", ["a", "a" * 32, "alice_2", "bob-smith", "z0"])
def test_operator_names_that_are_accepted(name: str) -> None:
    assert parse_operators(set_path(operators_dict(), ("operators", 0, "name"), name)).get(name) is not None


@pytest.mark.parametrize("name", ["", "a" * 33, "Alice", "1alice", "-a", "_a", "al ice", "alice\n", "alïce", 7,
                                  None, ["alice"]])
def test_operator_names_that_are_refused(name: Any) -> None:
    with pytest.raises(InvalidInput) as exc:
        parse_operators(set_path(operators_dict(), ("operators", 0, "name"), name))
    assert problems(exc) == {"operators.toml: operators[0].name": "must match ^[a-z][a-z0-9_-]{0,31}$"}


@pytest.mark.parametrize("roles", [[], "treasury", ["treasury", 1], None, [["cfo"]]])
def test_operator_roles_must_be_a_non_empty_list_of_role_names(roles: Any) -> None:
    with pytest.raises(InvalidInput) as exc:
        parse_operators(set_path(operators_dict(), ("operators", 0, "roles"), roles))
    assert problems(exc) == {
        "operators.toml: operators[0].roles": "must be a non-empty list of roles (treasury, cfo, security-admin, "
                                              "auditor, custodian)"}


ED_X = JWKS[0]["x"]
EC_X, EC_Y = JWKS[1]["x"], JWKS[1]["y"]
NOT_A_COORDINATE = "must be 32 bytes as unpadded canonical base64url"
UNKNOWN_MEMBER = "unknown member (an operator JWK holds kty, crv, x and, for P-256, y)"
KEY_TYPES = "must be an Ed25519 (kty OKP, crv Ed25519) or P-256 (kty EC, crv P-256) public JWK"


def _noncanonical(x: str) -> str:
    """The same 32 bytes with non-zero trailing bits in the last character (decoders that ignore them agree)."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    other = x[:-1] + alphabet[alphabet.index(x[-1]) ^ 1]
    assert base64.urlsafe_b64decode(other + "=") == base64.urlsafe_b64decode(x + "=")
    return other


@pytest.mark.parametrize(("jwk", "where", "message"), [
    ({"kty": "OKP", "crv": "X25519", "x": ED_X}, "", KEY_TYPES),
    ({"kty": "OKP", "crv": "P-256", "x": ED_X}, "", KEY_TYPES),
    ({"kty": "EC", "crv": "Ed25519", "x": EC_X, "y": EC_Y}, "", KEY_TYPES),
    ({"kty": "EC", "crv": "secp256k1", "x": EC_X, "y": EC_Y}, "", KEY_TYPES),
    ({"kty": "EC", "crv": "P-384", "x": EC_X, "y": EC_Y}, "", KEY_TYPES),
    ({"crv": "Ed25519", "x": ED_X}, "", KEY_TYPES),
    ({"kty": ["OKP"], "crv": "Ed25519", "x": ED_X}, "", KEY_TYPES),  # unhashable: InvalidInput, not a crash
    ({"kty": {"OKP": 1}, "crv": "Ed25519", "x": ED_X}, "", KEY_TYPES),
    ({"kty": "oct", "k": "c2VjcmV0"}, "", KEY_TYPES),
    ({"kty": "OKP", "crv": "Ed25519"}, ".x", "required"),
    ({"kty": "OKP", "crv": "Ed25519", "x": ED_X, "y": EC_Y}, ".y", UNKNOWN_MEMBER),
    ({"kty": "OKP", "crv": "Ed25519", "x": ED_X, "exp": "2027"}, ".exp", UNKNOWN_MEMBER),
    ({"kty": "OKP", "crv": "Ed25519", "x": ED_X + "="}, ".x", NOT_A_COORDINATE),
    ({"kty": "OKP", "crv": "Ed25519", "x": ED_X[:-1]}, ".x", NOT_A_COORDINATE),
    ({"kty": "OKP", "crv": "Ed25519", "x": ED_X + "AAAA"}, ".x", NOT_A_COORDINATE),
    ({"kty": "OKP", "crv": "Ed25519", "x": "+" + ED_X[1:]}, ".x", NOT_A_COORDINATE),
    ({"kty": "OKP", "crv": "Ed25519", "x": "/" + ED_X[1:]}, ".x", NOT_A_COORDINATE),
    ({"kty": "OKP", "crv": "Ed25519", "x": _noncanonical(ED_X)}, ".x", NOT_A_COORDINATE),
    ({"kty": "OKP", "crv": "Ed25519", "x": ""}, ".x", NOT_A_COORDINATE),
    ({"kty": "OKP", "crv": "Ed25519", "x": 7}, ".x", NOT_A_COORDINATE),
    ({"kty": "EC", "crv": "P-256", "x": EC_X, "y": EC_Y[:-2]}, ".y", NOT_A_COORDINATE),
    ({"kty": "EC", "crv": "P-256", "x": EC_X, "y": EC_Y, "d": "c2VjcmV0"}, ".d",
     "a private key member: enrol public keys only"),
])
def test_operator_keys_must_have_the_shape_of_a_public_ed25519_or_p256_jwk(jwk: dict[str, Any], where: str,
                                                                          message: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        parse_operators(set_path(operators_dict(), ("operators", 0, "jwk"), jwk))
    assert problems(exc) == {f"operators.toml: operators[0].jwk{where}": message}


@pytest.mark.parametrize("data", [{}, {"operators": []}, {"operators": "alice"}, {"operators": [1]}, [], None])
def test_an_operator_set_needs_at_least_one_well_formed_operator(data: Any) -> None:
    with pytest.raises(InvalidInput) as exc:
        parse_operators(data)
    assert len(exc.value.problems) == 1
    assert exc.value.problems[0].location.startswith("operators.toml: ")


@pytest.mark.parametrize(("path", "value", "location"), [
    (("version",), 0, "version"), (("version",), True, "version"), (("version",), "3", "version"),
    (("version",), 2**53, "version"), (("name",), 7, "name"), (("name",), "  ", "name"),
    (("mint", "tiers", 0, "approvals"), 0, "mint.tiers[0].approvals"),
    (("mint", "allowlist", 0, "chain_id"), 0, "mint.allowlist[0].chain_id"),
    (("mint", "allowlist", 0, "chain_id"), "1", "mint.allowlist[0].chain_id"),
    (("mint", "allowlist", 0, "chain_id"), 2**53, "mint.allowlist[0].chain_id"),  # not exact in canonical JSON
    (("mint", "allowlist", 0, "label"), 5, "mint.allowlist[0].label"),
    (("governance", "approvals"), 0, "governance.approvals"),
    (("governance", "eligible_roles"), ["security-admin", "security-admin"], "governance.eligible_roles"),
    (("reserve_guard", "max_attestation_age_seconds"), "2d", "reserve_guard.max_attestation_age_seconds"),
    (("reserve_guard", "max_attestation_age_seconds"), 0, "reserve_guard.max_attestation_age_seconds"),
])
def test_each_bad_value_is_located(path: tuple[str | int, ...], value: Any, location: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        parse_policy(set_path(policy_dict(), path, value))
    assert list(problems(exc)) == [f"policy.toml: {location}"]


@pytest.mark.parametrize("field", ["velocity_window_seconds", "request_ttl_seconds", "approval_ttl_seconds",
                                   "authorization_validity_seconds"])
@pytest.mark.parametrize(("value", "message"), [
    (0, f"must be an integer from 1 to {2**53 - 1}"), (-5, f"must be an integer from 1 to {2**53 - 1}"),
    ("3600", "must be an integer"), (3600.0, "must be an integer"), (True, "must be an integer"),
])
def test_durations_are_positive_integers(field: str, value: Any, message: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        parse_policy(set_path(policy_dict(), ("mint", field), value))
    assert problems(exc) == {f"policy.toml: mint.{field}": message}


@pytest.mark.parametrize("section", ["mint", "governance", "reserve_guard"])
def test_sections_must_be_tables(section: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        parse_policy(set_path(policy_dict(), (section,), "on"))
    assert problems(exc) == {f"policy.toml: {section}": "must be a table"}


@pytest.mark.parametrize("data", [None, [], "policy"])
def test_a_policy_must_be_a_table(data: Any) -> None:
    with pytest.raises(InvalidInput) as exc:
        parse_policy(data)
    assert problems(exc) == {"policy.toml: (top level)": "must be a table"}


# -- unknown and missing keys, at each level ---------------------------------------------------------------------

@pytest.mark.parametrize(("path", "key"), [
    ((), "veto_on_reject"),                       # at the wrong level: would silently turn the veto off
    (("mint",), "veto_on_rejected"),
    (("mint",), "max_per_requests"),
    (("mint", "tiers", 0), "upto"),
    (("mint", "tiers", 1), "requires"),
    (("mint", "allowlist", 1), "chain"),
    (("governance",), "threshold"),
    (("reserve_guard",), "disabled"),
])
def test_unknown_policy_keys_are_refused_at_each_level(path: tuple[str | int, ...], key: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        parse_policy(set_path(policy_dict(), (*path, key), True))
    assert problems(exc) == {f"policy.toml: {dotted((*path, key))}": "unknown key"}


@pytest.mark.parametrize(("path", "key"), [((), "admins"), (("operators", 2), "role")])
def test_unknown_operator_keys_are_refused_at_each_level(path: tuple[str | int, ...], key: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        parse_operators(set_path(operators_dict(), (*path, key), ["cfo"]))
    assert problems(exc) == {f"operators.toml: {dotted((*path, key))}": "unknown key"}


@pytest.mark.parametrize("path", [
    ("version",), ("name",), ("mint",), ("governance",), ("reserve_guard",),
    ("mint", "max_per_request"), ("mint", "velocity_limit"), ("mint", "velocity_window_seconds"),
    ("mint", "request_ttl_seconds"), ("mint", "approval_ttl_seconds"), ("mint", "authorization_validity_seconds"),
    ("mint", "tiers"), ("mint", "tiers", 0, "approvals"), ("mint", "tiers", 1, "eligible_roles"),
    ("mint", "allowlist", 0, "chain_id"), ("mint", "allowlist", 0, "address"),
    ("governance", "approvals"), ("governance", "eligible_roles"),
    ("reserve_guard", "enabled"),
])
def test_missing_required_keys_are_refused(path: tuple[str | int, ...]) -> None:
    with pytest.raises(InvalidInput) as exc:
        parse_policy(del_path(policy_dict(), path))
    assert problems(exc) == {f"policy.toml: {dotted(path)}": "required"}


def test_the_maximum_attestation_age_is_required_only_when_the_guard_is_enabled() -> None:
    with pytest.raises(InvalidInput) as exc:
        parse_policy(del_path(policy_dict(), ("reserve_guard", "max_attestation_age_seconds")))
    assert problems(exc) == {
        "policy.toml: reserve_guard.max_attestation_age_seconds": "required when the reserve guard is enabled"}
    off = parse_policy({**policy_dict(), "reserve_guard": {"enabled": False}})
    assert (off.reserve_guard.enabled, off.reserve_guard.max_attestation_age_seconds) == (False, 172800)


@pytest.mark.parametrize("key", ["name", "roles", "jwk"])
def test_missing_operator_keys_are_refused(key: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        parse_operators(del_path(operators_dict(), ("operators", 1, key)))
    assert problems(exc) == {f"operators.toml: operators[1].{key}": "required"}


# -- one person, one vote -----------------------------------------------------------------------------------------

def test_the_same_name_enrolled_twice_is_refused_naming_both_entries() -> None:
    data = set_path(operators_dict(), ("operators", 3, "name"), "alice")
    with pytest.raises(InvalidInput) as exc:
        parse_operators(data)
    assert problems(exc) == {
        "operators.toml: operators[3].name": "alice is enrolled twice (also at operators.toml: operators[0])"}


@pytest.mark.parametrize("extra", [{}, {"kid": "second-identity"}, {"use": "sig", "alg": "ES256"}])
def test_the_same_key_under_two_names_is_refused(extra: dict[str, str]) -> None:
    data = operators_dict()
    data["operators"].append({"name": "mallory", "roles": ["cfo"], "jwk": {**JWKS[1], **extra}})
    with pytest.raises(InvalidInput) as exc:
        parse_operators(data)
    assert problems(exc) == {"operators.toml: operators[8].jwk":
                             "the public key of bob (operators.toml: operators[1]): one key, one person"}


def test_the_same_key_with_reordered_members_is_the_same_key() -> None:
    data = operators_dict()
    data["operators"].append({"name": "mallory", "roles": ["cfo"], "jwk": dict(reversed(list(JWKS[1].items())))})
    with pytest.raises(InvalidInput, match="one key, one person"):
        parse_operators(data)


def test_every_duplicate_is_reported_together_with_other_problems() -> None:
    data = operators_dict()
    data["operators"][1]["name"] = "alice"
    data["operators"][3]["jwk"] = dict(JWKS[2])
    data["operators"][4]["roles"] = ["root"]
    with pytest.raises(InvalidInput) as exc:
        parse_operators(data)
    assert set(problems(exc)) == {"operators.toml: operators[1].name", "operators.toml: operators[3].jwk",
                                  "operators.toml: operators[4].roles"}


def test_an_operator_set_built_in_code_refuses_duplicates_too() -> None:
    alice = Operator("alice", frozenset({"treasury"}), JWKS[0])
    with pytest.raises(InvalidInput) as exc:
        OperatorSet([alice, Operator("alice", frozenset({"cfo"}), JWKS[1])])
    assert exc.value.problems == (Problem("operators[1].name", "alice is enrolled twice (also at operators[0])"),)
    with pytest.raises(InvalidInput) as exc:
        OperatorSet([alice, Operator("bob", frozenset({"cfo"}), {**JWKS[0], "kid": "bob"})])
    assert exc.value.problems == (
        Problem("operators[1].jwk", "the public key of alice (operators[0]): one key, one person"),)
    assert len(OperatorSet([alice, Operator("bob", frozenset({"cfo"}), JWKS[1])])) == 2


# -- amounts are decimal strings of base units -----------------------------------------------------------------

AMOUNT_FIELDS = [("mint", "max_per_request"), ("mint", "velocity_limit"), ("mint", "tiers", 0, "up_to")]
NOT_A_DECIMAL_STRING = 'must be a decimal string of base units, e.g. "1000000"'


@pytest.mark.parametrize("path", AMOUNT_FIELDS)
@pytest.mark.parametrize(("value", "kind"), [(1000000, "integer"), (1e6, "float"), (1000000.0, "float"),
                                             (1.5, "float"), (0, "integer")])
def test_toml_numbers_are_refused_as_amounts(path: tuple[str | int, ...], value: Any, kind: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        parse_policy(set_path(policy_dict(), path, value))
    assert problems(exc) == {f"policy.toml: {dotted(path)}": f"{NOT_A_DECIMAL_STRING}, not a TOML {kind}"}


@pytest.mark.parametrize("path", AMOUNT_FIELDS)
@pytest.mark.parametrize("value", [True, None, ["1000000"], {"value": "1"}, "1.5", "1e6", "-1", "+1", "01", "00",
                                   " 1", "1 ", "1\n", "1_000", "1,000", "0x10", "", "１", "٣"])
def test_amounts_that_are_not_decimal_strings_are_refused(path: tuple[str | int, ...], value: Any) -> None:
    with pytest.raises(InvalidInput) as exc:
        parse_policy(set_path(policy_dict(), path, value))
    assert problems(exc) == {f"policy.toml: {dotted(path)}": NOT_A_DECIMAL_STRING}


@pytest.mark.parametrize("path", AMOUNT_FIELDS)
@pytest.mark.parametrize("value", ["0", str(2**256), str(2**300), "9" * 5000])  # 5000 digits: not a crash
def test_amounts_must_be_from_1_to_2_256_minus_1(path: tuple[str | int, ...], value: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        parse_policy(set_path(policy_dict(), path, value))
    assert Problem(f"policy.toml: {dotted(path)}", "must be from 1 to 2^256 - 1") in exc.value.problems


def test_the_largest_uint256_amount_is_accepted_and_hashable() -> None:
    data = set_path(policy_dict(), ("mint", "velocity_limit"), str(2**256 - 1))
    assert parse_policy(data).mint.velocity_limit == 2**256 - 1
    assert len(bundle(data).hash) == 64  # amounts are strings in the JSON, so no integer limit applies


def test_max_per_request_may_equal_but_not_exceed_the_velocity_limit() -> None:
    with pytest.raises(InvalidInput) as exc:
        parse_policy(set_path(policy_dict(), ("mint", "max_per_request"), str(VELOCITY_LIMIT + 1)))
    assert problems(exc) == {
        "policy.toml: mint.max_per_request": f"must not exceed mint.velocity_limit ({VELOCITY_LIMIT})"}
    assert parse_policy(set_path(policy_dict(), ("mint", "max_per_request"), str(VELOCITY_LIMIT)))


# -- tiers ------------------------------------------------------------------------------------------------------

def three_tiers(first: Any, second: Any) -> dict[str, Any]:
    return set_path(policy_dict(), ("mint", "tiers"), [
        {"up_to": first, "approvals": 1, "eligible_roles": ["treasury"]},
        {"up_to": second, "approvals": 2, "eligible_roles": ["treasury", "cfo"]},
        {"approvals": 3, "eligible_roles": ["treasury", "cfo"], "required": {"cfo": 1}},
    ])


@pytest.mark.parametrize(("first", "second"), [("1000", "1000"), ("1000", "999"), ("1000", "1")])
def test_tier_bounds_must_increase_strictly(first: str, second: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        parse_policy(three_tiers(first, second))
    assert problems(exc) == {"policy.toml: mint.tiers[1].up_to":
                             f"must be greater than mint.tiers[0].up_to ({first}): bounds increase strictly"}


def test_tier_bounds_that_increase_by_one_are_accepted() -> None:
    p = parse_policy(three_tiers("1000", "1001"))
    assert [t.up_to for t in p.mint.tiers] == [1000, 1001, None]


def test_a_missing_bound_is_refused_except_on_the_last_tier_which_must_have_none() -> None:
    data = del_path(three_tiers("1000", "5000"), ("mint", "tiers", 1, "up_to"))
    data = set_path(data, ("mint", "tiers", 2, "up_to"), "9000")
    with pytest.raises(InvalidInput) as exc:
        parse_policy(data)
    assert problems(exc) == {
        "policy.toml: mint.tiers[1].up_to": "required on every tier but the last",
        "policy.toml: mint.tiers[2].up_to": "the last tier has no up_to: it covers every larger amount",
    }


@pytest.mark.parametrize("tiers", [[], "tiers", [1], {"approvals": 1}])
def test_tiers_must_be_a_non_empty_array_of_tables(tiers: Any) -> None:
    with pytest.raises(InvalidInput) as exc:
        parse_policy(set_path(policy_dict(), ("mint", "tiers"), tiers))
    assert all(p.location.startswith("policy.toml: mint.tiers") for p in exc.value.problems)


@pytest.mark.parametrize(("required", "location", "message"), [
    ({"cfo": 4}, "cfo", "must be from 0 to the tier's approvals (3)"),
    ({"cfo": -1}, "cfo", "must be from 0 to the tier's approvals (3)"),
    ({"cfo": "1"}, "cfo", "must be an integer"),
    ({"cfo": True}, "cfo", "must be an integer"),
    ({"cfo": 1.0}, "cfo", "must be an integer"),
    ({"auditor": 1}, "auditor", "must be one of this tier's eligible_roles (treasury, cfo)"),
    ({"chairman": 1}, "chairman", "unknown role (roles: treasury, cfo, security-admin, auditor, custodian)"),
])
def test_required_counts_are_checked(required: dict[str, Any], location: str, message: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        parse_policy(set_path(policy_dict(), ("mint", "tiers", 1, "required"), required))
    assert problems(exc) == {f"policy.toml: mint.tiers[1].required.{location}": message}


def test_required_must_be_a_table() -> None:
    with pytest.raises(InvalidInput) as exc:
        parse_policy(set_path(policy_dict(), ("mint", "tiers", 1, "required"), ["cfo"]))
    assert list(problems(exc)) == ["policy.toml: mint.tiers[1].required"]


def test_required_counts_up_to_the_approvals_are_accepted() -> None:
    data = set_path(policy_dict(), ("mint", "tiers", 1, "required"), {"cfo": 3, "treasury": 3})
    assert parse_policy(data).mint.tiers[1].required == (("cfo", 3), ("treasury", 3))


@pytest.fixture
def policy() -> Policy:
    return parse_policy(policy_dict())


@pytest.mark.parametrize(("amount", "tier"), [
    (1, 0), (MILLION - 1, 0), (MILLION, 0), (MILLION + 1, 1), (MAX_PER_REQUEST, 1), (2**256 - 1, 1),
])
def test_tier_for_boundaries(policy: Policy, amount: int, tier: int) -> None:
    assert policy.tier_for(amount) is policy.mint.tiers[tier]


@pytest.mark.parametrize(("amount", "tier"), [(1, 0), (1000, 0), (1001, 1), (5000, 1), (5001, 2), (10**30, 2)])
def test_tier_for_with_three_tiers(amount: int, tier: int) -> None:
    p = parse_policy(three_tiers("1000", "5000"))
    assert p.tier_for(amount) is p.mint.tiers[tier]


def test_describe_explains_a_tier(policy: Policy) -> None:
    assert describe(policy.mint.tiers[1]) == {
        "approvals": 3, "eligible_roles": ["treasury", "cfo"], "required": {"cfo": 1},
        "text": "3 approvals from treasury or cfo, including 1 cfo; requester excluded"}
    assert describe(policy.mint.tiers[0]) == {
        "approvals": 2, "eligible_roles": ["treasury", "cfo"], "required": {}, "up_to": str(MILLION),
        "text": "2 approvals from treasury or cfo; requester excluded"}
    assert policy.describe(policy.mint.tiers[1]) == describe(policy.mint.tiers[1])


@pytest.mark.parametrize(("tier", "text"), [
    (Tier(None, 1, frozenset({"cfo"})), "1 approval from cfo; requester excluded"),
    (Tier(None, 2, frozenset({"cfo", "treasury"}), (("cfo", 0),)),
     "2 approvals from treasury or cfo; requester excluded"),
    (Tier(None, 4, frozenset({"auditor", "cfo", "treasury"}), (("treasury", 2), ("cfo", 1))),
     "4 approvals from treasury or cfo or auditor, including 2 treasury and 1 cfo; requester excluded"),
])
def test_describe_text(tier: Tier, text: str) -> None:
    assert describe(tier)["text"] == text


# -- allowlist ----------------------------------------------------------------------------------------------------

def test_allowlist_entries_are_unique_per_chain_and_address() -> None:
    data = policy_dict()
    data["mint"]["allowlist"].append({"chain_id": CHAIN, "address": ADDR_A, "label": "same wallet again"})
    data["mint"]["allowlist"].append({"chain_id": OTHER_CHAIN, "address": ADDR_A, "label": "other chain: fine"})
    with pytest.raises(InvalidInput) as exc:
        parse_policy(data)
    assert problems(exc) == {"policy.toml: mint.allowlist[2]": f"repeats mint.allowlist[0] (chain {CHAIN}, {ADDR_A})"}


@pytest.mark.parametrize("address", ["0x1234", ADDR_A[2:], "0X" + ADDR_A[2:], ADDR_A + "00", ADDR_A[:-1] + "g", 7,
                                     None, ADDR_A + "\n"])
def test_allowlist_addresses_must_look_like_addresses(address: Any) -> None:
    with pytest.raises(InvalidInput) as exc:
        parse_policy(set_path(policy_dict(), ("mint", "allowlist", 0, "address"), address))
    assert problems(exc) == {"policy.toml: mint.allowlist[0].address": "must be a 0x-prefixed 20-byte hex address"}


@pytest.mark.parametrize("spelling", [str.lower, str.upper, lambda a: a[:2] + a[2:].swapcase()])
def test_an_allowlist_address_must_carry_its_eip55_checksum(spelling: Any) -> None:
    # A typo in the allowlist would mint to an address nobody holds: only the EIP-55 form is accepted.
    address = "0x" + spelling(ADDR_A[2:])
    with pytest.raises(InvalidInput) as exc:
        parse_policy(set_path(policy_dict(), ("mint", "allowlist", 0, "address"), address))
    assert problems(exc) == {"policy.toml: mint.allowlist[0].address": f"must be EIP-55 checksummed: {ADDR_A}"}


# -- the bundle: JSON, round trip, hash ------------------------------------------------------------------------

def reversed_keys(obj: Any) -> Any:
    """The same JSON value with every object's keys in reverse order."""
    if isinstance(obj, dict):
        return {k: reversed_keys(obj[k]) for k in reversed(list(obj))}
    if isinstance(obj, list):
        return [reversed_keys(v) for v in obj]
    return obj


def test_bundle_hash_is_sha256_of_the_rfc8785_json() -> None:
    import hashlib

    b = bundle()
    assert b.hash == hashlib.sha256(canonical_json(b.to_json())).hexdigest()
    assert len(b.hash) == 64 and b.hash == b.hash.lower()


def test_bundle_hash_is_stable_across_key_order_role_order_and_operator_order() -> None:
    ops = reversed_keys(operators_dict())
    ops["operators"].reverse()
    for entry in ops["operators"]:
        entry["roles"].reverse()
    pol = reversed_keys(policy_dict())
    pol["mint"]["tiers"][0]["eligible_roles"].reverse()
    assert list(pol) != list(policy_dict())
    assert bundle(pol, ops).hash == bundle().hash
    assert bundle(pol, ops) == bundle()


def test_defaults_written_out_or_left_out_give_one_hash() -> None:
    assert bundle(del_path(policy_dict(), ("mint", "veto_on_reject"))).hash == bundle().hash
    unlabelled = del_path(policy_dict(), ("mint", "allowlist", 0, "label"))
    assert bundle(unlabelled).hash == bundle(set_path(unlabelled, ("mint", "allowlist", 0, "label"), "")).hash
    assert "enabled" not in operators_dict()["operators"][0]
    explicit = set_path(operators_dict(), ("operators", 0, "enabled"), True)
    assert bundle(operators=explicit).hash == bundle().hash


POLICY_CHANGES: list[tuple[tuple[str | int, ...], Any]] = [
    (("version",), 4), (("name",), "test policy 2"),
    (("mint", "max_per_request"), str(MAX_PER_REQUEST - 1)), (("mint", "velocity_limit"), str(VELOCITY_LIMIT + 1)),
    (("mint", "velocity_window_seconds"), 86401), (("mint", "request_ttl_seconds"), 43201),
    (("mint", "approval_ttl_seconds"), 3601), (("mint", "authorization_validity_seconds"), 1801),
    (("mint", "veto_on_reject"), False),
    (("mint", "tiers", 0, "up_to"), str(MILLION + 1)), (("mint", "tiers", 0, "approvals"), 3),
    (("mint", "tiers", 0, "eligible_roles"), ["treasury"]), (("mint", "tiers", 0, "required"), {"cfo": 0}),
    (("mint", "tiers", 1, "approvals"), 4), (("mint", "tiers", 1, "required"), {"cfo": 2}),
    (("mint", "tiers", 1, "eligible_roles"), ["treasury", "cfo", "auditor"]),
    (("mint", "allowlist", 0, "chain_id"), 10), (("mint", "allowlist", 0, "address"), ADDR_C),
    (("mint", "allowlist", 0, "label"), "issuance wallet 2"),
    (("governance", "approvals"), 3), (("governance", "eligible_roles"), ["security-admin", "cfo"]),
    (("reserve_guard", "enabled"), False), (("reserve_guard", "max_attestation_age_seconds"), 86400),
]
OPERATOR_CHANGES: list[tuple[tuple[str | int, ...], Any]] = [
    (("operators", 0, "name"), "alicia"), (("operators", 0, "roles"), ["treasury", "cfo"]),
    (("operators", 0, "enabled"), False), (("operators", 7, "enabled"), True),
    (("operators", 0, "jwk"), JWKS[-1]), (("operators", 1, "jwk"), JWKS[-2]),
]


def test_bundle_hash_changes_when_anything_changes() -> None:
    hashes = {"base": bundle().hash}
    for path, value in POLICY_CHANGES:
        hashes[f"policy {path} = {value}"] = bundle(policy=set_path(policy_dict(), path, value)).hash
    for path, value in OPERATOR_CHANGES:
        hashes[f"operators {path}"] = bundle(operators=set_path(operators_dict(), path, value)).hash
    reordered = policy_dict()
    reordered["mint"]["allowlist"].reverse()  # allowlist order is kept as written
    hashes["allowlist order"] = bundle(policy=reordered).hash
    fewer = operators_dict()
    del fewer["operators"][6]
    hashes["one operator fewer"] = bundle(operators=fewer).hash
    assert len(set(hashes.values())) == len(hashes), "two different bundles share a hash"


def test_bundle_json_round_trip_is_exact() -> None:
    b = bundle()
    again = PolicyBundle.from_json(json.loads(json.dumps(b.to_json())))
    assert again == b
    assert again.hash == b.hash
    assert again.to_json() == b.to_json()
    example = PolicyBundle(parse_policy(tomllib.loads(EXAMPLE_POLICY)),
                           parse_operators(tomllib.loads(EXAMPLE_OPERATORS)))
    assert PolicyBundle.from_json(example.to_json()) == example


def test_bundle_json_is_the_normalized_shape_of_the_two_files() -> None:
    out = bundle().to_json()
    assert set(out) == {"policy", "operators"} and set(out["operators"]) == {"operators"}
    assert parse_policy(out["policy"]) == parse_policy(policy_dict())
    mint = out["policy"]["mint"]
    assert mint["max_per_request"] == str(MAX_PER_REQUEST) and mint["velocity_limit"] == str(VELOCITY_LIMIT)
    assert mint["tiers"][0]["up_to"] == str(MILLION) and "up_to" not in mint["tiers"][1]
    assert mint["veto_on_reject"] is True
    names = [op["name"] for op in out["operators"]["operators"]]
    assert names == sorted(names)
    assert out["operators"]["operators"][2] == {"name": "carol", "roles": ["treasury", "cfo"], "enabled": True,
                                                "jwk": JWKS[2]}
    canonical_json(out)  # JSON-safe: no floats, no integers beyond 2^53 - 1


@pytest.mark.parametrize("data", [None, [], {"policy": {}}, {"policy": {}, "operators": {}, "extra": 1}])
def test_bundle_from_json_refuses_other_shapes(data: Any) -> None:
    with pytest.raises(InvalidInput, match="a policy bundle is an object with exactly the members"):
        PolicyBundle.from_json(data)


def test_bundle_from_json_locates_every_problem_in_both_parts() -> None:
    data = bundle().to_json()
    data["policy"]["mint"]["velocity_limit"] = 5
    data["operators"]["operators"][0]["roles"] = []
    with pytest.raises(InvalidInput) as exc:
        PolicyBundle.from_json(data)
    assert set(problems(exc)) == {"bundle.policy: mint.velocity_limit", "bundle.operators: operators[0].roles"}


# -- rules on new requests -----------------------------------------------------------------------------------------

VELOCITY = "velocity limit"
ABOVE_MAX = "above the per-request maximum"


@pytest.mark.parametrize(("authorized", "amount", "refused"), [
    (VELOCITY_LIMIT - 1 - 1000, 1000, []),              # authorized + amount = limit - 1
    (VELOCITY_LIMIT - 1000, 1000, []),                  # = limit
    (VELOCITY_LIMIT + 1 - 1000, 1000, [VELOCITY]),      # = limit + 1: this request is the one refused
    (VELOCITY_LIMIT, 1, [VELOCITY]),
    (0, MAX_PER_REQUEST - 1, []),
    (0, MAX_PER_REQUEST, []),
    (0, MAX_PER_REQUEST + 1, [ABOVE_MAX]),
    (VELOCITY_LIMIT - MAX_PER_REQUEST, MAX_PER_REQUEST, []),
    (VELOCITY_LIMIT - MAX_PER_REQUEST + 1, MAX_PER_REQUEST, [VELOCITY]),
    (VELOCITY_LIMIT, MAX_PER_REQUEST + 1, [ABOVE_MAX, VELOCITY]),
    (0, 0, ["must be positive"]),
    (0, -1, ["must be positive"]),
])
def test_check_new_request_limits(policy: Policy, authorized: int, amount: int, refused: list[str]) -> None:
    def check() -> None:
        check_new_request(policy, chain_id=CHAIN, to=ADDR_A, amount=amount, authorized_in_window=authorized)

    if not refused:
        check()
        return
    with pytest.raises(PolicyViolation) as exc:
        check()
    assert exc.value.status == 422
    assert [p.location for p in exc.value.problems] == ["amount"] * len(refused)
    assert all(p.message.startswith(r) for p, r in zip(exc.value.problems, refused, strict=True))


@pytest.mark.parametrize(("chain_id", "to", "allowed"), [
    (CHAIN, ADDR_A, True),
    (OTHER_CHAIN, ADDR_B, True),
    (OTHER_CHAIN, ADDR_A, False),     # allowlisted, but on another chain
    (CHAIN, ADDR_B, False),
    (CHAIN, ADDR_C, False),           # never allowlisted
    (CHAIN, ADDR_A.lower(), False),   # exact match only
])
def test_check_new_request_allowlist(policy: Policy, chain_id: int, to: str, allowed: bool) -> None:
    assert policy.is_allowlisted(chain_id, to) is allowed
    if allowed:
        check_new_request(policy, chain_id=chain_id, to=to, amount=1, authorized_in_window=0)
        return
    with pytest.raises(PolicyViolation) as exc:
        check_new_request(policy, chain_id=chain_id, to=to, amount=1, authorized_in_window=0)
    assert exc.value.problems == (Problem("to", f"{to} is not on the allowlist for chain {chain_id}"),)


def test_check_new_request_lists_every_reason(policy: Policy) -> None:
    with pytest.raises(PolicyViolation) as exc:
        check_new_request(policy, chain_id=CHAIN, to=ADDR_C, amount=MAX_PER_REQUEST + 1,
                          authorized_in_window=VELOCITY_LIMIT)
    assert [p.location for p in exc.value.problems] == ["to", "amount", "amount"]
    assert exc.value.detail == "the policy refuses this mint request"


def test_an_empty_allowlist_allows_no_recipient() -> None:
    p = parse_policy(set_path(policy_dict(), ("mint", "allowlist"), []))
    with pytest.raises(PolicyViolation):
        check_new_request(p, chain_id=CHAIN, to=ADDR_A, amount=1, authorized_in_window=0)


# -- reserve guard -------------------------------------------------------------------------------------------------

NOW = 1_800_000_000
MAX_AGE = 172800
NONE_YET = "no reserve attestation yet"
STALE = f"the latest attestation's figures are older than {MAX_AGE} s"
UNDER = "the latest attestation is UNDER_BACKED"
UNKNOWN_STATUS = "the latest attestation has the unknown status"
EXCEED = "supply "


def facts(age: int = 60, status: str = "FULLY_BACKED", reserves: int = 1000, supply: int = 900) -> ReserveFacts:
    return ReserveFacts(as_of=NOW - age, status=status, reserves=reserves, supply=supply)


@pytest.mark.parametrize(("enabled", "latest", "authorized", "amount", "reasons"), [
    (False, None, 0, 10**9, []),
    (False, facts(age=10**7, status="UNDER_BACKED", reserves=0), 0, 10**9, []),
    (True, None, 0, 1, [NONE_YET]),
    (True, facts(age=0), 0, 1, []),
    (True, facts(age=MAX_AGE - 1), 0, 1, []),
    (True, facts(age=MAX_AGE), 0, 1, []),             # exactly the maximum age: still fresh
    (True, facts(age=MAX_AGE + 1), 0, 1, [STALE]),
    (True, facts(status="UNDER_BACKED"), 0, 1, [UNDER]),
    (True, facts(status="fully_backed"), 0, 1, [UNKNOWN_STATUS]),
    (True, facts(status=""), 0, 1, [UNKNOWN_STATUS]),
    (True, facts(), 60, 39, []),                      # supply + authorized + amount = reserves - 1
    (True, facts(), 60, 40, []),                      # = reserves
    (True, facts(), 60, 41, [EXCEED]),                # = reserves + 1
    (True, facts(), 0, 100, []),
    (True, facts(), 0, 101, [EXCEED]),
    (True, facts(reserves=900), 0, 1, [EXCEED]),      # fully used: nothing more may be minted
    (True, facts(age=MAX_AGE + 1, status="UNDER_BACKED", reserves=800), 0, 1, [STALE, UNDER, EXCEED]),
])
def test_reserve_guard_reasons(enabled: bool, latest: ReserveFacts | None, authorized: int, amount: int,
                               reasons: list[str]) -> None:
    p = parse_policy(set_path(policy_dict(), ("reserve_guard", "enabled"), enabled))
    got = reserve_guard_reasons(p, latest, authorized_since=authorized, amount=amount, now=NOW)
    assert len(got) == len(reasons) and all(g.startswith(r) for g, r in zip(got, reasons, strict=True)), got


def test_reserve_guard_reason_shows_the_arithmetic(policy: Policy) -> None:
    assert reserve_guard_reasons(policy, facts(), authorized_since=60, amount=41, now=NOW) == [
        "supply 900 + authorized since 60 + this mint 41 = 1001 would exceed reserves 1000"]


# -- the example configuration in firmware-config/ ----------------------------------------------------------------

def load_toml(name: str) -> dict[str, Any]:
    with (FIRMWARE_CONFIG / name).open("rb") as handle:
        return tomllib.load(handle)


def test_firmware_config_example_policy_and_operators_parse() -> None:
    policy = parse_policy(load_toml("policy.toml"))
    operators = parse_operators(load_toml("operators.toml"))
    b = PolicyBundle(policy, operators)
    assert PolicyBundle.from_json(b.to_json()) == b

    # production posture: reserve guard on (2 days), veto on, governance 2 security admins
    assert policy.reserve_guard.enabled is True
    assert policy.reserve_guard.max_attestation_age_seconds == 2 * 86400
    assert policy.mint.veto_on_reject is True
    assert (policy.governance.approvals, policy.governance.eligible_roles) == (2, {"security-admin"})
    small, big = policy.mint.tiers
    assert small.up_to == 1_000_000 * TOKEN and small.approvals == 2 and small.eligible_roles == {"treasury", "cfo"}
    assert big.up_to is None and big.approvals == 3 and dict(big.required) == {"cfo": 1}
    # security keys: every tier above the smallest and the governance count only WebAuthn approvals
    assert not small.hardware_keys_only and big.hardware_keys_only and policy.governance.hardware_keys_only
    assert policy.webauthn is not None and policy.webauthn.origins == ("https://console.issuer.example",)
    keyed = [op for op in operators if op.webauthn]
    assert {op.name for op in keyed} >= {op.name for op in operators if op.roles & {"treasury", "cfo",
                                                                                     "security-admin"}}
    assert unreachable_governance(b) == [] and unreachable_mint_tiers(b) == []

    # the shell's checks hold too: EIP-55 addresses, valid operator keys of the operator algorithms
    for entry in policy.mint.allowlist:
        assert eip712.to_checksum_address(entry.address) == entry.address
    assert {role for op in operators for role in op.roles} == ROLES
    assert {jose.jwk_alg(dict(op.jwk)) for op in operators} == {"EdDSA", "ES256"}
    for op in operators:
        jose.public_key_from_jwk(dict(op.jwk), op.name)

    # the example can reach each of its quorums with any one eligible operator as the requester
    enabled = [op for op in operators if op.enabled]
    for tier in policy.mint.tiers:
        eligible = [op for op in enabled if op.roles & tier.eligible_roles]
        assert len(eligible) - 1 >= tier.approvals
        for role, count in tier.required:
            assert sum(1 for op in eligible if role in op.roles) - 1 >= count
    admins = [op for op in enabled if op.roles & policy.governance.eligible_roles]
    assert len(admins) >= policy.governance.approvals + 1


def test_firmware_config_operator_keys_are_public_members_only() -> None:
    for entry in load_toml("operators.toml")["operators"]:
        assert set(entry["jwk"]) <= {"kty", "crv", "x", "y"}


# -- quorums the operators could never meet -----------------------------------------------------------------------

def test_a_reachable_bundle_has_no_unreachable_quorums() -> None:
    from appliance.domain.policy import unreachable_governance, unreachable_mint_tiers

    assert unreachable_governance(bundle()) == [] and unreachable_mint_tiers(bundle()) == []


@pytest.mark.parametrize(("value", "roles"), [(3, ["security-admin"]), (2, ["auditor"])])
def test_a_governance_quorum_the_enabled_operators_cannot_meet_is_reported(value: int, roles: list[str]) -> None:
    from appliance.domain.policy import unreachable_governance

    policy = set_path(set_path(policy_dict(), ("governance", "approvals"), value), ("governance", "eligible_roles"),
                      roles)
    assert [p.location for p in unreachable_governance(bundle(policy))] == ["policy.governance.approvals"]


def test_disabled_operators_do_not_make_the_governance_quorum_reachable() -> None:
    from appliance.domain.policy import unreachable_governance

    ops = operators_dict()
    for op in ops["operators"]:
        if op["name"] == "frank":
            op["enabled"] = False
    assert [p.location for p in unreachable_governance(bundle(None, ops))] == ["policy.governance.approvals"]


@pytest.mark.parametrize(("path", "value", "location"), [
    (("mint", "tiers", 0, "approvals"), 4, "policy.mint.tiers[0].approvals"),  # 4 enabled, minus the requester
    (("mint", "tiers", 1, "required"), {"cfo": 3}, "policy.mint.tiers[1].required.cfo"),  # only carol and dave
])
def test_a_mint_tier_no_requester_could_get_approved_is_reported(path: tuple[str | int, ...], value: Any,
                                                                 location: str) -> None:
    from appliance.domain.policy import unreachable_mint_tiers

    found = unreachable_mint_tiers(bundle(set_path(policy_dict(), path, value)))
    assert [p.location for p in found] == [location]
    assert "besides the requester" in found[0].message


def test_the_requester_never_counts_for_a_tiers_reachability() -> None:
    """3 approvals among treasury/cfo with only 3 of them enabled: whoever requests, 2 remain."""
    from appliance.domain.policy import unreachable_mint_tiers

    ops = operators_dict()
    for op in ops["operators"]:
        if op["name"] == "bob":
            op["enabled"] = False
    assert [p.location for p in unreachable_mint_tiers(bundle(None, ops))] == ["policy.mint.tiers[1].approvals"]


def test_a_bundle_where_no_one_can_request_a_mint_is_reported() -> None:
    from appliance.domain.policy import unreachable_mint_tiers

    ops = operators_dict()
    for op in ops["operators"]:
        if {"treasury", "cfo"} & set(op["roles"]):
            op["enabled"] = False
    assert [p.location for p in unreachable_mint_tiers(bundle(None, ops))] == ["operators"]


def test_a_bundle_without_an_enabled_security_admin_could_never_be_changed() -> None:
    from appliance.domain.policy import unreachable_governance

    ops = operators_dict()
    ops["operators"] = [op for op in ops["operators"] if "security-admin" not in op["roles"]]
    policy = set_path(policy_dict(), ("governance", "eligible_roles"), ["cfo"])
    policy = set_path(policy, ("governance", "approvals"), 1)
    assert [p.location for p in unreachable_governance(bundle(policy, ops))] == ["operators"]


def test_operators_who_cannot_approve_mints_do_not_make_a_tier_reachable() -> None:
    """Approving needs treasury or cfo: a tier open to security-admins counts only those who also hold one."""
    from appliance.domain.policy import unreachable_mint_tiers

    tier = {"approvals": 2, "eligible_roles": ["cfo", "security-admin"], "required": {"security-admin": 1}}
    policy = set_path(policy_dict(), ("mint", "tiers", 1), tier)
    found = [p.location for p in unreachable_mint_tiers(bundle(policy))]
    assert found == ["policy.mint.tiers[1].required.security-admin"]


def test_operators_are_found_by_the_rfc7638_thumbprint_of_their_key() -> None:
    operators = bundle().operators
    for op in operators:
        assert operators.by_kid(jose.thumbprint(dict(op.jwk))) is op
    assert operators.by_kid("not-a-thumbprint") is None
    assert operators.by_kid(jose.thumbprint(dict(next(iter(operators)).jwk)) + "A") is None


def test_the_bundle_hash_is_computed_once_and_is_the_digest_of_its_canonical_json() -> None:
    b = bundle()
    from appliance.domain.canonical import json_digest
    assert b.hash == json_digest(b.to_json()) and b.hash is b.hash
