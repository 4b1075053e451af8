"""What a run leaves in its workdir: text/JSON files written atomically
(:func:`jaxrec._atomic.write_atomic`), the history, the curves plot, and the markdown table that compares runs."""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from jaxrec._atomic import write_atomic
from jaxrec.errors import ConfigError

CONFIG_FILE = "config.yaml"
HISTORY_FILE = "history.jsonl"
METRICS_FILE = "metrics.json"
CURVES_FILE = "curves.png"


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


def _json_type(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def read_json_object(path: str | os.PathLike, what: str) -> dict:
    """:func:`read_json` of a file whose top level must be a JSON object (``what`` it holds,
    for the message); a ConfigError naming the file otherwise."""
    value = read_json(path)
    if not isinstance(value, dict):
        raise ConfigError(f"{os.fspath(path)}: expected a JSON object ({what}); found {_json_type(value)}")
    return value


_METRICS_OBJECTS = ("valid", "test", "timing")  # fields of metrics.json that hold an object
_METRICS_INTEGERS = ("best_epoch", "epochs_run")  # ... and an integer (or null)


def read_metrics(path: str | os.PathLike) -> dict:
    """A run's ``metrics.json``, checked for the shape :func:`~jaxrec.train.train_and_evaluate`
    writes: an object whose ``valid`` / ``test`` / ``timing`` are objects, ``valid_metric`` a
    string and ``best_epoch`` / ``epochs_run`` integers (each may be null or absent). A
    ConfigError naming the file and the field otherwise."""
    metrics = read_json_object(path, "a run's metrics, as 'jaxrec train' writes them")
    for field in _METRICS_OBJECTS:
        value = metrics.get(field)
        if value is not None and not isinstance(value, dict):
            raise ConfigError(f"{os.fspath(path)}, field {field!r}: expected an object; found {_json_type(value)}")
    value = metrics.get("valid_metric")
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{os.fspath(path)}, field 'valid_metric': expected a string such as 'recall@20'; "
                          f"found {value!r}")
    for field in _METRICS_INTEGERS:
        value = metrics.get(field)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"{os.fspath(path)}, field {field!r}: expected an integer or null; found {value!r}")
    return metrics


def test_figures(valid_metric: str) -> list[str]:
    """The test metrics a run's summaries show: recall and NDCG at the cut-off of the metric
    that selected it (``valid_metric``), and that metric itself when it is neither."""
    cutoff = valid_metric.rsplit("@", 1)[-1]
    return list(dict.fromkeys((f"recall@{cutoff}", f"ndcg@{cutoff}", valid_metric)))


def done_line(metrics: Mapping[str, Any], valid_metric: str) -> str:
    """The last line of a run's ``log.txt``: its best epoch, valid's selection metric and the
    test figures of :func:`test_figures` (``metrics.json``)."""
    shown = [k for k in test_figures(valid_metric) if k in metrics["test"]]
    return (f"done: best epoch {metrics['best_epoch']} of {metrics['epochs_run']}; valid {valid_metric} "
            f"{metrics['valid'].get(valid_metric, float('nan')):.4f}; test "
            + (", ".join(f"{k} {metrics['test'][k]:.4f}" for k in shown) or "not ranked"))


def plot_curves(path: str | os.PathLike, history: Sequence[Mapping], valid_metric: str,
                best_epoch: int | None = None) -> None:
    """``curves.png`` (written atomically): the figure of :func:`curves_figure`."""
    fig = curves_figure(history, valid_metric, best_epoch)
    write_atomic(path, lambda handle: fig.savefig(handle, dpi=100, format="png"))


_LOG_SPAN = 20.0  # a positive curve spanning more than this factor gets a log y axis


