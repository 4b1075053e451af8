"""Regenerate a dataset's whole results table with ONE command: every grid, the final runs,
the cold-start and missing-modality tables, then ``make_results.py``.

What runs is declared in ``experiments/grids/<dataset>.yaml`` (its header gives the layout;
``lfm2k.yaml`` and ``tiktok.yaml`` are the one source of truth for those datasets' grids, and
the config of each row with searches cites its file in a ``# Grid:`` header line,
:func:`grid_citation`). Without a grid file, every
config of ``experiments/configs/<dataset>/`` is a row (its own ``grid:`` section, if any, is
its search) and every config of ``.../coldstart/`` a cold-start row. In order:

1. ``warm``: for each row, each search (``jaxrec search``: batched where the grid allows,
   one trial after another otherwise) and the final run at the winner of all its searches
   by valid recall@20 (the winning trial itself when it is that run: no epoch cap in its
   search, or one it never reached because it stopped early); each packed into
   ``records/<dataset>/<name>.jsonl`` (``experiments/records.py``).
2. ``coldstart``: the same for the cold-start rows into ``records/<dataset>/coldstart/``,
   then ``experiments/coldstart_baselines.py`` -> ``results/<dataset>_coldstart.json``.
3. ``missing_modality``: ``experiments/missing_modality.py`` ->
   ``results/<dataset>_missing_modality.json`` (its runs packed into
   ``records/<dataset>/missing_modality.jsonl``).
4. ``results``: ``experiments/make_results.py`` -> ``results/<dataset>.md``.

Everything is written under ``--output DIR`` (``DIR/runs``, ``DIR/records``, ``DIR/results``,
the layout of ``experiments/``) and the repository is left untouched (a ``DIR`` inside the
project folder, or a file, is refused); without ``--output`` the repository's own
``experiments/`` is regenerated (run folders in the ignored ``experiments/runs/``). Before
anything runs, every config the selected rows will train (each row's, each search's and each
trial's) is built from the grid file, and a bad key is reported by row. The time of every
stage is printed at the end and written to ``DIR/runs/<dataset>/reproduce.json``; when a stage
fails, the stages that finished and the failed one (marked ``failed``) are.

Usage (from the project root):
    python experiments/reproduce.py lfm2k [--output DIR] [--only ROW|STAGE ...] [--max-epochs N]
                                          [--sequential] [--resume] [--grids FILE]

``--only`` takes row names (``bpr``, ``coldstart/vbpr``) or stages (``warm``, ``coldstart``,
``missing_modality``); ``results`` always runs, and the cold-start baselines whenever a
cold-start row does (``coldstart_baselines.py`` has model rows for lfm2k and tiktok only: a grid
file of another dataset with cold-start rows sets ``coldstart: {baselines: false}``). ``--max-epochs`` caps ``train.epochs`` of
every run (a smoke run; the table it makes is not the real one).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from jaxrec._atomic import file_in_the_way, write_json_atomic

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent
sys.path.insert(0, str(HERE))
import records  # experiments/records.py, beside this script

STAGES = ("warm", "coldstart", "missing_modality", "results")
VALID_METRIC = "recall@20"
# The keys of a grid file's missing_modality section: experiments/missing_modality.py's options
# that are the plan's to set (--out, --runs and --max-epochs come from reproduce.py itself).
MISSING_MODALITY_KEYS = ("config", "seeds", "scenarios", "skip_training")


class GridFileError(ValueError):
    """A grid file that does not say what to run."""


@dataclasses.dataclass
class Search:
    name: str
    grid: dict[str, list]
    overrides: dict[str, Any]


@dataclasses.dataclass
class Row:
    name: str           # the table row (and the final run's record name)
    group: str          # "" (warm) or "coldstart"
    config: Path
    overrides: dict[str, Any]
    searches: list[Search]

    @property
    def label(self) -> str:
        return f"{self.group}/{self.name}" if self.group else self.name


@dataclasses.dataclass
class Plan:
    dataset: str
    source: str                      # the grid file, or "configs" when derived from the configs
    warm: list[Row]
    coldstart: list[Row]
    coldstart_baselines: bool
    missing_modality: dict | None
    # The cold-start config whose data section (split) and modalities the baselines read
    # (coldstart: baselines: {config: FILE}); None: the first cold-start row's.
    baselines_config: Path | None = None
    path: Path | None = None         # the grid file (None: derived from the configs)

    @property
    def where(self) -> str:
        """How errors name the grid file (or the configs folder the plan was derived from)."""
        return str(self.path) if self.path is not None else f"experiments/configs/{self.dataset}"


# ----------------------------------------------------------------------------- the plan


def _resolve(path: str | os.PathLike) -> Path:
    path = Path(path).expanduser()
    return path if path.is_absolute() else PROJECT / path


def _mapping(value, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise GridFileError(f"{where}: expected a mapping; found {value!r}")
    return value


def _grid(value, where: str) -> dict[str, list]:
    grid = _mapping(value, where)
    if not grid:
        raise GridFileError(f"{where}: an empty grid")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise GridFileError(f"{where}.{key}: expected a non-empty list of values; found {values!r}")
    return grid


def _row(name: str, spec, group: str, configs: Path, where: str) -> Row:
    spec = _mapping(spec, where)
    unknown = set(spec) - {"config", "set", "searches"}
    if unknown:
        raise GridFileError(f"{where}: unknown key(s) {sorted(unknown)}; expected config, set, searches")
    config = configs / spec.get("config", f"{name}.yaml")
    if not config.is_file():
        raise GridFileError(f"{where}.config: {config} does not exist")
    searches = []
    for search_name, search in _mapping(spec.get("searches"), f"{where}.searches").items():
        swhere = f"{where}.searches.{search_name}"
        search = _mapping(search, swhere)
        if set(search) - {"grid", "set"}:
            raise GridFileError(f"{swhere}: unknown key(s) {sorted(set(search) - {'grid', 'set'})}; expected grid, set")
        if not str(search_name).startswith(f"{name}_search"):
            raise GridFileError(f"{swhere}: a search's record name must be {name}_search[_<what>] "
                                "(make_results.py finds a row's searches by that name)")
        searches.append(Search(str(search_name), _grid(search.get("grid"), f"{swhere}.grid"),
                               _mapping(search.get("set"), f"{swhere}.set")))
    return Row(str(name), group, config, _mapping(spec.get("set"), f"{where}.set"), searches)


def _rows_from_configs(folder: Path, group: str) -> list[Row]:
    """One row per config in ``folder``; a config's own ``grid:`` section is its search."""
    rows = []
    for path in sorted(folder.glob("*.yaml")):
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        grid = raw.get("grid") if isinstance(raw, dict) else None
        searches = [Search(f"{path.stem}_search", dict(grid), {})] if grid else []
        rows.append(Row(path.stem, group, path, {}, searches))
    return rows


