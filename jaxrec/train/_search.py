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

Before anything is loaded or written, every trial is checked as ``jaxrec train`` checks a run
before it creates its folder (its config, its data, its model built with its arguments, the
names of its loss weights, memory), and the trial folders are looked at as ``jaxrec train``
looks at its workdir: without ``--resume`` a trial folder holding a run is refused, batched
or not; with it, a search folder with no started trial is refused (nothing to resume), a
finished trial is reused (its ``metrics.json`` read back; its saved config must match its
setting) and a started one resumed. The search folder is created with the first results.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from jaxrec.errors import ConfigError, ResourceError
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
        where = "grid" if config.grid is not None else "search.space"
        raise ConfigError(f"the search space is empty: {where} holds no key; expected {{dotted key: [values]}}"
                          + ("" if where == "grid" else f" or {{dotted key: {{{'|'.join(_DISTRIBUTIONS)}: [...]}}}}"))
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


def run_search(config: ExperimentConfig, workdir: str | os.PathLike, *, resume: bool | str = False,
               quiet: bool = False, train_fn: Callable | None = None, batched: str = "auto",
               **train_kwargs) -> dict[str, Any]:
    """Run every trial and pick the winner by the validation metric.

    Args:
      config: a config with a ``grid:`` or ``search:`` section.
      workdir: the search folder; trial ``i`` runs in ``workdir/trial_{i:03d}``.
      resume: resume unfinished trials and reuse finished ones (a finished trial whose
        ``train.epochs`` was raised is extended unless it stopped early); ``True`` refuses a
        search with no started trial (nothing to resume, as ``jaxrec search --resume``),
        ``"auto"`` then starts it (scripts that rerun until done).
      quiet: no progress output from the trials.
      train_fn: the trainer (default :func:`~jaxrec.train.train_and_evaluate`); tests pass
        another (then trials always run one after another, and the trials' configs are not
        checked against their data and models beforehand: that trainer checks its own input).
      batched: ``"auto"`` trains the trials as one program per group of trials that differ
        only in loss weights / learning rate / seed / traced model arguments (none when resuming a search with started
        trials), the rest one after another with a notice; ``"always"`` raises unless the
        whole grid is one such group; ``"never"`` runs them one after another.
      **train_kwargs: passed to ``train_fn`` (e.g. ``dataset``). A ``dataset`` is the data of
        ``config.data``: a trial whose data section differs (a grid over ``data.*`` keys, e.g.
        ``data.feature_transform``) trains on its own, loaded once per distinct data section
        (``data.modalities`` and ``data.roles`` apply per run and do not count).

    Returns:
      ``{"valid_metric", "trials": [{"trial", "workdir", "setting", "valid", "test",
      "best_epoch"}], "best": <the winning trial>}`` (also written to ``search.json``).

    Raises:
      ConfigError, DataError, ResourceError: checked for every trial before anything is written
        (``workdir`` is created with the first results), each naming the trial and its setting:
        what :func:`~jaxrec.train.train_and_evaluate` checks before it creates its folder (the
        config, its data, the model built with its arguments, the loss weights' names, memory);
        a trial folder that already holds a run (without ``resume``, batched or not); with
        ``resume``, a folder holding no started trial (nothing to resume), or a started trial
        whose saved config differs from its setting.
    """
    if resume not in (True, False, "auto"):
        raise ConfigError(f"resume must be True, False or 'auto'; found {resume!r}")
    if batched not in ("auto", "always", "never"):
        raise ConfigError(f"batched must be auto, always or never; found {batched!r}")
    custom_trainer = train_fn is not None
    if train_fn is None:
        from jaxrec.train._loop import train_and_evaluate as train_fn
    workdir = Path(workdir).expanduser().resolve()
    settings = expand_trials(config)
    valid_metric = config.train.valid_metric
    configs = []  # every trial checked before any runs, and before anything is written
    for index, setting in enumerate(settings):
        with _naming_trial(index, setting):
            configs.append(trial_config(config, setting))
    # The trial folders as they are: read-only, before anything is loaded or written.
    from jaxrec.train._workdir import check_run_folder_path

    check_run_folder_path(workdir)
    started, reused = _check_trial_folders(workdir, settings, configs, resume)
    datasets = _trial_datasets(config, configs, train_kwargs.pop("dataset")) if "dataset" in train_kwargs else None
    finished: dict[int, dict] = {}  # trial index -> its search.json entry, from batched groups
    sequential = list(range(len(settings)))
    groups: list[list[int]] = []
    obstacle = None
    if batched != "never" and not custom_trainer:
        from jaxrec.train import _batched_search

        traced = _batched_search.traced_model_args(configs)
        obstacle = _batched_search.batching_obstacle(settings, configs)
        if obstacle is None and started:
            obstacle = f"{len(started)} trial(s) already started (--resume continues them and the rest one by one)"
        if batched == "always" and obstacle is None:
            groups = [list(range(len(settings)))]
        elif batched == "always":
            raise ConfigError(f"these trials cannot be batched: {obstacle}")
        elif started or len(settings) < 2:
            groups = []
        else:  # one program per value of the keys that change it
            groups = [g for g in _batched_search.batch_groups(settings, traced) if _batched_search.batching_obstacle(
                [settings[i] for i in g], [configs[i] for i in g]) is None]
    # What `jaxrec train` checks before it creates its folder, for every trial that will train:
    # the config against its data, the model built with its arguments, the loss weights' names,
    # the optimizer, memory. A bad value anywhere in the grid fails here, with nothing written.
    # (A custom trainer checks its own input.)
    if not custom_trainer:
        loader = _loader(configs)  # each trial's own data where no dataset was given (dataset=None too)

        def trial_data(index: int):
            given = datasets(index) if datasets is not None else None
            return loader(index) if given is None else given

        _check_trial_configs(settings, configs, [i for i in range(len(settings)) if i not in reused], trial_data)
    if groups:
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
            # After every group, as after every sequential trial: a search stopped later keeps a
            # summary of the trials it finished (and --resume reuses them).
            _write_summary(workdir, [finished[i] for i in sorted(finished)], valid_metric, len(settings))
        sequential = [i for i in range(len(settings)) if i not in finished]
        if finished and not quiet and (sequential or len(groups) > 1):
            keys = _batched_search.program_keys(settings, traced)
            print(f"note: {len(finished)} trials ran batched, one program per value of {', '.join(keys)}"
                  + (f"; {len(sequential)} run one after another (alone in their group)" if sequential else ""),
                  flush=True)
    if (batched != "never" and not custom_trainer and not finished and not quiet and len(settings) > 1
            and len(reused) < len(settings)):
        print(f"note: trials run one after another ({obstacle})", flush=True)
    trials = [finished[i] for i in sorted(finished)]
    if finished and not sequential:
        return _write_summary(workdir, trials, valid_metric, len(settings), pick_best(trials, valid_metric))
    for index in sequential:
        setting, trial_cfg = settings[index], configs[index]
        trial_dir = workdir / f"trial_{index:03d}"
        metrics_path = trial_dir / _outputs.METRICS_FILE
        if index in reused:
            metrics = _outputs.read_json(metrics_path)
        else:
            if not quiet:
                print(f"trial {index + 1}/{len(settings)}: {setting}", flush=True)
            # A trial that never started has nothing to resume (train_and_evaluate would refuse).
            if datasets is not None:
                train_kwargs["dataset"] = datasets(index)
            metrics = train_fn(trial_cfg, trial_dir, resume=index in started, quiet=quiet, **train_kwargs)
        trials.append({"trial": index, "workdir": os.fspath(trial_dir), "setting": setting,
                       "valid": metrics.get("valid", {}), "test": metrics.get("test", {}),
                       "best_epoch": metrics.get("best_epoch")})
        trials.sort(key=lambda t: t["trial"])
        _write_summary(workdir, trials, valid_metric, len(settings))
    best = pick_best(trials, valid_metric)
    return _write_summary(workdir, trials, valid_metric, len(settings), best)


