"""What a run leaves in its workdir: atomic text/JSON files, the history, the curves plot,
and the markdown table that compares runs."""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from jaxrec.errors import ConfigError

CONFIG_FILE = "config.yaml"
HISTORY_FILE = "history.jsonl"
METRICS_FILE = "metrics.json"
CURVES_FILE = "curves.png"


def write_atomic(path: str | os.PathLike, data: str | bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and a rename, so
    a reader (or a killed writer) never sees a half-written file. (No fsync: the files
    are rewritten every epoch and rebuilt from the checkpoint on resume, so surviving a
    power cut is not worth a disk flush per epoch.)"""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A fresh name opened with "x" (not mkstemp, whose files are private 0600): the file gets
    # the usual permissions of the user's umask.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb" if isinstance(data, bytes) else "x") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else (1e308 if value > 0 else -1e308)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def write_json(path: str | os.PathLike, value: Any) -> None:
    write_atomic(path, json.dumps(_jsonable(value), indent=2) + "\n")


def write_history(path: str | os.PathLike, history: Iterable[Mapping]) -> None:
    write_atomic(path, "".join(json.dumps(_jsonable(row)) + "\n" for row in history))


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path} not found; is {path.parent} a finished jaxrec run?") from None
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from None


def plot_curves(path: str | os.PathLike, history: Sequence[Mapping], valid_metric: str) -> None:
    """``curves.png``: training loss (and its terms) and the validation metric per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    epochs = [row["epoch"] for row in history]
    fig, (loss_ax, valid_ax) = plt.subplots(1, 2, figsize=(10, 4))
    loss_ax.plot(epochs, [row["loss"] for row in history], label="loss (weighted sum)")
    term_names = sorted({name for row in history for name in row.get("terms", {})})
    if len(term_names) > 1:
        for name in term_names:
            loss_ax.plot(epochs, [row["terms"].get(name, math.nan) for row in history], "--", label=name)
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("training loss")
    loss_ax.legend()
    evaluated = [row for row in history if row.get("valid")]
    valid_ax.plot([row["epoch"] for row in evaluated], [row["valid"].get(valid_metric, math.nan) for row in evaluated],
                  marker=".")
    valid_ax.set_xlabel("epoch")
    valid_ax.set_ylabel(f"valid {valid_metric}")
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


COMPARE_COLUMNS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20")


def compare_table(run_dirs: Sequence[str | os.PathLike], *, columns: Sequence[str] = COMPARE_COLUMNS) -> str:
    """A markdown table of several finished runs (one row per ``metrics.json``)."""
    rows = []
    for run_dir in run_dirs:
        metrics = read_json(Path(run_dir) / METRICS_FILE)
        valid_metric = metrics.get("valid_metric", "recall@20")
        timing = metrics.get("timing", {})
        rows.append([
            os.fspath(run_dir), str(metrics.get("model")), str(metrics.get("dataset")), str(metrics.get("seed")),
            str(metrics.get("best_epoch")), str(metrics.get("epochs_run")),
            _fmt(metrics.get("valid", {}).get(valid_metric)) + f" ({valid_metric})",
            *[_fmt(metrics.get("test", {}).get(c)) for c in columns],
            _fmt(timing.get("train_seconds_per_epoch"), 3), _fmt(timing.get("eval_seconds"), 3),
        ])
    header = ["run", "model", "dataset", "seed", "best epoch", "epochs", "valid",
              *[f"test {c}" for c in columns], "s/epoch", "eval s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)
