"""Batched search (trials as one compiled program) against the same trials run one by one."""

import json

import jax
import numpy as np
import pytest

from jaxrec import eval as jeval
from jaxrec.data import make_synthetic
from jaxrec.errors import ConfigError, DataError
from jaxrec.train import config_from_dict, evaluate_run, run_search

DATA_ARGS = dict(n_users=90, n_items=60, n_interactions=1800, seed=4)


def _raw(grid, epochs=8, patience=2):
    return {
        "data": {"synthetic": DATA_ARGS},
        "model": {"name": "bprmf", "args": {"embedding_size": 8}},
        "train": {"epochs": epochs, "batch_size": 256, "learning_rate": 0.02, "patience": patience, "seed": 3,
                  "checkpoint_every": 100},
        "eval": {"ks": [10, 20], "metrics": ["recall", "ndcg"]},
        "loss_weights": {"reg": 0.01},
        "grid": grid,
    }


@pytest.fixture(scope="module")
def dataset():
    return make_synthetic(**DATA_ARGS)


@pytest.fixture(scope="module")
def both_ways(tmp_path_factory, dataset):
    """One grid over loss weight x learning rate, batched and sequential."""
    config = config_from_dict(_raw({"loss_weights.reg": [0.001, 1.0], "train.learning_rate": [0.01, 0.1]}))
    root = tmp_path_factory.mktemp("search")
    batched = run_search(config, root / "batched", quiet=True, batched="always", dataset=dataset)
    sequential = run_search(config, root / "sequential", quiet=True, batched="never", dataset=dataset)
    return root, batched, sequential


def test_batched_trials_match_sequential_trials(both_ways):
    _, batched, sequential = both_ways
    assert [t["setting"] for t in batched["trials"]] == [t["setting"] for t in sequential["trials"]]
    for one, other in zip(batched["trials"], sequential["trials"]):
        assert one["best_epoch"] == other["best_epoch"], (one["setting"], one["best_epoch"], other["best_epoch"])
        for split in ("valid", "test"):
            for key in ("recall@20", "ndcg@20", "recall@10"):
                assert one[split][key] == pytest.approx(other[split][key], abs=2e-3), (one["setting"], split, key)
    assert batched["best"]["trial"] == sequential["best"]["trial"]


def test_each_trial_early_stops_on_its_own(both_ways):
    root, batched, _ = both_ways
    runs = [json.loads((root / "batched" / f"trial_{t:03d}" / "metrics.json").read_text()) for t in range(4)]
    histories = [[json.loads(line) for line in (root / "batched" / f"trial_{t:03d}" / "history.jsonl").read_text()
                  .splitlines()] for t in range(4)]
    for metrics, history in zip(runs, histories):
        assert metrics["epochs_run"] == len(history) == history[-1]["epoch"]
        assert metrics["batched_search"] == {"trials": 4}
        if metrics["stopped_early"]:
            # MMRec's rule: stop once more than `patience` (2) evaluations fail to improve.
            assert metrics["epochs_run"] - metrics["best_epoch"] == 3
    # The grid mixes a learning rate that peaks early with one still improving at the end.
    assert len({m["epochs_run"] for m in runs}) > 1


def test_a_batched_trial_is_a_normal_run_for_evaluate(both_ways, dataset):
    root, batched, _ = both_ways
    trial = batched["best"]
    recomputed = evaluate_run(root / "batched" / f"trial_{trial['trial']:03d}", split="test", dataset=dataset)
    assert recomputed["epoch"] == trial["best_epoch"]
    assert recomputed["metrics"]["recall@20"] == pytest.approx(trial["test"]["recall@20"], abs=1e-6)


def test_trials_with_different_seeds_draw_their_own_batches(tmp_path, dataset):
    config = config_from_dict(_raw({"train.seed": [3, 11]}, epochs=4, patience=10))
    batched = run_search(config, tmp_path / "b", quiet=True, batched="always", dataset=dataset)
    sequential = run_search(config, tmp_path / "s", quiet=True, batched="never", dataset=dataset)
    for one, other in zip(batched["trials"], sequential["trials"]):
        assert one["valid"]["recall@20"] == pytest.approx(other["valid"]["recall@20"], abs=2e-3)
    assert batched["trials"][0]["valid"] != batched["trials"][1]["valid"]


def test_grids_over_other_keys_run_sequentially_or_refuse(tmp_path, dataset, capsys):
    config = config_from_dict(_raw({"model.args.embedding_size": [4, 8]}, epochs=2))
    with pytest.raises(ConfigError, match="model.args.embedding_size"):
        run_search(config, tmp_path / "always", quiet=True, batched="always", dataset=dataset)
    summary = run_search(config, tmp_path / "auto", batched="auto", dataset=dataset, quiet=False)
    assert "trials run one after another" in capsys.readouterr().out
    assert "batched_search" not in json.loads((tmp_path / "auto" / "trial_000" / "metrics.json").read_text())
    assert len(summary["trials"]) == 2


