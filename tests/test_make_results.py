"""The results generator picks each model's run by validation and formats MMRec's figures beside ours."""

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "make_results.py"
spec = importlib.util.spec_from_file_location("make_results", SCRIPT)
make_results = importlib.util.module_from_spec(spec)
spec.loader.exec_module(make_results)


records = make_results.records  # experiments/records.py, as make_results imports it


def _write(path: Path, payload) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload))


def _metrics(valid_r20, test_r20, per_epoch=0.05):
    return {"model": "vbpr", "valid": {"recall@20": valid_r20}, "best_epoch": 7, "epochs_run": 27,
            "test": {"recall@10": test_r20 / 2, "recall@20": test_r20, "ndcg@10": 0.1, "ndcg@20": 0.2},
            "timing": {"train_seconds_per_epoch": per_epoch, "eval_seconds": 0.01}}


def _pack(folder: Path, records_dir: Path) -> None:
    records.write(records.pack(folder), records_dir / f"{folder.name}.jsonl")


def test_search_winner_is_the_recorded_best_not_the_best_test(tmp_path):
    search = tmp_path / "runs" / "vbpr_search"
    # Trial 1 has the best TEST figure but the worse validation: the winner must be trial 0.
    _write(search / "trial_000" / "metrics.json", _metrics(0.42, 0.40))
    _write(search / "trial_001" / "metrics.json", _metrics(0.30, 0.45))
    _write(search / "search.json", {
        "valid_metric": "recall@20", "n_trials": 2,
        "trials": [{"trial": 0, "workdir": "/elsewhere/trial_000", "setting": {"loss_weights.reg": 1.0}},
                   {"trial": 1, "workdir": "/elsewhere/trial_001", "setting": {"loss_weights.reg": 0.1}}],
        "best": {"trial": 0, "workdir": "/elsewhere/trial_000", "setting": {"loss_weights.reg": 1.0}}})
    _pack(search, tmp_path / "records")
    chosen = make_results.collect_runs(tmp_path / "records")
    metrics, info = chosen["vbpr"]
    assert metrics["test"]["recall@20"] == 0.40
    assert info["grid"] == {"loss_weights.reg": [1.0, 0.1]}


def test_a_final_run_not_at_the_searchs_winning_setting_is_not_reported(tmp_path):
    search = tmp_path / "runs" / "vbpr_search"
    _write(search / "trial_000" / "metrics.json", _metrics(0.42, 0.40))
    _write(search / "search.json", {
        "valid_metric": "recall@20", "n_trials": 1,
        "trials": [{"trial": 0, "workdir": "trial_000", "setting": {"loss_weights.reg": 1.0}}],
        "best": {"trial": 0, "workdir": "trial_000", "setting": {"loss_weights.reg": 1.0}}})
    final = tmp_path / "runs" / "vbpr"
    _write(final / "metrics.json", _metrics(0.50, 0.49))
    (final / "config.yaml").write_text("loss_weights:\n  reg: 0.1\n")  # not the winner's 1.0
    _pack(search, tmp_path / "records")
    _pack(final, tmp_path / "records")
    assert make_results.collect_runs(tmp_path / "records")["vbpr"][0]["test"]["recall@20"] == 0.40
    (final / "config.yaml").write_text("loss_weights:\n  reg: 1.0\n")
    _pack(final, tmp_path / "records")
    assert make_results.collect_runs(tmp_path / "records")["vbpr"][0]["test"]["recall@20"] == 0.49


def test_table_puts_mmrec_anchor_and_speed_ratio_beside_ours(tmp_path):
    _write(tmp_path / "runs" / "vbpr" / "metrics.json", _metrics(0.42, 0.4100, per_epoch=0.05))
    _pack(tmp_path / "runs" / "vbpr", tmp_path / "records")
    anchors = {"VBPR": {"test_r20": 0.4017, "train_s_per_epoch": 0.2151}}
    table = "\n".join(make_results.ranking_table(make_results.collect_runs(tmp_path / "records"), anchors))
    row = [line for line in table.splitlines() if line.startswith("| vbpr ")][0]
    assert "**0.4100**" in row and "0.4017" in row
    assert "4.30x faster" in row  # 0.2151 / 0.05


def _row(name, kind, r20, **extra):
    return {"name": name, "kind": kind, "uses_features": kind == "model", "description": f"{name} described",
            "setting": {"loss_weights": {"bpr": 1.0, "reg": 0.5}, "best_epoch": 3, "epochs_run": 9},
            "valid": {"recall@20": r20 - 0.01}, "test": {"recall@10": r20 / 2, "recall@20": r20, "ndcg@10": 0.1,
                                                         "ndcg@20": 0.2}, **extra}