def load_plan(dataset: str, grids: Path | None = None, experiments: Path = HERE) -> Plan:
    """The runs behind ``dataset``'s table: from ``grids`` (default
    ``<experiments>/grids/<dataset>.yaml``) or, without that file, from the configs in
    ``<experiments>/configs/<dataset>/``."""
    default = experiments / "grids" / f"{dataset}.yaml"
    path = grids or default
    if grids is None and not path.exists():
        configs = experiments / "configs" / dataset
        if not configs.is_dir():
            raise GridFileError(f"no grid file {path} and no configs folder {configs} for dataset {dataset!r}")
        coldstart = _rows_from_configs(configs / "coldstart", "coldstart") if (configs / "coldstart").is_dir() else []
        return Plan(dataset, "configs", _rows_from_configs(configs, ""), coldstart, bool(coldstart), None)
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GridFileError(f"{path}: no such grid file") from None
    except yaml.YAMLError as error:
        raise GridFileError(f"{path}: not valid YAML ({error})") from None
    where = str(path)
    raw = _mapping(raw, where)
    unknown = set(raw) - {"dataset", "configs", "warm", "coldstart", "missing_modality"}
    if unknown:
        raise GridFileError(f"{where}: unknown key(s) {sorted(unknown)}; expected dataset, configs, warm, coldstart, "
                            "missing_modality")
    if raw.get("dataset", dataset) != dataset:
        raise GridFileError(f"{where}: dataset is {raw.get('dataset')!r}, not {dataset!r}")
    configs = _resolve(raw.get("configs", f"experiments/configs/{dataset}"))
    if not configs.is_dir():
        raise GridFileError(f"{where}.configs: {configs} is not a folder")
    warm = [_row(name, spec, "", configs, f"{where}: warm.{name}")
            for name, spec in _mapping(raw.get("warm"), f"{where}: warm").items()]
    cold = _mapping(raw.get("coldstart"), f"{where}: coldstart")
    if set(cold) - {"baselines", "rows"}:
        raise GridFileError(f"{where}: coldstart: unknown key(s) {sorted(set(cold) - {'baselines', 'rows'})}; "
                            "expected baselines, rows")
    coldstart = [_row(name, spec, "coldstart", configs / "coldstart", f"{where}: coldstart.rows.{name}")
                 for name, spec in _mapping(cold.get("rows"), f"{where}: coldstart.rows").items()]
    baselines, baselines_config = cold.get("baselines", bool(coldstart)), None
    if isinstance(baselines, dict) and set(baselines) == {"config"}:
        baselines_config = configs / "coldstart" / str(baselines["config"])
        if not baselines_config.is_file():
            raise GridFileError(f"{where}: coldstart.baselines.config: {baselines_config} does not exist")
        baselines = True
    elif not isinstance(baselines, bool):
        raise GridFileError(f"{where}: coldstart.baselines: expected true, false or {{config: FILE}} (the "
                            f"cold-start config whose split and modalities the baselines use); found {baselines!r}")
    missing = raw.get("missing_modality")
    if missing is not None:
        missing = _missing_modality(missing, configs, f"{where}: missing_modality")
    listed = {row.config.resolve() for row in warm}
    unlisted = sorted(p.name for p in configs.glob("*.yaml") if p.resolve() not in listed)
    if unlisted:
        print(f"note: {', '.join(unlisted)} in {configs} have no row in {path}; they are not part of the table",
              file=sys.stderr)
    return Plan(dataset, os.path.relpath(path, PROJECT), warm, coldstart, baselines, missing, baselines_config,
                Path(path))


