"""``jaxrec train``, ``jaxrec search``, ``jaxrec evaluate`` and ``jaxrec runs compare``.

A config with a ``grid:`` or ``search:`` section is a search: ``jaxrec train`` runs it the
same way ``jaxrec search`` does (every trial in ``WORKDIR/trial_NNN``, winner by validation).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

from jaxrec.errors import ConfigError, JaxrecError, ResourceError

_SHOWN_METRICS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20", "precision@10", "precision@20", "map@10", "map@20")


def add_parser(subparsers) -> None:
    train = subparsers.add_parser(
        "train", help="train and evaluate a model from a YAML config",
        description="Train a model from CONFIG, early-stop on validation, report test metrics at the best "
                    "validation epoch. A config with a grid: or search: section runs a hyper-parameter search "
                    "(as 'jaxrec search').",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  jaxrec train experiments/configs/lfm2k/bpr.yaml --set train.epochs=50 "
               "--workdir runs/bpr\n\nmulti-process (one command per process; see docs/scaling.md):\n"
               "  jaxrec train CONFIG --set train.parallel=sharded --coordinator 10.0.0.1:1234 "
               "--num-processes 2 --process-id 0\n"
               "  jaxrec train CONFIG --set train.parallel=sharded --distributed auto   # SLURM, Open MPI, TPU pod")
    _add_run_arguments(train)
    _add_distributed_arguments(train)
    train.set_defaults(func=_train)

    search = subparsers.add_parser(
        "search", help="hyper-parameter search (grid or random), winner chosen by validation",
        description="Run every trial of CONFIG's grid: (product of lists) or search: {method: random, budget: N, "
                    "space: {...}} section in WORKDIR/trial_NNN; the winner is chosen by the validation metric "
                    "only. Writes search.md and search.json.")
    _add_run_arguments(search)
    search.set_defaults(func=_search)

    evaluate = subparsers.add_parser(
        "evaluate", help="recompute a run's metrics from its best checkpoint",
        description="Reload WORKDIR's best checkpoint and recompute the metrics of one split.")
    evaluate.add_argument("workdir", help="a run folder written by 'jaxrec train' (a search folder: its winner)")
    evaluate.add_argument("--split", choices=("valid", "test"), default="test", help="which split (default: test)")
    evaluate.add_argument("--json", action="store_true", help="print JSON instead of a table")
    evaluate.set_defaults(func=_evaluate)

    runs = subparsers.add_parser("runs", help="inspect finished runs", description="Inspect finished runs.")
    runs_sub = runs.add_subparsers(title="runs commands", metavar="COMMAND")
    compare = runs_sub.add_parser("compare", help="markdown table of several runs",
                                  description="Print a markdown table of the runs' metrics.json.")
    compare.add_argument("workdirs", nargs="+", metavar="DIR",
                         help="run folders (a search folder: its winner; unfinished runs are skipped with a note)")
    compare.set_defaults(func=_compare)
    runs.set_defaults(func=lambda args: (runs.print_help(), 2)[1])


def _out_of_memory(func):
    """Running out of memory (numpy's MemoryError, XLA's RESOURCE_EXHAUSTED) becomes one line
    naming the settings that size memory, not a traceback. Settings known to be too large
    are refused before anything is allocated (ResourceError); this catches the rest."""

    @functools.wraps(func)
    def wrapper(args):
        try:
            return func(args)
        except JaxrecError:
            raise
        except MemoryError as error:
            raise ResourceError(_oom_message(error)) from None
        except Exception as error:
            text = str(error)
            if type(error).__name__ in ("XlaRuntimeError", "JaxRuntimeError") and (
                    "RESOURCE_EXHAUSTED" in text or "Out of memory" in text):
                raise ResourceError(_oom_message(error)) from None
            raise

    return wrapper


def _oom_message(error: BaseException) -> str:
    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return (f"out of memory ({first}); lower train.batch_size or eval.batch_size, use smaller embeddings "
            "(model.args), or check that the data's user and item ids are dense")


def _add_run_arguments(parser) -> None:
    parser.add_argument("config", help="experiment YAML file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (dotted, value parsed as YAML), e.g. --set train.epochs=5; "
                             "repeatable")
    parser.add_argument("--workdir", help="output folder (default: runs/<config name>)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --workdir from its last checkpoint")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch logs")
    parser.add_argument("--sequential", action="store_true",
                        help="(searches) run the trials one after another even where the grid lets them train "
                             "together as one compiled program")


def _add_distributed_arguments(parser) -> None:
    group = parser.add_argument_group(
        "multi-process runs", "one logical run over several processes (jax.distributed); every process runs the "
        "same command with its own --process-id; process 0 writes the run's files; the workdir must be shared")
    group.add_argument("--coordinator", metavar="HOST:PORT", help="address of process 0's coordinator service")
    group.add_argument("--num-processes", type=int, metavar="N", help="number of processes in the run")
    group.add_argument("--process-id", type=int, metavar="I", help="this process's index, 0 .. N-1")
    group.add_argument("--distributed-timeout", type=int, default=300, metavar="SECONDS",
                       help="how long a process waits for the others to join (default: 300)")
    group.add_argument("--distributed", choices=("auto",),
                       help="auto: let jax.distributed.initialize() read the cluster environment (SLURM, Open MPI, "
                            "TPU pods, Kubernetes)")


def _start_distributed(args) -> None:
    """Join the distributed runtime before any JAX computation (a no-op without the flags)."""
    from jaxrec.train import initialize_distributed

    if args.distributed_timeout < 1:
        raise ConfigError(f"--distributed-timeout must be >= 1 second; found {args.distributed_timeout}")
    initialize_distributed(args.coordinator, args.num_processes, args.process_id, auto=args.distributed == "auto",
                           timeout_seconds=args.distributed_timeout)


def _load(args):
    from jaxrec.train import load_config

    config = load_config(args.config, args.overrides)
    workdir = Path(args.workdir) if args.workdir else Path("runs") / Path(args.config).stem
    return config, workdir


@_out_of_memory
def _train(args) -> int:
    from jaxrec.train import check_distributed_arguments, check_parallel_mode

    check_distributed_arguments(args.coordinator, args.num_processes, args.process_id, args.distributed == "auto")
    config, workdir = _load(args)  # reads the config only: no JAX computation before joining the run
    if config.has_search:
        if args.coordinator is not None or args.distributed is not None:
            raise ConfigError("a search (grid: or search: section) runs on one process; drop --coordinator/"
                              "--distributed, or train one setting at a time across processes")
        return _run_search(config, workdir, args)
    if args.num_processes is not None:  # before joining: the other processes may never start
        check_parallel_mode(config.train.parallel, args.num_processes)
    _start_distributed(args)
    from jaxrec.train import train_and_evaluate

    metrics = train_and_evaluate(config, workdir, resume=args.resume, quiet=args.quiet)
    import jax

    if jax.process_index() != 0:  # one report per run: process 0's
        return 0
    # The result is printed even with --quiet, which silences only the progress output.
    print(f"{metrics['model']} on {metrics['dataset']}: best epoch {metrics['best_epoch']} of "
          f"{metrics['epochs_run']}; results in {workdir.resolve()}\n")
    print(metrics_table({"valid": metrics["valid"], "test": metrics["test"]}))
    timing = metrics["timing"]
    evaluated = "valid and test" if config.eval.test_every_epoch else "one split"
    print(f"\n{timing['train_seconds_per_epoch']:.3f} s/epoch (median), {timing['eval_seconds']:.3f} s per "
          f"evaluation of {evaluated}, {timing['total_seconds']:.1f} s in all")
    return 0


@_out_of_memory
def _search(args) -> int:
    config, workdir = _load(args)
    if not config.has_search:
        raise ConfigError(f"{args.config} has no grid: or search: section to search over")
    return _run_search(config, workdir, args)


def _run_search(config, workdir: Path, args) -> int:
    from jaxrec.train import run_search

    summary = run_search(config, workdir, resume=args.resume, quiet=args.quiet,
                         batched="never" if args.sequential else "auto")
    print((workdir / "search.md").read_text())
    best = summary["best"]
    print(f"winner (by valid {summary['valid_metric']}): trial {best['trial']} {best['setting']} in {best['workdir']}")
    return 0


@_out_of_memory
def _evaluate(args) -> int:
    from jaxrec.train import evaluate_run

    result = evaluate_run(args.workdir, args.split)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        winner = f" (the search's winner, {result['search_winner']})" if "search_winner" in result else ""
        print(f"{args.split} metrics of {args.workdir}{winner} at its best epoch {result['epoch']} "
              f"({result['num_users']} users):\n")
        print(metrics_table({args.split: result["metrics"]}))
    return 0


def _compare(args) -> int:
    from jaxrec.train import compare_table

    sys.stdout.write(compare_table(args.workdirs))
    return 0


def metrics_table(columns: dict[str, dict[str, float]], names=_SHOWN_METRICS) -> str:
    """A markdown table: one row per metric, one column per split."""
    lines = ["| metric | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for name in names:
        if any(name in values for values in columns.values()):
            lines.append(f"| {name} | " + " | ".join(
                f"{values[name]:.4f}" if name in values else "-" for values in columns.values()) + " |")
    return "\n".join(lines)