@contextlib.contextmanager
def _naming_trial(index: int, setting: Mapping[str, Any]):
    """A ConfigError or ResourceError raised for one trial names the trial and its setting."""
    try:
        yield
    except (ConfigError, ResourceError) as error:
        raise type(error)(f"trial {index} ({_describe(setting)}): {error}") from None


def _describe(setting: Mapping[str, Any]) -> str:
    return ", ".join(f"{key}={value!r}" for key, value in setting.items()) or "the config as it is"


def _trial_started(trial_dir: Path) -> bool:
    """Whether a trial folder holds (part of) a run: its config, a checkpoint or its metrics."""
    from jaxrec.train import _workdir

    return ((trial_dir / _outputs.CONFIG_FILE).exists() or (trial_dir / _outputs.METRICS_FILE).exists()
            or bool(_workdir.stored_epochs(trial_dir)))


def _check_trial_folders(workdir: Path, settings, configs, resume: bool | str) -> tuple[set[int], set[int]]:
    """A read-only look at the search folder before anything is loaded or written, as
    ``jaxrec train`` looks at its workdir (:func:`jaxrec.train._workdir.check_workdir`).

    Without ``resume``, a trial folder that holds a run is refused (whether the trials would
    run batched or one by one). With ``resume=True``, a folder holding no started trial is
    refused (nothing to resume); ``resume="auto"`` starts the search then. Every started trial's
    saved config must match its setting, except a raised ``train.epochs``: a finished trial that
    stopped early is reused as it is (more epochs would not change it), one that ran to its
    epoch limit is extended (resumed), as ``jaxrec train --resume`` extends a run.

    Returns:
      ``(started, reused)``: with ``resume``, the trials that already started (resumed, or
      reused when finished) and those of them reused as they are (their ``metrics.json`` is read
      back, nothing retrained); both empty without ``resume``.
    """
    from jaxrec.train import _workdir

    trial_dirs = [workdir / f"trial_{index:03d}" for index in range(len(settings))]
    if not resume:
        for index, trial_dir in enumerate(trial_dirs):
            with _naming_trial(index, settings[index]):
                _workdir.check_workdir(configs[index], trial_dir, False)
        return set(), set()
    started = {index for index, trial_dir in enumerate(trial_dirs) if _trial_started(trial_dir)}
    if not started and resume != "auto":
        why = (" (it does not exist)" if not workdir.exists()
               else f" (none of its {len(settings)} trial folders, trial_000 ..., has started)")
        raise ConfigError(f"nothing to resume: {workdir} holds no run{why}; drop --resume to start a new search "
                          "there, or check --workdir")
    reused = set()
    for index in sorted(started):
        trial_dir = trial_dirs[index]
        with _naming_trial(index, settings[index]):
            if not (trial_dir / _outputs.METRICS_FILE).exists():  # unfinished: resumed as jaxrec train resumes
                _workdir.check_workdir(configs[index], trial_dir, True)
                continue
            _workdir.WorkdirLock.check_free(trial_dir)
            if _workdir.reusable_finished_run(configs[index], trial_dir, stopped_early=_stopped_early(trial_dir)):
                reused.add(index)  # the same run, or one that stopped early (more epochs change nothing)
    return started, reused


