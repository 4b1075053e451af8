"""Where a ``jaxrec train`` or ``jaxrec search`` process spends its time: CPU and wall seconds per phase.

Usage (what ``bench_search.py --breakdown`` runs):
    python benchmarks/_phase_timer.py OUT.json train|search CONFIG [jaxrec options]

Runs the ``jaxrec`` command in this process with timers around the functions of each phase and
writes ``{"phases": {name: {"calls", "cpu_s", "wall_s", "first_cpu_s", "rest_median_cpu_s"}},
"total": {...}}`` to ``OUT.json``. CPU seconds are the process's (every thread, user +
system), so a phase that waits on the device is charged the device's work. The phases:

- ``import``: Python start-up to jax, ``jaxrec.cli.main`` and ``jaxrec.train`` imported;
- ``data``: reading the dataset (``load_dataset``);
- ``prepare``: ``prepare_experiment`` (model build, sampler, abstract state);
- ``init``: the initial train states (``init_state``);
- ``train``: the epochs' train calls until their results are on the host (one call per epoch:
  ``_Run.train_epoch``, or the batched program with its loss fetch); the first includes its
  compilation;
- ``valid`` / ``test``: the evaluations (the batched search's valid ranking of all trials is
  one call per epoch); the first includes compilation;
- ``checkpoints``: Orbax saves; ``curves``: ``curves.png`` drawing; ``history``: history.jsonl writes;
- ``compile``: XLA compilation (``backend_compile_and_load``), counted INSIDE the phases above
  too (it is reported to show how much of their first call it is);
- ``other``: the total less the phases (compile excluded): config, checks, bookkeeping, the
  test's parameter fetch, search.json, process exit work before the timer stops.
"""

from __future__ import annotations

import functools
import json
import statistics
import sys
import time

_T0 = (time.process_time(), time.perf_counter())
_RECORDS: dict[str, list[tuple[float, float]]] = {}


def _note(name: str, cpu: float, wall: float) -> None:
    _RECORDS.setdefault(name, []).append((cpu, wall))


def _timed(function, name, *, label=None, block: bool = False):
    """``function`` with its calls timed under ``name`` (or ``label(args, kwargs)``)."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        cpu, wall = time.process_time(), time.perf_counter()
        try:
            out = function(*args, **kwargs)
            if block:
                import jax

                jax.block_until_ready(out)
            return out
        finally:
            _note(name if label is None else label(args, kwargs), time.process_time() - cpu,
                  time.perf_counter() - wall)

    return wrapper


def _patch(owner, attribute: str, name: str, **options) -> None:
    setattr(owner, attribute, _timed(getattr(owner, attribute), name, **options))


def _install() -> None:
    from jax._src import compiler

    _patch(compiler, "backend_compile_and_load", "compile")
    from jaxrec import eval as jeval
    from jaxrec.train import _batched_search, _checkpoint, _data, _loop, _outputs, _search, _setup

    for module in (_data, _search):
        if hasattr(module, "load_dataset"):
            _patch(module, "load_dataset", "data")
    for module in (_loop, _batched_search, _setup):
        if hasattr(module, "prepare_experiment"):
            _patch(module, "prepare_experiment", "prepare")
    _patch(_batched_search, "init_state", "init")
    _patch(_loop._Run, "__init__", "init")  # the single run's state (and runner) set-up
    _patch(_loop._Run, "train_epoch", "train")
    _patch(_loop._Run, "_evaluate", "valid", label=lambda args, kwargs: args[2] if len(args) > 2 else kwargs["split"])
    _patch(_batched_search, "evaluate_params", "test")
    _patch(jeval, "evaluate_prepared_many", "valid")
    _patch(_checkpoint.Checkpoints, "save", "checkpoints")
    _patch(_outputs, "plot_curves", "curves")
    _patch(_outputs, "write_history", "history")
    make_epoch_fn = _batched_search._make_epoch_fn

    def timed_epoch_fn(*args, **kwargs):
        return _timed(make_epoch_fn(*args, **kwargs), "train", block=True)

    _batched_search._make_epoch_fn = timed_epoch_fn


def _summary(total_cpu: float, total_wall: float) -> dict:
    phases = {}
    for name, calls in _RECORDS.items():
        cpu = [c for c, _ in calls]
        phases[name] = {"calls": len(calls), "cpu_s": round(sum(cpu), 3), "wall_s": round(sum(w for _, w in calls), 3),
                        "first_cpu_s": round(cpu[0], 3),
                        "rest_median_cpu_s": round(statistics.median(cpu[1:]), 4) if len(cpu) > 1 else None}
    counted = [p for name, p in phases.items() if name != "compile"]
    phases["other"] = {"calls": 1, "cpu_s": round(total_cpu - sum(p["cpu_s"] for p in counted), 3),
                       "wall_s": round(total_wall - sum(p["wall_s"] for p in counted), 3)}
    return {"phases": phases, "total": {"cpu_s": round(total_cpu, 3), "wall_s": round(total_wall, 3)}}


def main() -> None:
    out, args = sys.argv[1], sys.argv[2:]
    import jax  # noqa: F401  (what every command imports first, timed as start-up)
    import jaxrec.cli.main as cli
    import jaxrec.train  # noqa: F401

    _note("import", time.process_time() - _T0[0], time.perf_counter() - _T0[1])
    _install()
    sys.argv = ["jaxrec", *args]
    try:
        cli.main()
    except SystemExit as stop:
        if stop.code not in (0, None):
            raise
    summary = _summary(time.process_time() - _T0[0], time.perf_counter() - _T0[1])
    with open(out, "w") as handle:
        json.dump(summary, handle, indent=1)


if __name__ == "__main__":
    main()