def _missing_modality(value, configs: Path, where: str) -> dict:
    """The ``missing_modality:`` section: experiments/missing_modality.py's options, checked."""
    spec = _mapping(value, where)
    unknown = set(spec) - set(MISSING_MODALITY_KEYS)
    if unknown:
        raise GridFileError(f"{where}: unknown key(s) {sorted(unknown)}; expected {', '.join(MISSING_MODALITY_KEYS)} "
                            "(the options of experiments/missing_modality.py)")
    config = configs / str(spec.get("config", "gan.yaml"))
    if not config.is_file():
        raise GridFileError(f"{where}.config: {config} does not exist")
    seeds = spec.get("seeds", [999, 1000, 1001])
    if (not isinstance(seeds, list) or not seeds
            or not all(isinstance(seed, int) and not isinstance(seed, bool) for seed in seeds)):
        raise GridFileError(f"{where}.seeds: expected a non-empty list of integers; found {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise GridFileError(f"{where}.seeds: a seed listed twice in {seeds!r}")
    out = {"config": config, "seeds": seeds, "skip_training": spec.get("skip_training", False)}
    if not isinstance(out["skip_training"], bool):
        raise GridFileError(f"{where}.skip_training: expected true or false; found {out['skip_training']!r}")
    if "scenarios" in spec:
        import missing_modality  # experiments/missing_modality.py: its scenarios are the choices

        scenarios = spec["scenarios"]
        known = list(missing_modality.SCENARIOS)
        if (not isinstance(scenarios, list) or not scenarios
                or any(not isinstance(s, str) or s not in known for s in scenarios)):
            raise GridFileError(f"{where}.scenarios: expected a non-empty list of {', '.join(known)}; "
                                f"found {scenarios!r}")
        out["scenarios"] = scenarios
    return out


def grid_citation(plan: Plan, row: Row) -> str:
    """The header line by which a config whose grid comes from the grid file cites it."""
    section = "coldstart.rows" if row.group else "warm"
    return (f"# Grid: {plan.source}, {section}.{row.name} ({', '.join(s.name for s in row.searches)}); "
            f"rerun: python experiments/reproduce.py {plan.dataset} --only {row.label}")


# ----------------------------------------------------------------------------- running


def _flat(tree: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


class Runner:
    """Runs a plan's rows in this process (one JAX start-up, compiled programs shared)."""

    def __init__(self, plan: Plan, out: Path, *, max_epochs: int | None, batched: str, resume: bool, quiet: bool):
        self.plan, self.out = plan, out
        self.max_epochs, self.batched, self.resume, self.quiet = max_epochs, batched, resume, quiet
        self._datasets: dict[str, Any] = {}

    def _config(self, path: Path, *overrides: dict):
        from jaxrec.train import load_config

        pairs = [(key, value) for mapping in overrides for key, value in mapping.items()]
        config = load_config(path, pairs)
        # Relative data paths are relative to the project root, wherever this runs from.
        if config.data.path is not None and not os.path.isabs(config.data.path):
            config = dataclasses.replace(config, data=dataclasses.replace(
                config.data, path=os.fspath((PROJECT / config.data.path).resolve())))
        if self.max_epochs is not None and config.train.epochs > self.max_epochs:
            config = dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=self.max_epochs))
        return config

    def _dataset(self, config):
        """Datasets by their data section: every run of one data set loads it once (a search's
        trials with another data section, a grid over ``data.*`` keys, load theirs: run_search)."""
        from jaxrec.train import _data

        key = repr(dataclasses.replace(config.data, modalities=None, roles=None))
        if key not in self._datasets:
            self._datasets[key] = _data.load_dataset(config.data)
        return self._datasets[key]

    def _folder(self, row: Row, name: str) -> Path:
        return self.out / "runs" / self.plan.dataset / row.group / name

    def _record(self, row: Row, name: str) -> Path:
        return self.out / "records" / self.plan.dataset / row.group / f"{name}.jsonl"

    def folders(self, rows: list[Row]) -> list[Path]:
        return [self._folder(row, name) for row in rows for name in [s.name for s in row.searches] + [row.name]]

    def run_row(self, row: Row) -> dict:
        """Every search of ``row``, then its final run; returns what ran and how long."""
        from jaxrec.train import run_search, train_and_evaluate
        from jaxrec.train._search import trial_config

        tick = time.perf_counter()
        report: dict[str, Any] = {"row": row.label, "searches": [], "final": None}
        best = None  # (valid, trial folder, trial config, search)
        for search in row.searches:
            started = time.perf_counter()
            config = self._config(row.config, row.overrides, search.overrides, {"search": None},
                                  {"grid": search.grid})
            folder = self._folder(row, search.name)
            summary = run_search(config, folder, resume="auto" if self.resume else False, quiet=self.quiet,
                                 batched=self.batched,
                                 dataset=self._dataset(config))
            records.write(records.pack(folder, search.name), self._record(row, search.name))
            batched = _batched(folder)
            report["searches"].append({"name": search.name, "trials": len(summary["trials"]), "batched": batched,
                                       "seconds": round(time.perf_counter() - started, 1),
                                       "winner": summary["best"]["setting"]})
            for trial in summary["trials"]:
                value = trial["valid"].get(VALID_METRIC)
                value = value if value is not None and math.isfinite(value) else -math.inf
                if best is None or value > best[0]:
                    best = (value, Path(trial["workdir"]), trial_config(config, trial["setting"]), search)
        started = time.perf_counter()
        folder = self._folder(row, row.name)
        if best is None:
            final = self._config(row.config, row.overrides, {"grid": None, "search": None})
            source = None
        else:
            _, trial_dir, trial_cfg, search = best
            final = self._config(row.config, row.overrides, {"grid": None, "search": None})
            final = dataclasses.replace(trial_cfg, train=dataclasses.replace(trial_cfg.train,
                                                                             epochs=final.train.epochs))
            source = trial_dir if _same_run(trial_dir, trial_cfg, final) else None
        if source is not None:
            records.write(records.pack(source, row.name), self._record(row, row.name))
            report["final"] = {"reused": os.path.relpath(source, self.out), "seconds": 0.0}
        else:
            if not (self.resume and _finished_as_asked(folder, final)):  # else trained, resumed or extended
                train_and_evaluate(final, folder, quiet=self.quiet, dataset=self._dataset(final),
                                   resume=self.resume and (folder / "config.yaml").exists())
            records.write(records.pack(folder, row.name), self._record(row, row.name))
            report["final"] = {"ran": os.path.relpath(folder, self.out),
                               "seconds": round(time.perf_counter() - started, 1)}
        report["seconds"] = round(time.perf_counter() - tick, 1)
        return report


