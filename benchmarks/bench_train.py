"""Seconds per training epoch and per evaluation (lfm2k, tiktok, ...), against MMRec's measured anchors.

Usage (from the project root):
    python benchmarks/bench_train.py [--epochs 20] [--parallel none] [--sampler device]
        [--data ../shared/data/lfm2k] [--config experiments/configs/lfm2k/bpr.yaml ...]
        [--json experiments/results/lfm2k_speed.json]
    python benchmarks/bench_train.py --data ../shared/data/tiktok --config experiments/configs/tiktok/*.yaml \
        --json experiments/results/tiktok_speed.json

Several ``--config`` files are timed one after the other (each in a fresh subprocess, so one
model's compiled programs and memory do not slow the next); ``--json`` writes every model's
figures (wall seconds, the process's CPU seconds over the same epochs, the load average) to
a file that ``experiments/make_results.py`` prefers over the runs' own timings (those were
taken while other jobs shared the two cores).

Builds the model from the config exactly as ``jaxrec train`` does, compiles, then times
``--epochs`` epochs split into host work (numpy negative sampling and batch layout, and the
model's epoch hook if it has one: FREEDOM's pruning, LATTICE's ``learned_graph: epoch``
refresh) and device steps (one scanned call per epoch; with ``--sampler device`` the batches
are built inside that call, so the host part is the epoch hook alone), and ``--epochs`` evaluations of the valid
and test splits (full ranking over all items), each split encoded on its own and both from one encoding (as
``eval.test_every_epoch`` evaluates them every epoch). Prints medians and the ratio to MMRec's
anchors in ``../shared/anchors/mmrec_<dataset>.json`` (same data, 2 CPU cores; the dataset's
name is the data folder's). Compile time
is reported separately and is not in the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from jaxrec._atomic import write_json_atomic
from jaxrec.train import StepRunner, init_state, load_config
from jaxrec.train import (epoch_context, evaluate_params, evaluate_params_on_splits, make_encoder, make_runner,
                          prepare_eval_splits, prepare_experiment)

ROOT = Path(__file__).resolve().parents[1]
ANCHORS = ROOT / ".." / "shared" / "anchors"  # mmrec_<dataset>.json
MMREC_NAMES = {"bprmf": "BPR", "bpr": "BPR", "lightgcn": "LightGCN", "vbpr": "VBPR", "freedom": "FREEDOM",
               "lattice": "LATTICE", "mmgcn": "MMGCN", "bm3": "BM3", "lgmrec": "LGMRec"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", nargs="+", default=[str(ROOT / "experiments" / "configs" / "lfm2k" / "bpr.yaml")])
    parser.add_argument("--json", default=None, help="write (merge) the figures per config name into this file")
    parser.add_argument("--data", default=str(ROOT / ".." / "shared" / "data" / "lfm2k"))
    parser.add_argument("--epochs", type=int, default=20, help="timed epochs (and evaluations)")
    parser.add_argument("--parallel", default="none", choices=("none", "pmap", "sharded"))
    parser.add_argument("--steps-per-call", type=int, default=0, help="batches per device call (0: whole epoch)")
    parser.add_argument("--sampler", default=None, choices=("shuffle", "keyed", "device"),
                        help="train.sampler (default: the config's); device: batches built inside the epoch program")
    parser.add_argument("--child-json", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if len(args.config) > 1 or args.json:
        _time_each(args)
        return
    figures = time_one(args, args.config[0])
    if args.child_json:
        Path(args.child_json).write_text(json.dumps(figures))


def _time_each(args) -> None:
    results = json.loads(Path(args.json).read_text()) if args.json and Path(args.json).exists() else {}
    for config_path in args.config:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "figures.json"
            command = [sys.executable, __file__, "--config", config_path, "--data", args.data, "--epochs",
                       str(args.epochs), "--parallel", args.parallel, "--steps-per-call", str(args.steps_per_call),
                       "--child-json", str(out)] + (["--sampler", args.sampler] if args.sampler else [])
            finished = subprocess.run(command)
            if finished.returncode != 0 or not out.exists():
                print(f"{config_path}: failed (exit {finished.returncode}); left out", file=sys.stderr)
                continue
            results[Path(config_path).stem] = json.loads(out.read_text())
        if args.json:  # after every model, atomically: an interrupted sweep keeps what it measured
            write_json_atomic(args.json, results, sort_keys=True)


def time_one(args, config_path: str) -> dict:
    config = load_config(config_path, [f"data.path={args.data}", f"train.parallel={args.parallel}",
                                       f"train.steps_per_call={args.steps_per_call}"]
                         + ([f"train.sampler={args.sampler}"] if args.sampler else []))
    tick = time.perf_counter()
    exp = prepare_experiment(config)
    setup_seconds = time.perf_counter() - tick
    # The trainer's runner (make_runner), except in sharded mode, which is timed as the one-process
    # StepRunner program (the trainer's mesh runner pads tables and has no device sampler).
    runner = (make_runner(exp) if config.train.parallel != "sharded" else
              StepRunner(exp.module, exp.tx, exp.loss_weights, parallel=config.train.parallel,
                         batch_size=config.train.batch_size, steps_per_epoch=exp.steps_per_epoch))
    state = runner.put_state(init_state(exp.module, exp.built.ctx, exp.sampler.example_batch(), exp.tx,
                                        config.train.seed))
    ctx = runner.put_ctx(exp.built.ctx)
    eval_ctx = jax.device_put(exp.built.ctx, runner.devices[0])
    splits = prepare_eval_splits(exp)
    encoder = make_encoder(exp.module)
    per_call = config.train.steps_per_call or exp.steps_per_epoch
    on_device = exp.sampler.device_arrays is not None
    arrays = runner.put_sampler(exp.sampler.device_arrays) if on_device else None

    def epoch(index: int, state):
        nonlocal ctx, eval_ctx
        tick = time.perf_counter()
        batches = None if on_device else exp.sampler.batches(index)
        if exp.built.epoch_update is not None:  # the model's epoch hook, once per epoch as the trainer runs it
            built_ctx = epoch_context(exp.built, runner.get_state(state).params, config.train.seed, index)
            ctx, eval_ctx = runner.put_ctx(built_ctx), jax.device_put(built_ctx, runner.devices[0])
        sampled = time.perf_counter()
        for offset in range(0, exp.steps_per_epoch, per_call):
            if on_device:  # the batches are built inside the call
                n_steps = min(per_call, exp.steps_per_epoch - offset)
                state, metrics = runner.run_sampled(state, ctx, arrays, index, offset, n_steps)
            else:
                chunk = {k: v[offset:offset + per_call] for k, v in batches.items()}
                state, metrics = runner.run(state, ctx, runner.put_batches(chunk))
            np.asarray(metrics.loss)  # the loop reads the losses every call, so this is timed too
        return state, sampled - tick, time.perf_counter() - sampled

    def evaluate(split: str):
        tick = time.perf_counter()
        evaluate_params(exp, encoder, runner.get_state(state).params, eval_ctx, splits[split])
        return time.perf_counter() - tick

    def evaluate_both():  # valid and test from one encoding, as eval.test_every_epoch evaluates each epoch
        tick = time.perf_counter()
        evaluate_params_on_splits(exp, encoder, runner.get_state(state).params, eval_ctx,
                                  {"valid": splits["valid"], "test": splits["test"]})
        return time.perf_counter() - tick

    tick = time.perf_counter()
    state, _, _ = epoch(0, state)
    compile_train = time.perf_counter() - tick
    tick = time.perf_counter()
    evaluate("valid"), evaluate("test")
    compile_eval = time.perf_counter() - tick
    evaluate_both()

    sampling, device, valid, test, both = [], [], [], [], []
    cpu_start, load_start = time.process_time(), os.getloadavg()[0]
    for index in range(1, args.epochs + 1):
        state, host_seconds, device_seconds = epoch(index, state)
        sampling.append(host_seconds)
        device.append(device_seconds)
        valid.append(evaluate("valid"))
        test.append(evaluate("test"))
        both.append(evaluate_both())

    per_epoch = statistics.median(s + d for s, d in zip(sampling, device))
    eval_pair = statistics.median(v + t for v, t in zip(valid, test))
    eval_shared = statistics.median(both)
    cpu_per_epoch = (time.process_time() - cpu_start) / args.epochs  # train + evaluations, both threads
    load = max(load_start, os.getloadavg()[0])
    print(f"{config.model.name} on {exp.dataset.name}: {exp.dataset.n_users} users, {exp.dataset.n_items} items, "
          f"{exp.steps_per_epoch} batches of {config.train.batch_size}; sampler={config.train.sampler}; "
          f"parallel={config.train.parallel} on "
          f"{runner.n_devices} {runner.devices[0].platform} device(s); {args.epochs} timed epochs; "
          f"{os.cpu_count()} CPUs, load average {load:.1f} (other processes slow every figure)")
    print(f"  setup (load data, build): {setup_seconds:.2f} s; first epoch incl. compile {compile_train:.2f} s; "
          f"first valid+test incl. compile {compile_eval:.2f} s")
    print(f"  train s/epoch (median): {per_epoch:.4f}  = sampling (+ epoch hook) {statistics.median(sampling):.4f} + device "
          f"{statistics.median(device):.4f}")
    print(f"  eval s (median): valid {statistics.median(valid):.4f}, test {statistics.median(test):.4f}, "
          f"valid+test {eval_pair:.4f} (each split encoded), {eval_shared:.4f} (one encoding for both)")
    anchor_name = MMREC_NAMES.get(config.model.name.lower())
    anchors = ANCHORS / f"mmrec_{exp.dataset.name}.json"
    anchor = json.loads(anchors.read_text()).get(anchor_name) if anchors.exists() and anchor_name else None
    if anchor:
        print(f"  MMRec {anchor_name}: {anchor['train_s_per_epoch']:.4f} s/epoch, {anchor['eval_s_valid_plus_test']:.4f} "
              f"s valid+test -> ours is {anchor['train_s_per_epoch'] / per_epoch:.1f}x faster per epoch, "
              f"{anchor['eval_s_valid_plus_test'] / eval_pair:.1f}x faster per evaluation "
              f"({anchor['eval_s_valid_plus_test'] / eval_shared:.1f}x with one encoding for both splits)")
    return {"model": config.model.name, "config": str(config_path), "epochs_timed": args.epochs,
            "sampler": config.train.sampler,
            "train_seconds_per_epoch": per_epoch, "eval_seconds_valid_plus_test": eval_pair,
            "eval_seconds_valid_plus_test_one_encoding": eval_shared,
            "cpu_seconds_per_epoch_incl_eval": cpu_per_epoch, "compile_seconds": compile_train + compile_eval,
            "load_average": load, "cpus": os.cpu_count(), "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


if __name__ == "__main__":
    main()
