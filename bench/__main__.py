"""`make bench` / `python -m bench [--quick]`: every figure next to its limit measured in the same run.

Results go to bench/results/latest.json (and a timestamped copy). Not tests: nothing here asserts timings.
"""

from __future__ import annotations

import argparse
import json
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from bench.common import Result, machine

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description="appliance benchmarks")
    parser.add_argument("--quick", action="store_true", help="small sizes (under 2 minutes)")
    parser.add_argument("--only", help="comma-separated sections: hsm,service,liabilities,audit,regulator,statements")
    args = parser.parse_args()
    only = set(args.only.split(",")) if args.only else None
    started = time.perf_counter()
    results: list[Result] = []
    failures: dict[str, str] = {}

    from bench import hsm_raw

    raw, hsm_results = hsm_raw.run(args.quick)
    results += hsm_results
    sections: list[tuple[str, Callable[[], list[Result]]]] = [
        ("service", lambda: __import__("bench.service", fromlist=["x"]).signing_path(raw, args.quick)),
        ("liabilities", lambda: __import__("bench.liabilities", fromlist=["x"]).run(args.quick)),
        ("audit", lambda: __import__("bench.audit", fromlist=["x"]).appends(args.quick)
         + __import__("bench.audit", fromlist=["x"]).verification(args.quick)),
        ("regulator", lambda: __import__("bench.regulator", fromlist=["x"]).run(args.quick)),
        ("statements", lambda: __import__("bench.statements", fromlist=["x"]).final_approvals(
            50 if args.quick else 200)[0]),
    ]
    for name, section in sections:
        if only is not None and name not in only:
            continue
        print(f"[{name}] ...", flush=True)
        try:
            results += section()
        except Exception as exc:  # noqa: BLE001 - a failed section is reported, the others still run
            failures[name] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
    elapsed = time.perf_counter() - started
    print_table(raw, results, failures, elapsed)
    save(raw, results, failures, elapsed, args.quick, args.only)


def print_table(raw: dict[str, float], results: list[Result], failures: dict[str, str], elapsed: float) -> None:
    print()
    print("raw python-pkcs11 (one process, one thread): " + ", ".join(f"{k} {v:,.0f}/s" for k, v in raw.items()))
    print(f"{'measurement':<72} {'value':>14} {'limit':>14} {'ratio':>7}  goal")
    for r in results:
        ratio = f"{r.ratio:.3f}" if r.ratio is not None else ""
        limit = f"{r.limit:,.4g}" if r.limit else ""
        goal = f"{r.goal} {'MET' if r.met else 'MISSED' if r.met is False else ''}".strip()
        print(f"{r.name:<72} {r.value:>12,.1f} {r.unit:<1} {limit:>14} {ratio:>7}  {goal}")
        if r.extra:
            print("    " + ", ".join(f"{k} {v:,.2f}" if isinstance(v, float) else f"{k} {v}"
                                     for k, v in r.extra.items()))
    for name, reason in failures.items():
        print(f"section {name} FAILED: {reason}")
    print(f"total {elapsed:.0f} s")


def save(raw: dict[str, float], results: list[Result], failures: dict[str, str], elapsed: float,
         quick: bool, only: str | None) -> None:
    RESULTS.mkdir(exist_ok=True)
    report = {"when": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), "quick": quick, "machine": machine(),
              "seconds": elapsed, "raw_hsm_sign_per_second": raw, "failures": failures,
              "results": [{"name": r.name, "value": r.value, "unit": r.unit, "limit": r.limit,
                           "limit_name": r.limit_name, "ratio": r.ratio, "goal": r.goal, "met": r.met, **r.extra}
                          for r in results]}
    text = json.dumps(report, indent=2)
    name = "latest" + ("-quick" if quick else "") + (f"-{only.replace(',', '-')}" if only else "")
    (RESULTS / f"{name}.json").write_text(text)
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