def test_coldstart_table_shows_every_row_and_flags_the_label_reading_reference():
    result = {"split": {"method": "cold_start_items", "holdout": 0.2, "seed": 999, "n_test_items": 143,
                        "n_test_users": 10, "n_test_interactions": 50},
              "rows": [_row("random", "baseline", 0.1399), _row("gated", "model", 0.7724)],
              "references": [_row("oracle", "reference", 0.54, leaks_test_labels=True)]}
    lines = make_results.coldstart_table(result)
    table = [line for line in lines if line.startswith("| ")][1:]
    assert [line.split(" | ")[0] for line in table] == ["| random", "| gated", "| oracle"]
    gated = next(line for line in table if line.startswith("| gated"))
    assert "**0.7724**" in gated and "0.7624" in gated and "reg=0.5" in gated and "best epoch 3 of 9" in gated
    assert "reads the test labels" in next(line for line in table if line.startswith("| oracle"))
    assert "143 new test items" in lines[0]


def test_missing_modality_table_reports_mean_and_std_per_fill():
    summary = {key: {"mean": value, "std": 0.01} for key, value in
               (("test_recall@20", 0.25), ("test_ndcg@20", 0.15), ("valid_recall@20", 0.23))}
    result = {"config": "c.yaml", "base_model": "vbpr",
              "reconstruction": {"modality": "vggish", "hidden_items": 3, "present_items": 7, "hide_seed": 0,
                                 "sources": ["whisper"],
                                 "errors_on_hidden_rows": {"mean": {"mse": 5.0, "cosine": 0.9, "centred_cosine": 0.0},
                                                           "gan": {"mse": 2.5, "cosine": 0.95, "centred_cosine": 0.7}}},
              "recommendation": {"cold_start": {"base_modalities": ["vggish"], "split": {"method": "x"},
                                                "gan": {"summary": summary, "runs": [{}, {}, {}]}}}}
    lines = make_results.missing_modality_table(result)
    assert lines[0].startswith("3 of 10 items' `vggish` rows hidden")
    assert "| gan | 2.5 | 0.9500 | 0.7000 |" in lines
    assert "| cold_start | vggish | gan | 0.2500 ± 0.0100 | 0.1500 | 0.2300 | 3 |" in lines


def test_popularity_buckets_partition_items_and_render_ratios_to_bpr():
    spec_b = importlib.util.spec_from_file_location("popularity_buckets", SCRIPT.parent / "popularity_buckets.py")
    buckets = importlib.util.module_from_spec(spec_b)
    spec_b.loader.exec_module(buckets)
    counts = [0, 1, 2, 3, 5, 6, 20, 21, 400]
    masks = buckets.bucket_masks(__import__("numpy").array(counts))
    assert [name for name, mask in masks.items() for c, m in zip(counts, mask) if m] == \
        ["unseen", "1-2", "1-2", "3-5", "3-5", "6-20", "6-20", ">20", ">20"]
    names = [b[0] for b in buckets.BUCKETS]
    result = {"buckets": [{"name": n} for n in names],
              "counts": {"test": {n: {"interactions": 10 * (i + 1)} for i, n in enumerate(names)}},
              "chance": {"test": {n: {"recall@20": 0.003} for n in names}},
              "rows": [{"label": "bpr", "test": {n: {"recall@20": 0.02} for n in names}},
                       {"label": "freedom", "test": {n: {"recall@20": 0.05} for n in names if n != ">20"}}]}
    lines = make_results.popularity_buckets_table(result)
    assert lines[2].startswith("| held-out pairs (share) | 10 (7%) | 20 (13%)")
    assert lines[3] == "| random ranking (expected) | " + " | ".join(["0.0030"] * 5) + " |"
    assert lines[5] == "| freedom | " + " | ".join(["0.0500 (2.50x)"] * 4 + ["–"]) + " |"


def test_sampler_table_sets_a_trained_items_run_beside_the_earlier_all_items_winner(tmp_path):
    search = tmp_path / "runs" / "vbpr_search"
    _write(search / "trial_000" / "metrics.json", _metrics(0.42, 0.40))
    (search / "trial_000" / "config.yaml").write_text("loss_weights:\n  reg: 1.0\n")  # recorded before negative_items
    _write(search / "search.json", {
        "valid_metric": "recall@20", "n_trials": 1,
        "trials": [{"trial": 0, "workdir": "trial_000", "setting": {"loss_weights.reg": 1.0}}],
        "best": {"trial": 0, "workdir": "trial_000", "setting": {"loss_weights.reg": 1.0}}})
    final = tmp_path / "runs" / "vbpr"
    _write(final / "metrics.json", _metrics(0.50, 0.49))
    (final / "config.yaml").write_text("loss_weights:\n  reg: 1.0\ntrain:\n  negative_items: all\n")
    records_dir = tmp_path / "records" / "tiktok"
    _pack(search, records_dir)
    _pack(final, records_dir)
    chosen = make_results.collect_runs(records_dir)
    assert make_results.sampler_table(records_dir, chosen, tmp_path) == []  # not a trained-items run
    (final / "config.yaml").write_text("loss_weights:\n  reg: 1.0\ntrain:\n  negative_items: trained\n")
    _pack(final, records_dir)
    chosen = make_results.collect_runs(records_dir)
    lines = make_results.sampler_table(records_dir, chosen, tmp_path)
    assert lines[4] == ("| vbpr | 0.4200 / 0.4000 (epoch 7) | 0.5000 / **0.4900** (epoch 7) | "
                        "`records/tiktok/vbpr_search.jsonl` |")
    assert "differs in that alone" in lines[0]


