"""How close each model's training epoch runs to what the CPU can do: XLA's flop count of the
compiled step, the epoch's wall time, the rate achieved, and the machine's measured matmul rate.

Usage (from the project root):
    python benchmarks/bench_roofline.py [--config experiments/configs/lfm2k/bm3.yaml ...]
        [--data ../shared/data/lfm2k] [--epochs 10] [--set KEY=VALUE ...] [--json FILE]

For each config (default: the eight models MMRec also has, lfm2k), in a fresh subprocess, the
model is built as ``jaxrec train`` builds it (``make_runner``, ``train.parallel=none``, one
scanned call per epoch) and:

- **GFLOP/epoch**: ``compiled.cost_analysis()["flops"]`` of the epoch program times its steps
  (XLA counts a ``while`` body once; checked: 1, 5 and 22 scanned steps give the same count).
  XLA counts 2 per multiply-add of a dot and 1 per elementwise op; a custom call counts 0, so
  the count is taken in a second subprocess with ``JAXREC_NATIVE_KERNELS=0`` (the graph
  propagation as XLA's gather + scatter-add, whose adds it counts) while the timing uses the
  default path. XLA counts a ``lax.cond`` as its costliest branch on every step: where the
  program has one (LATTICE refreshes its learned graph in a branch taken at the epoch's first
  step only), the count is an upper bound, marked ``<=`` (and the rate and share above the
  real ones). The model's epoch hook (LATTICE's graph refresh, FREEDOM's pruning) and the
  host's negative sampling are outside the program and not counted or timed here. The JSON
  also gives the step's dot products alone (``dot_gflop_per_step``, :func:`count_dot_flops`, every
  branch of a conditional counted), the figure ``benchmarks/mmrec_dense_flops.py`` measures in
  MMRec's own step.
- **s/epoch**: the median wall time of ``--epochs`` calls of the compiled epoch (batches
  already on the device), after one warm-up call.
- **GFLOP/s** achieved, and its share of the **matmul peak** measured in the parent process
  before the models: the best of 5 medians of 10 ``float32`` (2048, 2048) @ (2048, 2048)
  products (``2 n^3`` flops each) with XLA's defaults, every core.
- **ceiling x MMRec**: MMRec's s/epoch from ``../shared/anchors/mmrec_<dataset>.json`` divided
  by the time the counted flops take at the matmul peak -- the most an implementation doing
  this arithmetic could beat that anchor by on this machine (a bound, not a forecast: elementwise
  work, gathers and scatters run far below the matmul rate). ``now x MMRec`` is the anchor over
  the measured s/epoch (anchors are from another day: use ``../shared/peer/`` for ratios).

Compare figures taken in the same minutes only: this VM's speed drifts by 10-60% between runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ANCHORS = ROOT / ".." / "shared" / "anchors"  # mmrec_<dataset>.json
MMREC_NAMES = {"bprmf": "BPR", "lightgcn": "LightGCN", "vbpr": "VBPR", "freedom": "FREEDOM", "lattice": "LATTICE",
               "mmgcn": "MMGCN", "bm3": "BM3", "lgmrec": "LGMRec"}
DEFAULT_CONFIGS = [str(ROOT / "experiments" / "configs" / "lfm2k" / f"{name}.yaml")
                   for name in ("bpr", "lightgcn", "vbpr", "mmgcn", "lattice", "freedom", "bm3", "lgmrec")]


def matmul_peak(n: int = 2048, rounds: int = 5, repeats: int = 10) -> float:
    """GFLOP/s of a float32 (n, n) @ (n, n) product under ``jit``: the best of ``rounds`` medians."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    product = jax.jit(jnp.dot)
    product(a, b).block_until_ready()
    medians = []
    for _ in range(rounds):
        times = []
        for _ in range(repeats):
            tick = time.perf_counter()
            product(a, b).block_until_ready()
            times.append(time.perf_counter() - tick)
        medians.append(statistics.median(times))
    return 2 * n ** 3 / min(medians) / 1e9


def count_flops(compiled) -> tuple[float, int]:
    """``(flops, conditionals)`` of a compiled XLA program: its cost analysis's flop count (a
    ``while`` body counted once, a ``conditional`` as its costliest branch) and how many
    conditionals its HLO has."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", 0.0)), len(re.findall(r"\bconditional\(", compiled.as_text()))


_DEFINITION = re.compile(r"^\s*(?:ROOT\s+)?(%[\w.\-]+)\s*=\s*\w+\[([\d,]*)\]")


def count_dot_flops(hlo_text: str) -> float:
    """The flops of the dot products in a compiled program's HLO text: ``2 prod(output dims)
    prod(contracted dims)`` per ``dot`` instruction wherever it is (fused or not), each counted
    once as XLA's cost analysis counts a ``while`` body; every branch of a ``conditional`` counts."""
    shapes = {}
    for line in hlo_text.splitlines():
        found = _DEFINITION.match(line)
        if found:
            shapes[found.group(1)] = [int(size) for size in found.group(2).split(",") if size]
    flops = 0
    for line in hlo_text.splitlines():
        if " dot(" not in line:
            continue
        output = shapes[_DEFINITION.match(line).group(1)]
        lhs = shapes[re.search(r" dot\((%[\w.\-]+)", line).group(1)]
        contracted = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", line).group(1)
        flops += 2 * math.prod(output) * math.prod(lhs[int(i)] for i in contracted.split(",") if i)
    return float(flops)


