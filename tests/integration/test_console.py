"""The officers' console through Flask's test client, with software security keys (tests/authenticator.py).

The browser suite (tests/e2e/test_console_browser.py) runs the same flows in Chromium with its virtual
authenticator; these tests cover every refusal quickly: sessions, roles, CSRF, origins, what a page shows.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass
from typing import Any

import pytest
from flask.testing import FlaskClient

from appliance.domain import webauthn
from appliance.services import registry
from tests.authenticator import SoftAuthenticator
from tests.helpers import Harness, enrol_security_keys

ORIGIN = "http://localhost:8080"


@dataclass
class Officer:
    """One officer's browser: a cookie jar and their security key."""

    h: Harness
    name: str
    client: FlaskClient
    csrf: str = ""

    @property
    def key(self) -> SoftAuthenticator:
        return self.h.keys[self.name]

    def page(self, path: str) -> Any:
        response = self.client.get(path)
        found = re.search(r'name="csrf-token" content="([^"]+)"', response.get_data(as_text=True))
        if found:
            self.csrf = found.group(1)
        return response

    def post(self, path: str, body: Any, **headers: str) -> Any:
        return self.client.post(path, json=body, headers={"X-CSRFToken": self.csrf, **headers})

    def signed(self, statement: dict[str, Any], **options: Any) -> dict[str, Any]:
        envelope = self.key.envelope(statement["typ"], statement["payload"], **options)
        return {"typ": envelope["typ"], "payload": envelope["payload"], "credential": {
            "id": envelope["credential_id"], "authenticator_data": envelope["authenticator_data"],
            "client_data_json": envelope["client_data_json"], "signature": envelope["signature"]}}

    def sign_in(self) -> Any:
        self.page("/console/login")
        options = self.post("/console/login/options", {"name": self.name})
        if options.status_code != 200:
            return options
        response = self.post("/console/login", {**self.signed(options.get_json()), "next": "/console/keys"})
        if response.status_code == 200:
            self.page(response.get_json()["redirect"])  # as the browser does: a page, and a new CSRF token
        return response

    def act(self, statement_path: str, action_path: str, body: dict[str, Any], **options: Any) -> Any:
        statement = self.post(statement_path, body)
        assert statement.status_code == 200, statement.get_json()
        return self.post(action_path, self.signed(statement.get_json(), **options))


def officer(h: Harness, name: str) -> Officer:
    return Officer(h, name, h.flask.test_client())


@pytest.fixture
def keyed(h: Harness) -> Harness:
    """Security keys for alice, bob, carol, dave and erin, frank; tier 0 counts security keys only."""
    enrol_security_keys(h, ["alice", "bob", "carol", "dave", "erin", "frank"], hardware_tiers=(0,))
    return h


def test_an_officer_signs_in_reviews_and_approves_with_a_security_key(keyed: Harness) -> None:
    h = keyed
    alice, bob, carol = officer(h, "alice"), officer(h, "bob"), officer(h, "carol")
    for o in (alice, bob, carol):
        assert o.sign_in().get_json() == {"redirect": "/console/keys"}
    alice.page("/console/new")
    to = h.allowlist[0]
    created = alice.act("/console/new/statement", "/console/new",
                        {"recipient": f"{h.chain_id}:{to}", "amount": "250,000"})
    assert created.status_code == 200, created.get_json()
    detail_path = created.get_json()["redirect"]
    request_id = detail_path.rsplit("/", 1)[1]

    home = bob.page("/console/").get_data(as_text=True)
    assert "250,000 HKDS" in home and request_id in home
    page = bob.page(detail_path).get_data(as_text=True)
    assert "250,000 HKDS" in page and "250,000,000,000 base units" in page
    assert "allowlisted: dev wallet 1" in page and "local development chain (chain id 31337)" in page
    assert "0 of 2 approvals, still needs 2 more approvals" in page and " UTC" in page
    first = bob.act(f"/console/requests/{request_id}/statement", f"/console/requests/{request_id}/decide",
                    {"decision": "approve"})
    assert first.get_json()["progress"] == "1 of 2 approvals, still needs 1 more approval"
    done = carol.act(f"/console/requests/{request_id}/statement", f"/console/requests/{request_id}/decide",
                     {"decision": "approve"})
    assert done.get_json()["status"] == "authorized"
    shown = carol.page(detail_path).get_data(as_text=True)
    assert "Authorization" in shown and "mint.authorization.signed" in shown  # the audit trail


