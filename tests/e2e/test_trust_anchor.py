"""An officer's CLI pins the trust anchor (the first policy bundle's hash) and verifies the policy history it is
served: a compromised appliance host, played here by a proxy in front of a real `appliance serve`, cannot make an
officer sign under a policy the anchored quorum never approved."""

from __future__ import annotations

import copy
import json
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from appliance.domain import eip712
from appliance.domain.policy import PolicyBundle
from tests.e2e.test_cli import Service, run, serve
from tests.served import signed_get

Rewrite = Callable[[str, Any], Any]


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    directory = tmp_path_factory.mktemp("anchor") / "dev"
    env = {k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"}
    dev = json.loads(run("dev-init", str(directory), "--json", env=env).stdout)
    proc, url = serve(directory, dev, env)
    yield Service(url, dev, directory)
    proc.terminate()
    proc.wait(15)


@dataclass
class Host:
    """A man in the middle: forwards to the real service, rewriting the JSON of GET responses."""

    url: str
    rewrite: Rewrite


@pytest.fixture
def host(service: Service) -> Iterator[Callable[[Rewrite], Host]]:
    servers: list[ThreadingHTTPServer] = []

    def start(rewrite: Rewrite) -> Host:
        class Handler(BaseHTTPRequestHandler):
            def _forward(self, method: str) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) if method == "POST" else None
                req = urllib.request.Request(service.url + self.path, data=body, method=method,  # noqa: S310
                                             headers={k: v for k, v in self.headers.items()
                                                      if k.lower() in ("content-type", "accept", "authorization")})
                try:
                    with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310
                        status, ctype, raw = resp.status, resp.headers["Content-Type"], resp.read()
                except urllib.error.HTTPError as exc:
                    status, ctype, raw = exc.code, exc.headers["Content-Type"], exc.read()
                if method == "GET" and status == 200 and "json" in (ctype or ""):
                    raw = json.dumps(rewrite(self.path, json.loads(raw))).encode()
                self.send_response(status)
                self.send_header("Content-Type", ctype or "application/octet-stream")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self) -> None:  # noqa: N802
                self._forward("GET")

            def do_POST(self) -> None:  # noqa: N802
                self._forward("POST")

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return Host(f"http://127.0.0.1:{server.server_address[1]}", rewrite)

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def cli(service: Service, url: str, *args: str, anchor: str | None) -> Any:
    env = {k: v for k, v in os.environ.items() if k not in ("SOFTHSM2_CONF", "APPLIANCE_TRUST_ANCHOR")}
    env["APPLIANCE_URL"] = url
    env["APPLIANCE_READ_KEY"] = service.key("grace")
    if anchor is not None:
        env["APPLIANCE_TRUST_ANCHOR"] = anchor
    return run(*args, env=env, check=False)


def _forged_allowlist(bundle: dict[str, Any], address: str) -> dict[str, Any]:
    forged = copy.deepcopy(bundle)
    forged["policy"]["mint"]["allowlist"].append({"chain_id": forged["policy"]["mint"]["allowlist"][0]["chain_id"],
                                                  "address": address, "label": "attacker"})
    return forged


def _redirect_everything(attacker: str) -> Rewrite:
    """Shows a pending request as paying `attacker` (digest recomputed would need the requester's key, so the
    request JWS check is what stops it without a pin) and the attacker's address allowlisted in the active bundle
    and in the history's head, consistently, as a compromised host would."""
    def rewrite(path: str, body: Any) -> Any:
        if path.startswith("/v1/policy/history"):
            head = body["activations"][-1]
            head["bundle"] = _forged_allowlist(head["bundle"], attacker)
            head["hash"] = PolicyBundle.from_json(head["bundle"]).hash
            body["head"]["hash"] = head["hash"]
        elif path.startswith("/v1/policy"):
            body["active"]["bundle"] = _forged_allowlist(body["active"]["bundle"], attacker)
            body["active"]["hash"] = PolicyBundle.from_json(body["active"]["bundle"]).hash
        return body
    return rewrite


def _pending(service: Service) -> dict[str, Any]:
    out = cli(service, service.url, "mint", "request", "--operator", "alice", "--key", service.key("alice"),
              "--to", service.dev["allowlist"][0], "--amount", "7000000", "--json", anchor=service.dev["trust_anchor"])
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def _approvals(service: Service, request_id: str) -> list[Any]:
    with urllib.request.urlopen(signed_get(service.url, f"/v1/mint-requests/{request_id}", service.key("grace")),
                                timeout=10) as r:  # noqa: S310
        return list(json.loads(r.read())["approvals"])


