"""Slow clients against `appliance serve`: N connections from one address each send a POST's headers, then its
body at one byte a second (half of them as JSON, half without a content type), or (`headers`) a request line
and then its headers at one byte a second, reconnecting when closed; meanwhile /healthz is probed every half
second with a 2 s timeout. Prints each probe and how the trickling requests were answered.

    python -m bench.slow_clients [N] [bodies|headers]        # N defaults to 64
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from tests.served import APPLIANCE, serve

PROBES = 25


def _trickle(port: int, as_json: bool, stop: threading.Event) -> None:
    sock = socket.create_connection(("127.0.0.1", port))
    ctype = b"Content-Type: application/json\r\n" if as_json else b""
    sock.sendall(b"POST /v1/mint-requests HTTP/1.1\r\nHost: x\r\n" + ctype + b"Content-Length: 100000\r\n\r\n")
    while not stop.is_set():
        try:
            sock.sendall(b"a")
        except OSError:
            return
        time.sleep(1)


def _trickle_headers(port: int, _as_json: bool, stop: threading.Event, closed: list[int]) -> None:
    while not stop.is_set():
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        sock.settimeout(1)
        while not stop.is_set():
            try:
                sock.sendall(b"a")
                if sock.recv(1) == b"":
                    break
            except TimeoutError:
                continue
            except OSError:
                break
        closed.append(1)
        sock.close()


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 64
    headers = len(sys.argv) > 2 and sys.argv[2] == "headers"
    closed: list[int] = []
    directory = Path(tempfile.mkdtemp()) / "dev"
    env = {k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"}
    made = subprocess.run([*APPLIANCE, "dev-init", str(directory), "--json"], capture_output=True, text=True,
                          env=env, check=True)
    proc, url = serve(json.loads(made.stdout)["config"], directory / "serve.log", env)
    stop = threading.Event()
    port = int(url.rsplit(":", 1)[1])
    for i in range(count):
        if headers:
            threading.Thread(target=_trickle_headers, args=(port, False, stop, closed), daemon=True).start()
        else:
            threading.Thread(target=_trickle, args=(port, i % 2 == 1, stop), daemon=True).start()
    time.sleep(1)
    started, failed, last_failure = time.monotonic(), 0, 0.0
    for _ in range(PROBES):
        t0 = time.monotonic()
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=2) as r:  # noqa: S310
                r.read()
            outcome = "ok"
        except OSError as exc:
            outcome, failed, last_failure = type(exc).__name__, failed + 1, t0 - started
        print(f"{t0 - started:5.1f} s  /healthz {outcome} in {time.monotonic() - t0:.3f} s")
        time.sleep(0.5)
    stop.set()
    answered = collections.Counter(line.split('" ')[1].split()[0] for line in (directory / "serve.log").open()
                                   if '"POST ' in line)
    what = f"header connections closed by the server: {len(closed)}" if headers else f"answered: {dict(answered)}"
    print(f"{count} trickling clients, {what}; {failed} of {PROBES} probes failed, the last at {last_failure:.1f} s")
    proc.terminate()
    proc.wait(20)
    shutil.rmtree(directory.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
