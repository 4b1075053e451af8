"""``eval.user_sample``: evaluation on a fixed uniform sample of users, checked against a naive
numpy ranking of the same users and against the full evaluation's per-user values."""

from __future__ import annotations

import numpy as np
import pytest

from jaxrec import eval as jeval
from jaxrec.errors import ConfigError
from jaxrec.train import config_from_dict, prepare_eval_splits, prepare_experiment
from jaxrec.train._setup import sampled_user_pairs


def _config(**eval_args):
    return config_from_dict({
        "model": {"name": "bprmf", "args": {"embedding_size": 8}},
        "data": {"synthetic": {"n_users": 120, "n_items": 90, "n_interactions": 2400, "seed": 3}},
        "train": {"epochs": 1, "batch_size": 256, "valid_metric": "recall@10"},
        "eval": {"ks": [5, 10], "metrics": ["recall", "ndcg"], **eval_args},
    })


def _naive_recall(user_emb, item_emb, pairs, users, split, k):
    """MMRec's protocol by hand: rank every item by the dot product with the user's train items
    masked (valid items stay rankable at test), recall@k = hits / held-out items, averaged."""
    scores = user_emb @ item_emb.T
    values = []
    for u in users:
        row = scores[u].copy()
        row[pairs["train"][pairs["train"][:, 0] == u, 1]] = -np.inf
        held = set(pairs[split][pairs[split][:, 0] == u, 1].tolist())
        top = np.argsort(-row, kind="stable")[:k]
        values.append(len(held.intersection(top.tolist())) / len(held))
    return float(np.mean(values))


@pytest.mark.parametrize("split", ["valid", "test"])
def test_sampled_evaluation_equals_a_naive_ranking_of_the_sampled_users(split):
    full_exp = prepare_experiment(_config())
    exp = prepare_experiment(_config(user_sample=25, user_sample_seed=7), full_exp.dataset)
    rng = np.random.default_rng(0)
    user_emb = rng.normal(size=(exp.dataset.n_users, 8)).astype(np.float32)
    item_emb = rng.normal(size=(exp.dataset.n_items, 8)).astype(np.float32)

    pairs = {name: exp.dataset.split_pairs(name) for name in ("train", "valid", "test")}
    all_users = np.unique(pairs[split][:, 0])
    assert all_users.size > 25
    sampled = sampled_user_pairs(pairs, split, 25, 7)
    users = np.unique(sampled[split][:, 0])
    assert users.size == 25 and np.isin(users, all_users).all()

    layout = prepare_eval_splits(exp, (split,))[split]
    result = jeval.evaluate_prepared(layout, user_emb, item_emb, ks=[5, 10], metrics=["recall", "ndcg"])
    assert result["num_users"] == 25
    for k in (5, 10):
        assert result[f"recall@{k}"] == pytest.approx(_naive_recall(user_emb, item_emb, pairs, users, split, k),
                                                      abs=1e-6)

    # The same users' values inside the full evaluation.
    full_layout = prepare_eval_splits(full_exp, (split,))[split]
    full = jeval.evaluate_prepared(full_layout, user_emb, item_emb, ks=[5, 10], metrics=["recall", "ndcg"])
    assert full["num_users"] == all_users.size
    assert full["recall@10"] == pytest.approx(_naive_recall(user_emb, item_emb, pairs, all_users, split, 10),
                                              abs=1e-6)


def test_the_sample_depends_on_the_seed_only_and_covers_small_splits_whole():
    pairs = {"train": np.array([[u, u % 7] for u in range(50)]),
             "valid": np.array([[u, 9] for u in range(0, 50, 2)]),
             "test": np.array([[u, 8] for u in range(50)])}
    a = sampled_user_pairs(pairs, "valid", 10, 1)
    b = sampled_user_pairs(pairs, "valid", 10, 1)
    c = sampled_user_pairs(pairs, "valid", 10, 2)
    for name in pairs:
        np.testing.assert_array_equal(a[name], b[name])
    chosen = np.unique(a["valid"][:, 0])
    assert chosen.size == 10 and set(chosen.tolist()) <= set(range(0, 50, 2))
    assert not np.array_equal(chosen, np.unique(c["valid"][:, 0]))
    # every split keeps exactly the chosen users' pairs (their train items stay masked)
    np.testing.assert_array_equal(np.unique(a["train"][:, 0]), chosen)
    np.testing.assert_array_equal(np.unique(a["test"][:, 0]), chosen)
    whole = sampled_user_pairs(pairs, "valid", 1000, 1)
    np.testing.assert_array_equal(whole["valid"], pairs["valid"])


@pytest.mark.parametrize("key, value, expected", [("user_sample", 0, "'eval.user_sample' must be > 0"),
                                                  ("user_sample_seed", -1, "'eval.user_sample_seed'")])
def test_bad_user_sample_settings_name_the_key(key, value, expected):
    with pytest.raises(ConfigError, match=expected):
        _config(**{key: value})


def test_a_run_with_a_user_sample_says_so_in_its_metrics(tmp_path):
    from jaxrec.train import train_and_evaluate

    metrics = train_and_evaluate(_config(user_sample=25), tmp_path / "run", quiet=True)
    assert metrics["eval_user_sample"] == {"users": 25, "seed": 0}
    assert 0.0 <= metrics["valid"]["recall@10"] <= 1.0
    plain = train_and_evaluate(_config(), tmp_path / "plain", quiet=True)
    assert "eval_user_sample" not in plain