def test_pages_need_a_session_and_the_right_roles(keyed: Harness) -> None:
    h = keyed
    anonymous = officer(h, "alice")
    assert anonymous.page("/console/").status_code == 302
    assert anonymous.page("/console/").headers["Location"].startswith("/console/login")
    anonymous.page("/console/login")
    assert anonymous.post("/console/requests/x/statement", {"decision": "approve"}).status_code == 403
    heidi_key = SoftAuthenticator()
    h.keys["heidi"] = heidi_key
    enrol_security_keys(h, ["heidi"], hardware_tiers=(0,))
    heidi = officer(h, "heidi")  # a custodian: no mint or policy pages
    assert heidi.sign_in().status_code == 200
    for path in ("/console/", "/console/new", "/console/policy"):
        response = heidi.page(path)
        assert response.status_code == 403 and "holds no role" in response.get_data(as_text=True), path
    alice = officer(h, "alice")
    alice.sign_in()
    assert alice.page("/console/policy").status_code == 403  # treasury: no policy page
    req = h.request("alice").get_json()
    refused = alice.post(f"/console/requests/{req['id']}/statement", {"decision": "approve"})
    assert refused.status_code == 403 and "requester" in refused.get_json()["detail"]


def test_csrf_and_other_origins_are_refused(keyed: Harness) -> None:
    h = keyed
    bob = officer(h, "bob")
    bob.sign_in()
    req = h.request("alice").get_json()
    path = f"/console/requests/{req['id']}/statement"
    missing = bob.client.post(path, json={"decision": "approve"})
    assert missing.status_code == 400 and missing.get_json()["type"].endswith(":csrf")
    wrong = bob.client.post(path, json={"decision": "approve"}, headers={"X-CSRFToken": "forged"})
    assert wrong.status_code == 400
    elsewhere = bob.post(path, {"decision": "approve"}, Origin="https://evil.example")
    assert elsewhere.status_code == 403 and "evil.example" in elsewhere.get_json()["detail"]
    assert bob.post(path, {"decision": "approve"}, Origin=ORIGIN).status_code == 200
    logout = bob.client.post("/console/logout", data={})
    assert logout.status_code == 400  # a form without its token is refused too


def test_security_headers_and_the_session_cookie(keyed: Harness) -> None:
    h = keyed
    bob = officer(h, "bob")
    response = bob.page("/console/login")
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert "<script>" not in response.get_data(as_text=True)  # no inline script: only console.js
    signed_in = bob.sign_in()
    cookie = signed_in.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/console" in cookie


