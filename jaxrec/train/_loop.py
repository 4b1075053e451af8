"""``train_and_evaluate(config, workdir)``: the whole run, restartable from its workdir."""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxrec.data import MultimodalDataset
from jaxrec.errors import ConfigError, TrainingDivergedError
from jaxrec.train import _outputs
from jaxrec.train._checkpoint import Checkpoints
from jaxrec.train._config import ExperimentConfig, config_to_dict
from jaxrec.train._config_io import dump_config
from jaxrec.train._early_stopping import EarlyStopping, update_early_stopping
from jaxrec.train._progress import Progress
from jaxrec.train._setup import (
    Experiment,
    evaluate_params,
    make_encoder,
    prepare_eval_splits,
    prepare_experiment,
    ranking_metrics,
)
from jaxrec.train._state import init_state
from jaxrec.train._step import StepRunner

# Keys that may differ between a run and its resumption: they change no number of the run.
_RESUMABLE_CHANGES = {"train.checkpoints_to_keep", "train.checkpoint_every", "train.steps_per_call",
                      "eval.batch_size"}


@dataclasses.dataclass
class TrainHooks:
    """Callbacks for tests and tools.

    Attributes:
      on_epoch_end: ``fn(epoch, history_row)`` after an epoch's checkpoint is written
        (``epoch`` counts from 1); raising stops the run there, as a killed process would.
      transform_batches: ``fn(epoch, batches) -> batches`` applied to each epoch's stacked
        batches before they reach the device (e.g. to inject bad input).
    """

    on_epoch_end: Callable[[int, dict], None] | None = None
    transform_batches: Callable[[int, dict], dict] | None = None