def _batched(search_folder: Path) -> str:
    """How a search's trials ran: "7 trials in 1 batched program", "3 trials one by one", ..."""
    sizes = []
    for metrics in sorted(search_folder.glob("trial_*/metrics.json")):
        sizes.append(json.loads(metrics.read_text(encoding="utf-8")).get("batched_search", {}).get("trials", 1))
    programs = sum(1 / size for size in sizes if size > 1)
    alone = sum(1 for size in sizes if size == 1)
    parts = [f"{round(programs)} batched program(s)"] if programs else []
    parts += [f"{alone} alone"] if alone and programs else ["one by one"] if alone else []
    return f"{len(sizes)} trials " + (f"in {' + '.join(parts)}" if programs else "one by one")


def _finished_as_asked(folder: Path, config) -> bool:
    """Whether ``folder`` holds a finished run that ``config`` would give
    (``jaxrec.train._workdir.reusable_finished_run``). A run that reached a lower epoch cap (a
    ``--max-epochs`` smoke run) is not: it is extended."""
    from jaxrec.train._workdir import reusable_finished_run

    if not (folder / "metrics.json").exists():
        return False
    stopped_early = bool(json.loads((folder / "metrics.json").read_text(encoding="utf-8")).get("stopped_early"))
    return reusable_finished_run(config, folder, stopped_early=stopped_early)


