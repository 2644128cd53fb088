"""Proof of liabilities: build the tree and write every holder's proof, against bare SHA-256 of the same work.

Each size runs in a fresh subprocess so that its peak RSS is its own.
"""

from __future__ import annotations

import json
import subprocess
import sys

from bench.common import Result

CHILD = r"""
import hashlib, json, resource, sys, time
from appliance.domain.liabilities import LiabilityTree, verify_proof
n, proofs = int(sys.argv[1]), int(sys.argv[2])
holders = ((f"acct-{i:09d}", (i * 7919) % 10**12) for i in range(n))
started = time.perf_counter()
tree = LiabilityTree.build(holders, b"bench-secret")
build = time.perf_counter() - started
started = time.perf_counter()
written = 0
with open("/dev/null", "w") as out:
    for index, path in tree.iter_paths():
        out.write(json.dumps({"index": index, "path": path}))
        written += 1
        if written >= proofs:
            break
proof_time = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
one = tree.proof("acct-000000001")
verify_proof(one, tree.root.hex(), tree.total, tree.leaves)
# the limit: the same SHA-256 calls over inputs of the same sizes, in a bare loop
sha = hashlib.sha256
started = time.perf_counter()
salt_in, leaf_in, commit_in, node_in = bytes(64 + 29), bytes(65), bytes(15 + 32 + 13), bytes(97)
for _ in range(n):
    sha(salt_in).digest(); sha(salt_in).digest()   # HMAC = two compressions-worth of calls
    sha(commit_in).digest(); sha(leaf_in).digest()
for _ in range(n - 1):
    sha(node_in).digest()
bare = time.perf_counter() - started
print(json.dumps({"build": build, "proofs": proof_time, "proofs_written": written, "peak": peak, "bare": bare}))
"""


def run(quick: bool) -> list[Result]:
    sizes = (100_000, 1_000_000) if quick else (1_000_000, 10_000_000)
    results = []
    for n in sizes:
        proofs = n if n <= 1_000_000 else 1_000_000
        out = subprocess.run([sys.executable, "-c", CHILD, str(n), str(proofs)], capture_output=True, text=True,
                             check=True, timeout=1800)
        m = json.loads(out.stdout.strip().splitlines()[-1])
        per_proof = m["proofs"] / max(1, m["proofs_written"])
        total = m["build"] + per_proof * n  # every holder's proof, extrapolated when only a sample is written
        results.append(Result(f"liabilities: build + all proofs, {n:,} holders", total, "s", m["bare"],
                              "bare SHA-256 of the same hashing", goal="<= 1.5x bare hashing; < 2 GiB at 10M",
                              met=total <= 1.5 * m["bare"] and m["peak"] < 2 * 2**30,
                              extra={"build_s": m["build"], "proof_us_each": per_proof * 1e6,
                                     "proofs_written": m["proofs_written"], "peak_rss_mib": m["peak"] / 2**20}))
    return results