def test_the_pinned_anchor_verifies_the_real_history(service: Service) -> None:
    out = cli(service, service.url, "policy", "history", anchor=service.dev["trust_anchor"])
    assert out.returncode == 0, out.stderr
    assert f"verified from the pinned trust anchor {service.dev['trust_anchor']}" in out.stdout
    unpinned = cli(service, service.url, "policy", "history", anchor=None)
    assert unpinned.returncode == 0 and "NOT pinned" in unpinned.stdout


def test_a_host_that_rewrites_the_active_bundle_gets_no_approval_from_a_pinned_officer(
        service: Service, host: Callable[[Rewrite], Host]) -> None:
    req = _pending(service)
    attacker = eip712.to_checksum_address(bytes(range(60, 80)))
    mitm = host(_redirect_everything(attacker))
    refused = cli(service, mitm.url, "mint", "approve", req["id"], "--operator", "bob", "--key", service.key("bob"),
                  "--yes", anchor=service.dev["trust_anchor"])
    assert refused.returncode != 0
    assert "does not descend from the pinned trust anchor" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
    history = cli(service, mitm.url, "policy", "history", "--json", anchor=service.dev["trust_anchor"])
    assert history.returncode != 0 and "does not verify" in history.stderr
    assert _approvals(service, req["id"]) == []  # nothing was signed or sent
    # the same officer through the honest service, still pinned, approves normally
    ok = cli(service, service.url, "mint", "approve", req["id"], "--operator", "bob", "--key", service.key("bob"),
             "--yes", anchor=service.dev["trust_anchor"])
    assert ok.returncode == 0, ok.stderr
    assert [a["operator"] for a in _approvals(service, req["id"])] == ["bob"]


def test_without_a_pin_the_officer_is_warned_that_the_policy_is_the_services_word(
        service: Service, host: Callable[[Rewrite], Host]) -> None:
    req = _pending(service)
    out = cli(service, service.url, "mint", "approve", req["id"], "--operator", "carol", "--key",
              service.key("carol"), "--yes", anchor=None)
    assert out.returncode == 0, out.stderr
    assert "no trust anchor pinned" in out.stderr


def test_a_history_grown_from_another_first_bundle_is_caught_by_the_pin_alone(
        service: Service, host: Callable[[Rewrite], Host], tmp_path: Path) -> None:
    """A host serving a complete, internally valid history of its own (another deployment's, with its own
    admins) passes every signature check; only the officer's pinned anchor tells it is not theirs."""
    other_dir = tmp_path / "other"
    env = {k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"}
    other = json.loads(run("dev-init", str(other_dir), "--json", env=env).stdout)
    proc, other_url = serve(other_dir, other, env)
    try:
        grace = next(op["key"] for op in other["operators"] if op["name"] == "grace")
        with urllib.request.urlopen(signed_get(other_url, "/v1/policy/history", grace), timeout=10) as r:  # noqa: S310
            foreign_history = json.loads(r.read())
        with urllib.request.urlopen(signed_get(other_url, "/v1/policy", grace), timeout=10) as r:  # noqa: S310
            foreign_policy = json.loads(r.read())
    finally:
        proc.terminate()
        proc.wait(15)

    def swap(path: str, body: Any) -> Any:
        if path.startswith("/v1/policy/history"):
            return foreign_history
        if path.startswith("/v1/policy"):
            return {**foreign_policy, "proposals": body["proposals"]}
        return body

    mitm = host(swap)
    assert cli(service, mitm.url, "policy", "history", anchor=None).returncode == 0  # consistent in itself
    refused = cli(service, mitm.url, "policy", "history", anchor=service.dev["trust_anchor"])
    assert refused.returncode != 0 and "trust anchor" in refused.stderr
    keyed = cli(service, mitm.url, "mint", "request", "--operator", "alice", "--key", service.key("alice"),
                "--to", service.dev["allowlist"][0], "--amount", "5", anchor=service.dev["trust_anchor"])
    assert keyed.returncode != 0 and "pinned trust anchor" in keyed.stderr