def test_the_session_ends_after_the_idle_timeout(keyed: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    bob = officer(keyed, "bob")
    bob.sign_in()
    assert bob.page("/console/").status_code == 200
    later = time.time() + keyed.app_ctx.settings.console.idle_timeout_seconds + 1
    monkeypatch.setattr(time, "time", lambda: later)
    assert bob.page("/console/").status_code == 302


def test_a_sign_in_over_another_statement_or_from_another_key_is_refused(keyed: Harness) -> None:
    h = keyed
    bob = officer(h, "bob")
    bob.page("/console/login")
    statement = bob.post("/console/login/options", {"name": "bob"}).get_json()
    forged = bob.signed({**statement, "payload": {**statement["payload"], "operator": "carol"}})
    assert bob.post("/console/login", forged).status_code == 401
    statement = bob.post("/console/login/options", {"name": "bob"}).get_json()
    carol = officer(h, "carol")
    carols = carol.signed(statement)  # carol's key over bob's sign-in
    assert bob.post("/console/login", carols).status_code == 401
    assert bob.page("/console/").status_code == 302
    bob.page("/console/login")
    unknown = bob.post("/console/login/options", {"name": "mallory"})
    assert unknown.status_code == 401


def test_refusals_are_shown_in_the_problems_own_words(keyed: Harness) -> None:
    h = keyed
    bob = officer(h, "bob")
    bob.sign_in()
    missing = bob.page("/console/requests/no-such-request")
    assert missing.status_code == 404 and "no mint request" in missing.get_data(as_text=True)
    odd = bob.page("/console/requests/a%20b")
    assert odd.status_code == 404
    alice = officer(h, "alice")
    alice.sign_in()
    too_precise = alice.post("/console/new/statement", {"recipient": f"{h.chain_id}:{h.allowlist[0]}",
                                                        "amount": "1.1234567"})
    assert too_precise.status_code == 400 and "decimal places" in too_precise.get_json()["detail"]
    elsewhere = alice.post("/console/new/statement", {"recipient": f"{h.chain_id}:0x{'00' * 20}", "amount": "5"})
    assert elsewhere.status_code == 400 and "allowlist" in elsewhere.get_json()["detail"]


def test_enrolment_by_invitation_and_the_admins_quorum(keyed: Harness) -> None:
    h = keyed
    erin, frank = officer(h, "erin"), officer(h, "frank")
    erin.sign_in()
    frank.sign_in()
    erin.page("/console/keys")
    invited = erin.client.post("/console/invitations", data={"operator": "grace", "csrf_token": erin.csrf})
    link = re.search(r'id="invitation">([^<]+)<', invited.get_data(as_text=True))
    assert link, invited.get_data(as_text=True)
    token = link.group(1).rsplit("/", 1)[1]
    grace = officer(h, "grace")  # an auditor without any key yet
    page = grace.page(f"/console/enrol/{token}")
    assert page.status_code == 200 and "for grace" in page.get_data(as_text=True)
    grace_key = SoftAuthenticator(origin=ORIGIN)
    options = grace.post("/console/keys/options", {"invitation": token}).get_json()["publicKey"]
    challenge = base64.urlsafe_b64decode(options["challenge"] + "==")
    done = grace.post("/console/keys", {"invitation": token, "label": "grace's key",
                                        "credential": grace_key.register(challenge)})
    assert done.status_code == 200, done.get_json()
    fingerprint = done.get_json()["fingerprint"]

    policy_page = erin.page("/console/policy").get_data(as_text=True)
    assert fingerprint in policy_page
    proposed = erin.act("/console/enrolments/statement", "/console/proposals", {"ids": [done.get_json()["id"]]})
    assert proposed.status_code == 200, proposed.get_json()
    shown = frank.page("/console/policy").get_data(as_text=True)
    assert f"+ grace enrols security key \"grace's key\" (fingerprint {fingerprint})" in html.unescape(shown)
    proposal_id = registry.of(h.app_ctx).policies.describe()["proposals"][0]["id"]
    voted = frank.act(f"/console/policy/{proposal_id}/statement", f"/console/policy/{proposal_id}/decide",
                      {"decision": "approve"})
    assert voted.get_json()["status"] == "proposed"  # erin's proposal is not her vote
    voted = erin.act(f"/console/policy/{proposal_id}/statement", f"/console/policy/{proposal_id}/decide",
                     {"decision": "approve"})
    assert voted.get_json()["status"] == "active"
    h.keys["grace"] = grace_key
    assert officer(h, "grace").sign_in().status_code == 200  # the enrolled key signs in
    assert registry.of(h.app_ctx).console.enrolments() == []

    # the key is lost: removing it is the same flow
    erin.page("/console/policy")
    grace_id = webauthn.b64url_encode(grace_key.credential_id)
    assert fingerprint in erin.page("/console/policy").get_data(as_text=True)
    removal = erin.act("/console/removals/statement", "/console/proposals", {"keys": [grace_id]})
    assert removal.status_code == 200, removal.get_json()
    shown = html.unescape(frank.page("/console/policy").get_data(as_text=True))
    assert f"- grace loses security key \"grace's key\" (fingerprint {fingerprint})" in shown
    removal_id = registry.of(h.app_ctx).policies.describe()["proposals"][0]["id"]
    for admin in (frank, erin):
        admin.page("/console/policy")
        admin.act(f"/console/policy/{removal_id}/statement", f"/console/policy/{removal_id}/decide",
                  {"decision": "approve"})
    assert officer(h, "grace").sign_in().status_code == 401


def test_an_invitation_that_is_forged_or_for_nobody_is_refused(keyed: Harness) -> None:
    h = keyed
    stranger = officer(h, "alice")
    page = stranger.page("/console/enrol/forged-token")
    assert page.status_code == 401 and "not valid" in page.get_data(as_text=True)
    stranger.page("/console/login")
    assert stranger.post("/console/keys/options", {}).status_code == 403
    assert stranger.post("/console/keys/options", {"invitation": "x.y.z"}).status_code == 401


def test_signing_in_advances_the_sign_count_and_a_cloned_key_is_refused(keyed: Harness) -> None:
    bob = officer(keyed, "bob")
    assert bob.sign_in().status_code == 200
    bob.page("/console/login")
    statement = bob.post("/console/login/options", {"name": "bob"}).get_json()
    cloned = bob.signed(statement, sign_count=bob.key.sign_count)  # the count the last sign-in already used
    refused = bob.post("/console/login", cloned)
    assert refused.status_code == 401 and "cloned" in refused.get_json()["detail"]
    entries = keyed.client.get("/v1/audit/entries?start=0").get_json()["entries"]
    assert [e["action"] for e in entries].count("console.signed-in") == 1
    assert "auth.sign-count-regressed" in [e["action"] for e in entries]
