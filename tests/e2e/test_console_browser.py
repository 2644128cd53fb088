"""The console in a real browser: Debian's Chromium driven by Playwright, each officer with a virtual security key
(Chrome DevTools Protocol `WebAuthn.addVirtualAuthenticator`, user verification on), against `appliance serve`.

Two security admins hold keys from the start (enrolled at init: the test makes their key pairs and loads them
into their virtual authenticators). They invite alice, bob and carol, who register keys of their own in their
own browsers; erin proposes the enrolment, frank approves it; alice requests a mint, bob and carol approve it,
and the authorization verifies with eth-account. Screenshots are written to $APPLIANCE_SCREENSHOTS (or the
test's temporary directory): look at them.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import tomllib
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from eth_account import Account
from eth_account.messages import encode_typed_data

from tests.authenticator import SoftAuthenticator
from tests.conftest import write_env
from tests.served import free_port, serve

CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(shutil.which(CHROMIUM) is None and os.environ.get("CI") != "true",
                                reason="Debian's chromium is not installed (make test installs it)")


@dataclass
class Browser:
    """One officer's browser context, with its own virtual security key."""

    name: str
    page: Any
    cdp: Any
    authenticator: str
    shots: Path

    def shot(self, what: str) -> None:
        self.page.screenshot(path=str(self.shots / f"{what}.png"), full_page=True)

    def status(self) -> str:
        return str(self.page.locator("#status").inner_text())


def _officer_key() -> tuple[SoftAuthenticator, str]:
    """A key pair for a virtual authenticator: the credential for operators.toml and the PKCS#8 private key."""
    key = SoftAuthenticator(key=ec.generate_private_key(ec.SECP256R1()))
    pkcs8 = key.key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
    return key, base64.b64encode(pkcs8).decode()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, dict[str, tuple[SoftAuthenticator, str]]]]:
    from appliance import config
    from appliance.services import setup
    from tests.conftest import drop_token_state

    port = free_port()
    env = write_env(tmp_path / "env")
    policy = tomllib.loads((env.directory / "policy.toml").read_text())
    policy["webauthn"] = {"rp_id": "localhost", "origins": [f"http://localhost:{port}"]}
    policy["mint"]["tiers"][0]["hardware_keys_only"] = True  # security keys only, as firmware-config/ demands
    (env.directory / "policy.toml").write_text(tomli_w.dumps(policy))
    operators = tomllib.loads((env.directory / "operators.toml").read_text())
    admins = {name: _officer_key() for name in ("erin", "frank")}
    for op in operators["operators"]:
        if op["name"] in admins:
            op["webauthn"] = [admins[op["name"]][0].credential(f"{op['name']}'s key")]
    (env.directory / "operators.toml").write_text(tomli_w.dumps(operators))
    setup.init(config.load(env.config))
    proc, _ = serve(env.config, tmp_path / "serve.log", port=port)
    try:
        yield f"http://localhost:{port}", admins
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        drop_token_state(env.config)


@pytest.fixture
def chromium() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


def _open(chromium: Any, name: str, shots: Path, key: tuple[SoftAuthenticator, str] | None = None) -> Browser:
    context = chromium.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    cdp = context.new_cdp_session(page)
    cdp.send("WebAuthn.enable")
    authenticator = cdp.send("WebAuthn.addVirtualAuthenticator", {"options": {
        "protocol": "ctap2", "transport": "usb", "hasResidentKey": True, "hasUserVerification": True,
        "isUserVerified": True, "automaticPresenceSimulation": True}})["authenticatorId"]
    if key is not None:
        soft, pkcs8 = key
        cdp.send("WebAuthn.addCredential", {"authenticatorId": authenticator, "credential": {
            "credentialId": base64.b64encode(soft.credential_id).decode(), "isResidentCredential": False,
            "rpId": "localhost", "privateKey": pkcs8, "signCount": 0}})
    return Browser(name, page, cdp, authenticator, shots)


def _sign_in(b: Browser, url: str) -> None:
    b.page.goto(f"{url}/console/login")
    b.page.fill("#name", b.name)
    b.page.click("text=Sign in with security key")
    b.page.wait_for_url(f"{url}/console/**")
    assert b.page.locator("header .who span").inner_text().startswith(b.name), b.status()


