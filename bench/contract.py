"""Contract fuzzing at scale: schemathesis against the served `/openapi.json` with every check, valid and invalid
requests for every operation and chains of calls along the document's links (tests/contract). Prints how many
cases were generated and requests made, and whether any check failed (a 5xx, an undocumented status, content
type or header, a body outside its schema, invalid data accepted, a private read served without its token).

    python -m bench.contract [EXAMPLES_PER_OPERATION]     # default 300: over 10,000 cases
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    examples = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    with tempfile.TemporaryDirectory() as tmp:
        counts = Path(tmp) / "counts"
        env = {**os.environ, "APPLIANCE_CONTRACT_EXAMPLES": str(examples), "APPLIANCE_CONTRACT_RANDOM": "1",
               "APPLIANCE_CONTRACT_STEPS": "12", "APPLIANCE_CONTRACT_COUNT": str(counts)}
        started = time.perf_counter()
        run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/contract"],
                             env=env, capture_output=True, text=True, check=False)
        took = time.perf_counter() - started
        pairs = [line.split() for line in counts.read_text().splitlines()] if counts.exists() else []
    requests, cases = sum(int(r) for r, _ in pairs), sum(int(c) for _, c in pairs)
    summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else run.stderr[-500:]
    print(f"schemathesis, all checks, {examples} examples per operation and mode: {cases:,} cases, "
          f"{requests:,} requests in {took:.0f} s")
    print(f"pytest: {summary}")
    if run.returncode != 0:
        print(run.stdout[-6000:])
        raise SystemExit(1)


if __name__ == "__main__":
    main()
