"""``train_and_evaluate(config, workdir)``: the whole run, restartable from its workdir."""

from __future__ import annotations

import copy
import dataclasses
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxrec.data import MultimodalDataset
from jaxrec.errors import ConfigError, TrainingDivergedError
from jaxrec.train import _distributed, _outputs, _per_process, _workdir
from jaxrec.train._checkpoint import Checkpoints
from jaxrec.train._config import ExperimentConfig
from jaxrec.train._config_io import dump_config
from jaxrec.train._early_stopping import EarlyStopping, update_early_stopping
from jaxrec.train._mesh import (
    MeshStepRunner,
    checkpoint_state,
    initial_state,
    logical_params,
    make_runner,
    restore_target,
    sharding_report,
)
from jaxrec.train._progress import Progress
from jaxrec.train._setup import (
    Experiment,
    epoch_context,
    evaluate_params_on_splits,
    make_encoder,
    metrics_at_k,
    prepare_eval_splits,
    prepare_experiment,
)
from jaxrec.train._state import init_state, non_finite_leaves
from jaxrec.train._step import StepRunner


@dataclasses.dataclass
class TrainHooks:
    """Callbacks for tests and tools.

    Attributes:
      on_epoch_end: ``fn(epoch, history_row)`` at the end of each epoch, after its
        checkpoint (if any) is on disk (``epoch`` counts from 1); raising stops the run
        there, as a killed process would.
    """

    on_epoch_end: Callable[[int, dict], None] | None = None


def _warn(progress: Progress, message: str) -> None:
    """A log line that reaches the terminal even when the progress output is quiet."""
    progress.log(message)
    if progress.quiet:
        print(f"jaxrec: {message}", file=sys.stderr)


def _empty_meta() -> dict[str, Any]:
    return {"epochs_done": 0, "early_stopping": EarlyStopping()._asdict(), "history": [],
            "train_seconds": [], "eval_seconds": [], "best_valid": {}, "best_test": {},
            "elapsed_seconds": 0.0, "finished": False}


def _leaf_kind(name: str) -> str:
    """What a train-state leaf named ``name`` (:func:`jaxrec.train._state.leaf_name`) is, for messages."""
    return "optimizer state" if name.startswith("opt_state") else "parameter"


