"""Time and peak memory of ``make_synthetic`` over a ladder of sizes, up to 1M items x 10M interactions.

Run: ``python benchmarks/bench_synthetic.py`` (about 2 minutes on 2 CPU cores), or
``--only 0 1`` for some rungs. Each rung runs in a fresh subprocess, so its peak RSS
(``ru_maxrss``) is its own; the import-only baseline is printed first for reference.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

# (n_users, n_items, n_interactions, extra make_synthetic options)
LADDER = [
    (2_000, 1_500, 60_000, {}),  # the default dataset's size
    (20_000, 20_000, 500_000, {}),
    (100_000, 100_000, 2_000_000, {}),
    (200_000, 50_000, 2_000_000, {"sequence_modality": ("video", 16, 32), "missing_rate": 0.1}),
    (1_000_000, 1_000_000, 10_000_000, {}),  # the graph-model benchmark's size
]

_CHILD = r"""
import json, resource, sys, time
spec = json.loads(sys.argv[1])
import numpy as np
from jaxrec.data import make_synthetic
start = time.perf_counter()
if spec is not None:
    n_users, n_items, n_interactions, options = spec
    if "sequence_modality" in options:
        options["sequence_modality"] = tuple(options["sequence_modality"])
    data = make_synthetic(n_users, n_items, n_interactions=n_interactions, **options)
    assert len(data.interactions) == n_interactions
    feature_bytes = sum(m.features.nbytes for m in data.modalities.values())
    sampler = data.metadata["interaction_sampler"]
else:
    feature_bytes, sampler = 0, "-"
seconds = time.perf_counter() - start
peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": seconds, "peak_mib": peak_mib, "feature_mib": feature_bytes / 2**20, "sampler": sampler}))
"""


def run_rung(spec) -> dict:
    result = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(spec)], capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", type=int, nargs="*", help="indices of the ladder rungs to run (default: all)")
    args = parser.parse_args()
    rungs = [LADDER[i] for i in args.only] if args.only else LADDER
    baseline = run_rung(None)
    print(f"import baseline: peak RSS {baseline['peak_mib']:.0f} MiB")
    print(f"{'users':>10} {'items':>10} {'interactions':>13} {'options':<40} {'sampler':<10} "
          f"{'seconds':>8} {'peak MiB':>9} {'features MiB':>12}")
    for n_users, n_items, n_interactions, options in rungs:
        row = run_rung([n_users, n_items, n_interactions, options])
        print(f"{n_users:>10,} {n_items:>10,} {n_interactions:>13,} {json.dumps(options):<40} {row['sampler']:<10} "
              f"{row['seconds']:>8.1f} {row['peak_mib']:>9.0f} {row['feature_mib']:>12.0f}", flush=True)


if __name__ == "__main__":
    main()
