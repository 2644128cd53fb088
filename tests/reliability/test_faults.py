"""Faults injected under a served instance, each the way it happens to a deployment:

- the database (a PostgreSQL cluster this module starts itself: initdb into a temporary directory, its own port;
  the machine's own server is never touched) stopped while final approvals arrive, and started again;
- the store's disk full (the embedded SQLite store on a small tmpfs, filled to the last block);
- the HSM token directory made unreadable (the server runs without root's CAP_DAC_OVERRIDE, so a mode counts);
- the PKCS#11 module missing when the service starts, and put back;
- the HSM session closed under load.

Each: while broken, a 503 with a named problem, /readyz false, nothing signed (the service's own signature count,
and every authorization verified with eth-account afterwards); the failure audited as soon as the store can take
it; recovery without a manual step (no restart, no command): the same flows then complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import sqlite3
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data

from appliance.domain.messages import TYP_MINT_APPROVAL, TYP_MINT_REQUEST
from appliance.operator import load_key, sign_request
from tests.served import APPLIANCE, call, serve

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

NAMED_503 = {"storage-unavailable", "hsm-unavailable", "config-error"}


# -- a PostgreSQL cluster of the test's own ------------------------------------------------------------------------

def _pg_bin() -> Path:
    found = shutil.which("pg_config")
    if found:
        return Path(subprocess.run([found, "--bindir"], capture_output=True, text=True, check=True).stdout.strip())
    return Path("/usr/lib/postgresql/15/bin")


@dataclass
class Cluster:
    directory: Path
    port: int

    @property
    def data(self) -> Path:
        return self.directory / "data"

    def _as_postgres(self, *args: str) -> None:
        # initdb and postgres refuse to run as root: as root, run them as the postgres user
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*prefix, *args], check=True, capture_output=True, timeout=120)

    def init(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres")
        self._as_postgres(str(_pg_bin() / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1"
        self._as_postgres(str(_pg_bin() / "pg_ctl"), "-D", str(self.data), "-o", options,
                          "-l", str(self.directory / "postgres.log"), "-w", "start")

    def stop(self) -> None:
        self._as_postgres(str(_pg_bin() / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    from tests.served import free_port

    # not under pytest's temporary directory: that is root's own (0700), and the cluster runs as postgres
    own = Cluster(Path(tempfile.mkdtemp(prefix="appliance-own-pg-")), free_port())
    own.directory.chmod(0o755)
    own.init()
    own.start()
    subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(own.port), "-U", "postgres", "-c",
                    "CREATE DATABASE appliance"], check=True, capture_output=True, timeout=60)
    yield own
    try:
        own.stop()
    except subprocess.CalledProcessError:
        pass  # a test left it stopped
    shutil.rmtree(own.directory, ignore_errors=True)


# -- a served instance and what its callers see --------------------------------------------------------------------

@dataclass
class Served:
    directory: Path
    dev: dict[str, Any]
    config: Path
    url: str = ""
    proc: subprocess.Popen[bytes] | None = None
    keys: dict[str, Any] = field(default_factory=dict)

    def key(self, name: str) -> Any:
        if name not in self.keys:
            self.keys[name] = load_key(self.directory / "operators" / f"{name}.pem")
        return self.keys[name]

    def start(self, *, prefix: tuple[str, ...] = (), ready: bool = True) -> None:
        env = {k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"}
        self.proc, self.url = serve(self.config, self.directory / "serve.log", env, new_session=True,
                                    prefix=prefix, ready=ready)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)

    def http(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        status, raw = call(self.url, method, path, body, self.key("grace"))
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode(errors="replace")

    def request(self) -> dict[str, Any]:
        payload = {"to": self.dev["allowlist"][0], "amount": "1000000", "chain_id": self.dev["chain_id"]}
        status, body = self.http("POST", "/v1/mint-requests",
                                 {"jws": sign_request(self.key("alice"), TYP_MINT_REQUEST, payload)})
        assert status == 201, body
        return body  # type: ignore[no-any-return]

    def approve(self, name: str, req: dict[str, Any]) -> tuple[int, Any]:
        payload = {"request_id": req["id"], "digest": req["digest"], "decision": "approve", "policy": req["policy"]}
        return self.http("POST", f"/v1/mint-requests/{req['id']}/approvals",
                         {"jws": sign_request(self.key(name), TYP_MINT_APPROVAL, payload)})

    def signatures(self) -> float:
        """The service's own count of mint signatures the HSM made (every worker's)."""
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as r:  # noqa: S310
            lines = r.read().decode().splitlines()
        return sum(float(line.rsplit(" ", 1)[1]) for line in lines
                   if line.startswith("appliance_signatures_total{") and 'key="mint"' in line
                   and 'outcome="ok"' in line)

    def ready(self) -> bool:
        status, _ = self.http("GET", "/readyz")
        return status == 200

    def wait_ready(self, want: bool, seconds: float = 30) -> None:
        deadline = time.monotonic() + seconds
        while self.ready() != want:
            assert time.monotonic() < deadline, f"/readyz never became {'ready' if want else 'unavailable'}"
            time.sleep(0.2)

    def audited(self, action: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        start = 0
        while True:  # the public log, a page at a time
            status, page = self.http("GET", f"/v1/audit/entries?start={start}")
            assert status == 200, page
            found += [e for e in page["entries"] if e["action"] == action]
            if len(page["entries"]) < 1000:
                return found
            start += len(page["entries"])

    def wait_audited(self, action: str, seconds: float = 30) -> list[dict[str, Any]]:
        deadline = time.monotonic() + seconds
        while not (found := self.audited(action)):
            assert time.monotonic() < deadline, f"no {action} entry in the audit log"
            time.sleep(0.3)
        return found

    def authorized_everywhere(self, requests: list[dict[str, Any]]) -> None:
        """Every request authorized exactly once, its authorization verifying with eth-account."""
        for req in requests:
            status, authz = self.http("GET", f"/v1/mint-requests/{req['id']}/authorization")
            assert status == 200, authz
            signable = encode_typed_data(full_message=authz["typedData"])
            assert Account.recover_message(signable, signature=authz["signature"]) == authz["signer"]


def _until_answered(call: Any, seconds: float = 30) -> tuple[int, Any]:
    """`call()` again while it is refused with a named 503 (another worker may not have recovered yet)."""
    deadline = time.monotonic() + seconds
    while True:
        status, body = call()
        if status != 503 or time.monotonic() > deadline:
            return status, body
        _named_503(status, body)
        time.sleep(0.3)


def _named_503(status: int, body: Any) -> None:
    assert status == 503, (status, body)
    assert isinstance(body, dict) and body["type"].rsplit(":", 1)[-1] in NAMED_503, body


def _dev_init(directory: Path) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"}
    out = subprocess.run([*APPLIANCE, "dev-init", str(directory), "--json"], capture_output=True, text=True,
                         env=env, timeout=120, check=True)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def _set(config: Path, old: str, new: str) -> None:
    text = config.read_text()
    assert old in text, old
    config.write_text(text.replace(old, new, 1))


def _init(config: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"}
    subprocess.run([*APPLIANCE, "--config", str(config), "init", "--json"], capture_output=True, text=True,
                   env=env, timeout=120, check=True)


@pytest.fixture
def on_own_postgres(cluster: Cluster, tmp_path: Path) -> Iterator[Served]:
    directory = tmp_path / "dev"
    dev = _dev_init(directory)
    config = Path(dev["config"])
    database = f"faults_{secrets.token_hex(4)}"
    subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(cluster.port), "-U", "postgres", "-c",
                    f"CREATE DATABASE {database}"], check=True, capture_output=True, timeout=60)
    _set(config, 'url = "sqlite:///appliance.db"', f'url = "{cluster.url(database)}"')
    _set(config, "write_timeout_seconds = 5.0", "write_timeout_seconds = 2.0")
    # the dev token's policy anchor is pinned to the SQLite store: a new store pins its own first policy
    text = config.read_text()
    config.write_text(text.replace('policy_anchor = "', f'policy_anchor = "faults-{secrets.token_hex(3)}-', 1))
    _init(config)
    served = Served(directory, dev, config)
    served.start()
    yield served
    served.stop()


# -- the faults ----------------------------------------------------------------------------------------------------

def test_the_database_stopped_mid_run_and_started_again(cluster: Cluster, on_own_postgres: Served) -> None:
    """Final approvals keep arriving on a thread while the database stops and starts; each is 201 or a named
    503, nothing is signed while it is down, and every request is authorized exactly once afterwards."""
    svc = on_own_postgres
    requests = [svc.request() for _ in range(12)]
    for req in requests:
        assert svc.approve("bob", req)[0] == 201
    before = svc.signatures()
    outcomes: list[tuple[str, int, Any]] = []
    down = threading.Event()

    def final_approvals() -> None:
        for req in requests:
            status, body = svc.approve("carol", req)
            outcomes.append((req["id"], status, body))
            if len(outcomes) == 3:
                down.wait(30)  # the rest arrive while the database is down (and as it comes back)
            time.sleep(0.1)

    sender = threading.Thread(target=final_approvals)
    sender.start()
    while len(outcomes) < 3:
        time.sleep(0.05)
    cluster.stop()
    signed_while_up = svc.signatures()
    down.set()
    time.sleep(1.5)
    status, body = svc.approve("carol", requests[-1])  # at least one answer while it is surely down
    _named_503(status, body)
    svc.wait_ready(False, 10)
    assert svc.signatures() == signed_while_up  # nothing signed while the database is down
    cluster.start()
    sender.join(120)
    svc.wait_ready(True, 60)  # no restart, no command: the pool reconnects
    for rid, status, body in outcomes:
        assert status == 201 or (status == 503 and body["type"].rsplit(":", 1)[-1] in NAMED_503), (rid, status, body)
    for req in requests:  # every caller refused with 503 sends again, and is told the truth
        status, view = svc.http("GET", f"/v1/mint-requests/{req['id']}")
        if view["status"] != "authorized":
            status, body = svc.approve("carol", req)
            assert status == 201 and body["status"] == "authorized", body
    assert svc.signatures() - before == len(requests)  # exactly one signature per request
    svc.authorized_everywhere(requests)
    [entry, *_] = svc.wait_audited("store.unavailable")
    assert entry["details"]["failed_writes"] >= 1


def test_the_hsm_token_directory_made_unreadable(on_own_postgres: Served) -> None:
    """The server runs without CAP_DAC_OVERRIDE (as an appliance's service user would), so a token directory
    made unreadable is unreadable to it; made readable again, the service recovers on its own."""
    svc = on_own_postgres
    svc.stop()
    svc.start(prefix=("setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search"))
    token_dir = svc.directory / "softhsm" / "tokens"
    assert token_dir.is_dir()
    req = svc.request()
    assert svc.approve("bob", req)[0] == 201
    before = svc.signatures()
    mode = token_dir.stat().st_mode & 0o777
    token_dir.chmod(0)
    try:
        for _ in range(3):  # every worker that tries finds it gone
            _named_503(*svc.approve("carol", req))
        svc.wait_ready(False, 10)
        assert svc.signatures() == before
    finally:
        token_dir.chmod(mode)
    svc.wait_ready(True, 30)
    status, body = _until_answered(lambda: svc.approve("carol", req))  # every worker finds the token again
    assert status == 201 and body["status"] == "authorized", body
    assert svc.signatures() - before == 1
    svc.authorized_everywhere([req])
    assert svc.audited("hsm.error") or svc.audited("service.misconfigured")  # audited at once: the store is up


def test_the_pkcs11_module_missing_at_start_and_put_back(on_own_postgres: Served, tmp_path: Path) -> None:
    """A restart finds the PKCS#11 module gone (a package upgrade half done, a volume not mounted yet): `serve`
    starts unready instead of refusing, and is ready once the module is back, without another restart."""
    svc = on_own_postgres
    req = svc.request()
    assert svc.approve("bob", req)[0] == 201
    before = svc.signatures()
    svc.stop()
    module = tmp_path / "module" / "libsofthsm2.so"
    module.parent.mkdir()
    _set(svc.config, 'module = "/usr/lib/softhsm/libsofthsm2.so"', f'module = "{module}"')
    svc.start(ready=False)  # the module is not there: the service is up, and says it is not ready
    assert "serving unready" in (svc.directory / "serve.log").read_text()
    status, body = svc.http("GET", "/readyz")
    assert status == 503 and "PKCS#11 module" in json.dumps(body), body
    _named_503(*svc.approve("carol", req))
    payload = {"to": svc.dev["allowlist"][0], "amount": "1000000", "chain_id": svc.dev["chain_id"]}
    _named_503(*svc.http("POST", "/v1/mint-requests",  # a new request needs the mint key's address too
                         {"jws": sign_request(svc.key("alice"), TYP_MINT_REQUEST, payload)}))
    assert svc.signatures() == before
    assert svc.wait_audited("service.misconfigured")
    shutil.copy("/usr/lib/softhsm/libsofthsm2.so", module)
    svc.wait_ready(True, 30)
    status, body = _until_answered(lambda: svc.approve("carol", req))
    assert status == 201 and body["status"] == "authorized", body
    assert svc.signatures() - before == 1
    svc.authorized_everywhere([req])


def test_the_stores_disk_full(tmp_path: Path) -> None:
    """The embedded SQLite store on a 16 MiB tmpfs, filled to the last block with the write-ahead log emptied:
    the next write cannot grow the log."""
    directory = tmp_path / "dev"
    dev = _dev_init(directory)
    config = Path(dev["config"])
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs for the full disk (run as root): {mounted.stderr!r}")
    svc = Served(directory, dev, config)
    try:
        source = sqlite3.connect(directory / "appliance.db")
        target = sqlite3.connect(disk / "appliance.db")
        source.backup(target)
        source.close()
        target.execute("PRAGMA journal_mode=WAL")
        target.close()
        _set(config, 'url = "sqlite:///appliance.db"', f'url = "sqlite:///{disk / "appliance.db"}"')
        _set(config, "write_timeout_seconds = 5.0", "write_timeout_seconds = 2.0")
        svc.start()
        requests = [svc.request() for _ in range(3)]
        for req in requests:
            assert svc.approve("bob", req)[0] == 201
        before = svc.signatures()
        time.sleep(2.5)  # let the background checkpoints settle
        with sqlite3.connect(disk / "appliance.db") as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        _fill(disk / "filler")
        try:
            for req in requests:
                _named_503(*svc.approve("carol", req))
            svc.wait_ready(False, 10)
            assert svc.signatures() == before
        finally:
            (disk / "filler").unlink()
        svc.wait_ready(True, 30)
        for req in requests:
            status, body = svc.approve("carol", req)
            assert status == 201 and body["status"] == "authorized", body
        assert svc.signatures() - before == len(requests)
        svc.authorized_everywhere(requests)
        svc.wait_audited("store.unavailable")
        time.sleep(2)  # each worker records its own
        assert sum(e["details"]["failed_writes"] for e in svc.audited("store.unavailable")) >= len(requests)
    finally:
        svc.stop()
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def _fill(path: Path) -> None:
    """Write zeros until the filesystem has no block left."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (1 << 20, 1 << 12, 1 << 9, 1):
            chunk = b"\0" * size
            try:
                while True:
                    os.write(fd, chunk)
            except OSError:
                continue
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


# python-pkcs11 finalizes the operation objects of a session closed under it with an error it can only print
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_the_hsm_session_closed_under_load(h: Any) -> None:
    """Eight officers' final approvals on threads while the token's session is closed again and again between
    calls (a device reset): the appliance opens a new one; every approval is answered 201 or a named 503, and
    each authorized request has exactly one signature that verifies."""
    from tests.helpers import metric

    hsm = h.app_ctx.hsm
    requests = [h.request().get_json() for _ in range(64)]
    for req in requests:
        assert h.approve("bob", req).status_code == 201
    before = metric("appliance_signatures_total", key="mint", outcome="ok")
    closed = 0
    seen: set[int] = set()  # each session is closed once: the appliance must notice and open a new one

    def reset() -> None:
        """Close the token's session between two calls, as a device reset would, unless it is closed already.
        Called by the approvers themselves before each approval, so the number of resets does not depend on
        how fast the approvals run (a closing thread on a timer saw only 4 sessions on a quick run)."""
        nonlocal closed
        with hsm._lock:  # noqa: SLF001 - between two calls
            session = hsm._session  # noqa: SLF001
            if session is not None and id(session) not in seen:
                seen.add(id(session))
                session.close()
                closed += 1

    results: list[tuple[int, Any]] = []

    def approver(n: int, batch: list[dict[str, Any]]) -> None:
        client = h.client
        client.environ_base["REMOTE_ADDR"] = f"198.51.100.{n + 1}"  # eight officers' workstations
        for req in batch:
            reset()
            r = client.post(f"/v1/mint-requests/{req['id']}/approvals", json={"jws": h.approval("carol", req)})
            results.append((r.status_code, r.get_json()))

    threads = [threading.Thread(target=approver, args=(i, requests[i::8])) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert closed >= 5, closed
    for status, body in results:
        assert status == 201 or (status == 503 and body["type"].rsplit(":", 1)[-1] in NAMED_503), body
    for req in requests:  # a caller refused with 503 sends again
        if h.client.get(f"/v1/mint-requests/{req['id']}").get_json()["status"] != "authorized":
            assert h.approve("carol", req).get_json()["status"] == "authorized"
    assert metric("appliance_signatures_total", key="mint", outcome="ok") - before == len(requests)
    for req in requests:
        authz = h.client.get(f"/v1/mint-requests/{req['id']}/authorization").get_json()
        signable = encode_typed_data(full_message=authz["typedData"])
        assert Account.recover_message(signable, signature=authz["signature"]) == authz["signer"]