def test_a_sampler_pair_that_differs_in_more_than_the_negatives_is_not_filed_as_the_samplers_effect(tmp_path):
    # The final run also standardizes the features (a second search chose that): its row must
    # leave the "negatives alone" table and name the other difference.
    records_dir = tmp_path / "records" / "tiktok"
    first = tmp_path / "runs" / "vbpr_search"
    _write(first / "trial_000" / "metrics.json", _metrics(0.42, 0.40))
    (first / "trial_000" / "config.yaml").write_text("loss_weights:\n  reg: 1.0\n")
    _write(first / "search.json", {
        "valid_metric": "recall@20", "n_trials": 1,
        "trials": [{"trial": 0, "workdir": "trial_000", "setting": {"loss_weights.reg": 1.0}}],
        "best": {"trial": 0, "workdir": "trial_000", "setting": {"loss_weights.reg": 1.0}}})
    second = tmp_path / "runs" / "vbpr_search_feature_transform"
    standardized = {"data.feature_transform": {"visual_feat": "standardize"}}
    for trial, (valid, transform) in enumerate([(0.45, {"visual_feat": "none"}), (0.60, {"visual_feat": "standardize"})]):
        _write(second / f"trial_00{trial}" / "metrics.json", _metrics(valid, valid))
        (second / f"trial_00{trial}" / "config.yaml").write_text(
            f"loss_weights:\n  reg: 1.0\ntrain:\n  negative_items: trained\ndata:\n  feature_transform: "
            f"{json.dumps(transform)}\n")
    _write(second / "search.json", {
        "valid_metric": "recall@20", "n_trials": 2,
        "trials": [{"trial": 0, "workdir": "trial_000", "setting": {"data.feature_transform": {"visual_feat": "none"}}},
                   {"trial": 1, "workdir": "trial_001", "setting": standardized}],
        "best": {"trial": 1, "workdir": "trial_001", "setting": standardized}})
    final = tmp_path / "runs" / "vbpr"
    _write(final / "metrics.json", _metrics(0.60, 0.60))
    (final / "config.yaml").write_text("loss_weights:\n  reg: 1.0\ntrain:\n  negative_items: trained\n"
                                       "  checkpoint_every: 7\ndata:\n  feature_transform: {visual_feat: standardize}\n")
    for folder in (first, second, final):
        _pack(folder, records_dir)
    chosen = make_results.collect_runs(records_dir)
    # The final run's setting is the better search's winner (valid 0.60), not the first search's.
    assert chosen["vbpr"][1]["setting"] == standardized
    assert chosen["vbpr"][1]["source"] == "records/tiktok/vbpr.jsonl"
    lines = make_results.sampler_table(records_dir, chosen, tmp_path)
    assert not any("differs in that alone" in line for line in lines)
    assert "MORE than the negatives" in lines[0]
    # checkpoint_every does not change a run's result; the transform does.
    assert lines[-1] == ("| vbpr | 0.4200 / 0.4000 (epoch 7) | 0.6000 / **0.6000** (epoch 7) | "
                         "`records/tiktok/vbpr_search.jsonl` | data.feature_transform.visual_feat: – -> standardize |")
    row = next(line for line in make_results.ranking_table(chosen, {}) if line.startswith("| vbpr |"))
    assert row.endswith("| data.feature_transform={visual_feat: standardize} |")


def test_config_differences_fill_defaults_and_old_runs_drew_negatives_from_all_items():
    diff = make_results.config_differences
    before = {"train": {"learning_rate": 0.001}, "data": {"feature_transform": {"visual_feat": "none"}}}
    after = {"train": {"negative_items": "all", "epochs": 1000, "checkpoint_every": 3}, "data": {}}
    assert diff(before, after) == []  # defaults, an explicit "none" transform, checkpointing
    assert diff({"train": {}}, {"train": {"negative_items": "trained"}}) == ["train.negative_items: all -> trained"]
    assert diff({"train": {}}, {"train": {"negative_items": "trained"}}, expected=("train",)) == []
    assert diff({"model": {"args": {"learned_graph": "epoch"}}}, {"model": {"args": {"learned_graph": "step"}}}) == [
        "model.args.learned_graph: epoch -> step"]
    assert diff(None, {}) == ["config not recorded"]