def _same_run(trial_dir: Path, trial_cfg, final) -> bool:
    """Whether the finished trial IS the final run: the same config, or one whose only
    difference is an epoch cap the trial never reached (it stopped early first)."""
    if dataclasses.replace(trial_cfg, train=dataclasses.replace(trial_cfg.train, epochs=final.train.epochs)) != final:
        return False
    if trial_cfg.train.epochs == final.train.epochs:
        return True
    metrics = json.loads((trial_dir / "metrics.json").read_text(encoding="utf-8"))
    return bool(metrics.get("stopped_early")) and metrics.get("epochs_run", math.inf) < trial_cfg.train.epochs


class StageError(RuntimeError):
    """A stage's script failed (its own output says why)."""


def _script(name: str, args: list[str]) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, str(HERE / name), *args], cwd=PROJECT, env=env, check=False)
    if done.returncode != 0:
        raise StageError(f"experiments/{name} failed (exit status {done.returncode}); see its output above")


def check_configs(plan: Plan, runner: Runner, warm: list[Row], cold: list[Row], baselines: bool,
                  missing: bool) -> None:
    """Build every config the selected rows and stages will run (each row's final config, each
    search's config and each of its trials' configs; the baselines' and the missing-modality
    config) before anything runs: config parsing only, no data or model is loaded; each model's
    name and argument names are checked against its builder. Raises :class:`GridFileError` naming
    the grid file and the row (a loss weight the model has no term for is only seen when the
    model is built, i.e. at the row's turn)."""
    from jaxrec.errors import ConfigError
    from jaxrec.models import check_model_args
    from jaxrec.train import load_config
    from jaxrec.train._search import expand_trials, trial_config

    for row in warm + cold:
        where = f"{plan.where}: {'coldstart.rows' if row.group else 'warm'}.{row.name}"
        try:
            final = runner._config(row.config, row.overrides, {"grid": None, "search": None})
            check_model_args(final.model.name, final.model.args)
        except ConfigError as error:
            raise GridFileError(f"{where} ({row.config.name} with its set): {error}") from None
        for search in row.searches:
            swhere = f"{where}.searches.{search.name}"
            try:
                config = runner._config(row.config, row.overrides, search.overrides, {"search": None},
                                        {"grid": search.grid})
                settings = expand_trials(config)
            except ConfigError as error:
                raise GridFileError(f"{swhere}: {error}") from None
            for index, setting in enumerate(settings):
                try:
                    trial = trial_config(config, setting)
                    check_model_args(trial.model.name, trial.model.args)
                except ConfigError as error:
                    raise GridFileError(f"{swhere}: trial {index} ({setting}): {error}") from None
    if baselines:
        config_path = plan.baselines_config or (cold[0].config if cold else plan.coldstart[0].config)
        try:
            import coldstart_baselines  # experiments/coldstart_baselines.py: the datasets it has model rows for
        except ImportError as error:
            raise GridFileError(f"cannot import experiments/coldstart_baselines.py: {error}") from None
        if plan.dataset not in coldstart_baselines.MODEL_RUNS:
            raise GridFileError(f"{plan.where}: coldstart.baselines: experiments/coldstart_baselines.py has model rows "
                                f"for {', '.join(sorted(coldstart_baselines.MODEL_RUNS))} only, not {plan.dataset!r}; "
                                "set coldstart: {baselines: false} (the cold-start rows still run and are recorded)")
        try:
            split = load_config(config_path).data.split or {}
        except ConfigError as error:
            raise GridFileError(f"{plan.where}: coldstart.baselines ({config_path}): {error}") from None
        if split.get("method") != "cold_start_items":
            raise GridFileError(f"{plan.where}: coldstart.baselines: {config_path}: data.split is not a "
                                f"cold_start_items split (found {split or None!r})")
    if missing:
        try:
            load_config(plan.missing_modality["config"])
        except ConfigError as error:
            raise GridFileError(f"{plan.where}: missing_modality.config: {error}") from None


