"""Wall time of a hyper-parameter grid against one setting: batched (one program) vs one by one.

Usage (from the project root):
    python benchmarks/bench_search.py [--config experiments/configs/lfm2k/bpr.yaml]
        [--grid 'loss_weights.reg=[2.0, 1.0, 0.1, 0.01, 0.001, 0.0001, 1e-05]'] [--epochs 60] [--sequential]

Runs, each in a fresh subprocess (compilation included, as a user sees it) and in a scratch
folder: the config at its own setting (``jaxrec train``), the grid as ONE batched program
(``jaxrec search``), and with ``--sequential`` the grid's trials one after another
(``jaxrec search --sequential``). ``--epochs`` caps ``train.epochs`` for every run (early
stopping still applies), so the ratio compares like with like. ``--breakdown`` runs each
process under ``benchmarks/_phase_timer.py`` and prints both runs' CPU and wall seconds per
phase (start-up, data, compilation, train epochs, validation, test, checkpoints, curves) with
the epochs each trial ran. ``--repeat N`` runs the pair
(one setting, batched grid) N times back to back, alternating, and reports every ratio and
their median. Prints wall seconds, the CPU seconds of each subprocess (user + system, which
other processes on a loaded machine inflate far less than wall time) and the ratios of both;
the target is a 7-setting grid in at most 2x the wall time of one setting.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_GRID = "loss_weights.reg=[2.0, 1.0, 0.1, 0.01, 0.001, 0.0001, 1e-05]"


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run(args: list[str], label: str, phases: Path | None = None) -> tuple[float, float]:
    """``(wall seconds, CPU seconds)`` of ``jaxrec ARGS`` in a fresh subprocess (under the phase
    timer, which writes ``phases``, when given)."""
    cpu = _children_cpu()
    tick = time.perf_counter()
    command = ([str(ROOT / "benchmarks" / "_phase_timer.py"), str(phases)] if phases is not None
               else ["-m", "jaxrec.cli.main"])
    done = subprocess.run([sys.executable, *command, *args], cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - tick
    if done.returncode != 0:
        raise SystemExit(f"{label} failed:\n{done.stderr[-3000:]}")
    return seconds, _children_cpu() - cpu


def _print_breakdown(phases: tuple[Path, Path], one_dir: Path, batched_dir: Path) -> None:
    """Both runs' phases side by side (CPU-s, wall s, calls; per-call CPU after the first) and the
    epochs each ran."""
    one, batched = (json.loads(p.read_text()) for p in phases)
    names = sorted(set(one["phases"]) | set(batched["phases"]),
                   key=lambda n: -batched["phases"].get(n, {}).get("cpu_s", 0.0))
    print(f"{'phase':12s} | {'one setting: CPU-s  wall  calls  per call':44s} | batched grid: same")
    for name in names:
        cells = []
        for run in (one, batched):
            p = run["phases"].get(name)
            cells.append("-" if p is None else (
                f"{p['cpu_s']:7.2f} {p['wall_s']:7.2f} {p['calls']:5d}"
                + (f"  first {p['first_cpu_s']:.2f}, then {1000 * p['rest_median_cpu_s']:.1f} ms"
                   if p.get("rest_median_cpu_s") is not None else "")))
        print(f"{name:12s} | {cells[0]:44s} | {cells[1]}")
    print(f"{'total':12s} | {one['total']['cpu_s']:7.2f} {one['total']['wall_s']:7.2f}{'':30s} | "
          f"{batched['total']['cpu_s']:7.2f} {batched['total']['wall_s']:7.2f}")
    epochs = [json.loads((one_dir / "metrics.json").read_text())["epochs_run"]]
    summary = json.loads((batched_dir / "search.json").read_text())
    trials = [json.loads((Path(t["workdir"]) / "metrics.json").read_text())["epochs_run"] for t in summary["trials"]]
    print(f"epochs run: one setting {epochs[0]}; batched trials {trials} (sum {sum(trials)})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "experiments" / "configs" / "lfm2k" / "bpr.yaml"))
    parser.add_argument("--grid", default=DEFAULT_GRID, help="KEY=[values] of the grid (a YAML list)")
    parser.add_argument("--epochs", type=int, default=60, help="cap on train.epochs for every run")
    parser.add_argument("--sequential", action="store_true", help="also time the trials one after another")
    parser.add_argument("--repeat", type=int, default=1, help="times to run the pair back to back")
    parser.add_argument("--breakdown", action="store_true", help="time each run's phases (benchmarks/_phase_timer.py)")
    args = parser.parse_args()
    key, values = args.grid.split("=", 1)
    common = ["--quiet", "--set", f"train.epochs={args.epochs}"]
    load_before = os.getloadavg()[0]
    grid = ["--set", f"grid={{{key}: {values}}}"]
    pairs = []
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        for repeat in range(args.repeat):
            phases = (scratch / f"one{repeat}.phases.json", scratch / f"batched{repeat}.phases.json")
            if not args.breakdown:
                phases = (None, None)
            one = _run(["train", args.config, "--workdir", str(scratch / f"one{repeat}"), *common], "one setting",
                       phases[0])
            batched = _run(["search", args.config, "--workdir", str(scratch / f"batched{repeat}"), *common, *grid],
                           "batched grid", phases[1])
            if args.breakdown:
                _print_breakdown(phases, scratch / f"one{repeat}", scratch / f"batched{repeat}")
            pairs.append((one, batched))
            print(f"pair {repeat + 1}: one setting {one[0]:.2f} s wall / {one[1]:.2f} CPU-s, batched grid "
                  f"{batched[0]:.2f} / {batched[1]:.2f}: {batched[0] / one[0]:.2f}x wall, "
                  f"{batched[1] / one[1]:.2f}x CPU (load {os.getloadavg()[0]:.1f})", flush=True)
        summary = json.loads((scratch / "batched0" / "search.json").read_text())
        n_trials = summary["n_trials"]
        wall_ratios = [b[0] / o[0] for o, b in pairs]
        cpu_ratios = [b[1] / o[1] for o, b in pairs]
        one, batched = pairs[0]
        figures = {"config": os.path.relpath(args.config, ROOT), "grid": args.grid, "epochs_cap": args.epochs,
                   "n_trials": n_trials,
                   "one_setting_s": [round(o[0], 2) for o, _ in pairs],
                   "one_setting_cpu_s": [round(o[1], 2) for o, _ in pairs],
                   "batched_grid_s": [round(b[0], 2) for _, b in pairs],
                   "batched_grid_cpu_s": [round(b[1], 2) for _, b in pairs],
                   "batched_over_one": [round(r, 2) for r in wall_ratios],
                   "batched_over_one_cpu": [round(r, 2) for r in cpu_ratios],
                   "median_batched_over_one": round(statistics.median(wall_ratios), 2),
                   "median_batched_over_one_cpu": round(statistics.median(cpu_ratios), 2),
                   "batched_winner": summary["best"]["setting"],
                   "epochs_run": [json.loads((Path(t["workdir"]) / "metrics.json").read_text())["epochs_run"]
                                  for t in summary["trials"]]}
        if args.sequential:
            sequential = _run(["search", args.config, "--workdir", str(scratch / "sequential"), "--sequential",
                               *common, *grid], "sequential grid")
            seq_summary = json.loads((scratch / "sequential" / "search.json").read_text())
            figures.update(sequential_grid_s=round(sequential[0], 2), sequential_grid_cpu_s=round(sequential[1], 2),
                           sequential_over_one=round(sequential[0] / one[0], 2),
                           sequential_over_one_cpu=round(sequential[1] / one[1], 2),
                           sequential_winner=seq_summary["best"]["setting"],
                           max_valid_difference=max(
                               abs(a["valid"][summary["valid_metric"]] - b["valid"][summary["valid_metric"]])
                               for a, b in zip(summary["trials"], seq_summary["trials"])))
    figures["load_average"] = [round(load_before, 1), round(os.getloadavg()[0], 1)]
    print(json.dumps(figures, indent=1))
    print(f"\n{n_trials}-setting grid batched: {figures['median_batched_over_one']:.2f}x the wall time of one setting "
          f"({figures['median_batched_over_one_cpu']:.2f}x its CPU time), median of {args.repeat}"
          + (f"; one by one: {figures['sequential_over_one']:.2f}x" if args.sequential else ""))


if __name__ == "__main__":
    main()
