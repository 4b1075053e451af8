"""Run records: a finished run or search folder packed into ONE JSON-lines file.

A run's workdir holds checkpoints, ``config.yaml``, ``metrics.json``, ``history.jsonl`` (every
metric at every cut-off for every epoch) and plots; a search holds a workdir per trial and a
``search.json``. What the results tables are generated from is much smaller: each run's config,
final metrics and a per-epoch history of the loss terms, timings and the headline validation
metrics. ``pack`` keeps exactly that, one file per run or search; workdirs stay scratch
(``experiments/runs/`` is ignored by git) and the records are what is committed.

Layout: ``experiments/records/<dataset>/[<group>/]<name>.jsonl`` where ``<name>`` is
``<model>`` for a final run at the chosen setting, ``<model>_search[_<what>]`` for a
hyper-parameter search (``_<what>`` names a second grid, e.g. ``_low_reg``), or any name for a
group of runs (seeds, ablations). ``<model>`` is the row the run fills in the results table.

File format (``FORMAT``), one JSON object per line:

- line 1, the header: ``{"format", "kind": "run" | "search" | "runs", "name", "search"?, "source"?}``;
  ``source`` is the folder the record was packed from (relative to the project root when it
  is inside it, else absolute; e.g. ``.../bpr_search/trial_003`` for a final run that IS a
  search's winning trial; records packed before it was kept have none);
  ``search`` (kind ``search`` only) is the search's ``search.json`` with each trial's
  ``workdir`` replaced by the trial's folder name: ``valid_metric``, ``n_trials``,
  ``trials: [{trial, workdir, setting, valid, test, ...}]`` and ``best`` (the trial chosen by
  the validation metric when the search ran).
- then one line per run: ``{"name", "config", "metrics", "history"}``: ``name`` is the run's
  folder name (``trial_003`` in a search; the record's own name for a single run; in a group of
  runs, ``<run>`` or, for a search in the group, ``<search>/<trial>``),
  ``config`` the parsed ``config.yaml``, ``metrics`` the whole ``metrics.json``, ``history``
  one row per epoch with ``epoch``, ``loss``, ``terms``, ``train_seconds``, ``eval_seconds``,
  ``best_epoch`` and the ``valid`` (and ``test``, when recorded) metrics kept by
  ``HISTORY_METRICS``.

Usage (from the project root):
    python experiments/records.py pack experiments/runs/lfm2k/vbpr_search experiments/records/lfm2k/vbpr_search.jsonl
    python experiments/records.py show experiments/records/lfm2k/vbpr_search.jsonl
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from pathlib import Path

import yaml

from jaxrec._atomic import write_atomic

FORMAT = "jaxrec-run-record/1"
# Metrics kept per epoch in the packed history (the final metrics keep everything).
HISTORY_METRICS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20")
_HISTORY_SCALARS = ("epoch", "loss", "terms", "train_seconds", "eval_seconds", "best_epoch")


class RecordError(ValueError):
    """A run folder that cannot be packed, or a record file that cannot be read."""


@dataclasses.dataclass(frozen=True)
class Record:
    """A packed record: its header and its runs by name (in file order)."""

    path: Path
    kind: str
    name: str
    search: dict | None
    runs: dict[str, dict]
    source: str | None = None  # the folder it was packed from (older records: None)

    def winner(self) -> dict | None:
        """The search's winning run (``search.best``), or None."""
        if not self.search or not self.search.get("best"):
            return None
        return self.runs.get(Path(str(self.search["best"].get("workdir", ""))).name)


def _read_json(path: Path):
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as error:
        raise RecordError(f"{path}: not valid JSON (line {error.lineno}: {error.msg})") from None


def _compact_metrics(metrics: dict | None) -> dict | None:
    if not isinstance(metrics, dict):
        return metrics
    return {k: v for k, v in metrics.items() if k in HISTORY_METRICS}


def _compact_history(path: Path) -> list[dict]:
    rows = []
    if not path.exists():
        return rows
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise RecordError(f"{path}:{number}: not valid JSON ({error.msg})") from None
            kept = {k: row[k] for k in _HISTORY_SCALARS if k in row}
            for split in ("valid", "test"):
                if split in row:
                    kept[split] = _compact_metrics(row[split])
            rows.append(kept)
    return rows


PROJECT = Path(__file__).resolve().parents[1]


def portable_config(config: dict | None) -> dict | None:
    """The config with an absolute ``data.path`` made relative to the project root (records are
    committed; the machine they ran on is not)."""
    if not isinstance(config, dict) or not isinstance(config.get("data"), dict):
        return config
    path = config["data"].get("path")
    if isinstance(path, str) and os.path.isabs(path):
        config = {**config, "data": {**config["data"], "path": os.path.relpath(path, PROJECT)}}
    return config


def _run_line(folder: Path, name: str) -> dict:
    if not (folder / "metrics.json").exists():
        raise RecordError(f"{folder}: no metrics.json (an unfinished run cannot be packed)")
    config_path = folder / "config.yaml"
    config = yaml.safe_load(config_path.read_text(encoding="utf-8")) if config_path.exists() else None
    return {"name": name, "config": portable_config(config), "metrics": _read_json(folder / "metrics.json"),
            "history": _compact_history(folder / "history.jsonl")}


def _unfinished(search, path: Path, *, need_best: bool) -> str | None:
    """Why the ``search.json`` at ``path`` is not a finished search (None: it is)."""
    if not isinstance(search, dict) or not isinstance(search.get("trials", []), list):
        return f"{path}: expected a search summary with a list of trials"
    done, total = len(search.get("trials", [])), search.get("n_trials")
    if isinstance(total, int) and done < total:
        return f"{path}: {done} of {total} trials finished"
    if ("best" in search or need_best) and not search.get("best"):
        return f"{path}: no winning trial (best is null)"
    return None