def test_evaluate_prepared_many_equals_one_by_one():
    rng = np.random.default_rng(0)
    n_users, n_items = 30, 25
    train = np.stack([rng.integers(0, n_users, 200), rng.integers(0, n_items, 200)], 1)
    test = np.stack([rng.integers(0, n_users, 80), rng.integers(0, n_items, 80)], 1)
    split = jeval.prepare_split(num_items=n_items, train_pairs=train, target_pairs=test)
    users, items = rng.normal(size=(3, n_users, 8)), rng.normal(size=(3, n_items, 8))
    many = jeval.evaluate_prepared_many(split, users.astype(np.float32), items.astype(np.float32), ks=(5, 20))
    for t in range(3):
        one = jeval.evaluate_prepared(split, users[t].astype(np.float32), items[t].astype(np.float32), ks=(5, 20))
        assert many[t] == pytest.approx(one, abs=1e-7)
    # An inactive model (an early-stopped trial) is skipped; the others are unchanged.
    some = jeval.evaluate_prepared_many(split, users.astype(np.float32), items.astype(np.float32), ks=(5, 20),
                                        active=[True, False, True])
    assert some[1] is None and some[0] == many[0] and some[2] == many[2]
    # Stacks on the device (what the search passes) rank the same; the checks read one model's shapes.
    on_device = jeval.evaluate_prepared_many(split, jax.device_put(users.astype(np.float32)),
                                             jax.device_put(items.astype(np.float32)), ks=(5, 20))
    assert on_device == many
    with pytest.raises(DataError, match="same width"):
        jeval.evaluate_prepared_many(split, users.astype(np.float32), items[:, :, :4].astype(np.float32), ks=(5, 20))


def test_a_grid_over_a_model_argument_runs_one_batched_program_per_value(tmp_path, dataset, capsys):
    config = config_from_dict(_raw({"model.args.embedding_size": [4, 8], "loss_weights.reg": [0.001, 1.0]},
                                   epochs=2, patience=10))
    grouped = run_search(config, tmp_path / "grouped", dataset=dataset, quiet=False)
    assert "4 trials ran batched, one program per value of model.args.embedding_size" in capsys.readouterr().out
    sequential = run_search(config, tmp_path / "sequential", quiet=True, batched="never", dataset=dataset)
    assert [t["trial"] for t in grouped["trials"]] == [0, 1, 2, 3]
    for one, other in zip(grouped["trials"], sequential["trials"]):
        assert one["setting"] == other["setting"]
        assert one["valid"]["recall@20"] == pytest.approx(other["valid"]["recall@20"], abs=2e-3)
        metrics = json.loads((tmp_path / "grouped" / f"trial_{one['trial']:03d}" / "metrics.json").read_text())
        assert metrics["batched_search"] == {"trials": 2}
        assert metrics["n_params"] == (90 + 60) * one["setting"]["model.args.embedding_size"]
    assert grouped["best"]["trial"] == sequential["best"]["trial"]


def test_a_model_with_an_epoch_hook_runs_batched_with_each_trials_own_context(tmp_path):
    """FREEDOM redraws its pruned graph every epoch (``epoch_update``): batched trials get the
    context a sequential run computes, so both ways give the same figures."""
    data = dict(n_users=60, n_items=40, n_interactions=900, dims={"text": 8}, seed=2)
    raw = {"data": {"synthetic": data},
           "model": {"name": "freedom", "args": {"embedding_size": 8, "feat_embed_dim": 8, "knn_k": 3,
                                                 "graph_cache": "none", "dropout": 0.5}},
           "train": {"epochs": 4, "batch_size": 256, "learning_rate": 0.02, "patience": 10, "seed": 3,
                     "checkpoint_every": 100},
           "eval": {"ks": [20], "metrics": ["recall", "ndcg"]},
           "grid": {"loss_weights.modality_bpr": [0.0, 0.1]}}
    dataset = make_synthetic(**data)
    config = config_from_dict(raw)
    batched = run_search(config, tmp_path / "b", quiet=True, batched="always", dataset=dataset)
    sequential = run_search(config, tmp_path / "s", quiet=True, batched="never", dataset=dataset)
    for one, other in zip(batched["trials"], sequential["trials"]):
        assert one["best_epoch"] == other["best_epoch"]
        for split in ("valid", "test"):
            assert one[split]["recall@20"] == pytest.approx(other[split]["recall@20"], abs=2e-3), (split, one)
            assert one[split]["ndcg@20"] == pytest.approx(other[split]["ndcg@20"], abs=2e-3), (split, one)
    metrics = json.loads((tmp_path / "b" / "trial_001" / "metrics.json").read_text())
    assert metrics["batched_search"] == {"trials": 2}
    # The pruned graph differs from epoch to epoch: a batched run that kept epoch 1's graph
    # (or the built one) would not match the sequential figures above.
    recomputed = evaluate_run(tmp_path / "b" / "trial_001", split="test", dataset=dataset)
    assert recomputed["metrics"]["recall@20"] == pytest.approx(batched["trials"][1]["test"]["recall@20"], abs=1e-6)
