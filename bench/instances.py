"""Several instances on one PostgreSQL: I `appliance serve` processes (2 workers each) share a fresh database and the
SoftHSM2 token; N requests are created and approved once; then T client threads (each from its own loopback
address, as officers at their own workstations) send every final approval to two instances at once, the same JWS.
Counts the mint signatures the instances made (their own metrics), the authorizations served (each verified with
eth-account), and every status returned.

    python -m bench.instances [N] [I] [T]     # defaults: 1,000 requests, 4 instances, 50 threads

Needs PostgreSQL at $APPLIANCE_TEST_PG_DSN (default postgresql://postgres@127.0.0.1:5432/test).
"""

from __future__ import annotations

import collections
import http.client
import json
import os
import random
import re
import secrets
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
from eth_account import Account
from eth_account.messages import encode_typed_data

from appliance.domain import messages
from appliance.operator import load_key, read_authorization, sign_request
from tests.served import APPLIANCE, serve


def _post(url: str, path: str, body: dict[str, Any], source: str) -> tuple[int, Any]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60, source_address=(source, 0))
    try:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        conn.close()


def _mint_signatures(url: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=30) as r:  # noqa: S310
        text = r.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("appliance_signatures_total{") and 'key="mint"' in line and 'outcome="ok"' in line)


def main() -> None:
    total = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    threads = int(sys.argv[3]) if len(sys.argv) > 3 else 50
    figures = measure(total, count, threads)
    print(f"{total} requests created and approved once in {figures['prepare_seconds']:.1f} s")
    print(f"{count} instances, {threads} threads, {2 * total} final approvals in {figures['race_seconds']:.1f} s: "
          f"statuses {figures['statuses']}")
    print(f"mint signatures made: {figures['signatures']:.0f} for {total} requests; authorizations served and "
          f"verified with eth-account: {figures['verified']}; requests whose final approval got exactly one 201: "
          f"{figures['exactly_one_201']}")


def measure(total: int, count: int, threads: int) -> dict[str, Any]:
    """Set up the instances on a fresh database, race, tear down; the figures."""
    admin = os.environ.get("APPLIANCE_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
    database = f"bench_{secrets.token_hex(4)}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {database}")
    url_base = admin.rsplit("/", 1)[0]
    env = {k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"}
    directory = Path(tempfile.mkdtemp()) / "dev"
    dev = json.loads(subprocess.run([*APPLIANCE, "dev-init", str(directory), "--json"], capture_output=True, text=True,
                                    env=env, check=True).stdout)
    config = Path(dev["config"])
    text = config.read_text().replace('url = "sqlite:///appliance.db"', f'url = "{url_base}/{database}"')
    # a deployment of its own on the dev token: dev-init pinned its SQLite store's policy under the old label
    text = re.sub(r'policy_anchor = "[^"]+"', f'policy_anchor = "bench-anchor-{secrets.token_hex(4)}"', text)
    config.write_text(text)
    done = subprocess.run([*APPLIANCE, "--config", str(config), "init"], capture_output=True, text=True, env=env,
                          check=False)
    if done.returncode != 0:
        raise SystemExit(f"init failed: {done.stderr}")
    procs, urls = [], []
    for i in range(count):
        proc, url = serve(config, directory / f"serve-{i}.log", env)
        procs.append(proc)
        urls.append(url)
    try:
        return run(urls, directory, dev, total, threads)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


def run(urls: list[str], directory: Path, dev: dict[str, Any], total: int, threads: int) -> dict[str, Any]:
    keys = {name: load_key(directory / "operators" / f"{name}.pem") for name in ("alice", "bob", "carol")}
    to, chain = dev["allowlist"][0], dev["chain_id"]

    def prepare(i: int) -> dict[str, Any]:
        source = f"127.0.3.{i % 200 + 1}"
        request = {"jws": sign_request(keys["alice"], messages.TYP_MINT_REQUEST,
                                       {"to": to, "amount": str(1000 + i), "chain_id": chain})}
        status, req = _post(urls[i % len(urls)], "/v1/mint-requests", request, source)
        assert status == 201, req
        approval = {"request_id": req["id"], "digest": req["digest"], "decision": "approve", "policy": req["policy"]}
        status, body = _post(urls[i % len(urls)], f"/v1/mint-requests/{req['id']}/approvals",
                             {"jws": sign_request(keys["bob"], messages.TYP_MINT_APPROVAL, approval)}, source)
        assert status == 201, body
        return {**approval, "final": sign_request(keys["carol"], messages.TYP_MINT_APPROVAL, approval)}

    started = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        pending = list(pool.map(prepare, range(total)))
    prepare_seconds = time.perf_counter() - started
    before = sum(_mint_signatures(u) for u in urls)
    statuses: collections.Counter[int] = collections.Counter()
    accepted: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()

    def race(job: tuple[int, dict[str, Any]]) -> None:
        i, item = job
        source = f"127.0.2.{i % threads + 1}"  # the thread's own address
        pair = random.sample(urls, 2)
        path = f"/v1/mint-requests/{item['request_id']}/approvals"
        results: list[int] = []
        senders = [threading.Thread(target=lambda u=u: results.append(_post(u, path, {"jws": item["final"]},
                                                                              source)[0])) for u in pair]
        for s in senders:
            s.start()
        for s in senders:
            s.join()
        with lock:
            statuses.update(results)
            accepted[item["request_id"]] += results.count(201)

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(race, enumerate(pending)))
    elapsed = time.perf_counter() - started
    signed = sum(_mint_signatures(u) for u in urls) - before
    served_ok = 0
    read = read_authorization(load_key(directory / "operators" / "grace.pem"))  # reads are for operators
    for item in pending:
        path = f"/v1/mint-requests/{item['request_id']}/authorization"
        request = urllib.request.Request(random.choice(urls) + path, headers={"Authorization": read("GET", path)})
        with urllib.request.urlopen(request, timeout=60) as r:  # noqa: S310
            authz = json.load(r)
        signable = encode_typed_data(full_message=authz["typedData"])
        served_ok += Account.recover_message(signable, signature=authz["signature"]) == authz["signer"]
    return {"prepare_seconds": prepare_seconds, "race_seconds": elapsed, "statuses": dict(sorted(statuses.items())),
            "signatures": signed, "verified": served_ok,
            "exactly_one_201": sum(1 for n in accepted.values() if n == 1)}


if __name__ == "__main__":
    main()
