"""The arithmetic of a whole results table: every training epoch its runs take, times XLA's flop
count of that run's compiled epoch, against the machine's measured matmul rate -- the least time
any program doing the same arithmetic needs on this machine (issue 14's target 3).

Usage (from the project root):
    python benchmarks/bench_table_arithmetic.py lfm2k [--records DIR] [--grids FILE] [--json FILE]

What it counts:

- **Runs**: exactly those ``experiments/reproduce.py DATASET`` trains, found through its plan
  (``experiments/grids/<dataset>.yaml``) in the run records it packs (``--records``, default
  ``experiments/records/<dataset>``): each search's trials, each row's final run unless it is its
  winning trial reused (its history equals a trial's: reproduce.py then trains nothing), and the
  missing-modality runs. A run's **epochs** are its history's length (the epochs it trained, up
  to early stopping).
- **Training FLOP per epoch** of each run's config (``grid`` off), in a subprocess with
  ``JAXREC_NATIVE_KERNELS=0`` so that the graph propagation is XLA's gather + scatter-add, whose
  adds XLA counts (a custom call counts nothing): ``compiled.cost_analysis()["flops"]`` of the
  scanned epoch program (``benchmarks/_epoch_program.py``) times its steps -- XLA counts a
  ``while`` body once (``tests/test_bench_roofline.py``); the few loop-invariant operations XLA
  hoists out of the loop (edge padding) are multiplied by the steps too, ~0.1% of BM3's count.
  Configs that differ only in what changes no shape (seed, learning rate, epochs, patience, a
  loss weight's non-zero value) are counted once. A program with a ``conditional`` (LATTICE's
  graph refresh at an epoch's first step) is counted as its costliest branch on every step, an
  upper bound: that training is left out of the total and listed apart, so the total stays a
  lower bound.
- **Evaluation FLOP**: per split ranked (valid after every evaluated epoch, as the history
  records it; test once at the end) the eval-mode forward (``make_encoder``'s program, counted
  the same way, once per evaluation) and the ranking's inner products, ``2 n_items d`` per user
  of the split. Top-k, masks and metrics are not counted.
- Not counted either: model epoch hooks outside the program (LATTICE's and FREEDOM's graphs),
  negative sampling, the cold-start baselines, start-up and compilation.

The **matmul rate** is ``bench_roofline.matmul_peak`` (float32 2048^3 products, XLA's defaults,
every core): about the most any operation reaches here, so ``FLOP / rate`` bounds each row's
time from below. Compare with the table's wall time from ``reproduce.py``'s
``reproduce.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

# Config keys that change no shape of the training program (what the flop count depends on).
SHAPELESS_TRAIN_KEYS = ("seed", "learning_rate", "epochs", "patience", "valid_metric", "eval_every", "parallel",
                        "mesh", "checkpoints_to_keep", "checkpoint_every", "steps_per_call")


def shape_key(config: dict) -> str:
    """The part of a recorded config the epoch program's flop count depends on, as a JSON key:
    the config without seed, learning rate, epoch counts, and with every non-zero loss weight 1
    (a weight of 0 leaves its term out of the step)."""
    config = copy.deepcopy(config)
    config.pop("grid", None)
    config.pop("search", None)
    config.pop("eval", None)
    for key in SHAPELESS_TRAIN_KEYS:
        config.get("train", {}).pop(key, None)
    weights = config.get("loss_weights") or {}
    config["loss_weights"] = {name: (0.0 if float(value) == 0.0 else 1.0) for name, value in weights.items()}
    return json.dumps(config, sort_keys=True)


class RecordsMissing(SystemExit):
    """A record the plan names is not there (the table was not reproduced into ``--records``)."""


def _read_runs(path: Path) -> list[dict]:
    """The run lines of a record file (``experiments/records.py``'s reader), in file order."""
    import records  # experiments/records.py

    try:
        return list(records.read(path).runs.values())
    except FileNotFoundError:
        raise RecordsMissing(f"{path}: no such run record; run experiments/reproduce.py for this dataset first "
                             "(or point --records at the records it wrote)") from None


def _losses(run: dict) -> list:
    return [entry.get("loss") for entry in run["history"]]


def table_runs(dataset: str, records_dir: Path, grids: Path | None = None) -> list[dict]:
    """Every run ``reproduce.py dataset`` trains: ``{"row", "name", "config", "epochs",
    "evaluations"}`` (how many times each split was ranked: the history's, and test once more at the
    end), from the records it packs. A final run equal to one of its row's trials
    (the same history) is that trial reused, and is not listed again."""
    import reproduce  # experiments/reproduce.py

    plan = reproduce.load_plan(dataset, grids)
    runs = []

    def add(row: str, run: dict) -> None:
        runs.append({"row": row, "name": run["name"], "config": run["config"], "epochs": len(run["history"]),
                     "evaluations": {split: sum(split in entry for entry in run["history"]) + (split == "test")
                                     for split in ("valid", "test")}})

    for row in plan.warm + plan.coldstart:
        folder = records_dir / row.group if row.group else records_dir
        trials = []
        for search in row.searches:
            for run in _read_runs(folder / f"{search.name}.jsonl"):
                trials.append(run)
                add(row.label, run)
        final_path = folder / f"{row.name}.jsonl"
        if not final_path.exists() and trials:
            continue  # no record of its own: the final run is the winning trial (make_results.py reads it there)
        final = _read_runs(final_path)[0]
        if not any(_losses(final) == _losses(trial) for trial in trials):
            add(row.label, final)
    if plan.missing_modality is not None and not plan.missing_modality.get("skip_training"):
        for run in _read_runs(records_dir / "missing_modality.jsonl"):
            add("missing_modality", run)
    return runs


def count_configs(configs: dict[str, dict]) -> dict[str, dict]:
    """For each recorded config: its epoch program's ``flops_per_step``, ``dot_flops_per_step``,
    ``steps_per_epoch`` and ``conditionals``; its eval-mode forward's ``encode_flops`` and
    ``encode_dot_flops``; the ranking's ``score_flops_per_user`` (``2 n_items d``) and the ranked
    ``users`` of each split. Compiled in this process (``JAXREC_NATIVE_KERNELS=0`` must be set
    before jaxrec is imported: ``_count_in_child`` does)."""
    import jax
    import numpy as np
    import yaml

    from _epoch_program import epoch_program  # benchmarks/
    from jaxrec.data import DataWarning
    from jaxrec.train._setup import make_encoder
    from bench_roofline import count_dot_flops, count_flops

    warnings.filterwarnings("ignore", category=DataWarning)  # the data's notes, once per config: no count needs them
    counts = {}
    with tempfile.TemporaryDirectory() as tmp:
        for index, (key, config) in enumerate(configs.items()):
            path = Path(tmp) / f"config_{index}.yaml"
            config = {k: v for k, v in config.items() if k not in ("grid", "search")}
            path.write_text(yaml.safe_dump(config), encoding="utf-8")
            data = config["data"].get("path")  # relative to the project, where reproduce.py runs
            data = None if data is None else str(Path(data) if Path(data).is_absolute() else (ROOT / data).resolve())
            tick = time.perf_counter()
            program = epoch_program(str(path), data, ["grid=null"])
            compiled = program.compiled()
            flops, conditionals = count_flops(compiled)
            exp = program.experiment
            encoder = make_encoder(exp.built.module)
            encode = encoder.lower(program.state.params, program.ctx).compile()
            encode_flops, _ = count_flops(encode)
            user_emb, _ = jax.eval_shape(encoder, program.state.params, program.ctx)
            counts[key] = {"flops_per_step": flops, "steps_per_epoch": exp.steps_per_epoch,
                           "dot_flops_per_step": count_dot_flops(compiled.as_text()),
                           "conditionals": conditionals, "encode_flops": encode_flops,
                           "encode_dot_flops": count_dot_flops(encode.as_text()),
                           "score_flops_per_user": 2.0 * exp.dataset.n_items * user_emb.shape[-1],
                           "users": {split: int(np.unique(exp.dataset.split_pairs(split)[:, 0]).size)
                                     for split in ("valid", "test")}}
            print(f"  counted {config['model']['name']} ({index + 1}/{len(configs)}): "
                  f"{flops * program.experiment.steps_per_epoch / 1e9:.2f} GFLOP/epoch"
                  f"{' (conditional)' if conditionals else ''} in {time.perf_counter() - tick:.1f} s", flush=True)
            del program
    return counts


def _count_in_child(configs: dict[str, dict]) -> dict[str, dict]:
    with tempfile.TemporaryDirectory() as tmp:
        request, answer = Path(tmp) / "configs.json", Path(tmp) / "counts.json"
        request.write_text(json.dumps(configs), encoding="utf-8")
        env = dict(os.environ, JAXREC_NATIVE_KERNELS="0")
        finished = subprocess.run([sys.executable, __file__, "--child", str(request), str(answer)], env=env, cwd=ROOT)
        if finished.returncode != 0:
            raise SystemExit(f"counting failed (exit {finished.returncode})")
        return json.loads(answer.read_text(encoding="utf-8"))


def run_flops(run: dict, count: dict) -> dict[str, float]:
    """The flops of one run: ``train`` (its epochs times the epoch program's count) and ``eval``
    (one encoding, the eval-mode forward, per epoch evaluated and one for the final test, and the
    ranking's inner products, ``2 n_items d`` per ranked user of every split ranked), and of
    those the dot products' (``train_dot``, ``eval_dot``: the ranking is dot products)."""
    epochs = count["steps_per_epoch"] * run["epochs"]
    evaluations = run["evaluations"]
    encodings = max(evaluations["valid"], evaluations["test"] - 1) + 1
    scores = sum(times * count["users"][split] * count["score_flops_per_user"] for split, times in evaluations.items())
    return {"train": count["flops_per_step"] * epochs, "train_dot": count["dot_flops_per_step"] * epochs,
            "eval": encodings * count["encode_flops"] + scores, "eval_dot": encodings * count["encode_dot_flops"] + scores}


def summarize(runs: list[dict], counts: dict[str, dict], rate_gflops: float) -> dict:
    """Per row: runs, epochs, training and evaluation TFLOP and their dot products' (the training
    of a program with a conditional apart), and the seconds that arithmetic takes at
    ``rate_gflops``; and the totals."""
    rows: dict[str, dict] = {}
    for run in runs:
        count = counts[shape_key(run["config"])]
        flops = run_flops(run, count)
        row = rows.setdefault(run["row"], {"runs": 0, "epochs": 0, "train_tflop": 0.0, "eval_tflop": 0.0,
                                           "dot_tflop": 0.0, "train_tflop_upper_bound_left_out": 0.0})
        row["runs"] += 1
        row["epochs"] += run["epochs"]
        if count["conditionals"]:
            row["train_tflop_upper_bound_left_out"] += flops["train"] / 1e12
        else:
            row["train_tflop"] += flops["train"] / 1e12
            row["dot_tflop"] += flops["train_dot"] / 1e12
        row["eval_tflop"] += flops["eval"] / 1e12
        row["dot_tflop"] += flops["eval_dot"] / 1e12
    for row in rows.values():
        row["seconds_at_rate"] = (row["train_tflop"] + row["eval_tflop"]) * 1e3 / rate_gflops
    keys = ("runs", "epochs", "train_tflop", "eval_tflop", "dot_tflop", "train_tflop_upper_bound_left_out",
            "seconds_at_rate")
    return {"rows": rows, "total": {key: sum(row[key] for row in rows.values()) for key in keys}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", nargs="?", default="lfm2k")
    parser.add_argument("--records", default=None, help="the run records (default experiments/records/DATASET)")
    parser.add_argument("--grids", default=None, help="the grid file (default experiments/grids/DATASET.yaml)")
    parser.add_argument("--json", default=None, help="write the figures to this file")
    parser.add_argument("--child", nargs=2, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        counts = count_configs(json.loads(Path(args.child[0]).read_text(encoding="utf-8")))
        Path(args.child[1]).write_text(json.dumps(counts), encoding="utf-8")
        return

    records_dir = Path(args.records) if args.records else ROOT / "experiments" / "records" / args.dataset
    runs = table_runs(args.dataset, records_dir, Path(args.grids) if args.grids else None)
    configs = {}
    for run in runs:
        configs.setdefault(shape_key(run["config"]), run["config"])
    print(f"{args.dataset}: {len(runs)} runs, {sum(r['epochs'] for r in runs)} trial-epochs, "
          f"{len(configs)} distinct programs to count", flush=True)
    from bench_roofline import matmul_peak

    rate = matmul_peak()  # before the counting, on an idle machine
    counts = _count_in_child(configs)
    summary = summarize(runs, counts, rate)
    print(f"\nmatmul rate (float32 2048^3, XLA defaults, {os.cpu_count()} CPUs): {rate:.1f} GFLOP/s; "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'row':28s} {'runs':>4s} {'epochs':>6s} {'train TFLOP':>11s} {'eval TFLOP':>10s} {'dots':>5s} "
          f"{'s at rate':>9s}")
    for name, row in sorted(summary["rows"].items(), key=lambda item: -item[1]["seconds_at_rate"]):
        apart = (f"  (+{row['train_tflop_upper_bound_left_out']:.2f} training TFLOP with a conditional, left out)"
                 if row["train_tflop_upper_bound_left_out"] else "")
        share = row["dot_tflop"] / max(row["train_tflop"] + row["eval_tflop"], 1e-12)
        print(f"{name:28s} {row['runs']:4d} {row['epochs']:6d} {row['train_tflop']:11.2f} {row['eval_tflop']:10.2f} "
              f"{100 * share:4.0f}% {row['seconds_at_rate']:9.1f}{apart}")
    total = summary["total"]
    share = total["dot_tflop"] / (total["train_tflop"] + total["eval_tflop"])
    print(f"{'total':28s} {total['runs']:4d} {total['epochs']:6d} {total['train_tflop']:11.2f} "
          f"{total['eval_tflop']:10.2f} {100 * share:4.0f}% {total['seconds_at_rate']:9.1f}")
    print(f"\nthe table's training and evaluation arithmetic takes at least {total['seconds_at_rate'] / 60:.1f} min at "
          f"the matmul rate ({100 * share:.0f}% of it dot products; {total['train_tflop_upper_bound_left_out']:.2f} "
          "training TFLOP of programs with a conditional not included)")
    if args.json:
        from jaxrec._atomic import write_json_atomic

        write_json_atomic(args.json, {"dataset": args.dataset, "matmul_rate_gflops": rate, "cpus": os.cpu_count(),
                                      "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                      **summary}, sort_keys=True)


if __name__ == "__main__":
    main()