def check_output(out: Path) -> str | None:
    """Why ``--output`` cannot be used (None: it can): inside the project, or not a folder."""
    project = PROJECT.resolve()
    if out == project or out.is_relative_to(project):
        return (f"--output {out} is inside the project folder {project}; the point of --output is to leave the "
                "repository untouched: choose a folder outside it (or leave --output out to regenerate experiments/)")
    blocking = file_in_the_way(out)
    return None if blocking is None else f"--output {out}: {blocking} is a file, not a folder"


# ----------------------------------------------------------------------------- main


def _selected(plan: Plan, only: list[str] | None) -> tuple[list[Row], list[Row], bool, bool]:
    if not only:
        return plan.warm, plan.coldstart, plan.coldstart_baselines, plan.missing_modality is not None
    known = {row.label for row in plan.warm + plan.coldstart} | {"warm", "coldstart", "missing_modality"}
    unknown = [name for name in only if name not in known]
    if unknown:
        raise GridFileError(f"--only {' '.join(unknown)}: not a row or stage of {plan.source} "
                            f"(rows: {', '.join(sorted(known - set(STAGES)))}; stages: warm, coldstart, missing_modality)")
    warm = plan.warm if "warm" in only else [r for r in plan.warm if r.label in only]
    cold = plan.coldstart if "coldstart" in only else [r for r in plan.coldstart if r.label in only]
    return warm, cold, plan.coldstart_baselines and bool(cold), (
        plan.missing_modality is not None and "missing_modality" in only)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", help="the dataset (experiments/configs/<dataset>/)")
    parser.add_argument("--output", type=Path, help="write runs, records and results under this folder "
                        "instead of experiments/ (the repository is then left untouched)")
    parser.add_argument("--grids", type=Path, help="the grid file (default experiments/grids/<dataset>.yaml)")
    parser.add_argument("--only", nargs="+", metavar="ROW_OR_STAGE", help="only these rows or stages")
    parser.add_argument("--max-epochs", type=int, help="cap train.epochs of every run (smoke runs)")
    parser.add_argument("--sequential", action="store_true", help="run every search's trials one after another")
    parser.add_argument("--resume", action="store_true", help="reuse finished searches and runs in the output")
    parser.add_argument("--anchors", type=Path, default=PROJECT.parent / "shared" / "anchors")
    parser.add_argument("--quiet", action="store_true", help="no per-epoch output from the runs")
    args = parser.parse_args(argv)
    if args.max_epochs is not None and args.max_epochs < 1:
        parser.error(f"--max-epochs must be at least 1; found {args.max_epochs}")
    try:
        plan = load_plan(args.dataset, args.grids)
        warm, cold, baselines, missing = _selected(plan, args.only)
    except GridFileError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    out = (args.output.expanduser().resolve() if args.output else HERE)
    problem = check_output(out) if args.output else None
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    runner = Runner(plan, out, max_epochs=args.max_epochs, batched="never" if args.sequential else "auto",
                    resume=args.resume, quiet=args.quiet)
    try:  # every config the run needs, before anything runs
        check_configs(plan, runner, warm, cold, baselines, missing)
    except GridFileError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not args.resume:  # refuse before anything runs, not halfway through
        taken = [p for p in runner.folders(warm + cold) if p.exists()]
        if missing and (out / "runs" / plan.dataset / "missing_modality").exists():
            taken.append(out / "runs" / plan.dataset / "missing_modality")
        if taken:
            print(f"error: {taken[0]} already exists ({len(taken)} run folder(s) in all); pass --resume to reuse "
                  "finished runs or choose another --output", file=sys.stderr)
            return 2
    return _run(plan, runner, out, args, warm, cold, baselines, missing)


