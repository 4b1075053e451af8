"""What a run leaves for its reader: curves.png, TensorBoard events, the runs comparison.

TensorBoard files are read back with ``_tensorboard_events``, a hand-written decoder of the
TFRecord framing and the protobuf wire format (independent of the writer's library).
"""

import json
import math
from pathlib import Path

import pytest

from jaxrec.errors import ConfigError
from jaxrec.train import _outputs
from jaxrec.train._config import TrainConfig
from jaxrec.train._outputs import EventLog, compare_table, curves_figure

from _tensorboard_events import events, fields_of, read_scalars


def history(n_epochs=6, eval_every=2):
    rows, best, best_value = [], None, -1.0
    for epoch in range(1, n_epochs + 1):
        row = {"epoch": epoch, "loss": 1.0 / epoch, "terms": {"bpr": 0.7 / epoch, "reg": 500.0 / epoch ** 3},
               "train_seconds": 0.25}
        if epoch % eval_every == 0:
            value = [0.1, 0.3, 0.2][(epoch // eval_every - 1) % 3]
            row["valid"] = {"recall@20": value, "ndcg@20": value / 2}
            row["eval_seconds"] = 0.125
            if value > best_value:
                best, best_value = epoch, value
            row["best_epoch"] = best
        rows.append(row)
    return rows


# ---- TensorBoard ------------------------------------------------------------------------------


def test_event_log_holds_every_epoch_scalar(tmp_path):
    config = TrainConfig(learning_rate=0.01, epochs=6, schedule="cosine", min_learning_rate=0.001)
    log = EventLog(tmp_path, config, steps_per_epoch=10)
    for row in history():
        log.epoch(row)
    log.close()
    scalars = read_scalars(tmp_path / _outputs.TENSORBOARD_DIR)
    assert scalars["train/loss"] == pytest.approx({e: 1.0 / e for e in range(1, 7)})
    assert scalars["train/loss_terms/reg"] == pytest.approx({e: 500.0 / e ** 3 for e in range(1, 7)})
    assert scalars["valid/recall_20"] == pytest.approx({2: 0.1, 4: 0.3, 6: 0.2})
    assert scalars["valid/ndcg_20"] == pytest.approx({2: 0.05, 4: 0.15, 6: 0.1})
    assert scalars["valid/best_epoch"] == {2: 2, 4: 4, 6: 4}
    assert scalars["time/train_seconds"] == {e: 0.25 for e in range(1, 7)}
    assert scalars["time/eval_seconds"] == {2: 0.125, 4: 0.125, 6: 0.125}
    # Cosine decay from 0.01 to 0.001 over 60 updates, read at each epoch's last update (closed form).
    expected = {e: 0.001 + 0.009 * 0.5 * (1 + math.cos(math.pi * (10 * e - 1) / 60)) for e in range(1, 7)}
    assert scalars["train/learning_rate"] == pytest.approx(expected, rel=1e-5)


def test_a_resumed_log_purges_the_epochs_it_recomputes(tmp_path):
    rows = history()
    first = EventLog(tmp_path)
    for row in rows[:5]:  # the killed process had written epochs 1-5, its checkpoint was after epoch 3
        first.epoch(row)
    first.close()
    second = EventLog(tmp_path, first_epoch=4)
    for row in rows[3:]:
        second.epoch(row)
    second.close()
    files = sorted((tmp_path / _outputs.TENSORBOARD_DIR).glob("events.out.tfevents.*"))
    assert len(files) == 2
    # A SessionLog START (Event field 7, status 1) at step 4: TensorBoard's purge marker, which
    # hides the first file's points from step 4 on.
    starts = [step for path in files for step, fields in events(path) for number, _, value in fields
              if number == 7 and {n: v for n, _, v in fields_of(value)}.get(1) == 1]
    assert starts == [4]


# ---- curves.png ------------------------------------------------------------------------------


def test_curves_have_a_panel_per_term_integer_epochs_and_the_best_epoch(tmp_path):
    from matplotlib import pyplot as plt

    fig = curves_figure(history(), "recall@20")
    try:
        panels = {ax.get_title(): ax for ax in fig.axes if ax.get_visible()}
        assert set(panels) == {"loss (weighted sum)", "term: bpr (unweighted)", "term: reg (unweighted)",
                               "valid recall@20"}
        assert panels["term: reg (unweighted)"].get_yscale() == "log"  # 500 .. 2.3: more than 20x
        assert panels["term: bpr (unweighted)"].get_yscale() == "linear"  # 0.7 .. 0.12
        for ax in panels.values():
            ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
            assert all(float(t).is_integer() for t in ticks), ax.get_title()
            assert any(list(line.get_xdata()) == [4, 4] for line in ax.get_lines()), "best-epoch line"
        labels = panels["valid recall@20"].get_legend_handles_labels()[1]
        assert labels == ["best: epoch 4, 0.3000"]
    finally:
        plt.close(fig)
    _outputs.plot_curves(tmp_path / "curves.png", history(), "recall@20")
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["curves.png"]


def test_curves_draw_test_beside_valid_when_the_rows_hold_it():
    from matplotlib import pyplot as plt

    rows = history()
    for row in rows:
        if "valid" in row:
            row["test"] = {"recall@20": row["valid"]["recall@20"] + 0.05}
    fig = curves_figure(rows, "recall@20")
    try:
        panel = next(ax for ax in fig.axes if ax.get_title() == "valid recall@20 (and test)")
        lines = {line.get_label(): line for line in panel.get_lines()}
        assert list(lines["test (selects nothing)"].get_xdata()) == [2, 4, 6]
        assert list(lines["test (selects nothing)"].get_ydata()) == pytest.approx([0.15, 0.35, 0.25])
        assert list(lines["valid"].get_ydata()) == pytest.approx([0.1, 0.3, 0.2])
        assert panel.get_legend_handles_labels()[1] == ["valid", "test (selects nothing)", "best: epoch 4, 0.3000"]
    finally:
        plt.close(fig)


# ---- runs compare ------------------------------------------------------------------------------


def _finished(folder: Path, recall: float) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text("model: {name: bprmf}\n")
    (folder / "metrics.json").write_text(json.dumps({
        "model": "bprmf", "dataset": "toy", "seed": 1, "best_epoch": 2, "epochs_run": 3,
        "valid_metric": "recall@20", "valid": {"recall@20": recall}, "test": {"recall@20": recall / 2},
        "timing": {"train_seconds_per_epoch": 0.5, "eval_seconds": 0.1}}))
    return folder


def test_compare_skips_unfinished_folders_with_a_note(tmp_path):
    done = _finished(tmp_path / "done", 0.25)
    killed = tmp_path / "killed"
    (killed / "checkpoints").mkdir(parents=True)
    (killed / "log.txt").write_text("epoch 1\n")
    (tmp_path / "notes.md").write_text("x")
    search = tmp_path / "grid"
    _finished(search / "trial_000", 0.1)
    _finished(search / "trial_001", 0.4)
    (search / "search.json").write_text(json.dumps({"n_trials": 2, "trials": [{}, {}], "best": {
        "trial": 1, "workdir": "/elsewhere/grid/trial_001"}}))  # the folder moved since: found by name
    running = tmp_path / "running"
    (running / "trial_000").mkdir(parents=True)
    (running / "search.json").write_text(json.dumps({"n_trials": 3, "trials": [{}], "best": None}))

    table = compare_table([done, killed, tmp_path / "notes.md", search, running])
    lines = table.splitlines()
    assert len([line for line in lines if line.startswith("| ")]) == 3  # header + two runs
    assert f"| {done} |" in table and "0.2500 (recall@20)" in table
    assert f"| {search} (search winner trial_001) |" in table and "0.4000 (recall@20)" in table
    assert "Skipped 3 folder(s) without a finished run:" in table
    assert f"- {killed}: an unfinished or failed run (no metrics.json)" in table
    assert f"- {tmp_path / 'notes.md'}: not a folder" in table
    assert f"- {running}: a search still in progress (1 of 3 trials done, no winner yet)" in table

    with pytest.raises(ConfigError, match="no finished run to compare: .*killed: an unfinished"):
        compare_table([killed])


def test_compare_from_the_command_line_does_not_abort(tmp_path, capsys):
    from jaxrec.cli.main import main

    done = _finished(tmp_path / "done", 0.25)
    (tmp_path / "stub" / "checkpoints").mkdir(parents=True)
    assert main(["runs", "compare", str(done), str(tmp_path / "stub")]) == 0
    out = capsys.readouterr().out
    assert "0.2500 (recall@20)" in out and "stub: an unfinished or failed run" in out


def test_done_line_reports_test_figures_at_the_selection_cutoff():
    # A run validated on recall@10 with ks [5, 10] has no @20 figures: the log's last line
    # showed "test " with nothing after it.
    metrics = {"best_epoch": 2, "epochs_run": 3, "valid": {"recall@10": 0.33333, "ndcg@10": 0.2},
               "test": {"recall@5": 0.1, "recall@10": 0.3, "ndcg@10": 0.14523, "map@10": 0.09}}
    assert _outputs.done_line(metrics, "recall@10") == (
        "done: best epoch 2 of 3; valid recall@10 0.3333; test recall@10 0.3000, ndcg@10 0.1452")
    assert _outputs.done_line(metrics, "map@10").endswith("test recall@10 0.3000, ndcg@10 0.1452, map@10 0.0900")
    assert _outputs.done_line({**metrics, "test": {}}, "recall@10").endswith("; test not ranked")