def _source(folder: Path) -> str:
    folder = folder.resolve()
    return os.fspath(folder.relative_to(PROJECT) if folder.is_relative_to(PROJECT) else folder)


def pack(folder: Path, name: str | None = None) -> list[dict]:
    """The record lines of a run folder, a search folder or a folder of run folders; an
    unfinished run or search (fewer trials than ``n_trials``, no winner) is refused."""
    folder = Path(folder)
    name = name or folder.name
    if not folder.is_dir():
        raise RecordError(f"{folder}: not a folder")
    if (folder / "search.json").exists():
        search = _read_json(folder / "search.json")
        why = _unfinished(search, folder / "search.json", need_best=True)
        if why:
            raise RecordError(f"{why}: an unfinished search cannot be packed (resume it, e.g. "
                              "`jaxrec search ... --resume`, then pack it)")
        for entry in [*search.get("trials", []), search.get("best") or {}]:
            if "workdir" in entry:  # recorded paths were absolute on the machine that ran them
                entry["workdir"] = Path(entry["workdir"]).name
        lines = [{"format": FORMAT, "kind": "search", "name": name, "search": search, "source": _source(folder)}]
        trials = sorted(p for p in folder.iterdir() if p.is_dir() and (p / "metrics.json").exists())
        return lines + [_run_line(trial, trial.name) for trial in trials]
    if (folder / "metrics.json").exists():
        return [{"format": FORMAT, "kind": "run", "name": name, "source": _source(folder)},
                _run_line(folder, name)]
    # A folder of runs and/or searches (e.g. a search over seeds per variant): every run, a search's
    # trials named "<search>/<trial>".
    runs = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        if (sub / "metrics.json").exists():
            runs.append((sub, sub.name))
        elif (sub / "search.json").exists():
            why = _unfinished(_read_json(sub / "search.json"), sub / "search.json", need_best=False)
            if why:
                raise RecordError(f"{why}: an unfinished search cannot be packed (resume it, then pack {folder})")
            runs += [(trial, f"{sub.name}/{trial.name}") for trial in sorted(sub.iterdir())
                     if trial.is_dir() and (trial / "metrics.json").exists()]
    if not runs:
        raise RecordError(f"{folder}: neither a run (metrics.json), a search (search.json) nor a folder of runs "
                          "or searches")
    return [{"format": FORMAT, "kind": "runs", "name": name, "source": _source(folder)}] + [_run_line(run, label) for run, label in runs]


def _finite(value):
    """JSON has no NaN: non-finite floats are written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def write(lines: list[dict], output: Path) -> None:
    """Write record lines atomically (temporary file + rename)."""
    write_atomic(output, "".join(json.dumps(_finite(line), separators=(",", ":"), allow_nan=False) + "\n"
                                 for line in lines))


def read(path: Path) -> Record:
    """A record file; a malformed one raises :class:`RecordError` naming the file and line."""
    path = Path(path)
    lines = []
    with open(path, encoding="utf-8") as handle:
        for number, text in enumerate(handle, 1):
            if not text.strip():
                continue
            try:
                lines.append(json.loads(text))
            except json.JSONDecodeError as error:
                raise RecordError(f"{path}:{number}: not valid JSON ({error.msg})") from None
    if not lines or not isinstance(lines[0], dict) or lines[0].get("format") != FORMAT:
        raise RecordError(f"{path}:1: expected a header line with \"format\": {FORMAT!r}")
    header = lines[0]
    if header.get("kind") not in ("run", "search", "runs"):
        raise RecordError(f"{path}:1: kind must be run, search or runs; found {header.get('kind')!r}")
    runs = {}
    for number, line in enumerate(lines[1:], 2):
        if not isinstance(line, dict) or "name" not in line or "metrics" not in line:
            raise RecordError(f"{path}:{number}: expected a run line with name, config, metrics and history")
        runs[line["name"]] = line
    return Record(path=path, kind=header["kind"], name=header.get("name", path.stem),
                  search=header.get("search"), runs=runs,
                  source=header.get("source") if isinstance(header.get("source"), str) else None)


def records_in(folder: Path) -> list[Record]:
    """Every ``*.jsonl`` record directly in ``folder`` (sorted by name)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return [read(p) for p in sorted(folder.glob("*.jsonl"))]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    pack_cmd = commands.add_parser("pack", help="pack a run, search or runs folder into one record file")
    pack_cmd.add_argument("folder", type=Path)
    pack_cmd.add_argument("output", type=Path)
    pack_cmd.add_argument("--name", help="the record's name (default: the output file's stem)")
    show_cmd = commands.add_parser("show", help="summarize a record file")
    show_cmd.add_argument("record", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "pack":
            lines = pack(args.folder, args.name or args.output.stem)
            write(lines, args.output)
            print(f"{args.output}: {lines[0]['kind']} with {len(lines) - 1} run(s), "
                  f"{args.output.stat().st_size / 1024:.0f} KiB")
        else:
            record = read(args.record)
            print(f"{record.path}: {record.kind} {record.name!r}, {len(record.runs)} run(s)")
            for name, run in record.runs.items():
                metrics = run["metrics"]
                print(f"  {name}: valid R@20 {metrics.get('valid', {}).get('recall@20')}, "
                      f"test R@20 {metrics.get('test', {}).get('recall@20')}, epochs {metrics.get('epochs_run')}")
    except (RecordError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