def _run(plan: Plan, runner: Runner, out: Path, args, warm: list[Row], cold: list[Row], baselines: bool,
         missing: bool) -> int:
    """Run the stages; the times of those that finished (and of a failed one, marked) are
    printed and written to ``reproduce.json`` however it ends."""
    from jaxrec.errors import JaxrecError

    times: list[dict] = []
    started = time.perf_counter()
    current: dict[str, Any] = {}  # the stage under way: {"stage", "tick"}

    def begin(name: str) -> None:
        current.update(stage=name, tick=time.perf_counter())

    def stage(name: str, seconds: float, **detail) -> None:
        current.clear()
        times.append({"stage": name, "seconds": round(seconds, 1), **detail})
        print(f"== {name}: {seconds:.1f} s", flush=True)

    status, results = 1, out / "results"
    print(f"reproducing {plan.dataset} from {plan.source} into {out} (load average "
          f"{os.getloadavg()[0]:.1f})", flush=True)
    try:
        for row in warm + cold:
            n_trials = sum(math.prod(len(v) for v in s.grid.values()) for s in row.searches)
            print(f"-- {row.label}: " + (f"{len(row.searches)} search(es), {n_trials} trial(s)" if row.searches
                                         else "a single run"), flush=True)
            begin(row.label)
            report = runner.run_row(row)
            stage(row.label, report.pop("seconds"), **report)
        if baselines:
            begin("coldstart baselines")
            # The features of the feature baselines are the config's modalities: name the config of
            # the feature models (the first row may be a model without features, e.g. BPR-MF, whose
            # config would give every modality of the folder).
            split_config = plan.baselines_config or (cold[0].config if cold else plan.coldstart[0].config)
            print(f"-- coldstart baselines: split and modalities of {os.path.relpath(split_config, PROJECT)}",
                  flush=True)
            options = ["--config", str(split_config), "--runs", str(out / "records" / plan.dataset / "coldstart"),
                       "--out", str(results / f"{plan.dataset}_coldstart.json"), "--dataset", plan.dataset]
            _script("coldstart_baselines.py", options)
            stage("coldstart baselines", time.perf_counter() - current["tick"])
        if missing:
            begin("missing modality")
            spec = plan.missing_modality
            options = ["--config", str(spec["config"]),
                       "--out", str(results / f"{plan.dataset}_missing_modality.json"),
                       "--runs", str(out / "runs" / plan.dataset / "missing_modality")]
            options += ["--seeds", *map(str, spec.get("seeds", [999, 1000, 1001]))]
            if spec.get("scenarios"):
                options += ["--scenarios", *spec["scenarios"]]
            if spec.get("skip_training"):
                options += ["--skip-training"]
            if args.max_epochs is not None:
                options += ["--max-epochs", str(args.max_epochs)]
            _script("missing_modality.py", options)
            if not spec.get("skip_training"):  # no runs to pack with the reconstruction table alone
                records.write(records.pack(out / "runs" / plan.dataset / "missing_modality", "missing_modality"),
                              out / "records" / plan.dataset / "missing_modality.jsonl")
            stage("missing modality", time.perf_counter() - current["tick"])
        begin("results table")
        options = ["--dataset", plan.dataset, "--anchors", str(args.anchors)]
        if args.output:
            options += ["--root", str(out)]
        if args.max_epochs is not None:
            options += ["--max-epochs", str(args.max_epochs)]
        _script("make_results.py", options)
        stage("results table", time.perf_counter() - current["tick"])
        status = 0
    except (JaxrecError, records.RecordError, StageError, OSError) as error:
        print(f"error: {current.get('stage', 'reproduce')}: {error}", file=sys.stderr)
    finally:
        if current:
            times.append({"stage": current["stage"], "seconds": round(time.perf_counter() - current["tick"], 1),
                          "failed": True})
        _report(plan, out, args, times, time.perf_counter() - started, finished=status == 0)
    if status == 0:
        print(f"\ntable: {results / (plan.dataset + '.md')}")
    return status