def measure_one(config_path: str, data: str, epochs: int, count_only: bool, overrides: list[str] = ()) -> dict:
    """The flop count of one step and (unless ``count_only``) the epoch's wall seconds."""
    import jax

    from _epoch_program import epoch_program  # benchmarks/, beside this script

    program = epoch_program(config_path, data, ["grid=null", *overrides])
    config, exp, runner = program.config, program.experiment, program.runner
    state, ctx, batches = program.state, program.ctx, program.batches
    compiled = program.compiled()
    flops, conditionals = count_flops(compiled)
    figures = {"model": config.model.name, "dataset": exp.dataset.name, "steps_per_epoch": exp.steps_per_epoch,
               "flops_per_step": flops, "dot_flops_per_step": count_dot_flops(compiled.as_text()),
               "conditionals": conditionals}
    if count_only:
        return figures
    state, _ = runner.run(state, ctx, batches)
    jax.block_until_ready(state)
    seconds = []
    for _ in range(epochs):
        tick = time.perf_counter()
        state, _ = runner.run(state, ctx, batches)
        jax.block_until_ready(state)
        seconds.append(time.perf_counter() - tick)
    figures["seconds_per_epoch"] = statistics.median(seconds)
    return figures


def _child(config_path: str, args, count_only: bool) -> dict | None:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "figures.json"
        env = dict(os.environ, **({"JAXREC_NATIVE_KERNELS": "0"} if count_only else {}))
        command = [sys.executable, __file__, "--config", config_path, "--data", args.data, "--epochs",
                   str(args.epochs), "--child-json", str(out)] + (["--count-only"] if count_only else [])
        command += [f"--set={override}" for override in args.set]
        finished = subprocess.run(command, env=env)
        if finished.returncode != 0 or not out.exists():
            print(f"{config_path}: failed (exit {finished.returncode}); left out", file=sys.stderr)
            return None
        return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", nargs="+", default=DEFAULT_CONFIGS)
    parser.add_argument("--data", default=str(ROOT / ".." / "shared" / "data" / "lfm2k"))
    parser.add_argument("--epochs", type=int, default=10, help="timed epochs per model")
    parser.add_argument("--json", default=None, help="write the figures to this file")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for every model (as jaxrec train --set)")
    parser.add_argument("--child-json", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--count-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_json:
        figures = measure_one(args.config[0], args.data, args.epochs, args.count_only, args.set)
        Path(args.child_json).write_text(json.dumps(figures))
        return

    peak = matmul_peak()
    print(f"matmul peak (float32 2048^3, XLA defaults, {os.cpu_count()} CPUs): {peak:.1f} GFLOP/s; "
          f"load average {os.getloadavg()[0]:.1f}")
    header = (f"{'model':12s} {'steps':>5s} {'GFLOP/epoch':>11s} {'s/epoch':>8s} {'GFLOP/s':>8s} {'% peak':>7s} "
              f"{'MMRec s':>8s} {'now x':>6s} {'ceiling x':>9s}")
    print(header)
    rows = {}
    for config_path in args.config:
        timed = _child(config_path, args, count_only=False)
        counted = _child(config_path, args, count_only=True)
        if timed is None or counted is None:
            continue
        gflop = counted["flops_per_step"] * counted["steps_per_epoch"] / 1e9
        seconds = timed["seconds_per_epoch"]
        anchors = ANCHORS / f"mmrec_{timed['dataset']}.json"
        name = MMREC_NAMES.get(timed["model"])
        anchor = json.loads(anchors.read_text()).get(name) if anchors.exists() and name else None
        mmrec = anchor["train_s_per_epoch"] if anchor else None
        bound = counted["conditionals"] > 0
        row = {"model": timed["model"], "flops_upper_bound": bound, "steps_per_epoch": timed["steps_per_epoch"],
               "gflop_per_epoch": gflop, "dot_gflop_per_step": counted["dot_flops_per_step"] / 1e9,
               "gflop_per_epoch_native_path": timed["flops_per_step"] * timed["steps_per_epoch"] / 1e9,
               "seconds_per_epoch": seconds, "gflops": gflop / seconds, "share_of_peak": gflop / seconds / peak,
               "mmrec_seconds_per_epoch": mmrec,
               "now_vs_mmrec": mmrec / seconds if mmrec else None,
               "ceiling_vs_mmrec": mmrec / (gflop / peak) if mmrec else None}
        rows[Path(config_path).stem] = row
        mark = "<=" if bound else "  "
        print(f"{Path(config_path).stem:12s} {row['steps_per_epoch']:5d} {mark}{gflop:9.2f} {seconds:8.4f} "
              f"{row['gflops']:8.1f} {100 * row['share_of_peak']:6.1f}% "
              + (f"{mmrec:8.4f} {row['now_vs_mmrec']:5.1f}x {row['ceiling_vs_mmrec']:8.1f}x" if mmrec else
                 f"{'-':>8s} {'-':>6s} {'-':>9s}"), flush=True)
    if args.json:
        from jaxrec._atomic import write_json_atomic

        write_json_atomic(args.json, {"matmul_peak_gflops": peak, "cpus": os.cpu_count(),
                                      "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                      "models": rows}, sort_keys=True)


if __name__ == "__main__":
    main()