def curves_figure(history: Sequence[Mapping], valid_metric: str, best_epoch: int | None = None):
    """One panel per training loss (the weighted sum, then each term when there are several),
    each on its own y scale -- logarithmic when the values are positive and span more than a
    factor of 20 -- and one for the validation metric; integer epochs on every x axis; the
    best epoch (default: the last ``best_epoch`` in ``history``) drawn as a dotted line on
    every panel and a star on the validation curve; with ``eval.test_every_epoch`` (rows holding
    ``test``) the test metric as a dashed line beside valid's. Returns the matplotlib figure.

    The figure is a bare ``matplotlib.figure.Figure`` on the Agg canvas, not one registered with
    pyplot (nothing to close, no global state), only the panels drawn are created, and the
    margins are fixed: a search draws one per trial, and pyplot's figure manager, the hidden axes
    of a full grid and tight_layout's measuring pass cost about as much as drawing."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    epochs = [row["epoch"] for row in history]
    term_names = sorted({name for row in history for name in row.get("terms", {})})
    series = [("loss (weighted sum)", [row["loss"] for row in history])]
    if len(term_names) > 1:
        series += [(f"term: {name} (unweighted)", [row.get("terms", {}).get(name, math.nan) for row in history])
                   for name in term_names]
    evaluated = [row for row in history if row.get("valid")]
    if best_epoch is None:
        best_epoch = next((row.get("best_epoch") for row in reversed(evaluated) if row.get("best_epoch")), None)
    n_panels = len(series) + 1
    columns = min(n_panels, 3)
    rows = -(-n_panels // columns)
    fig = Figure(figsize=(4.2 * columns, 3.2 * rows))
    FigureCanvasAgg(fig)
    grid = [fig.add_subplot(rows, columns, index + 1) for index in range(n_panels)]
    valid_ax = grid[1]  # beside the total loss; the terms follow
    axes = [grid[0], *grid[2:n_panels], valid_ax]
    for ax, (title, values) in zip(axes, series):
        ax.plot(epochs, values, marker="." if len(epochs) <= 30 else None, color="tab:blue")
        finite = [v for v in values if v is not None and math.isfinite(v)]
        if finite and min(finite) > 0 and max(finite) / min(finite) > _LOG_SPAN:
            ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("training loss" if title.startswith("loss") else "mean per batch")
    values = [row["valid"].get(valid_metric, math.nan) for row in evaluated]
    tested = [row for row in evaluated if row.get("test")]  # eval.test_every_epoch
    valid_ax.plot([row["epoch"] for row in evaluated], values, marker="." if len(evaluated) <= 30 else None,
                  color="tab:green", label="valid" if tested else "_valid")  # a key only beside test's
    if tested:
        valid_ax.plot([row["epoch"] for row in tested], [row["test"].get(valid_metric, math.nan) for row in tested],
                      linestyle="--", color="tab:orange", label="test (selects nothing)")
    valid_ax.set_title(f"valid {valid_metric}" + (" (and test)" if tested else ""), fontsize=10)
    valid_ax.set_ylabel(valid_metric)
    best_value = next((row["valid"].get(valid_metric) for row in evaluated if row["epoch"] == best_epoch), None)
    for ax in axes[:n_panels]:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if best_epoch:
            ax.axvline(best_epoch, color="tab:red", linestyle=":", linewidth=1)
    if best_epoch and best_value is not None:
        valid_ax.plot([best_epoch], [best_value], marker="*", markersize=14, color="tab:red", linestyle="none",
                      label=f"best: epoch {best_epoch}, {best_value:.4f}")
    if (best_epoch and best_value is not None) or tested:
        valid_ax.legend(loc="best", fontsize=9)
    # Fixed margins in inches (room for tick labels, axis labels and titles), not tight_layout:
    # tight_layout draws the whole figure once more to measure it, doubling the cost of a plot.
    width, height = 4.2 * columns, 3.2 * rows
    fig.subplots_adjust(left=0.8 / width, right=1 - 0.15 / width, bottom=0.55 / height, top=1 - 0.35 / height,
                        wspace=0.95 / (4.2 - 0.95), hspace=0.9 / (3.2 - 0.9))
    return fig


TENSORBOARD_DIR = "tensorboard"


class EventLog:
    """TensorBoard event files in ``WORKDIR/tensorboard`` (``tensorboard --logdir runs/``).

    One point per epoch (the x axis is the epoch): ``train/loss``, ``train/loss_terms/<name>``,
    ``train/learning_rate`` (at the epoch's last update), ``valid/<metric>_<k>`` (e.g.
    ``valid/recall_20``: TensorBoard tags cannot hold ``@``) for evaluated epochs (and
    ``test/<metric>_<k>`` with ``eval.test_every_epoch``), ``valid/best_epoch``, and
    ``time/train_seconds`` / ``time/eval_seconds``. A resumed run opens a new file with
    ``purge_step`` at its first recomputed epoch, so TensorBoard hides the points the killed
    process wrote after its last checkpoint instead of doubling them.
    Written with tensorboardX (no TensorFlow needed).
    """

    def __init__(self, workdir: str | os.PathLike, train_config=None, steps_per_epoch: int = 1, *,
                 first_epoch: int = 1):
        from tensorboardX import SummaryWriter

        # A unique suffix: the default file name (seconds + host) would let a quick resume overwrite a file.
        self._writer = SummaryWriter(logdir=os.fspath(Path(workdir) / TENSORBOARD_DIR),
                                     purge_step=first_epoch if first_epoch > 1 else None, flush_secs=30,
                                     filename_suffix=f".{os.getpid()}.{uuid.uuid4().hex[:8]}")
        self._schedule = None
        self._steps_per_epoch = steps_per_epoch
        if train_config is not None:
            from jaxrec.train._state import learning_rate_schedule

            self._schedule = learning_rate_schedule(train_config, steps_per_epoch)

    def epoch(self, row: Mapping[str, Any]) -> None:
        """Write one history row (as ``history.jsonl`` holds it) and flush."""
        step = int(row["epoch"])
        add = self._writer.add_scalar
        add("train/loss", float(row["loss"]), step)
        for name, value in row.get("terms", {}).items():
            add(f"train/loss_terms/{name}", float(value), step)
        if self._schedule is not None:
            add("train/learning_rate", float(self._schedule(step * self._steps_per_epoch - 1)), step)
        if "train_seconds" in row:
            add("time/train_seconds", float(row["train_seconds"]), step)
        for split in ("valid", "test"):  # test: with eval.test_every_epoch
            for name, value in (row.get(split) or {}).items():
                add(f"{split}/{name.replace('@', '_')}", float(value), step)
        if row.get("eval_seconds") is not None:
            add("time/eval_seconds", float(row["eval_seconds"]), step)
        if row.get("best_epoch"):
            add("valid/best_epoch", int(row["best_epoch"]), step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


COMPARE_COLUMNS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20")
SEARCH_FILE = "search.json"


def finished_run(folder: str | os.PathLike) -> tuple[Path | None, str]:
    """``(run folder, note)``: the folder itself when it holds a finished run, the winning
    trial's folder for a finished search folder, else ``(None, why it is not usable)``."""
    folder = Path(folder)
    if not folder.is_dir():
        return None, "not a folder"
    if (folder / METRICS_FILE).is_file():
        return folder, ""
    if (folder / SEARCH_FILE).is_file():
        try:
            summary = read_json_object(folder / SEARCH_FILE, "a search's summary, as 'jaxrec search' writes it")
        except ConfigError as error:
            return None, str(error)
        best = summary.get("best")
        if not best:
            trials = summary.get("trials")
            return None, f"a search still in progress ({len(trials) if isinstance(trials, list) else 0} of " \
                         f"{summary.get('n_trials', '?')} trials done, no winner yet)"
        if not isinstance(best, dict) or not isinstance(best.get("workdir"), str):
            return None, f"{folder / SEARCH_FILE}, field 'best': expected an object naming the winner's " \
                         f"'workdir'; found {best!r}"
        winner = folder / Path(best["workdir"]).name  # trial folders sit in the search folder, even if it moved
        if not (winner / METRICS_FILE).is_file():
            return None, f"a search whose winner {winner.name} has no {METRICS_FILE}"
        return winner, f"search winner {winner.name}"
    if (folder / CONFIG_FILE).is_file() or (folder / "checkpoints").is_dir():
        return None, f"an unfinished or failed run (no {METRICS_FILE})"
    return None, f"not a jaxrec run (no {METRICS_FILE} or {SEARCH_FILE})"


