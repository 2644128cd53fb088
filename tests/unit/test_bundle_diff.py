"""The proposal diff a security admin reads: every change shown, nothing else, whatever the order."""

from __future__ import annotations

import copy
import random
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from appliance.domain.bundle_diff import diff

BUNDLE: dict[str, Any] = {
    "policy": {"mint": {"max_per_request": "100", "tiers": [{"up_to": "10", "approvals": 2}],
                        "allowlist": [{"chain_id": 1, "address": "0xA"}, {"chain_id": 1, "address": "0xB"}]}},
    "operators": {"operators": [{"name": "bob", "enabled": True, "jwk": {"x": "1"}},
                                {"name": "erin", "enabled": True, "jwk": {"x": "2"}}]},
}


def test_no_change_is_no_line() -> None:
    assert diff(BUNDLE, copy.deepcopy(BUNDLE)) == []


def test_a_disabled_operator_a_replaced_key_and_a_new_address_each_show() -> None:
    new = copy.deepcopy(BUNDLE)
    new["operators"]["operators"][0]["enabled"] = False
    new["operators"]["operators"][1]["jwk"]["x"] = "3"
    new["policy"]["mint"]["allowlist"].append({"chain_id": 1, "address": "0xEvil"})
    new["policy"]["mint"]["tiers"][0]["approvals"] = 1
    assert diff(BUNDLE, new) == [
        "~ operators.operators[bob].enabled: true -> false",
        '~ operators.operators[erin].jwk.x: "2" -> "3"',
        "+ policy.mint.allowlist[1:0xEvil].address: \"0xEvil\"",
        "+ policy.mint.allowlist[1:0xEvil].chain_id: 1",
        "~ policy.mint.tiers[0].approvals: 2 -> 1",
    ]


def test_a_removed_operator_shows_as_removed() -> None:
    new = copy.deepcopy(BUNDLE)
    del new["operators"]["operators"][0]
    assert all(line.startswith("- operators.operators[bob].") for line in diff(BUNDLE, new))
    assert len(diff(BUNDLE, new)) == 3


def test_a_number_turned_into_a_string_is_a_change() -> None:
    new = copy.deepcopy(BUNDLE)
    new["policy"]["mint"]["tiers"][0]["approvals"] = "2"
    assert diff(BUNDLE, new) == ['~ policy.mint.tiers[0].approvals: 2 -> "2"']


@given(st.randoms())
def test_reordering_operators_or_the_allowlist_is_no_change(rnd: random.Random) -> None:
    new = copy.deepcopy(BUNDLE)
    rnd.shuffle(new["operators"]["operators"])
    rnd.shuffle(new["policy"]["mint"]["allowlist"])
    assert diff(BUNDLE, new) == []


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner,
                                                                                      max_size=3), max_leaves=10)


@given(st.dictionaries(st.text(max_size=3), json_values, max_size=4),
       st.dictionaries(st.text(max_size=3), json_values, max_size=4))
def test_a_diff_is_empty_exactly_when_the_flattened_objects_agree(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert (diff(a, b) == []) == (diff(b, a) == [])
    assert diff(a, a) == []


def test_readable_names_each_security_key_enrolled_or_removed_with_its_fingerprint() -> None:
    from appliance.domain.bundle_diff import readable
    from appliance.domain.webauthn import Credential, fingerprint
    from tests.authenticator import SoftAuthenticator

    key = SoftAuthenticator().credential("bob's key")
    shown = fingerprint(Credential(key["id"], key["public_key"]))
    old = {"operators": {"operators": [{"name": "bob", "roles": ["treasury"]}]}}
    new = {"operators": {"operators": [{"name": "bob", "roles": ["treasury"], "webauthn": [key]}]}}
    assert readable(old, new) == [f'+ bob enrols security key "bob\'s key" (fingerprint {shown})']
    assert readable(new, old) == [f'- bob loses security key "bob\'s key" (fingerprint {shown})']
    renamed = {"operators": {"operators": [{"name": "bob", "roles": ["treasury"],
                                            "webauthn": [{**key, "label": "spare"}]}]}}
    path = f'operators.operators[bob].webauthn[{key["id"]}].label'
    assert readable(new, renamed) == [f'~ {path}: "bob\'s key" -> "spare"']
    more = {"operators": {"operators": [{"name": "bob", "roles": ["treasury", "cfo"], "webauthn": [key]}]}}
    assert readable(new, more) == ['+ operators.operators[bob].roles[1]: "cfo"']
