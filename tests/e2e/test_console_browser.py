"""The console in a real browser: Debian's Chromium driven by Playwright, each officer with a virtual security key
(Chrome DevTools Protocol `WebAuthn.addVirtualAuthenticator`, user verification on), against `appliance serve`.

Nobody has a security key at first. The security admins bootstrap theirs from the command line: erin asks for
invitation links (`appliance security-keys invite`), erin and frank register keys in their browsers, erin
proposes the enrolment (`appliance policy enrol`), and frank and erin approve it (`appliance policy approve`),
all with their software keys. From then on everything happens in the console: erin invites alice, bob and carol, who
register keys in their own browsers; erin proposes the enrolment, frank and erin approve it with their keys;
alice requests a mint, bob and carol approve it, and the authorization verifies with eth-account.
Screenshots go to $APPLIANCE_SCREENSHOTS (or the test's temporary directory): look at them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tomllib
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from eth_account import Account
from eth_account.messages import encode_typed_data

from tests.conftest import write_env
from tests.served import APPLIANCE, free_port, serve, signed_get

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


@dataclass
class Served:
    url: str
    directory: Path

    def cli(self, *args: str) -> str:
        env = {**os.environ, "APPLIANCE_URL": self.url,
               "APPLIANCE_READ_KEY": str(self.directory / "operators" / "grace.pem")}
        env.pop("SOFTHSM2_CONF", None)
        result = subprocess.run([*APPLIANCE, *args], capture_output=True, text=True, env=env, timeout=120,
                                check=False)
        assert result.returncode == 0, f"appliance {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
        return result.stdout

    def as_officer(self, name: str) -> list[str]:
        return ["--operator", name, "--key", str(self.directory / "operators" / f"{name}.pem")]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    from appliance import config
    from appliance.services import setup
    from tests.conftest import drop_token_state

    port = free_port()
    env = write_env(tmp_path / "env")
    policy = tomllib.loads((env.directory / "policy.toml").read_text())
    policy["webauthn"] = {"rp_id": "localhost", "origins": [f"http://localhost:{port}"]}
    policy["mint"]["tiers"][0]["hardware_keys_only"] = True  # this mint counts security keys only
    (env.directory / "policy.toml").write_text(tomli_w.dumps(policy))
    setup.init(config.load(env.config))
    proc, _ = serve(env.config, tmp_path / "serve.log", port=port)
    try:
        yield Served(f"http://localhost:{port}", env.directory)
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


def _open(chromium: Any, name: str, shots: Path) -> Browser:
    context = chromium.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    cdp = context.new_cdp_session(page)
    cdp.send("WebAuthn.enable")
    authenticator = cdp.send("WebAuthn.addVirtualAuthenticator", {"options": {
        "protocol": "ctap2", "transport": "usb", "hasResidentKey": True, "hasUserVerification": True,
        "isUserVerified": True, "automaticPresenceSimulation": True}})["authenticatorId"]
    return Browser(name, page, cdp, authenticator, shots)


def _sign_in(b: Browser, url: str) -> None:
    b.page.goto(f"{url}/console/login")
    b.page.fill("#name", b.name)
    try:
        with b.page.expect_navigation(timeout=20_000):
            b.page.click("text=Sign in with security key")
    except Exception as exc:
        raise AssertionError(f"{b.name} could not sign in: {b.status()}") from exc
    assert b.page.locator("header .who span").inner_text().startswith(b.name), b.status()


def _register(b: Browser, link: str) -> str:
    """Open an invitation link, register the browser's security key; its fingerprint as the page shows it."""
    b.page.goto(link)
    b.page.fill("#label", f"{b.name}'s security key")
    b.page.click("text=Register security key")
    b.page.wait_for_selector("#fingerprint", timeout=20_000)
    return str(b.page.locator("#fingerprint").inner_text())


def test_officers_enrol_keys_and_approve_a_mint_in_the_browser(served: Served, chromium: Any,
                                                               tmp_path: Path) -> None:
    url = served.url
    shots = Path(os.environ.get("APPLIANCE_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)

    # the admins' first keys, from the command line with their software keys
    erin, frank = _open(chromium, "erin", shots), _open(chromium, "frank", shots)
    for b in (erin, frank):
        link = json.loads(served.cli("security-keys", "invite", b.name, *served.as_officer("erin"), "--json"))
        fingerprint = _register(b, link["link"])
        assert fingerprint in served.cli("security-keys", "pending")
    proposed = json.loads(served.cli("policy", "enrol", *served.as_officer("erin"), "--json"))
    shown = served.cli("policy", "approve", proposed["id"], *served.as_officer("frank"), "--yes")
    assert "+ erin enrols security key" in shown and "+ frank enrols security key" in shown, shown
    assert shown.strip().endswith(": proposed")  # the proposer votes too (two admins make the quorum)
    assert served.cli("policy", "approve", proposed["id"], *served.as_officer("erin"), "--yes").strip().endswith(
        ": active")
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
        fingerprints[name] = _register(b, links[name])
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

    grace = served.directory / "operators" / "grace.pem"
    with urllib.request.urlopen(signed_get(url, f"/v1/mint-requests/{request_id}/authorization", grace)) as r:  # noqa: S310
        authorization = json.load(r)
    signable = encode_typed_data(full_message=authorization["typedData"])
    assert Account.recover_message(signable, signature=authorization["signature"]) == authorization["signer"]
    with urllib.request.urlopen(signed_get(url, f"/v1/mint-requests/{request_id}", grace)) as r:  # noqa: S310
        view = json.load(r)
    assert view["quorum"]["counted"] == ["bob", "carol"] and view["amount"] == str(250_000 * 10**6)

    # carol's key is lost: an admin proposes its removal from the command line, naming it by fingerprint
    removal = served.cli("policy", "unenrol", fingerprints["carol"][:9], *served.as_officer("erin"), "--yes")
    assert f'- carol loses security key "carol\'s security key" (fingerprint {fingerprints["carol"]})' in removal
    assert "~ policy.version: 3 -> 4" in removal, removal  # two enrolments made versions 2 and 3