def _stopped_early(trial_dir: Path) -> bool:
    """Whether a finished trial stopped by early stopping (not at its epoch limit)."""
    return bool(_outputs.read_metrics(trial_dir / _outputs.METRICS_FILE).get("stopped_early"))


def _loader(configs: list[ExperimentConfig]) -> Callable[[int], Any]:
    """Trial index -> its data, loaded once per distinct data section (for the checks only)."""
    loaded: dict[str, Any] = {}

    def for_trial(index: int):
        key = _data_key(configs[index].data)
        if key not in loaded:
            from jaxrec.train import _data

            loaded[key] = _data.load_dataset(configs[index].data)
        return loaded[key]

    return for_trial


def _check_trial_configs(settings, configs: list[ExperimentConfig], indices: list[int],
                         datasets: Callable[[int], Any]) -> None:
    """For each trial in ``indices``, what ``jaxrec train`` checks before it creates its folder
    (:func:`~jaxrec.train.train_and_evaluate`): the config against its data
    (:func:`~jaxrec.train._workdir.check_data`, the batches' memory), the model built with its
    arguments and the loss weights' names (:func:`~jaxrec.train._setup.prepare_experiment`),
    the optimizer and the memory of the parameters and an evaluation batch. The model is built
    once per distinct data section, model and train settings other than the seed and the
    learning rate (those change no build); the others' loss weights and optimizer are checked
    against that build. Nothing is written; the builds are dropped."""
    from jaxrec.train import _setup, _workdir
    from jaxrec.train._state import model_optimizer

    experiments: dict[str, Any] = {}
    for index in indices:
        cfg = configs[index]
        with _naming_trial(index, settings[index]):
            dataset = datasets(index)
            _workdir.check_data(cfg, dataset)
            _workdir.check_batch_memory(cfg, dataset)
            key = repr((cfg.data, cfg.model, dataclasses.replace(cfg.train, seed=0, learning_rate=1.0,
                                                                 min_learning_rate=0.0)))
            if key not in experiments:
                exp = _setup.prepare_experiment(cfg, dataset)
                # Kept without its arrays (context, sampler): only names, shapes and sizes are read.
                experiments[key] = dataclasses.replace(exp, built=dataclasses.replace(exp.built, ctx={}), sampler=None)
            exp = experiments[key]
            _setup.resolve_loss_weights(exp.built.default_loss_weights, cfg.loss_weights, exp.term_names,
                                        cfg.model.name)
            model_optimizer(cfg.train, exp.steps_per_epoch, exp.built)
            _workdir.check_memory(dataclasses.replace(exp, config=cfg))


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
    workdir.mkdir(parents=True, exist_ok=True)  # created with the first results, never before
    _outputs.write_json(workdir / "search.json", summary)
    keys = list(dict.fromkeys(k for t in trials for k in t["setting"]))
    tested = _outputs.test_figures(valid_metric)
    columns = [f"valid {valid_metric}", *[f"test {k}" for k in tested], "best epoch"]
    lines = [f"# Search: {len(trials)} of {n_total} trials, winner by valid {valid_metric}", "",
             "| trial | " + " | ".join(keys + columns) + " |", "|" + "---|" * (1 + len(keys) + len(columns))]
    for trial in trials:
        mark = " **(best)**" if best is not None and trial["trial"] == best["trial"] else ""
        values = [str(trial["setting"].get(k)) for k in keys]
        values += [_fmt(trial["valid"].get(valid_metric)), *[_fmt(trial["test"].get(k)) for k in tested],
                   str(trial["best_epoch"])]
        lines.append(f"| {trial['trial']}{mark} | " + " | ".join(values) + " |")
    _outputs.write_atomic(workdir / "search.md", "\n".join(lines) + "\n")
    return summary


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}"
