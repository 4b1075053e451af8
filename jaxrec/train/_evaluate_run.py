"""Recompute a finished run's metrics from its workdir (``jaxrec evaluate``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from jaxrec.data import MultimodalDataset
from jaxrec.errors import ConfigError
from jaxrec.train import _outputs
from jaxrec.train._checkpoint import Checkpoints
from jaxrec.train._config_io import load_config
from jaxrec.train._setup import (
    epoch_context,
    evaluate_params,
    make_encoder,
    metrics_at_k,
    prepare_eval_splits,
    prepare_experiment,
)


def best_epoch_of(workdir: Path, checkpoints: Checkpoints, target) -> int:
    """The run's best validation epoch: from ``metrics.json``, else from the newest
    checkpoint's early-stopping state (a run still in progress)."""
    metrics_path = workdir / _outputs.METRICS_FILE
    if metrics_path.exists():
        best = _outputs.read_metrics(metrics_path).get("best_epoch")
    else:
        _, meta = checkpoints.restore(target)
        best = meta["early_stopping"]["best_epoch"]
    if best is None or best < 1:
        raise ConfigError(f"{workdir} has no evaluated epoch yet, so no best checkpoint")
    return int(best)


def restore_best(workdir: str | os.PathLike, *, dataset: MultimodalDataset | None = None):
    """``(experiment, state, epoch)``: the run's setup rebuilt from its ``config.yaml`` and
    the train state of its best validation epoch, restored from its checkpoint.

    Raises:
      ConfigError: not a run folder, or no checkpoint at the best epoch.
    """
    workdir = Path(workdir).expanduser().resolve()
    config_path = workdir / _outputs.CONFIG_FILE
    if not workdir.is_dir():
        raise ConfigError(f"{workdir} is not a jaxrec run: "
                          + ("it is a file, not a run folder" if workdir.exists() else "no such folder"))
    if not config_path.exists():
        raise ConfigError(f"{workdir} is not a jaxrec run: {config_path.name} is missing")
    experiment = prepare_experiment(load_config(config_path), dataset)
    checkpoints = Checkpoints(workdir / "checkpoints", read_only=True)
    try:
        epoch = best_epoch_of(workdir, checkpoints, experiment.target)
        state, _ = checkpoints.restore(experiment.target, epoch)
    finally:
        checkpoints.close()
    return experiment, state, epoch


def evaluate_run(workdir: str | os.PathLike, split: str = "test", *,
                 dataset: MultimodalDataset | None = None) -> dict[str, Any]:
    """Reload a run's best checkpoint and recompute the metrics of ``split``.

    Args:
      workdir: a run folder written by :func:`~jaxrec.train.train_and_evaluate`, or a search
        folder written by :func:`~jaxrec.train.run_search`, which stands for its winning trial.
      split: ``"valid"`` or ``"test"``.
      dataset: the dataset, when the run was given one directly (default: load the data
        its ``config.yaml`` names).

    Returns:
      ``{"split", "epoch", "metrics": {metric@k: value}, "num_users", "workdir"}``, with
      ``"search_winner"`` (the trial folder's name) for a search folder, and for a run with
      ``eval.user_sample`` ``"eval_user_sample": {"users", "seed"}`` (as in its
      ``metrics.json``): the metrics are then those of the same user sample, not of every user.

    Raises:
      ConfigError: not a run folder, a search without a winner yet, or no checkpoint at the
        best epoch.
    """
    if split not in ("valid", "test"):
        raise ConfigError(f"split (--split) must be 'valid' or 'test'; found {split!r}")
    workdir = Path(workdir).expanduser().resolve()
    winner = None
    if (workdir / _outputs.SEARCH_FILE).is_file() and not (workdir / _outputs.CONFIG_FILE).exists():
        run_dir, note = _outputs.finished_run(workdir)
        if run_dir is None:
            raise ConfigError(f"{workdir} is {note}; evaluate a trial folder instead")
        workdir, winner = run_dir, run_dir.name
    experiment, state, epoch = restore_best(workdir, dataset=dataset)
    config = experiment.config
    ctx = epoch_context(experiment.built, state.params, config.train.seed, epoch)  # as evaluated after `epoch`
    layout = prepare_eval_splits(experiment, (split,))[split]
    result = evaluate_params(experiment, make_encoder(experiment.module), state.params, ctx, layout)
    out = {"split": split, "epoch": epoch, "metrics": metrics_at_k(result), "num_users": result["num_users"],
           "workdir": os.fspath(workdir)}
    if config.eval.user_sample is not None:  # the recomputation ranks the run's sample, not every user
        out["eval_user_sample"] = {"users": config.eval.user_sample, "seed": config.eval.user_sample_seed}
    if winner is not None:
        out["search_winner"] = winner
    return out
