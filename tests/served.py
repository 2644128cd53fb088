"""`appliance serve` as a test starts it: a free port, a log file, and back only once /readyz says 200."""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

APPLIANCE = [sys.executable, "-m", "appliance.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(config: str | Path, log_path: Path, env: dict[str, str] | None = None, *, new_session: bool = False,
          tls: ssl.SSLContext | None = None, timeout: float = 60, port: int | None = None,
          prefix: tuple[str, ...] = (), ready: bool = True) -> tuple[subprocess.Popen[bytes], str]:
    """Start `appliance --config CONFIG serve` on a free loopback port; (process, url) once it is ready.
    `new_session`: the server leads its own process group (the crash suite kills that group). `tls`: speak
    HTTPS with this client context. `port`: this one (chosen with free_port) rather than a new one. `prefix`: run
    the server under this command (e.g. setpriv). `ready=False`: back once /healthz answers (a service that is up
    but cannot be ready)."""
    if env is None:
        env = {k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"}
    port = port or free_port()
    with open(log_path, "a") as log:  # the child keeps its own descriptor
        command = [*prefix, *APPLIANCE, "--config", str(config), "serve", "--listen", f"127.0.0.1:{port}"]
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=new_session)
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url + ("/readyz" if ready else "/healthz"), timeout=2,  # noqa: S310
                                        context=tls) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise AssertionError(f"the service did not become ready:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.05)


def reader(key: Any) -> Callable[[str, str], str]:
    """The Authorization header of reads signed by the operator key at `key` (a path, as the CLI's --read-key,
    or a loaded SoftwareSigner)."""
    from appliance.operator import load_key, read_authorization

    return read_authorization(load_key(key) if isinstance(key, (str, Path)) else key)


def signed_get(url: str, path: str, key: str | Path) -> urllib.request.Request:
    """A GET of `path` carrying the read token of the operator key at `key` (reads of requests and policy
    details are for enrolled operators)."""
    return urllib.request.Request(url + path, headers={"Authorization": reader(key)("GET", path)})  # noqa: S310


def call(url: str, method: str, path: str, body: Any = None, key: Any = None,
         timeout: float = 30) -> tuple[int, bytes]:
    """(status, raw body) of one request to a served instance: a write sends `body` as JSON, a read carries the
    read token of the operator key `key` (see reader). An HTTP error status is returned, not raised."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} if data else (
        {"Authorization": reader(key)(method, path)} if key is not None else {})
    req = urllib.request.Request(url + path, data=data, method=method, headers=headers)  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
