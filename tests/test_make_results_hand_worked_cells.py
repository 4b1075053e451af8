"""make_results.py against hand-written record files and hand-worked table cells.

Every expected cell below was worked out by hand from the numbers in the records written here
(never by calling the code under test): which run fills a row (VALID recall@20 only, across
several searches of one row, a final run only at its searches' winning setting), the column each
metric lands in, the speed ratios, the row order and the content-over-BPR ratio line.
"""

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "make_results.py"
spec = importlib.util.spec_from_file_location("make_results_hand_worked", SCRIPT)
make_results = importlib.util.module_from_spec(spec)
spec.loader.exec_module(make_results)

FORMAT = "jaxrec-run-record/1"


def _metrics(model, *, valid_r20, test, epochs=(30, 20), per_epoch=0.5, eval_s=0.25):
    r10, r20, n10, n20 = test
    return {"model": model, "valid": {"recall@20": valid_r20, "recall@10": valid_r20 / 10},
            "test": {"recall@10": r10, "recall@20": r20, "ndcg@10": n10, "ndcg@20": n20},
            "epochs_run": epochs[0], "best_epoch": epochs[1],
            "timing": {"train_seconds_per_epoch": per_epoch, "eval_seconds": eval_s}}


def _config(model, modalities=None, reg=None):
    args = {"modalities": modalities} if modalities else {}
    config = {"model": {"name": model, "args": args}}
    if reg is not None:
        config["loss_weights"] = {"reg": reg}
    return config


def _write(path: Path, lines) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


def _run_record(path: Path, config, metrics) -> None:
    _write(path, [{"format": FORMAT, "kind": "run", "name": path.stem},
                  {"name": path.stem, "config": config, "metrics": metrics, "history": []}])


def _search_record(path: Path, trials, best: int) -> None:
    """trials: [(setting, config, metrics)]; ``best``: the index the search recorded as its winner."""
    summary = {"valid_metric": "recall@20", "n_trials": len(trials),
               "trials": [{"trial": i, "workdir": f"trial_{i:03d}", "setting": setting,
                           "valid": metrics["valid"], "test": metrics["test"]}
                          for i, (setting, _, metrics) in enumerate(trials)]}
    summary["best"] = dict(summary["trials"][best])
    _write(path, [{"format": FORMAT, "kind": "search", "name": path.stem, "search": summary}] +
           [{"name": f"trial_{i:03d}", "config": config, "metrics": metrics, "history": []}
            for i, (_, config, metrics) in enumerate(trials)])


def _records(root: Path) -> Path:
    records_dir = root / "records" / "tiny"
    # bpr: a single run at the committed config.
    _run_record(records_dir / "bpr.jsonl", _config("bprmf"),
                _metrics("bprmf", valid_r20=0.3000, test=(0.1250, 0.2500, 0.0625, 0.0875)))
    # vbpr: two searches. The first search's winner has the better TEST recall@20 (0.50) but the
    # worse VALID (0.40); the second's winner has valid 0.45, test 0.33: the row is the second's.
    vbpr = _config("vbpr", ["audio", "text"], 1.0)
    _search_record(records_dir / "vbpr_search.jsonl", [
        ({"loss_weights.reg": 1.0}, vbpr, _metrics("vbpr", valid_r20=0.35, test=(0.30, 0.60, 0.20, 0.25))),
        ({"loss_weights.reg": 0.1}, _config("vbpr", ["audio", "text"], 0.1),
         _metrics("vbpr", valid_r20=0.40, test=(0.25, 0.50, 0.15, 0.18)))], best=1)
    _search_record(records_dir / "vbpr_search_low_reg.jsonl", [
        ({"loss_weights.reg": 0.01}, _config("vbpr", ["audio", "text"], 0.01),
         _metrics("vbpr", valid_r20=0.45, test=(0.1500, 0.3300, 0.1100, 0.1300), per_epoch=0.3, eval_s=0.5))],
        best=0)
    # freedom: two searches and a final run at the better search's winning setting (reg 0.1,
    # valid 0.30 beats reg 1.0's 0.20): the final run's own figures fill the row.
    _search_record(records_dir / "freedom_search.jsonl", [
        ({"loss_weights.reg": 1.0}, _config("freedom", ["audio"], 1.0),
         _metrics("freedom", valid_r20=0.20, test=(0.1, 0.2, 0.1, 0.1)))], best=0)
    _search_record(records_dir / "freedom_search_b.jsonl", [
        ({"loss_weights.reg": 0.1}, _config("freedom", ["audio"], 0.1),
         _metrics("freedom", valid_r20=0.30, test=(0.1, 0.3, 0.1, 0.1)))], best=0)
    _run_record(records_dir / "freedom.jsonl", _config("freedom", ["audio"], 0.1),
                _metrics("freedom", valid_r20=0.3100, test=(0.2000, 0.4000, 0.1500, 0.1700), epochs=(40, 33)))
    # Two models outside the family order: after every listed model, alphabetically.
    _run_record(records_dir / "zeta.jsonl", _config("zeta"),
                _metrics("zeta", valid_r20=0.9, test=(0.9, 0.9, 0.9, 0.9)))
    _run_record(records_dir / "alpha.jsonl", _config("alpha"),
                _metrics("alpha", valid_r20=0.1, test=(0.1, 0.1, 0.1, 0.1)))
    return records_dir


