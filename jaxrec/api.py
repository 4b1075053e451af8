"""The Python API for scripts and notebooks: ``jaxrec.fit`` and ``jaxrec.load_run``.

``fit`` does what ``jaxrec train`` does -- the same config, the same workdir, the same
files -- and hands back a :class:`Run`, the run folder seen from Python::

    import jaxrec

    run = jaxrec.fit("jaxrec/cli/demo.yaml", overrides={"train.epochs": 5})
    run.metrics["test"]["recall@20"]     # metrics.json: test at the best validation epoch
    run.history[-1]["loss"]              # history.jsonl: one row per epoch
    run.params                           # parameters of the best epoch (from its checkpoint)
    jaxrec.load_run(run.workdir)         # the same run, later or from another process

This module sits above ``jaxrec.train`` (and loads ``jaxrec.serve`` only when a recommender
is asked for); ``import jaxrec`` does not import it until ``jaxrec.fit`` is first used.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from jaxrec.data import MultimodalDataset
from jaxrec.errors import ConfigError, DataError
from jaxrec import train as _train
from jaxrec.train import ExperimentConfig, apply_overrides, config_from_dict, config_to_dict, load_config, resolve_paths

ConfigLike = str | os.PathLike | Mapping[str, Any] | ExperimentConfig


def _check_dataset(dataset: Any) -> None:
    """Raise a DataError unless ``dataset`` is None or a :class:`~jaxrec.data.MultimodalDataset`."""
    if dataset is not None and not isinstance(dataset, MultimodalDataset):
        raise DataError(
            "not a dataset",
            field="dataset",
            found=f"an object of type {type(dataset).__qualname__}",
            expected="a jaxrec.data.MultimodalDataset, or None for the data the config names",
        )


def make_config(config: ConfigLike, overrides: Mapping[str, Any] | Sequence[str] | None = None) -> ExperimentConfig:
    """An :class:`~jaxrec.train.ExperimentConfig` from a YAML path, a dict or a config, with
    ``overrides`` applied: a dict of dotted ``--set`` keys to values (``{"train.epochs": 5}``;
    values are used as given, not parsed) or a list of ``"key=value"`` strings (values parsed
    as YAML, as on the command line). Relative ``data.path`` resolves against the current
    directory.

    Raises:
      ConfigError: an unreadable file, an unknown key (with a suggestion), a bad value, an
        unknown model or an argument its builder does not take (loss weight names are checked
        when the model is built, by :func:`fit`).
    """
    if overrides is None:
        pairs: list = []
    elif isinstance(overrides, Mapping):
        pairs = [(str(key), value) for key, value in overrides.items()]
    elif isinstance(overrides, Sequence) and not isinstance(overrides, str):
        pairs = list(overrides)
    else:
        raise ConfigError(f"overrides must be a dict like {{'train.epochs': 5}} or a list of 'key=value' "
                          f"strings; found {type(overrides).__name__}")
    if isinstance(config, (str, os.PathLike)):
        made = load_config(config, pairs)
    elif isinstance(config, ExperimentConfig):
        made = config if not pairs else resolve_paths(config_from_dict(apply_overrides(config_to_dict(config), pairs)))
    elif isinstance(config, Mapping):
        made = resolve_paths(config_from_dict(apply_overrides(config, pairs)))
    else:
        raise ConfigError(f"config must be a YAML file path, a dict or an ExperimentConfig; found "
                          f"{type(config).__name__}")
    from jaxrec.models import check_model_args  # the model's name and argument names, nothing built

    check_model_args(made.model.name, made.model.args)
    return made


def fit(config: ConfigLike, workdir: str | os.PathLike | None = None, dataset: MultimodalDataset | None = None,
        overrides: Mapping[str, Any] | Sequence[str] | None = None, *, resume: bool = False,
        quiet: bool = True) -> "Run":
    """Train and evaluate a model as ``jaxrec train`` does, and return the run.

    Args:
      config: a YAML config path, a dict of the same shape, or an ``ExperimentConfig``.
      workdir: the run folder (``config.yaml``, ``metrics.json``, ``history.jsonl``,
        ``curves.png``, ``tensorboard/``, ``checkpoints/``); default: a new temporary folder,
        which is left in place for the returned :class:`Run` to read.
      dataset: train on this :class:`~jaxrec.data.MultimodalDataset` instead of the data the
        config names (``load_run`` then needs it again for ``params``).
      overrides: ``{"train.epochs": 5, ...}`` -- the keys of ``--set`` (see
        :func:`make_config`).
      resume: continue the run in ``workdir`` from its last checkpoint.
      quiet: no progress bars or log lines (``log.txt`` is written either way).

    Returns:
      The finished :class:`Run`. A config with a ``grid:`` or ``search:`` section runs the
      whole search in ``workdir`` and returns its winning trial (by validation), with the
      search summary in ``Run.search``.

    Raises:
      ConfigError: a bad config, or a workdir that already holds a run (without ``resume``).
      DataError: malformed data, naming the file, line and field; a ``dataset`` that is not a
        :class:`~jaxrec.data.MultimodalDataset`.
      TrainingDivergedError: the loss or gradient became non-finite.
    """
    _check_dataset(dataset)
    experiment = make_config(config, overrides)
    if workdir is None:
        workdir = tempfile.mkdtemp(prefix="jaxrec-run-")
    workdir = Path(workdir).expanduser().resolve()
    if dataset is not None:
        from jaxrec.data import warn_unseen_in_train

        warn_unseen_in_train(dataset)
    if experiment.has_search:
        from jaxrec.train import run_search

        summary = run_search(experiment, workdir, resume=resume, quiet=quiet, dataset=dataset)
        winner = workdir / Path(summary["best"]["workdir"]).name
        return Run(winner, dataset=dataset, search=summary)
    from jaxrec.train import train_and_evaluate

    train_and_evaluate(experiment, workdir, dataset=dataset, resume=resume, quiet=quiet)
    return Run(workdir, dataset=dataset)


def load_run(workdir: str | os.PathLike, *, dataset: MultimodalDataset | None = None) -> "Run":
    """The run in ``workdir`` (a folder written by ``fit`` or ``jaxrec train``; a search
    folder stands for its winning trial).

    Args:
      workdir: the run folder.
      dataset: the dataset the run was trained on, when it was given directly rather than
        named in its config (needed only for ``params`` and ``evaluate``).

    Raises:
      ConfigError: not a finished run (no ``metrics.json``), or a search without a winner.
      DataError: a ``dataset`` that is not a :class:`~jaxrec.data.MultimodalDataset`.
    """
    _check_dataset(dataset)
    folder, note = _train.finished_run(workdir)
    if folder is None:
        raise ConfigError(f"{os.fspath(workdir)} is {note}")
    search = None
    if note:  # a search folder: its winner
        search = _train.read_json(Path(workdir) / _train.SEARCH_FILE)
    return Run(folder.resolve(), dataset=dataset, search=search)


@dataclasses.dataclass(eq=False)
class Run:
    """A finished run, read lazily from its folder.

    Attributes:
      workdir: the run folder.
      search: the search summary (``search.json``) when the run is a search's winner.

    Raises:
      DataError: a ``dataset`` that is not a :class:`~jaxrec.data.MultimodalDataset`.
    """

    workdir: Path
    dataset: MultimodalDataset | None = dataclasses.field(default=None, repr=False)
    search: dict[str, Any] | None = dataclasses.field(default=None, repr=False)

    def __post_init__(self):
        _check_dataset(self.dataset)
        self.workdir = Path(self.workdir)

    @functools.cached_property
    def metrics(self) -> dict[str, Any]:
        """``metrics.json``: ``valid`` and ``test`` metrics at the best validation epoch,
        ``best_epoch``, ``epochs_run``, timings, parameter count, devices."""
        return _train.read_json(self.workdir / _train.METRICS_FILE)

    @functools.cached_property
    def history(self) -> list[dict[str, Any]]:
        """``history.jsonl``: per epoch the loss, its named terms, seconds, and the
        validation metrics of evaluated epochs."""
        path = self.workdir / _train.HISTORY_FILE
        try:
            lines = path.read_text().splitlines()
        except FileNotFoundError:
            raise ConfigError(f"{path} not found; is {self.workdir} a jaxrec run?") from None
        return [json.loads(line) for line in lines if line.strip()]

    @functools.cached_property
    def config(self) -> ExperimentConfig:
        """The run's resolved config (``config.yaml``)."""
        return load_config(self.workdir / _train.CONFIG_FILE)

    @functools.cached_property
    def params(self):
        """The model parameters at the best validation epoch, restored from its checkpoint
        (a pytree of arrays, as the model's ``apply`` takes them)."""
        from jaxrec.train import restore_best

        _, state, _ = restore_best(self.workdir, dataset=self.dataset)
        return state.params

    def evaluate(self, split: str = "test") -> dict[str, Any]:
        """Recompute ``split``'s metrics from the best checkpoint (as ``jaxrec evaluate``)."""
        from jaxrec.train import evaluate_run

        return evaluate_run(self.workdir, split, dataset=self.dataset)

    def recommender(self):
        """A ``jaxrec.serve.Recommender`` loaded from this run (top-k lists, fold-in)."""
        from jaxrec import serve

        recommender_class = getattr(serve, "Recommender", None)
        if recommender_class is None:
            raise ConfigError("this jaxrec has no jaxrec.serve.Recommender to serve a run with")
        return recommender_class.load(self.workdir)

    def __repr__(self) -> str:
        try:
            metrics = self.metrics
            test = metrics.get("test") or {}
            shown = [k for k in _train.test_figures(metrics.get("valid_metric") or "recall@20") if k in test]
            summary = (f"{metrics.get('model')} on {metrics.get('dataset')}, best epoch {metrics.get('best_epoch')} "
                       f"of {metrics.get('epochs_run')}, test "
                       + (", ".join(f"{k} {test[k]:.4f}" for k in shown) or "not ranked"))
        except ConfigError:
            summary = "unreadable"
        return f"Run({os.fspath(self.workdir)!r}: {summary})"
