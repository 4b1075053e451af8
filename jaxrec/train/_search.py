"""Hyper-parameter search: a grid (product of lists) or random draws within a budget.

Every trial is a full run in its own workdir (``WORKDIR/trial_000``, ...). Trials that differ
only in loss weights, learning rate, seed and traced model arguments (dropout rates,
temperatures: ``jaxrec.models.register(traced_args=...)``) train together as one compiled
program (:mod:`jaxrec.train._batched_search`) unless ``batched="never"``; a grid that also
varies other keys (other model arguments) runs one such program per value of them, and a trial alone in
its group runs on its own with :func:`~jaxrec.train.train_and_evaluate`, saying why. A grid over
``data.*`` keys (e.g. ``data.feature_transform``) trains each trial on its own data. The winner
is the trial with the best VALIDATION metric (ties: the earlier trial); test figures are
reported for every trial but never read by any choice -- unlike MMRec, whose grid search picks
by test. ``search.md`` and ``search.json`` in the search workdir list all trials.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from jaxrec.errors import ConfigError
from jaxrec.train import _outputs
from jaxrec.train._config import ExperimentConfig, config_from_dict, config_to_dict
from jaxrec.train._config_io import apply_overrides

_DISTRIBUTIONS = ("uniform", "loguniform", "randint", "choice")


def _draw(key: str, spec, rng: np.random.Generator):
    if isinstance(spec, list):
        if not spec:
            raise ConfigError(f"search.space.{key}: an empty list of values")
        return spec[int(rng.integers(len(spec)))]
    if isinstance(spec, Mapping) and len(spec) == 1:
        (kind, bounds), = spec.items()
        if kind == "choice":
            return _draw(key, list(bounds), rng)
        if kind in ("uniform", "loguniform", "randint"):
            if not (isinstance(bounds, list) and len(bounds) == 2 and all(isinstance(b, (int, float)) for b in bounds)
                    and bounds[0] <= bounds[1]):
                raise ConfigError(f"search.space.{key}: {kind} needs [low, high] with low <= high; found {bounds!r}")
            low, high = bounds
            if kind == "uniform":
                return float(rng.uniform(low, high))
            if kind == "randint":
                return int(rng.integers(int(low), int(high) + 1))
            if low <= 0:
                raise ConfigError(f"search.space.{key}: loguniform needs positive bounds; found {bounds!r}")
            return float(math.exp(rng.uniform(math.log(low), math.log(high))))
    raise ConfigError(f"search.space.{key}: expected a list of values or one of "
                      f"{{{', '.join(d + ': [...]' for d in _DISTRIBUTIONS)}}}; found {spec!r}")


def expand_trials(config: ExperimentConfig) -> list[dict[str, Any]]:
    """The settings of each trial: a list of ``{dotted key: value}``."""
    if config.grid is not None:
        space, method, budget, seed = config.grid, "grid", None, 0
    elif config.search is not None:
        space, method, budget, seed = config.search.space, config.search.method, config.search.budget, config.search.seed
    else:
        return [{}]
    if not space:
        raise ConfigError("the search space is empty")
    keys = list(space)
    if method == "grid":
        for key in keys:
            if not isinstance(space[key], list) or not space[key]:
                raise ConfigError(f"grid entry {key!r} must be a non-empty list of values; found {space[key]!r}")
        trials = [dict(zip(keys, values)) for values in itertools.product(*(space[k] for k in keys))]
        return trials[:budget] if budget else trials
    rng = np.random.default_rng(seed)
    return [{key: _draw(key, space[key], rng) for key in keys} for _ in range(budget)]


def trial_config(config: ExperimentConfig, setting: Mapping[str, Any]) -> ExperimentConfig:
    """``config`` without its search section and with ``setting`` applied."""
    raw = config_to_dict(config)
    raw["grid"] = raw["search"] = None
    return config_from_dict(apply_overrides(raw, list(setting.items())))


def run_search(config: ExperimentConfig, workdir: str | os.PathLike, *, resume: bool = False,
               quiet: bool = False, train_fn: Callable | None = None, batched: str = "auto",
               **train_kwargs) -> dict[str, Any]:
    """Run every trial and pick the winner by the validation metric.

    Args:
      config: a config with a ``grid:`` or ``search:`` section.
      workdir: the search folder; trial ``i`` runs in ``workdir/trial_{i:03d}``.
      resume: resume unfinished trials and reuse finished ones.
      quiet: no progress output from the trials.
      train_fn: the trainer (default :func:`~jaxrec.train.train_and_evaluate`); tests pass
        another (then trials always run one after another).
      batched: ``"auto"`` trains the trials as one program per group of trials that differ
        only in loss weights / learning rate / seed / traced model arguments (none when resuming a search with finished
        trials), the rest one after another with a notice; ``"always"`` raises unless the
        whole grid is one such group; ``"never"`` runs them one after another.
      **train_kwargs: passed to ``train_fn`` (e.g. ``dataset``). A ``dataset`` is the data of
        ``config.data``: a trial whose data section differs (a grid over ``data.*`` keys, e.g.
        ``data.feature_transform``) trains on its own, loaded once per distinct data section
        (``data.modalities`` and ``data.roles`` apply per run and do not count).

    Returns:
      ``{"valid_metric", "trials": [{"trial", "workdir", "setting", "valid", "test",
      "best_epoch"}], "best": <the winning trial>}`` (also written to ``search.json``).
    """
    if batched not in ("auto", "always", "never"):
        raise ConfigError(f"batched must be auto, always or never; found {batched!r}")
    custom_trainer = train_fn is not None
    if train_fn is None:
        from jaxrec.train._loop import train_and_evaluate as train_fn
    workdir = Path(workdir).expanduser().resolve()
    settings = expand_trials(config)
    valid_metric = config.train.valid_metric
    configs = [trial_config(config, setting) for setting in settings]  # every trial checked before any runs
    datasets = _trial_datasets(config, configs, train_kwargs.pop("dataset")) if "dataset" in train_kwargs else None
    workdir.mkdir(parents=True, exist_ok=True)
    finished: dict[int, dict] = {}  # trial index -> its search.json entry, from batched groups
    sequential = list(range(len(settings)))
    if batched != "never" and not custom_trainer:
        from jaxrec.train import _batched_search

        traced = _batched_search.traced_model_args(configs)
        done = [i for i in range(len(settings))
                if resume and (workdir / f"trial_{i:03d}" / _outputs.METRICS_FILE).exists()]
        obstacle = _batched_search.batching_obstacle(settings, configs)
        if obstacle is None and done:
            obstacle = f"{len(done)} trial(s) already finished (--resume continues the rest one by one)"
        if batched == "always" and obstacle is None:
            groups = [list(range(len(settings)))]
        elif batched == "always":
            raise ConfigError(f"these trials cannot be batched: {obstacle}")
        elif done or len(settings) < 2:
            groups = []
        else:  # one program per value of the keys that change it
            groups = [g for g in _batched_search.batch_groups(settings, traced) if _batched_search.batching_obstacle(
                [settings[i] for i in g], [configs[i] for i in g]) is None]
        for group in groups:
            try:
                entries = _batched_search.run_batched_search(
                    config, workdir, [settings[i] for i in group], [configs[i] for i in group], quiet=quiet,
                    dataset=None if datasets is None else datasets(group[0]), trial_ids=group)
            except ConfigError as error:
                if batched == "always" or "cannot be batched" not in str(error):
                    raise
                obstacle = str(error).split("cannot be batched: ", 1)[-1]
                break
            finished.update((entry["trial"], entry) for entry in entries)
        sequential = [i for i in range(len(settings)) if i not in finished]
        if finished and not quiet and (sequential or len(groups) > 1):
            keys = _batched_search.program_keys(settings, traced)
            print(f"note: {len(finished)} trials ran batched, one program per value of {', '.join(keys)}"
                  + (f"; {len(sequential)} run one after another (alone in their group)" if sequential else ""),
                  flush=True)
        elif not quiet and sequential and len(settings) > 1:
            print(f"note: trials run one after another ({obstacle})", flush=True)
    trials = [finished[i] for i in sorted(finished)]
    if finished and not sequential:
        return _write_summary(workdir, trials, valid_metric, len(settings), pick_best(trials, valid_metric))
    for index in sequential:
        setting, trial_cfg = settings[index], configs[index]
        trial_dir = workdir / f"trial_{index:03d}"
        metrics_path = trial_dir / _outputs.METRICS_FILE
        if resume and metrics_path.exists():
            metrics = _outputs.read_json(metrics_path)
        else:
            if not quiet:
                print(f"trial {index + 1}/{len(settings)}: {setting}", flush=True)
            # A trial that never started has nothing to resume (train_and_evaluate would refuse).
            started = (trial_dir / _outputs.CONFIG_FILE).exists()
            if datasets is not None:
                train_kwargs["dataset"] = datasets(index)
            metrics = train_fn(trial_cfg, trial_dir, resume=resume and started, quiet=quiet, **train_kwargs)
        trials.append({"trial": index, "workdir": os.fspath(trial_dir), "setting": setting,
                       "valid": metrics.get("valid", {}), "test": metrics.get("test", {}),
                       "best_epoch": metrics.get("best_epoch")})
        trials.sort(key=lambda t: t["trial"])
        _write_summary(workdir, trials, valid_metric, len(settings))
    best = pick_best(trials, valid_metric)
    return _write_summary(workdir, trials, valid_metric, len(settings), best)


def _data_key(data_config) -> str:
    """The part of a data section that decides the loaded dataset (``modalities`` and ``roles``
    are applied to it per run, by ``prepare_experiment``)."""
    return repr(dataclasses.replace(data_config, modalities=None, roles=None))


def _trial_datasets(config: ExperimentConfig, configs: list[ExperimentConfig], dataset) -> Callable[[int], Any]:
    """Trial index -> the dataset it trains on: ``dataset`` (given for ``config.data``), or for a
    trial with another data section, that section loaded (once per distinct section, when first
    needed). ``dataset=None`` leaves every trial to load its own."""
    loaded = {_data_key(config.data): dataset}

    def for_trial(index: int):
        if dataset is None:
            return None
        key = _data_key(configs[index].data)
        if key not in loaded:
            from jaxrec.train import _data

            loaded[key] = _data.load_dataset(configs[index].data)
        return loaded[key]

    return for_trial


def pick_best(trials: list[Mapping[str, Any]], valid_metric: str) -> Mapping[str, Any]:
    """The trial with the highest validation metric (the earliest among ties); test
    figures are not looked at."""
    def score(trial):
        value = trial["valid"].get(valid_metric)
        return value if value is not None and math.isfinite(value) else -math.inf

    return max(trials, key=lambda t: (score(t), -t["trial"]))


def _write_summary(workdir: Path, trials, valid_metric: str, n_total: int, best=None) -> dict[str, Any]:
    summary = {"valid_metric": valid_metric, "n_trials": n_total, "trials": trials, "best": best}
    _outputs.write_json(workdir / "search.json", summary)
    keys = list(dict.fromkeys(k for t in trials for k in t["setting"]))
    columns = [f"valid {valid_metric}", "test recall@20", "test ndcg@20", "best epoch"]
    lines = [f"# Search: {len(trials)} of {n_total} trials, winner by valid {valid_metric}", "",
             "| trial | " + " | ".join(keys + columns) + " |", "|" + "---|" * (1 + len(keys) + len(columns))]
    for trial in trials:
        mark = " **(best)**" if best is not None and trial["trial"] == best["trial"] else ""
        values = [str(trial["setting"].get(k)) for k in keys]
        values += [_fmt(trial["valid"].get(valid_metric)), _fmt(trial["test"].get("recall@20")),
                   _fmt(trial["test"].get("ndcg@20")), str(trial["best_epoch"])]
        lines.append(f"| {trial['trial']}{mark} | " + " | ".join(values) + " |")
    _outputs.write_atomic(workdir / "search.md", "\n".join(lines) + "\n")
    return summary


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}"
