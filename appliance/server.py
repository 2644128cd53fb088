"""The production server: gunicorn with worker processes that each open the HSM after the fork.

Run through `appliance serve`, which checks the HSM keys in a child process first and then executes this
module with `PROMETHEUS_MULTIPROC_DIR` already set, so that prometheus-client is imported in multiprocess
mode everywhere. Nothing here touches the HSM in the master process.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import signal
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication

from appliance import slow_headers

log = logging.getLogger("appliance.server")
METRICS_PREFIX = "appliance-metrics-"  # + the serving pid: the default PROMETHEUS_MULTIPROC_DIR of a run


def build_wsgi(config_path: str) -> Any:
    """Wire the appliance and its Flask app for this (worker) process; refuses to start on unfit keys or a refused
    PIN, and starts unready (503, `/readyz` false) while the HSM cannot be reached."""
    from appliance import config
    from appliance.api import create_app
    from appliance.services import context, keys, lifecycle

    settings = config.load(config_path)
    slow_headers.deadline = settings.header_read_seconds
    app_ctx = context.build(settings)
    drain_on_stop(app_ctx.hsm)
    unready = keys.check_at_start(app_ctx)  # refuses an unfit key or a refused PIN; an absent HSM is waited for
    if unready:
        log.warning("starting unready: %s", unready)
    lifecycle.on_start(app_ctx)
    _start_background(app_ctx)
    return closing_on_request(create_app(app_ctx))


def closing_on_request(app: Any) -> Any:
    """The WSGI app, with `environ["appliance.close_connection"]`: a callable that makes gunicorn close this
    connection after the response (the response object is what its start_response belongs to). Gunicorn drops a
    `Connection` header set by the application, so this is how a response says "no keep-alive". It also shuts the
    socket's read side: what the client still sends is never read, and gunicorn's graceful close (which drains
    the socket for up to 2 s on its main thread) finds nothing to wait for. Reaching the app also means the
    request's headers arrived: their deadline (slow_headers) is lifted."""

    def wsgi(environ: dict[str, Any], start_response: Any) -> Any:
        slow_headers.headers_read()
        force_close = getattr(getattr(start_response, "__self__", None), "force_close", None)
        if force_close is not None:
            sock = environ.get("gunicorn.socket")

            def close() -> None:
                force_close()
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RD)

            environ["appliance.close_connection"] = close
        return app(environ, start_response)

    return wsgi


def drain_on_stop(hsm: Any) -> None:
    """When this worker is told to stop (SIGTERM: graceful; SIGINT, SIGQUIT: quick), it starts no more HSM calls
    before gunicorn's own handler runs; the master's SIGKILL after graceful_timeout then finds no call in progress
    (see Hsm.drain). gunicorn installs its handlers before it loads the app, so they are chained here."""
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        previous = signal.getsignal(signum)

        def handler(sig: int, frame: Any, previous: Any = previous) -> None:
            hsm.drain()
            if callable(previous):
                previous(sig, frame)
            elif previous == signal.SIG_DFL:
                signal.signal(sig, signal.SIG_DFL)
                os.kill(os.getpid(), sig)

        signal.signal(signum, handler)


def _start_background(app_ctx: Any) -> None:
    """Periodic checkpoints and scheduled attestations; both are idempotent, so each worker may run them."""
    from appliance.services import lifecycle

    background = lifecycle.Background(app_ctx)

    def loop() -> None:
        while True:
            time.sleep(1.0)
            try:
                background.tick()
            except Exception:  # the loop must survive any failure; each failure is logged and counted
                log.exception("background tick failed")

    threading.Thread(target=loop, name="appliance-background", daemon=True).start()


class Server(BaseApplication):  # type: ignore[misc]
    def __init__(self, config_path: str, listen: str, workers: int, threads: int, max_body: int,
                 tls: dict[str, Any] | None = None) -> None:
        self.config_path = config_path
        self.options = {"bind": listen, "workers": workers, "threads": threads,
                        "worker_class": "appliance.slow_headers.HeaderTimedWorker", "preload_app": False,
                        "timeout": 60, "graceful_timeout": 10,
                        "limit_request_field_size": 8190, "accesslog": "-", "errorlog": "-",
                        "loglevel": "info", **(tls or {})}
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)
        if "control_socket_disable" in self.cfg.settings:  # gunicorn >= 27: no control socket in $HOME
            self.cfg.set("control_socket_disable", True)

    def load(self) -> Any:  # called in each worker because preload_app is off
        return build_wsgi(self.config_path)


def main() -> None:
    parser = argparse.ArgumentParser(description="appliance HTTP server (use `appliance serve`)")
    parser.add_argument("--config", required=True)
    parser.add_argument("--listen", required=True)
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--max-body", type=int, required=True)
    parser.add_argument("--own-metrics-dir", action="store_true", help="remove PROMETHEUS_MULTIPROC_DIR at exit")
    parser.add_argument("--certfile", help="serve HTTPS with this certificate chain (PEM)")
    parser.add_argument("--keyfile", help="the certificate's private key (PEM)")
    parser.add_argument("--client-ca", help="require client certificates issued by this CA (PEM)")
    args = parser.parse_args()
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        raise SystemExit("PROMETHEUS_MULTIPROC_DIR must be set (use `appliance serve`)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")
    metrics_dir = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    try:
        Server(args.config, args.listen, args.workers, args.threads, args.max_body, tls_options(args)).run()
    finally:
        if args.own_metrics_dir:  # a temporary directory `appliance serve` made for this run
            shutil.rmtree(metrics_dir, ignore_errors=True)


def tls_options(args: argparse.Namespace) -> dict[str, Any] | None:
    """gunicorn's TLS settings (its default context: Python's, TLS 1.2 or newer), and client certificates required
    when a client CA is given."""
    if not args.certfile:
        return None
    options: dict[str, Any] = {"certfile": args.certfile, "keyfile": args.keyfile}
    if args.client_ca:
        options.update(ca_certs=args.client_ca, cert_reqs=ssl.CERT_REQUIRED)
    return options


def remove_stale_metrics_dirs(parent: Path, prefix: str = METRICS_PREFIX) -> list[Path]:
    """The per-run metrics directories under `parent` whose server is gone (killed, so it could not remove its
    own), removed; returns them. A directory is named after the pid that serves it."""
    removed = []
    for path in parent.glob(prefix + "*"):
        pid = path.name[len(prefix):]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


if __name__ == "__main__":
    main()
