"""An unauthenticated flood against `appliance serve`: N forged-signature mint requests (a JWS naming a key nobody
enrolled) from A loopback addresses (127.0.1.x, one connection each, 8 at once), while an officer sends genuine
requests. Prints how the flood was answered, how much the audit log and the store grew, and how long the
officer's requests took.

    python -m bench.flood [N] [A]          # defaults: 10,000 requests from 100 addresses
"""

from __future__ import annotations

import collections
import http.client
import json
import sys
import threading
import time
import urllib.request
from pathlib import Path

from appliance.domain import jose, messages
from appliance.operator import load_key, sign_request
from bench.common import dev_service, percentile


def _audit_size(url: str) -> int:
    with urllib.request.urlopen(url + "/v1/audit/checkpoint", timeout=10) as r:  # noqa: S310
        return int(r.read().decode().split("\n")[1])


def _store_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.glob("appliance.db*"))


def main() -> None:
    total = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    addresses = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    with dev_service() as service:
        host, port = service.url.removeprefix("http://").split(":")
        alice = load_key(service.key("alice"))
        forged_head = {"alg": alice.alg, "kid": "a-key-nobody-enrolled", "typ": messages.TYP_MINT_REQUEST}
        forged = jose.sign_compact(forged_head, b'{"x": 1}', alice.sign)
        body = json.dumps({"jws": forged}).encode()
        to = service.dev["allowlist"][0]
        statuses: collections.Counter[int] = collections.Counter()
        lock = threading.Lock()
        next_index = iter(range(total))
        time.sleep(1.5)  # the first checkpoint of the tick
        audit_before, store_before = _audit_size(service.url), _store_bytes(service.directory)

        def flood() -> None:
            while True:
                with lock:
                    i = next(next_index, None)
                if i is None:
                    return
                conn = http.client.HTTPConnection(host, int(port), timeout=30,
                                                  source_address=(f"127.0.1.{i % addresses + 1}", 0))
                try:
                    conn.request("POST", "/v1/mint-requests", body, {"Content-Type": "application/json"})
                    status = conn.getresponse().status
                except OSError:
                    status = 0
                finally:
                    conn.close()
                with lock:
                    statuses[status] += 1

        honest: list[float] = []
        done = threading.Event()

        def officer() -> None:
            while not done.is_set():
                jws = sign_request(alice, messages.TYP_MINT_REQUEST, {"to": to, "amount": "1000", "chain_id": 31337})
                t0 = time.perf_counter()
                req = urllib.request.Request(service.url + "/v1/mint-requests", json.dumps({"jws": jws}).encode(),
                                             {"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=30) as r:  # noqa: S310
                    assert r.status == 201
                honest.append(time.perf_counter() - t0)
                time.sleep(0.2)

        started = time.perf_counter()
        threads = [threading.Thread(target=flood) for _ in range(8)]
        officer_thread = threading.Thread(target=officer)
        for t in [*threads, officer_thread]:
            t.start()
        for t in threads:
            t.join()
        done.set()
        officer_thread.join()
        elapsed = time.perf_counter() - started
        time.sleep(1.5)  # a checkpoint over what was appended
        audit_after, store_after = _audit_size(service.url), _store_bytes(service.directory)
        forged_entries = audit_after - audit_before - len(honest)  # each genuine request: one entry
        answered = dict(sorted(statuses.items()))
        print(f"{total} forged requests from {addresses} addresses in {elapsed:.1f} s: {answered}")
        print(f"audit log +{audit_after - audit_before} entries (about {max(forged_entries, 0)} for the flood), "
              f"store +{(store_after - store_before) / 1024:.0f} KiB")
        print(f"the officer's {len(honest)} genuine requests meanwhile: all 201, p50 "
              f"{percentile(honest, 50) * 1000:.0f} ms, p99 {percentile(honest, 99) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