def compare_table(run_dirs: Sequence[str | os.PathLike], *, columns: Sequence[str] = COMPARE_COLUMNS) -> str:
    """A markdown table of several finished runs (one row per ``metrics.json``).

    A search folder stands for its winning trial. Folders without a finished run (a run still
    training or killed, a failed run, a stray file) are skipped and listed in a note under
    the table; when none is finished, a ConfigError says why for each.
    """
    rows, skipped = [], []
    for run_dir in run_dirs:
        folder, note = finished_run(run_dir)
        if folder is None:
            skipped.append(f"{os.fspath(run_dir)}: {note}")
            continue
        try:
            metrics = read_metrics(folder / METRICS_FILE)
        except ConfigError as error:  # a damaged or misshapen metrics.json: say so, keep the others
            skipped.append(f"{os.fspath(run_dir)}: {error}")
            continue
        valid_metric = metrics.get("valid_metric") or "recall@20"
        timing = metrics.get("timing") or {}
        rows.append([
            os.fspath(run_dir) + (f" ({note})" if note else ""), str(metrics.get("model")),
            str(metrics.get("dataset")), str(metrics.get("seed")),
            str(metrics.get("best_epoch")), str(metrics.get("epochs_run")),
            _fmt((metrics.get("valid") or {}).get(valid_metric)) + f" ({valid_metric})",
            *[_fmt((metrics.get("test") or {}).get(c)) for c in columns],
            _fmt(timing.get("train_seconds_per_epoch"), 3), _fmt(timing.get("eval_seconds"), 3),
        ])
    if not rows:
        raise ConfigError("no finished run to compare: " + "; ".join(skipped))
    header = ["run", "model", "dataset", "seed", "best epoch", "epochs", "valid",
              *[f"test {c}" for c in columns], "s/epoch", "eval s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    if skipped:
        lines += ["", f"Skipped {len(skipped)} folder(s) without a finished run:"]
        lines += [f"- {entry}" for entry in skipped]
    return "\n".join(lines) + "\n"


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)
