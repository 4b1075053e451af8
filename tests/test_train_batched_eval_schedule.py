"""A batched search validates its trials as a sequential run does: every ``eval_every``-th epoch
and always the last one, each trial's best epoch the first epoch of its best validated value
(read back from the trial's own history, by hand), and the trial's best checkpoint holds the run
as it stood after that epoch (its history up to and including it), as a sequential run's does."""

import json
from pathlib import Path

from jaxrec.data import make_synthetic
from jaxrec.train import Checkpoints, config_from_dict, load_config, prepare_experiment, run_search

DATA_ARGS = dict(n_users=40, n_items=30, n_interactions=500, seed=4)


def test_batched_trials_validate_every_eval_every_th_and_the_last_epoch(tmp_path):
    raw = {"data": {"synthetic": DATA_ARGS}, "model": {"name": "bprmf", "args": {"embedding_size": 4}},
           "train": {"epochs": 4, "eval_every": 3, "patience": 10, "batch_size": 128, "learning_rate": 0.02,
                     "seed": 1, "checkpoint_every": 100},
           "eval": {"ks": [20], "metrics": ["recall"]},
           "grid": {"train.learning_rate": [0.01, 0.2]}}
    dataset = make_synthetic(**DATA_ARGS)
    result = run_search(config_from_dict(raw), tmp_path / "search", quiet=True, batched="always", dataset=dataset)
    assert len(result["trials"]) == 2
    assert any(trial["best_epoch"] < 4 for trial in result["trials"])  # a best checkpoint apart from the last
    for trial in result["trials"]:
        folder = Path(trial["workdir"])
        rows = [json.loads(line) for line in (folder / "history.jsonl").read_text().splitlines()]
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["batched_search"] == {"trials": 2}
        assert [row["epoch"] for row in rows] == [1, 2, 3, 4]
        validated = [(row["epoch"], row["valid"]["recall@20"]) for row in rows if "valid" in row]
        assert [epoch for epoch, _ in validated] == [3, 4]  # 4 is not a multiple of 3, but it is the last
        best_value = max(value for _, value in validated)
        best_epoch = next(epoch for epoch, value in validated if value == best_value)
        assert (metrics["best_epoch"], trial["best_epoch"]) == (best_epoch, best_epoch)
        assert metrics["valid"]["recall@20"] == best_value
        checkpoints = Checkpoints(folder / "checkpoints", read_only=True)
        try:
            target = prepare_experiment(load_config(folder / "config.yaml"), dataset).target
            _, meta = checkpoints.restore(target, best_epoch)
        finally:
            checkpoints.close()
        assert meta["epochs_done"] == best_epoch and meta["early_stopping"]["best_epoch"] == best_epoch
        assert [row["epoch"] for row in meta["history"]] == list(range(1, best_epoch + 1))
