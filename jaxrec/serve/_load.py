"""Finding and rebuilding a run for serving: the run folder (or a search folder's winner), its
config, its dataset, the model and the parameters of its BEST checkpoint.

This is the one place where serving reaches into the trainer's run-building pieces, so that a
rename there is a one-line change here.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from jaxrec.data import MultimodalDataset
from jaxrec.errors import ConfigError
from jaxrec.train import CONFIG_FILE, load_config, restore_best
from jaxrec.train import (  # noqa: F401  (re-exported for the rest of jaxrec.serve)
    Experiment,
    available_memory,
    StepRunner,
    epoch_context,
    init_state,
    make_encoder,
    prepare_eval_splits,
    prepare_experiment,
)

__all__ = ["Experiment", "LoadedRun", "StepRunner", "available_memory", "epoch_context", "init_state", "load_run",
           "make_encoder", "prepare_eval_splits", "prepare_experiment", "resolve_run_dir", "SERVED_FILE"]

# A folder written by Recommender.save holds this file (and is not a training run).
SERVED_FILE = "served.json"


@dataclasses.dataclass
class LoadedRun:
    """A run rebuilt from its folder.

    Attributes:
      run_dir: the resolved run folder (a search folder's winning trial).
      experiment: the config turned into objects (dataset, built model, optimizer).
      state: the :class:`~jaxrec.train.TrainState` of the best checkpoint.
      epoch: the best validation epoch (1-based).
      ctx: the model context of that epoch (as ``jaxrec evaluate`` uses it).
    """

    run_dir: Path
    experiment: Experiment
    state: Any
    epoch: int
    ctx: Any


def resolve_run_dir(path: str | os.PathLike) -> Path:
    """The run folder behind ``path``: ``path`` itself when it holds ``config.yaml`` and
    ``checkpoints/``, the winning trial of a search folder (``search.json``), else an error
    saying what was expected."""
    path = Path(path).expanduser().resolve()
    if not path.exists():
        raise ConfigError(f"{path}: no such run folder")
    if not path.is_dir():
        raise ConfigError(f"{path}: expected a run folder (config.yaml and checkpoints/), found a file")
    if (path / CONFIG_FILE).exists() and (path / "checkpoints").is_dir():
        return path
    search = path / "search.json"
    if search.exists():
        try:
            summary = json.loads(search.read_text())
        except json.JSONDecodeError as error:
            raise ConfigError(f"{search}: not valid JSON ({error.msg} at line {error.lineno})") from None
        best = summary.get("best") if isinstance(summary, dict) else None
        if not isinstance(best, dict) or not isinstance(best.get("trial"), int):
            raise ConfigError(f"{search}: the search has no winning trial yet (field 'best' is empty); "
                              "finish the search or serve one trial folder")
        # The recorded workdir may come from another machine: the trial folder sits beside search.json.
        trial = path / f"trial_{best['trial']:03d}"
        if not ((trial / CONFIG_FILE).exists() and (trial / "checkpoints").is_dir()):
            raise ConfigError(f"{search}: the winning trial {best['trial']} has no run in {trial} "
                              "(config.yaml and checkpoints/ expected)")
        return trial
    raise ConfigError(f"{path} is neither a jaxrec run (config.yaml and checkpoints/), a search folder "
                      f"(search.json) nor a saved served model ({SERVED_FILE})")


def load_config_of(run_dir: Path):
    return load_config(run_dir / CONFIG_FILE)


def load_run(run_dir: Path, dataset: MultimodalDataset | None = None) -> LoadedRun:
    """Rebuild ``run_dir``'s experiment and restore its best checkpoint."""
    experiment, state, epoch = restore_best(run_dir, dataset=dataset)
    config = experiment.config
    ctx = epoch_context(experiment.built, state.params, config.train.seed, epoch)  # as `jaxrec evaluate` sees it
    return LoadedRun(run_dir, experiment, state, epoch, ctx)