def _first_divergence(metrics, first_step: int) -> tuple[int, str, str] | None:
    """``(step, term, description)`` of a call's first non-finite update, or None.

    The step reports the weighted terms only (a zero-weight term is neither computed nor
    reported: it never reaches the parameters), so every reported term counts.
    """
    terms = {name: np.asarray(v) for name, v in metrics.terms.items()}
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
      resume: continue from the newest intact checkpoint in ``workdir`` (the config must
        match, except a larger ``train.epochs``, which extends a finished run).
      quiet: no progress bars or log lines on the terminal (``log.txt`` is still written).
      hooks: optional :class:`TrainHooks`.

    Returns:
      The contents of ``metrics.json``: test metrics at the best validation epoch, timings.

    Raises:
      ConfigError: a bad config; a workdir holding another run (without ``resume``), locked by
        a live run, or holding nothing to resume (with ``resume``). Checked, with the data
        and memory checks below, before anything is written to ``workdir``.
      DataError: bad data.
      ResourceError: a setting that would need more memory than the machine has.
      TrainingDivergedError: a NaN/inf loss term or gradient, or an update that leaves a
        parameter non-finite (named, with its epoch and step); the last good checkpoint stays
        and no non-finite state is ever saved.
    """
    started = time.perf_counter()
    hooks = hooks or TrainHooks()
    workdir = Path(workdir).expanduser().resolve()
    tcfg = config.train
    # Everything that can fail on the input is checked before the workdir is touched.
    # Processes other than 0 skip the look at the run lock: process 0 of the same run may hold it already.
    _workdir.check_workdir(config, workdir, resume, locked=not _distributed.is_main())
    read_report = None
    if dataset is None:  # with data.per_process_read, each process decodes only its shard of the train records
        dataset, read_report = _per_process.load(config.data)
    _workdir.check_data(config, dataset)
    _workdir.check_batch_memory(config, dataset)
    experiment = prepare_experiment(config, dataset)
    _workdir.check_memory(experiment)
    # One logical run over every process: same config everywhere; process 0 writes the run's
    # files, each process its own log and lock (see _distributed).
    main = _distributed.is_main()
    _distributed.check_same_everywhere(dump_config(config), "the config")
    lock_name = _workdir.LOCK_FILE if main else f"{_workdir.LOCK_FILE}.process{_distributed.process_index()}"
    with _workdir.WorkdirLock(workdir, lock_name) as lock:
        progress = Progress(workdir / _distributed.log_name(), quiet=quiet or not main)
        checkpoints = None
        try:
            if lock.stale_holder is not None:
                progress.log(lock.describe_stale())
            # Again under the lock: another run may have written here since the first look.
            _workdir.check_workdir(config, workdir, resume, locked=True)
            _distributed.barrier("jaxrec:workdir-checked")  # before process 0 writes anything
            checkpoints = Checkpoints(workdir / "checkpoints", keep=tcfg.checkpoints_to_keep)
            extends = (_workdir.check_resumable(config, workdir / _outputs.CONFIG_FILE)
                       if resume and checkpoints.last_epoch() is not None else None)
            run = _Run(experiment, workdir, checkpoints, progress, hooks, resume, extends)
            if main:
                _outputs.write_atomic(workdir / _outputs.CONFIG_FILE, dump_config(config))
            progress.log(f"{config.model.name} on {experiment.dataset.name}: {experiment.dataset.n_users} users, "
                         f"{experiment.dataset.n_items} items, {experiment.n_params:,} parameters; "
                         f"{experiment.steps_per_epoch} batches of {tcfg.batch_size} per epoch; loss weights "
                         f"{experiment.loss_weights}; parallel={tcfg.parallel} on {run.runner.n_devices} device(s)"
                         + (f" of {_distributed.process_count()} processes (this is process "
                            f"{_distributed.process_index()})" if _distributed.is_multiprocess() else ""))
            if read_report is not None:
                progress.log(f"train records read per process: {list(read_report.records_read)} of "
                             f"{read_report.train_records} (this is process {_distributed.process_index()}; "
                             "data.per_process_read)")
            result = run.run(started)
            if read_report is not None:
                result["data_read"] = read_report.asdict()
            if main:
                _write_outputs(workdir, result, run.meta["history"], tcfg.valid_metric, progress)
            _distributed.barrier("jaxrec:outputs-written")
            return result
        finally:
            if checkpoints is not None:
                checkpoints.close()
            progress.close()


class _Run:
    """One session of a run: the state on device, the pending best state, the metadata."""

    def __init__(self, exp: Experiment, workdir: Path, checkpoints: Checkpoints, progress: Progress,
                 hooks: TrainHooks, resume: bool, extends: int | None = None):
        self.exp, self.workdir, self.checkpoints, self.progress, self.hooks = exp, workdir, checkpoints, progress, hooks
        tcfg = self.tcfg = exp.config.train
        self.runner = make_runner(exp)
        if getattr(self.runner, "notice", None):
            progress.log(self.runner.notice)
        self.meta = _empty_meta()
        if resume and checkpoints.last_epoch() is not None:
            state, self.meta = checkpoints.restore(exp.target, read_as=restore_target(self.runner, exp.target))
            for epoch, reason in checkpoints.damaged:
                _warn(progress, f"warning: {reason}; resuming from the newest intact checkpoint, after epoch "
                                f"{self.meta['epochs_done']}")
            progress.log(f"resuming {workdir} after epoch {self.meta['epochs_done']}")
            best = self.meta["early_stopping"].get("best_epoch", 0)
            if best >= 1 and checkpoints.tag_best(best, exp.target, read_as=restore_target(self.runner, exp.target)):
                progress.log(f"checkpoint {best} (the best so far) rewritten with its best tag, which an older "
                             "jaxrec did not store, so that the checkpoint rotation keeps it")
            if extends is not None:
                self._extend(extends)
        else:
            if resume:
                _warn(progress, f"no checkpoint in {workdir} yet: starting from epoch 1")
            state = initial_state(self.runner, exp)
        self.early_stopping = EarlyStopping(**self.meta["early_stopping"])
        self.events = (_outputs.EventLog(workdir, tcfg, exp.steps_per_epoch, first_epoch=self.meta["epochs_done"] + 1)
                       if _distributed.is_main() else None)
        self.state = self.runner.put_state(state)
        # The best state not yet on disk: (epoch, state copy, meta copy, logical shapes), a mesh's copy
        # staying sharded on its devices. Written at the next checkpoint;
        # if the process dies first, the resumed run recomputes it exactly.
        self.pending_best: tuple[int, Any, dict, Any] | None = None
        self.prefetched: tuple[int, dict] | None = None  # (epoch, batches) drawn ahead of their epoch
        # train.sampler: device -- each call builds its batches on device (StepRunner.run_sampled).
        self.device_sampler = None
        if exp.sampler.device_arrays is not None:
            if hasattr(self.runner, "run_sampled"):
                self.device_sampler = self.runner.put_sampler(exp.sampler.device_arrays)
            else:
                progress.log("train.sampler=device with the mesh runner: each epoch's batches are computed by the "
                             "same device program and fed as host batches (no fused epoch program)")
        self.eval_device = self.runner.local_device
        self._set_context(exp.built.ctx)
        self.ctx_epoch: int | None = None  # the epoch index of the hook's context now set
        self.splits = prepare_eval_splits(exp)
        self.encoder = make_encoder(exp.module)

    def _extend(self, old_epochs: int) -> None:
        """Continue a run whose config raises train.epochs from ``old_epochs``."""
        meta, new_epochs = self.meta, self.tcfg.epochs
        stop = EarlyStopping(**meta["early_stopping"]).stop
        if stop:
            raise ConfigError(f"cannot extend {self.workdir}: it stopped early after epoch {meta['epochs_done']} "
                              f"(no better validation for more than train.patience evaluations), so more epochs "
                              "would not continue it; start a new run with a larger train.patience instead")
        meta["finished"] = meta["epochs_done"] >= new_epochs
        self.progress.log(f"extending the run from {old_epochs} to {new_epochs} epochs")

    def _set_context(self, ctx) -> None:
        self.train_ctx = self.runner.put_ctx(ctx)
        self.eval_ctx = jax.device_put(ctx, self.eval_device)

    def _context_for(self, epoch_index: int, params=None) -> bool:
        """Set the context of the model's epoch hook for epoch index ``epoch_index`` from the
        parameters after epoch ``epoch_index`` (default: the current ones); a no-op without a
        hook or when already set. True when it set one (dispatched, maybe still running)."""
        if self.exp.built.epoch_update is None or self.ctx_epoch == epoch_index:
            return False
        params = (self.runner.get_state(self.state).params if params is None
                  else logical_params(self.runner, params))
        self._set_context(epoch_context(self.exp.built, params, self.tcfg.seed, epoch_index))
        self.ctx_epoch = epoch_index
        return True

    def _evaluate(self, params, split: str) -> dict[str, float]:
        return self._evaluate_splits(params, (split,))[split]

    def _evaluate_splits(self, params, splits: tuple[str, ...]) -> dict[str, dict[str, float]]:
        """``{split: metrics}`` of ``params``, the splits ranked from one encoding (one
        ``eval_seconds`` entry for the whole call)."""
        tick = time.perf_counter()
        if isinstance(self.runner, MeshStepRunner):  # ranked where the table shards live
            results = {split: self.runner.evaluate(self.exp, params, self.eval_ctx, self.splits[split])
                       for split in splits}
        else:
            results = evaluate_params_on_splits(self.exp, self.encoder, params, self.eval_ctx,
                                                {split: self.splits[split] for split in splits})
        results = {split: metrics_at_k(result) for split, result in results.items()}
        self.meta["eval_seconds"].append(time.perf_counter() - tick)
        return results

    def _batches(self, epoch: int) -> dict[str, np.ndarray]:
        """Epoch ``epoch``'s (1-based) batches: the prefetched ones, or drawn now."""
        prefetched, self.prefetched = self.prefetched, None
        if prefetched is not None and prefetched[0] == epoch:
            return prefetched[1]
        return self.exp.sampler.batches(epoch - 1, self.runner.local_rows)

    def _prefetch(self, epoch: int) -> None:
        """Draw epoch ``epoch``'s batches now (host numpy work), while the device still runs the
        call just dispatched; the batches are a function of ``(seed, epoch)`` only."""
        if epoch <= self.tcfg.epochs:
            self.prefetched = (epoch, self.exp.sampler.batches(epoch - 1, self.runner.local_rows))

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        exp, tcfg = self.exp, self.tcfg
        tick = time.perf_counter()
        batches = self._batches(epoch) if self.device_sampler is None else None
        self._context_for(epoch - 1)
        per_call = tcfg.steps_per_call or exp.steps_per_epoch
        sums: dict[str, float] = {"loss": 0.0}
        self.progress.start_batches()
        for offset in range(0, exp.steps_per_epoch, per_call):
            if batches is None:
                n_steps = min(per_call, exp.steps_per_epoch - offset)
                self.state, metrics = self.runner.run_sampled(self.state, self.train_ctx, self.device_sampler,
                                                              epoch - 1, offset, n_steps)
            else:
                chunk = {k: v[offset:offset + per_call] for k, v in batches.items()}
                self.state, metrics = self.runner.run(self.state, self.train_ctx, self.runner.put_batches(chunk))
            if batches is not None and offset + per_call >= exp.steps_per_epoch:  # the epoch's last call is in flight
                self._prefetch(epoch + 1)
            metrics = jax.device_get(metrics)
            first_step = (epoch - 1) * exp.steps_per_epoch + offset
            diverged = _first_divergence(metrics, first_step)
            if diverged is not None:
                self._diverged(epoch, offset, first_step, *diverged)
            if non_finite_leaves(self.state):  # finite terms and gradients, yet an update overflowed
                self._diverged(epoch, offset, first_step, *self._locate_bad_update(epoch, offset))
            sums["loss"] += float(np.sum(metrics.loss))
            for name, values in metrics.terms.items():
                sums[name] = sums.get(name, 0.0) + float(np.sum(values))
            n = len(metrics.loss)
            self.progress.batches_done(n, n * tcfg.batch_size, float(metrics.loss[-1]))
        if self._context_for(epoch):  # for this epoch's evaluation and the next epoch
            # The hook's work (LATTICE's learned graph, FREEDOM's pruned one) is the epoch's: waited
            # for here, it is timed with the epoch instead of landing in the evaluation dispatched next.
            jax.block_until_ready((self.train_ctx, self.eval_ctx))
        seconds = time.perf_counter() - tick
        self.meta["train_seconds"].append(seconds)
        steps = exp.steps_per_epoch
        return {"epoch": epoch, "loss": sums.pop("loss") / steps, "terms": {k: v / steps for k, v in sums.items()},
                "train_seconds": seconds}

    def _last_good_state(self) -> tuple[int, Any]:
        """``(epochs_done, host state)``: the newest state known to be finite -- the pending
        best, the newest checkpoint, or the initial state."""
        last = self.checkpoints.last_epoch()
        if self.pending_best is not None and (last is None or self.pending_best[0] > last):
            # A copy: the replay donates the buffers it is given, and the pending best is still to be saved.
            tree = self.pending_best[1]
            if isinstance(self.runner, MeshStepRunner):
                return self.pending_best[0], self.runner.checkpoint_state(tree, copy=True)[0]
            return self.pending_best[0], jax.tree.map(lambda x: np.array(x, copy=True), tree)
        if last is not None:
            try:
                state, meta = self.checkpoints.restore(self.exp.target,
                                                       read_as=restore_target(self.runner, self.exp.target))
                return meta["epochs_done"], state
            except ConfigError:
                pass
        exp = self.exp
        return 0, init_state(exp.module, exp.built.ctx, exp.sampler.example_batch(), exp.tx, self.tcfg.seed)

    def _locate_bad_update(self, epoch: int, offset: int) -> tuple[int, str, str]:
        """``(step, parameter, description)`` of the first update of the call at ``offset`` in
        ``epoch`` that left a non-finite parameter or optimizer state.

        The call ran its updates in one device program, so they are replayed -- exactly, the
        run being deterministic -- from the newest finite state, one update at a time in the
        failing call.
        """
        exp, tcfg, runner = self.exp, self.tcfg, self.runner
        per_call = tcfg.steps_per_call or exp.steps_per_epoch
        done, host_state = self._last_good_state()
        state = runner.put_state(host_state)
        for replayed in range(done + 1, epoch + 1):
            batches = exp.sampler.batches(replayed - 1, runner.local_rows)
            ctx = (runner.put_ctx(epoch_context(exp.built, runner.get_state(state).params, tcfg.seed, replayed - 1))
                   if exp.built.epoch_update is not None else self.train_ctx)
            for start in range(0, exp.steps_per_epoch, per_call):
                chunk = {k: v[start:start + per_call] for k, v in batches.items()}
                if replayed < epoch or start < offset:
                    state, _ = runner.run(state, ctx, runner.put_batches(chunk))
                    continue
                for j in range(len(chunk["users"])):
                    state, _ = runner.run(state, ctx, runner.put_batches({k: v[j:j + 1] for k, v in chunk.items()}))
                    bad = non_finite_leaves(runner.get_state(state))
                    if bad:
                        step = (epoch - 1) * exp.steps_per_epoch + offset + j + 1
                        return step, bad[0], (f"{_leaf_kind(bad[0])} {bad[0]} is not finite (every loss term and gradient "
                                              f"was): the update overflowed" + (
                                                  f"; also non-finite: {', '.join(bad[1:4])}" if bad[1:] else ""))
                break
        # Not reproduced one update at a time (rounding may differ from the fused call): name the call.
        bad = non_finite_leaves(runner.get_state(self.state))
        first = (epoch - 1) * exp.steps_per_epoch + offset
        last = first + min(per_call, exp.steps_per_epoch - offset)
        return last, bad[0] if bad else "state", (
            f"{_leaf_kind(bad[0]) if bad else 'parameter'} {bad[0] if bad else '(unknown)'} is not finite after updates {first + 1}-{last} (every loss "
            "term and gradient was)")

    def _diverged(self, epoch: int, offset: int, first_step: int, step: int, term: str, what: str):
        self.flush_best()
        last = self.checkpoints.last_epoch()
        kept = (f"the last good checkpoint (after epoch {last}) is kept in {self.checkpoints.directory}"
                if last is not None else "no checkpoint had been written yet")
        error = TrainingDivergedError(
            f"training diverged at epoch {epoch}, step {step} (batch {step - first_step + offset} of "
            f"{self.exp.steps_per_epoch} in the epoch): {what}; {kept}")
        error.epoch, error.step, error.term = epoch, step, term
        self.progress.log(str(error))
        raise error

    def validate(self, row: dict) -> bool:
        """Evaluate validation into ``row``; update early stopping; True at a new best."""
        n_before = len(self.meta["eval_seconds"])
        row.update(self._evaluate_splits(self.runner.eval_params(self.state), self.exp.config.eval.epoch_splits))
        row["eval_seconds"] = sum(self.meta["eval_seconds"][n_before:])
        self.early_stopping, improved = update_early_stopping(
            self.early_stopping, row["valid"][self.tcfg.valid_metric], row["epoch"], patience=self.tcfg.patience)
        row["best_epoch"] = self.early_stopping.best_epoch
        if improved:
            self.meta["best_valid"] = row["valid"]
        return improved


    def flush_best(self) -> None:
        """Write the pending best state as its own checkpoint (before a later one)."""
        if self.pending_best is None:
            return
        epoch, tree, meta, shapes = self.pending_best
        self.checkpoints.save(epoch, tree, meta, is_best=True, logical_shapes=shapes)
        self.pending_best = None

    def save(self, epoch: int) -> None:
        self.flush_best()
        # A mesh's state is saved as it is on the devices: each process writes its own shards.
        tree, shapes = checkpoint_state(self.runner, self.state)
        self.checkpoints.save(epoch, tree, self.meta, is_best=self.early_stopping.best_epoch == epoch,
                              logical_shapes=shapes)

    def best_params(self):
        """The parameters at the best validation epoch (in memory, or from its checkpoint)."""
        best = self.early_stopping.best_epoch
        if self.pending_best is not None and self.pending_best[0] == best:
            return self.pending_best[1].params
        if best == self.meta["epochs_done"]:
            return (self.runner.eval_params(self.state) if isinstance(self.runner, MeshStepRunner)
                    else self.runner.get_state(self.state).params)
        state, _ = self.checkpoints.restore(self.exp.target, best, read_as=restore_target(self.runner, self.exp.target))
        return state.params

    def run(self, started: float) -> dict[str, Any]:
        tcfg, meta, progress = self.tcfg, self.meta, self.progress
        progress.start_epochs(tcfg.epochs, meta["epochs_done"], self.exp.steps_per_epoch)
        epoch = meta["epochs_done"]
        while epoch < tcfg.epochs and not self.early_stopping.stop and not meta["finished"]:
            epoch += 1  # epochs count from 1
            row = self.train_epoch(epoch)
            if epoch % tcfg.eval_every == 0 or epoch == tcfg.epochs:
                self.validate(row)
            meta["history"].append(row)
            meta["early_stopping"] = self.early_stopping._asdict()
            meta["epochs_done"] = epoch
            meta["finished"] = self.early_stopping.stop or epoch == tcfg.epochs
            now = time.perf_counter()
            meta["elapsed_seconds"] += now - started
            started = now
            if self.early_stopping.best_epoch == epoch:
                self.pending_best = None  # superseded
            if epoch % tcfg.checkpoint_every == 0 or meta["finished"]:
                self.save(epoch)
            elif self.early_stopping.best_epoch == epoch:
                tree, shapes = checkpoint_state(self.runner, self.state, copy=True)
                self.pending_best = (epoch, tree, copy.deepcopy(meta), shapes)
            if self.events is not None:  # process 0
                _outputs.write_history(self.workdir / _outputs.HISTORY_FILE, meta["history"])
                self.events.epoch(row)
            progress.epoch_done(row, tcfg.valid_metric, self.early_stopping)
            if self.hooks.on_epoch_end is not None:
                self.hooks.on_epoch_end(epoch, row)
        if self.early_stopping.best_epoch >= 1:
            # Test is computed once, at the best validation epoch; it never steers anything.
            params = self.best_params()
            self._context_for(self.early_stopping.best_epoch, params)
            meta["best_test"] = self._evaluate(params, "test")
        meta["elapsed_seconds"] += time.perf_counter() - started
        if self.events is not None:
            self.events.close()
        result = _final_metrics(self.exp, meta, self.runner)
        result["sharding"] = sharding_report(self.runner, self.state, self.exp)
        return result


def _write_outputs(workdir: Path, result: dict, history: list, valid_metric: str, progress: Progress) -> None:
    _outputs.write_history(workdir / _outputs.HISTORY_FILE, history)
    _outputs.write_json(workdir / _outputs.METRICS_FILE, result)
    _outputs.plot_curves(workdir / _outputs.CURVES_FILE, history, valid_metric)
    progress.log(_outputs.done_line(result, valid_metric))


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
                    "kind": devices[0].device_kind, "processes": _distributed.process_count()},
        "loss_weights": exp.loss_weights,
        # valid and test above are over a fixed sample of users (eval.user_sample), not all of them
        **({"eval_user_sample": {"users": exp.config.eval.user_sample, "seed": exp.config.eval.user_sample_seed}}
           if exp.config.eval.user_sample is not None else {}),
    }