def _report(plan: Plan, out: Path, args, times: list[dict], total: float, *, finished: bool) -> None:
    """Print the stage times and write them to ``runs/<dataset>/reproduce.json``."""
    summary = {"dataset": plan.dataset, "grids": plan.source, "output": os.fspath(out),
               "max_epochs": args.max_epochs, "load_average_end": round(os.getloadavg()[0], 1),
               "total_seconds": round(total, 1), "finished": finished, "stages": times}
    print("\n| stage | seconds | what ran |\n|---|---|---|")
    for entry in times:
        detail = "; ".join(f"{s['name']}: {s['batched']}, {s['seconds']} s" for s in entry.get("searches", []))
        final = entry.get("final")
        if final:
            detail += ("; " if detail else "") + (f"final: trial {final['reused']} reused" if "reused" in final
                                                 else f"final run {final['seconds']} s")
        if entry.get("failed"):
            detail += ("; " if detail else "") + "FAILED (did not finish)"
        print(f"| {entry['stage']} | {entry['seconds']} | {detail} |")
    print(f"| total | {total:.1f} | load average {os.getloadavg()[0]:.1f} at the end"
          + ("" if finished else "; STOPPED at a failed stage") + " |", flush=True)
    target = out / "runs" / plan.dataset / "reproduce.json"
    try:
        write_json_atomic(target, summary)
    except OSError as error:
        print(f"error: cannot write {target}: {error}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
