"""The missing-modality section's heading states the fraction of rows the result file says were
hidden (its ``hide_fraction``), not a fixed figure."""

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "make_results.py"
spec = importlib.util.spec_from_file_location("make_results_missing_heading", SCRIPT)
make_results = importlib.util.module_from_spec(spec)
spec.loader.exec_module(make_results)


def _root(tmp_path: Path, hide_fraction: float, hidden: int, present: int) -> Path:
    records_dir = tmp_path / "records" / "tiny"
    records_dir.mkdir(parents=True)
    metrics = {"valid": {"recall@20": 0.5}, "test": {"recall@10": 0.1, "recall@20": 0.2, "ndcg@10": 0.3,
                                                      "ndcg@20": 0.4}}
    (records_dir / "bpr.jsonl").write_text(
        json.dumps({"format": "jaxrec-run-record/1", "kind": "run", "name": "bpr"}) + "\n"
        + json.dumps({"name": "bpr", "config": {"model": {"name": "bprmf"}}, "metrics": metrics, "history": []}) + "\n")
    summary = {key: {"mean": 0.25, "std": 0.01} for key in ("test_recall@20", "test_ndcg@20", "valid_recall@20")}
    result = {"config": "experiments/configs/lfm2k/gan.yaml", "base_model": "vbpr", "hide_fraction": hide_fraction,
              "reconstruction": {"modality": "vggish", "hidden_items": hidden, "present_items": present,
                                 "hide_seed": 0, "sources": ["whisper"],
                                 "errors_on_hidden_rows": {"mean": {"mse": 1.0, "cosine": 0.5, "centred_cosine": 0.0}}},
              "recommendation": {"warm": {"base_modalities": ["vggish"], "split": "x",
                                          "gan": {"summary": summary, "runs": [{}, {}]}}}}
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "tiny_missing_modality.json").write_text(json.dumps(result))
    return tmp_path


def _heading(report: str) -> str:
    return next(line for line in report.splitlines() if line.startswith("## Missing modality"))


def test_the_heading_gives_the_hidden_fraction_of_the_result_file(tmp_path):
    root = _root(tmp_path, 0.5, 5, 5)
    report = make_results.build_report("tiny", tmp_path / "no_anchors", root)
    assert _heading(report) == "## Missing modality (50% of one modality's rows hidden)"
    assert "5 of 10 items' `vggish` rows hidden" in report


def test_the_committed_fraction_reads_as_before(tmp_path):
    root = _root(tmp_path, 0.3, 3, 7)
    report = make_results.build_report("tiny", tmp_path / "no_anchors", root)
    assert _heading(report) == "## Missing modality (30% of one modality's rows hidden)"
