"""Shared benchmark helpers: timing, percentiles, the raw HSM limit, a throwaway dev environment."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Result:
    """One measured line of the report: a figure, its limit measured in the same run, and the goal."""

    name: str
    value: float
    unit: str
    limit: float | None = None
    limit_name: str = ""
    goal: str = ""
    met: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        return None if not self.limit else self.value / self.limit


def percentile(samples: list[float], q: float) -> float:
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class DevService:
    url: str
    dev: dict[str, Any]
    directory: Path

    def key(self, name: str) -> Path:
        return self.directory / "operators" / f"{name}.pem"


def appliance(*args: str, env: dict[str, str] | None = None) -> str:
    out = subprocess.run([sys.executable, "-m", "appliance.cli", *args], capture_output=True, text=True,
                         env=env, check=True)
    return out.stdout


@contextmanager
def dev_service(workers: int = 2, policy_patch: Callable[[Path], None] | None = None) -> Iterator[DevService]:
    """dev-init in a temp dir, then `appliance serve` with `workers` processes; stopped afterwards."""
    env = {k: v for k, v in os.environ.items() if k not in ("SOFTHSM2_CONF", "PROMETHEUS_MULTIPROC_DIR")}
    with tempfile.TemporaryDirectory(prefix="appliance-bench-") as tmp:
        directory = Path(tmp) / "dev"
        dev = json.loads(appliance("dev-init", str(directory), "--json", env=env))
        config = Path(dev["config"])
        text = config.read_text().replace("workers = 2", f"workers = {workers}")
        config.write_text(text)
        if policy_patch is not None:
            policy_patch(directory)
            appliance("--config", str(config), "init", env=env)
        port = free_port()
        log = open(directory / "serve.log", "w")  # noqa: SIM115
        proc = subprocess.Popen([sys.executable, "-m", "appliance.cli", "--config", str(config), "serve", "--listen",
                                 f"127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT, env=env)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(url + "/readyz", timeout=2) as r:  # noqa: S310
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("service did not start:\n" + (directory / "serve.log").read_text())
            time.sleep(0.2)
        try:
            yield DevService(url, dev, directory)
        finally:
            proc.terminate()
            proc.wait(15)
            log.close()


def run_concurrently(work: Callable[[int], None], total: int, concurrency: int) -> tuple[float, list[float]]:
    """Run work(i) for i in range(total) on `concurrency` threads; returns (seconds, per-call latencies)."""
    latencies: list[float] = []
    lock = threading.Lock()
    counter = iter(range(total))

    errors: list[BaseException] = []

    def worker() -> None:
        while True:
            with lock:
                i = next(counter, None)
            if i is None or errors:
                return
            started = time.perf_counter()
            try:
                work(i)
            except BaseException as exc:  # noqa: BLE001 - a failed operation invalidates the measurement
                errors.append(exc)
                return
            elapsed = time.perf_counter() - started
            with lock:
                latencies.append(elapsed)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"{len(errors)} operation(s) failed; the measurement is void") from errors[0]
    return time.perf_counter() - started, latencies


def bare_sha256(count: int, size: int) -> float:
    """Seconds for `count` SHA-256 calls over `size`-byte inputs: the hashing limit."""
    data = bytes(size)
    sha = hashlib.sha256
    started = time.perf_counter()
    for _ in range(count):
        sha(data).digest()
    return time.perf_counter() - started