def test_each_row_is_the_run_chosen_by_validation_with_hand_worked_cells(tmp_path):
    chosen = make_results.collect_runs(_records(tmp_path))
    anchors = {"BPR": {"test_r20": 0.2000, "train_s_per_epoch": 2.0},
               "VBPR": {"test_r20": 0.3100, "train_s_per_epoch": 0.2},
               "FREEDOM": {"test_r20": 0.3500}}
    lines = make_results.ranking_table(chosen, anchors)
    assert lines[0] == ("| model | test R@10 | test R@20 | test N@10 | test N@20 | valid R@20 | s/epoch | "
                        "eval s (valid+test) | epochs (best) | MMRec test R@20 | MMRec s/epoch | setting (by valid) |")
    rows = lines[2:]
    assert [row.split(" | ")[0] for row in rows] == ["| bpr", "| vbpr", "| freedom", "| alpha", "| zeta"]
    # bpr: MMRec's 2.0 s/epoch over our 0.5 = 4.00x faster; eval s: the run timed one split, 2 x 0.25.
    assert rows[0] == ("| bpr | 0.1250 | **0.2500** | 0.0625 | 0.0875 | 0.3000 | 0.500 (4.00x faster) | 0.500 | "
                       "30 (20) | 0.2000 | 2.000 | config as committed |")
    # vbpr: the second search's winner (valid 0.45), not the first's (valid 0.40, test 0.50);
    # 0.3 s/epoch over MMRec's 0.2 = 1.50x slower; eval 2 x 0.5 = 1.000.
    assert rows[1] == ("| vbpr | 0.1500 | **0.3300** | 0.1100 | 0.1300 | 0.4500 | 0.300 (1.50x slower) | 1.000 | "
                       "30 (20) | 0.3100 | 0.200 | loss_weights.reg=0.01 |")
    # freedom: the final run (run at the better search winner's reg=0.1), with its own figures.
    assert rows[2] == ("| freedom | 0.2000 | **0.4000** | 0.1500 | 0.1700 | 0.3100 | 0.500 | 0.500 | 40 (33) | "
                       "0.3500 | – | loss_weights.reg=0.1 |")
    assert chosen["freedom"][1]["source"] == "records/tiny/freedom.jsonl"


def test_grid_lines_name_the_winning_search_of_each_row(tmp_path):
    chosen = make_results.collect_runs(_records(tmp_path))
    lines = make_results.grid_lines(chosen)
    assert "- **vbpr**: 1 trials, loss_weights.reg in [0.01] (source `records/tiny/vbpr_search_low_reg.jsonl`)" in lines
    assert "- **freedom**: 1 trials, loss_weights.reg in [0.1] (source `records/tiny/freedom.jsonl`)" in lines
    assert "- **bpr**: single setting (source `records/tiny/bpr.jsonl`)" in lines


def test_content_over_bpr_ratio_takes_the_best_valid_content_model(tmp_path):
    chosen = make_results.collect_runs(_records(tmp_path))
    # Content models: vbpr (valid 0.45, test 0.33) and freedom (valid 0.31, test 0.40); bpr test 0.25.
    # Best by VALID: vbpr, 0.33 / 0.25 = 1.32x; best on test: freedom, 0.40 / 0.25 = 1.60x.
    assert make_results.content_ratio_lines(chosen) == [
        "Content over tuned BPR-MF (test recall@20): the content model with the best VALID recall@20, vbpr, "
        "0.3300 vs 0.2500 = **1.32x**; the best on test, freedom, 0.4000 = 1.60x."]


def test_a_search_without_its_winners_run_line_reports_the_recorded_best(tmp_path):
    # An older record whose winning trial's run line is absent: the summary's best (valid/test) fills the row.
    path = tmp_path / "records" / "tiny" / "gated_search.jsonl"
    best = {"trial": 1, "workdir": "trial_001", "setting": {"loss_weights.reg": 0.5},
            "valid": {"recall@20": 0.6}, "test": {"recall@10": 0.11, "recall@20": 0.22, "ndcg@10": 0.33,
                                                  "ndcg@20": 0.44}, "best_epoch": 9}
    _write(path, [{"format": FORMAT, "kind": "search", "name": "gated_search",
                   "search": {"n_trials": 2, "trials": [{"trial": 0, "workdir": "trial_000",
                                                         "setting": {"loss_weights.reg": 5.0}}, best],
                              "best": best}},
                  {"name": "trial_000", "config": None, "metrics": _metrics("gated", valid_r20=0.5,
                                                                            test=(0.9, 0.9, 0.9, 0.9)),
                   "history": []}])
    chosen = make_results.collect_runs(path.parent)
    row = make_results.ranking_table(chosen, {})[2]
    assert row.startswith("| gated | 0.1100 | **0.2200** | 0.3300 | 0.4400 | 0.6000 | – | – | – (9) |")