def _flat(tree: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key not in ("args", "loss_weights", "roles", "synthetic", "space", "grid"):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _check_resumable(config: ExperimentConfig, saved_config_path: Path) -> None:
    import yaml

    if not saved_config_path.exists():
        return
    saved = _flat(yaml.safe_load(saved_config_path.read_text()) or {})
    current = _flat(config_to_dict(config))
    changed = sorted(k for k in set(saved) | set(current)
                     if saved.get(k) != current.get(k) and k not in _RESUMABLE_CHANGES)
    if changed:
        detail = "; ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed)
        raise ConfigError(f"cannot resume {saved_config_path.parent}: the config differs from the run's ({detail})")


def _empty_meta() -> dict[str, Any]:
    return {"epochs_done": 0, "early_stopping": EarlyStopping()._asdict(), "history": [],
            "train_seconds": [], "eval_seconds": [], "best_valid": {}, "best_test": {},
            "elapsed_seconds": 0.0, "finished": False}


def _first_divergence(metrics, weights, first_step: int) -> tuple[int, str, str] | None:
    """``(step, term, description)`` of a call's first non-finite update, or None.

    Only weighted terms count (a zero-weight term never reaches the parameters).
    """
    terms = {name: np.asarray(v) for name, v in metrics.terms.items() if weights.get(name, 0.0) != 0.0}
    bad = ~np.asarray(metrics.grads_finite)
    for values in terms.values():
        bad |= ~np.isfinite(values)
    if not bad.any():
        return None
    j = int(np.argmax(bad))
    culprits = [name for name, values in terms.items() if not np.isfinite(values[j])]
    if culprits:
        return first_step + j + 1, culprits[0], "; ".join(f"loss term {n!r} is {terms[n][j]}" for n in culprits)
    return first_step + j + 1, "gradient", "the gradient has non-finite entries (every loss term is finite)"


def train_and_evaluate(config: ExperimentConfig, workdir: str | os.PathLike, *,
                       dataset: MultimodalDataset | None = None, resume: bool = False, quiet: bool = False,
                       hooks: TrainHooks | None = None) -> dict[str, Any]:
    """Train ``config``'s model, early-stop on validation, and write the run to ``workdir``.

    Args:
      config: the experiment (see :class:`ExperimentConfig`).
      workdir: the run folder: ``config.yaml``, ``history.jsonl``, ``metrics.json``,
        ``curves.png``, ``log.txt`` and ``checkpoints/``.
      dataset: use this dataset instead of loading ``config.data``.
      resume: continue from the latest checkpoint in ``workdir`` (the config must match).
      quiet: no progress bars or log lines on the terminal (``log.txt`` is still written).
      hooks: optional :class:`TrainHooks`.

    Returns:
      The contents of ``metrics.json``: test metrics at the best validation epoch, timings.

    Raises:
      ConfigError: a bad config, or a workdir holding another run (without ``resume``).
      TrainingDivergedError: a NaN/inf loss term or gradient; the last good checkpoint stays.
    """
    started = time.perf_counter()
    hooks = hooks or TrainHooks()
    workdir = Path(workdir).expanduser().resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    tcfg = config.train
    checkpoints = Checkpoints(workdir / "checkpoints", keep=tcfg.checkpoints_to_keep)
    progress = Progress(workdir / "log.txt", quiet=quiet)
    try:
        if checkpoints.last_epoch() is not None:
            if not resume:
                raise ConfigError(f"{workdir} already holds a run (checkpoint after epoch "
                                  f"{checkpoints.last_epoch()}); pass --resume to continue it, or use "
                                  "another --workdir")
            _check_resumable(config, workdir / _outputs.CONFIG_FILE)
        experiment = prepare_experiment(config, dataset)
        _outputs.write_atomic(workdir / _outputs.CONFIG_FILE, dump_config(config))
        return _run(experiment, workdir, checkpoints, progress, hooks, started, resume)
    finally:
        checkpoints.close()
        progress.close()


def _run(exp: Experiment, workdir: Path, checkpoints: Checkpoints, progress: Progress, hooks: TrainHooks,
         started: float, resume: bool) -> dict[str, Any]:
    tcfg = exp.config.train
    runner = StepRunner(exp.module, exp.tx, exp.loss_weights, parallel=tcfg.parallel, batch_size=tcfg.batch_size)
    meta = _empty_meta()
    if resume and checkpoints.last_epoch() is not None:
        state, meta = checkpoints.restore(exp.target)
        progress.log(f"resuming {workdir} after epoch {meta['epochs_done']}")
    else:
        state = init_state(exp.module, exp.built.ctx, exp.sampler.example_batch(), exp.tx, tcfg.seed)
    es = EarlyStopping(**meta["early_stopping"])
    progress.log(f"{exp.config.model.name} on {exp.dataset.name}: {exp.dataset.n_users} users, {exp.dataset.n_items} "
                 f"items, {exp.n_params:,} parameters; {exp.steps_per_epoch} batches of {tcfg.batch_size} per epoch; "
                 f"loss weights {exp.loss_weights}; parallel={tcfg.parallel} on {runner.n_devices} device(s)")

    eval_device = runner.devices[0]
    eval_ctx = jax.device_put(exp.built.ctx, eval_device)
    train_ctx = runner.put_ctx(exp.built.ctx)
    splits = prepare_eval_splits(exp)
    encoder = make_encoder(exp.module)
    state = runner.put_state(state)
    host_key = jax.random.fold_in(jax.random.PRNGKey(tcfg.seed), 0x5EED)
    valid_metric = tcfg.valid_metric
    per_call = tcfg.steps_per_call or exp.steps_per_epoch

    progress.start_epochs(tcfg.epochs, meta["epochs_done"], exp.steps_per_epoch)
    epoch = meta["epochs_done"]
    while epoch < tcfg.epochs and not es.stop and not meta["finished"]:
        epoch += 1  # epochs count from 1
        tick = time.perf_counter()
        batches = exp.sampler.batches(epoch - 1)
        if hooks.transform_batches is not None:
            batches = hooks.transform_batches(epoch, batches)
        if exp.built.host_update is not None:
            # Always from the built context, so that epoch e's context depends on e alone.
            ctx = exp.built.host_update(exp.built.ctx, epoch - 1, jax.random.fold_in(host_key, epoch - 1))
            train_ctx, eval_ctx = runner.put_ctx(ctx), jax.device_put(ctx, eval_device)
        term_sums: dict[str, float] = {}
        loss_sum = 0.0
        progress.start_batches()
        for offset in range(0, exp.steps_per_epoch, per_call):
            chunk = {k: v[offset:offset + per_call] for k, v in batches.items()}
            first_step = (epoch - 1) * exp.steps_per_epoch + offset
            state, metrics = runner.run(state, train_ctx, runner.put_batches(chunk))
            metrics = jax.device_get(metrics)
            diverged = _first_divergence(metrics, exp.loss_weights, first_step)
            if diverged is not None:
                step, term, what = diverged
                last = checkpoints.last_epoch()
                kept = (f"the last good checkpoint (after epoch {last}) is kept in {checkpoints.directory}"
                        if last is not None else "no checkpoint had been written yet")
                error = TrainingDivergedError(
                    f"training diverged at epoch {epoch}, step {step} (batch {step - first_step + offset} of "
                    f"{exp.steps_per_epoch} in the epoch): {what}; {kept}")
                error.epoch, error.step, error.term = epoch, step, term
                progress.log(str(error))
                raise error
            n = len(metrics.loss)
            loss_sum += float(np.sum(metrics.loss))
            for name, values in metrics.terms.items():
                term_sums[name] = term_sums.get(name, 0.0) + float(np.sum(values))
            progress.batches_done(n, n * tcfg.batch_size, float(metrics.loss[-1]))
        train_seconds = time.perf_counter() - tick
        meta["train_seconds"].append(train_seconds)
        row = {"epoch": epoch, "loss": loss_sum / exp.steps_per_epoch,
               "terms": {k: v / exp.steps_per_epoch for k, v in term_sums.items()},
               "train_seconds": train_seconds}

        if epoch % tcfg.eval_every == 0 or epoch == tcfg.epochs:
            params = runner.get_state(state).params
            tick = time.perf_counter()
            valid = evaluate_params(exp, encoder, params, eval_ctx, splits["valid"])
            meta["eval_seconds"].append(time.perf_counter() - tick)
            row["valid"] = ranking_metrics(valid)
            es, improved = update_early_stopping(es, row["valid"][valid_metric], epoch, patience=tcfg.patience)
            if improved:
                # Test is computed only at new best-validation epochs and never read by any choice.
                tick = time.perf_counter()
                test = evaluate_params(exp, encoder, params, eval_ctx, splits["test"])
                meta["eval_seconds"].append(time.perf_counter() - tick)
                meta["best_valid"], meta["best_test"] = row["valid"], ranking_metrics(test)
            row["eval_seconds"] = sum(meta["eval_seconds"][-1 - int(improved):])
            row["best_epoch"] = es.best_epoch
        meta["history"].append(row)
        meta["early_stopping"] = es._asdict()
        meta["epochs_done"] = epoch
        meta["finished"] = es.stop or epoch == tcfg.epochs
        meta["elapsed_seconds"] += time.perf_counter() - started
        started = time.perf_counter()
        is_best = bool(row.get("valid")) and es.best_epoch == epoch
        if is_best or epoch % tcfg.checkpoint_every == 0 or meta["finished"]:
            checkpoints.save(epoch, runner.get_state(state), meta, is_best=is_best)
        _outputs.write_history(workdir / _outputs.HISTORY_FILE, meta["history"])
        progress.epoch_done(row, valid_metric, es)
        if hooks.on_epoch_end is not None:
            hooks.on_epoch_end(epoch, row)

    meta["elapsed_seconds"] += time.perf_counter() - started
    result = _final_metrics(exp, meta, runner)
    _outputs.write_history(workdir / _outputs.HISTORY_FILE, meta["history"])
    _outputs.write_json(workdir / _outputs.METRICS_FILE, result)
    _outputs.plot_curves(workdir / _outputs.CURVES_FILE, meta["history"], valid_metric)
    progress.log(f"done: best epoch {result['best_epoch']} of {result['epochs_run']}; valid {valid_metric} "
                 f"{result['valid'].get(valid_metric, float('nan')):.4f}; test " +
                 ", ".join(f"{k} {result['test'][k]:.4f}" for k in ("recall@20", "ndcg@20") if k in result["test"]))
    return result


def _final_metrics(exp: Experiment, meta: dict, runner: StepRunner) -> dict[str, Any]:
    tcfg = exp.config.train
    es = EarlyStopping(**meta["early_stopping"])
    devices = runner.devices
    return {
        "model": exp.config.model.name,
        "dataset": exp.dataset.name,
        "seed": tcfg.seed,
        "best_epoch": es.best_epoch,
        "epochs_run": meta["epochs_done"],
        "stopped_early": bool(es.stop),
        "valid_metric": tcfg.valid_metric,
        "valid": meta["best_valid"],
        "test": meta["best_test"],
        "timing": {
            "train_seconds_per_epoch": statistics.median(meta["train_seconds"]) if meta["train_seconds"] else None,
            "eval_seconds": statistics.median(meta["eval_seconds"]) if meta["eval_seconds"] else None,
            "total_seconds": meta["elapsed_seconds"],
        },
        "n_params": exp.n_params,
        "devices": {"parallel": tcfg.parallel, "count": len(devices), "platform": devices[0].platform,
                    "kind": devices[0].device_kind},
        "loss_weights": exp.loss_weights,
    }
