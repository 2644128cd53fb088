"""What one final approval costs inside one process: SQL statements, transactions, CPU time, and a profile.

`python -m bench.statements [--profile N]` runs a dev environment in-process (Flask's test client, no HTTP
server), prepares requests approved once, and measures the final approval (the one that meets the quorum and
reaches the HSM). Counts come from SQLAlchemy's engine events, so they are exact; they are not timed tests.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from sqlalchemy import event

from bench.common import Result


def _environment(tmp: Path) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k not in ("SOFTHSM2_CONF", "PROMETHEUS_MULTIPROC_DIR")}
    out = subprocess.run([sys.executable, "-m", "appliance.cli", "dev-init", str(tmp / "dev"), "--json"],
                         capture_output=True, text=True, env=env, check=True)
    dev: dict[str, Any] = json.loads(out.stdout)
    return dev


def final_approvals(n: int, profile: bool = False, trace: bool = False) -> tuple[list[Result], str]:
    with tempfile.TemporaryDirectory(prefix="appliance-bench-stmt-") as tmp:
        dev = _environment(Path(tmp))
        os.environ["SOFTHSM2_CONF"] = dev["softhsm2_conf"]
        from appliance import config
        from appliance.api import create_app
        from appliance.operator import load_key, sign_request
        from appliance.services import auth, context

        app_ctx = context.build(config.load(dev["config"]))
        client = create_app(app_ctx).test_client()
        keys = Path(dev["config"]).parent / "operators"
        signers = {name: load_key(keys / f"{name}.pem") for name in ("alice", "bob", "carol")}

        def post(path: str, who: str, typ: str, payload: dict[str, Any]) -> dict[str, Any]:
            response = client.post(path, json={"jws": sign_request(signers[who], typ, payload)})
            assert response.status_code in (200, 201), response.get_json()
            return response.get_json()  # type: ignore[no-any-return]

        def prepared() -> dict[str, Any]:
            req = post("/v1/mint-requests", "alice", auth.TYP_MINT_REQUEST,
                       {"to": dev["allowlist"][0], "amount": "1", "chain_id": dev["chain_id"]})
            post(f"/v1/mint-requests/{req['id']}/approvals", "bob", auth.TYP_MINT_APPROVAL,
                 {"request_id": req["id"], "digest": req["digest"], "decision": "approve", "policy": req["policy"]})
            return req

        def final(req: dict[str, Any]) -> None:
            out = post(f"/v1/mint-requests/{req['id']}/approvals", "carol", auth.TYP_MINT_APPROVAL,
                       {"request_id": req["id"], "digest": req["digest"], "decision": "approve",
                        "policy": req["policy"]})
            assert out["status"] == "authorized", out["status"]

        final(prepared())  # warm: the first call verifies the history and builds the caches
        reqs = [prepared() for _ in range(n)]
        counts: Counter[str] = Counter()
        engine = app_ctx.db.engine

        def on_statement(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
            counts["statements"] += 1
            if trace:
                print("  sql   ", " ".join(statement.split())[:120])

        def on_commit(*_: Any) -> None:
            counts["commits"] += 1
            if trace:
                print("  commit")

        event.listen(engine, "before_cursor_execute", on_statement)
        event.listen(engine, "commit", on_commit)
        profiler = cProfile.Profile() if profile else None
        cpu, wall = time.process_time(), time.perf_counter()
        if profiler:
            profiler.enable()
        for req in reqs:
            final(req)
        if profiler:
            profiler.disable()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        event.remove(engine, "before_cursor_execute", on_statement)
        event.remove(engine, "commit", on_commit)
        text = ""
        if profiler:
            stream = __import__("io").StringIO()
            pstats.Stats(profiler, stream=stream).sort_stats("cumulative").print_stats(35)
            text = stream.getvalue()
    per = {k: v / n for k, v in counts.items()}
    results = [
        Result("final approval in-process: SQL statements (commits)", per.get("statements", 0), "stmt",
               extra={"commits_per_call": per.get("commits", 0)}),
        Result("final approval in-process: CPU per call", cpu / n * 1e3, "ms", extra={"wall_ms": wall / n * 1e3}),
    ]
    return results, text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=100)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--trace", action="store_true", help="print every statement (use with -n 1)")
    args = parser.parse_args()
    results, profile = final_approvals(args.n, args.profile, args.trace)
    for r in results:
        print(f"{r.name}: {r.value:.2f} {r.unit} {r.extra}")
    if profile:
        print(profile)


if __name__ == "__main__":
    main()