def test_coldstart_table_puts_each_metric_under_its_own_header():
    result = {"split": {"method": "cold_start_items", "holdout": 0.2, "seed": 999, "n_test_items": 12,
                        "n_test_users": 5, "n_test_interactions": 30},
              "rows": [{"name": "vbpr", "kind": "model", "uses_features": True, "description": "d",
                        "setting": {"loss_weights": {"bpr": 1.0, "reg": 0.5}, "best_epoch": 4, "epochs_run": 10},
                        "valid": {"recall@10": 0.0505, "recall@20": 0.5505, "ndcg@20": 0.6606},
                        "test": {"recall@10": 0.1101, "recall@20": 0.2202, "ndcg@10": 0.3303, "ndcg@20": 0.4404},
                        "source": "experiments/records/x/coldstart/vbpr_search.jsonl#trial_001"}],
              "references": []}
    lines = make_results.coldstart_table(result)
    assert lines[2] == ("| row | kind | uses features | test R@10 | test R@20 | test N@10 | test N@20 | valid R@20 | "
                        "setting |")
    assert lines[4] == ("| vbpr | model | yes | 0.1101 | **0.2202** | 0.3303 | 0.4404 | 0.5505 | reg=0.5, "
                        "best epoch 4 of 10, `coldstart/vbpr_search.jsonl#trial_001` |")
    assert lines[0].startswith("Split: cold_start_items (holdout 0.2, seed 999): 12 new test items, 5 test users, "
                               "30 test interactions")


def test_missing_modality_table_shows_each_statistic_of_its_own_metric():
    summary = {"test_recall@20": {"mean": 0.2500, "std": 0.0125}, "test_ndcg@20": {"mean": 0.1500, "std": 0.0300},
               "valid_recall@20": {"mean": 0.2300, "std": 0.0400}, "test_recall@10": {"mean": 0.1111, "std": 0.05}}
    result = {"config": "c.yaml", "base_model": "vbpr",
              "reconstruction": {"modality": "vggish", "hidden_items": 3, "present_items": 7, "hide_seed": 0,
                                 "sources": ["whisper"],
                                 "errors_on_hidden_rows": {"mean": {"mse": 5.0, "cosine": 0.9, "centred_cosine": 0.0}}},
              "recommendation": {"warm": {"base_modalities": ["a", "b"], "split": "x",
                                          "full": {"summary": summary, "runs": [{}, {}]}}}}
    lines = make_results.missing_modality_table(result)
    assert "| warm | a, b | full | 0.2500 ± 0.0125 | 0.1500 | 0.2300 | 2 |" in lines


def test_unseen_items_table_lists_only_the_runs_above_the_random_ranking():
    counts = {split: {"interactions": 40, "items": 12, "users": 30} for split in ("valid", "test")}
    chance = {"valid": {"recall@20": 0.02}, "test": {"recall@10": 0.01, "recall@20": 0.02, "recall@50": 0.05}}
    rows = [{"model": "bpr", "item_side": "ID table", "negative_items": "all", "valid": {"recall@20": 0.001},
             "test": {"recall@10": 0.0, "recall@20": 0.001, "recall@50": 0.004, "ndcg@20": 0.0005,
                      "rank_percentile": {"median": 0.8, "top_tenth": 0.025}, "num_users": 30}},
            {"model": "freedom", "item_side": "content", "modalities": ["v", "t"], "negative_items": "trained",
             "valid": {"recall@20": 0.09},
             "test": {"recall@10": 0.04, "recall@20": 0.08, "recall@50": 0.16, "ndcg@20": 0.03,
                      "rank_percentile": {"median": 0.25, "top_tenth": 0.375}, "num_users": 30}}]
    lines = make_results.unseen_items_table({"counts": counts, "chance": chance, "rows": rows})
    table = [line for line in lines if line.startswith("| ")]
    assert table[1] == "| random ranking (expected) | – | – | 0.0200 | 0.0100 | 0.0200 | 0.0500 | – | 50% | 10% | 30 |"
    assert table[2] == ("| bpr | ID table | all items | 0.0010 | 0.0000 | **0.0010** | 0.0040 | 0.0005 | 80.0% | 2.5% | "
                        "30 |")
    assert table[3] == ("| freedom | content (v, t) | trained items | 0.0900 | 0.0400 | **0.0800** | 0.1600 | 0.0300 | "
                        "25.0% | 37.5% | 30 |")
    # recall@50 against chance's 0.05: freedom's 0.16 is above, bpr's 0.004 below.
    assert any(line.startswith("Runs above a random ranking on these test interactions (recall@50): freedom. ")
               for line in lines)