def test_officers_enrol_keys_and_approve_a_mint_in_the_browser(served: Any, chromium: Any, tmp_path: Path) -> None:
    url, admins = served
    shots = Path(os.environ.get("APPLIANCE_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    erin = _open(chromium, "erin", shots, admins["erin"])
    frank = _open(chromium, "frank", shots, admins["frank"])
    _sign_in(erin, url)
    _sign_in(frank, url)

    # erin invites the treasury officers; each registers a key in their own browser
    links = {}
    for name in ("alice", "bob", "carol"):
        erin.page.goto(f"{url}/console/keys")
        erin.page.select_option("#operator", name)
        erin.page.click("text=Create invitation link")
        links[name] = erin.page.locator("#invitation").inner_text()
    officers = {name: _open(chromium, name, shots) for name in links}
    fingerprints = {}
    for name, b in officers.items():
        b.page.goto(links[name])
        b.page.fill("#label", f"{name}'s security key")
        b.page.click("text=Register security key")
        b.page.wait_for_selector("#fingerprint", timeout=20_000)
        fingerprints[name] = b.page.locator("#fingerprint").inner_text()
        if name == "alice":
            b.shot("1-register-key")

    # erin proposes their enrolment; frank reads what it changes and approves it with his key
    erin.page.goto(f"{url}/console/policy")
    for fingerprint in fingerprints.values():
        assert fingerprint in erin.page.content()
    with erin.page.expect_navigation(timeout=20_000):
        erin.page.click("#propose-enrolment")
    frank.page.goto(f"{url}/console/policy")
    diff = frank.page.locator(".diff").inner_text()
    for name, fingerprint in fingerprints.items():
        assert f'+ {name} enrols security key "{name}\'s security key" (fingerprint {fingerprint})' in diff
    frank.shot("2-policy-diff")
    for admin in (frank, erin):  # the governance quorum: two security admins (the proposer may be one)
        admin.page.goto(f"{url}/console/policy")
        with admin.page.expect_navigation(timeout=20_000):
            admin.page.click("text=Approve with security key")
    assert "No open proposals" in erin.page.content()
    assert "propose-enrolment" not in erin.page.content()  # nothing is waiting any more

    # alice requests a mint; bob and carol approve it with their keys
    alice, bob, carol = officers["alice"], officers["bob"], officers["carol"]
    for b in (alice, bob, carol):
        _sign_in(b, url)
    alice.page.goto(f"{url}/console/new")
    alice.page.fill("#amount", "250,000")
    alice.shot("3-new-request")
    alice.page.click("text=Request with security key")
    alice.page.wait_for_url(f"{url}/console/requests/*")
    request_id = alice.page.url.rsplit("/", 1)[1]
    assert "you made this request" in alice.page.content()

    bob.page.goto(f"{url}/console/")
    assert "250,000 HKDS" in bob.page.locator("#awaiting").inner_text()
    bob.shot("4-awaiting-my-decision")
    bob.page.click("text=Review")
    assert "0 of 2 approvals, still needs 2 more approvals" in bob.page.locator("#progress").inner_text()
    bob.shot("5-request-detail")
    with bob.page.expect_navigation(timeout=20_000):
        bob.page.click("#approve")
    assert "1 of 2 approvals, still needs 1 more approval" in bob.page.locator("#progress").inner_text()
    carol.page.goto(f"{url}/console/requests/{request_id}")
    carol.page.click("#approve")
    carol.page.wait_for_selector("#signature", timeout=20_000)
    carol.shot("6-authorized")

    with urllib.request.urlopen(f"{url}/v1/mint-requests/{request_id}/authorization") as r:  # noqa: S310
        authorization = json.load(r)
    signable = encode_typed_data(full_message=authorization["typedData"])
    assert Account.recover_message(signable, signature=authorization["signature"]) == authorization["signer"]
    with urllib.request.urlopen(f"{url}/v1/mint-requests/{request_id}") as r:  # noqa: S310
        view = json.load(r)
    assert view["quorum"]["counted"] == ["bob", "carol"] and view["amount"] == str(250_000 * 10**6)