def test_transform_table_labels_the_warm_row_by_its_own_transform_and_names_other_differences(tmp_path):
    records_dir = tmp_path / "records" / "tiktok"
    final = tmp_path / "runs" / "vbpr"
    _write(final / "metrics.json", _metrics(0.60, 0.61))
    (final / "config.yaml").write_text("model:\n  name: vbpr\ntrain:\n  negative_items: trained\n"
                                       "data:\n  feature_transform: {visual_feat: standardize}\n")
    _pack(final, records_dir)
    raw = tmp_path / "runs" / "vbpr_none"
    _write(raw / "metrics.json", _metrics(0.40, 0.41))
    (raw / "config.yaml").write_text("model:\n  name: vbpr\ntrain:\n  negative_items: trained\n")
    centered = tmp_path / "runs" / "vbpr_center"
    _write(centered / "metrics.json", _metrics(0.45, 0.44))
    (centered / "config.yaml").write_text("model:\n  name: vbpr\n  args: {fusion: late}\n"
                                          "data:\n  feature_transform: {visual_feat: center}\n")
    for folder in (raw, centered):
        _pack(folder, records_dir / "feature_transform")
    chosen = make_results.collect_runs(records_dir)
    lines = make_results.transform_table(records_dir / "feature_transform", chosen, tmp_path)
    assert lines[2] == ("| vbpr | visual_feat: standardize | 0.6000 | **0.6100** | 0.2000 | 7 | warm-table run | "
                        "`records/tiktok/vbpr.jsonl` |")
    assert lines[3] == ("| vbpr | visual_feat: center | 0.4500 | **0.4400** | 0.2000 | 7 | model.args.fusion: – -> late; "
                        "train.negative_items: trained -> all | `records/tiktok/feature_transform/vbpr_center.jsonl` |")
    assert lines[4] == ("| vbpr | none | 0.4000 | **0.4100** | 0.2000 | 7 | none | "
                        "`records/tiktok/feature_transform/vbpr_none.jsonl` |")


def _one_record(root: Path) -> None:
    run = root / "runs" / "vbpr"
    _write(run / "metrics.json", _metrics(0.42, 0.40))
    _pack(run, root / "records" / "tiny")


def test_a_missing_or_empty_records_folder_is_an_error_and_writes_no_table(tmp_path, capsys):
    results = SCRIPT.parent / "results"
    assert make_results.main(["--dataset", "lfm2kk"]) == 2  # a typo: no experiments/records/lfm2kk
    assert "records/lfm2kk: no such records folder" in capsys.readouterr().err
    assert not (results / "lfm2kk.md").exists()
    assert make_results.main(["--dataset", "tiny", "--root", str(tmp_path / "nope")]) == 2
    assert "no such records folder" in capsys.readouterr().err
    (tmp_path / "records" / "tiny").mkdir(parents=True)
    assert make_results.main(["--dataset", "tiny", "--root", str(tmp_path)]) == 2
    assert "no run records (*.jsonl)" in capsys.readouterr().err
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert make_results.main(["--dataset", "tiny", "--root", str(a_file)]) == 2
    assert "error:" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()


def test_a_malformed_record_is_named_by_line_without_a_traceback(tmp_path, capsys):
    _one_record(tmp_path)
    (tmp_path / "records" / "tiny" / "bad.jsonl").write_text('{"format": "jaxrec-run-record/1", "kind": "run"}\n{oops\n')
    assert make_results.main(["--dataset", "tiny", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "bad.jsonl:2: not valid JSON" in err and "Traceback" not in err
    assert not (tmp_path / "results" / "tiny.md").exists()


def test_the_header_names_the_records_folder_read_and_a_smoke_runs_epoch_cap(tmp_path, capsys):
    _one_record(tmp_path)
    assert make_results.main(["--dataset", "tiny", "--root", str(tmp_path), "--anchors", str(tmp_path)]) == 0
    header = (tmp_path / "results" / "tiny.md").read_text().split("## Warm start")[0]
    assert f"`{tmp_path.resolve() / 'records' / 'tiny'}/*.jsonl`" in header
    assert "experiments/records/tiny" not in header and "smoke run" not in header
    assert make_results.main(["--dataset", "tiny", "--root", str(tmp_path), "--anchors", str(tmp_path),
                              "--max-epochs", "3"]) == 0
    header = (tmp_path / "results" / "tiny.md").read_text().split("## Warm start")[0]
    assert "smoke run" in header and "capped at 3" in header
    capsys.readouterr()
