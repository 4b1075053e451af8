"""Audit of jaxrec.eval's argument handling: cut-offs, metric names and batch sizes given the
ordinary ways a caller writes them (numpy ints, one int, one name, any capitalization, a list of
tables) give the values computed by hand here, and malformed ones a ConfigError naming the
argument instead of a raw TypeError/ValueError."""

from __future__ import annotations

import math

import numpy as np
import pytest

import jaxrec.eval as jeval
from jaxrec.errors import ConfigError


def _hand_metrics(hit_list, num_relevant, k):
    """MMRec's recall/NDCG/precision/MAP and RecBole's hit/MRR of one 0/1 list, by hand."""
    top = list(hit_list[:k]) + [0] * max(0, k - len(hit_list))
    hits = sum(top)
    dcg = sum(1 / math.log2(r + 2) for r, h in enumerate(top) if h)
    idcg = sum(1 / math.log2(r + 2) for r in range(min(num_relevant, k)))
    running, ap = 0, 0.0
    for r, h in enumerate(top):
        if h:
            running += 1
            ap += running / (r + 1)
    first = next((r for r, h in enumerate(top) if h), None)
    return {"recall": hits / num_relevant, "ndcg": dcg / idcg, "precision": hits / k,
            "map": ap / min(num_relevant, k), "hit": float(hits > 0),
            "mrr": 0.0 if first is None else 1 / (first + 1)}


HITS = np.array([[0, 1, 1, 0], [1, 0, 0, 0]])
NUM_RELEVANT = np.array([2, 3])


@pytest.mark.parametrize("k", [np.int64(2), np.int32(3)])
def test_single_metric_functions_take_a_numpy_int_k(k):
    expected = [_hand_metrics(row, int(n), int(k))["recall"] for row, n in zip(HITS.tolist(), NUM_RELEVANT)]
    np.testing.assert_allclose(jeval.recall_at_k(HITS, NUM_RELEVANT, k=k), expected, rtol=1e-6)


@pytest.mark.parametrize("ks", [np.array([1, 3]), [np.int64(1), np.int64(3)], (1, 3)])
def test_ranking_metrics_takes_numpy_cutoffs(ks):
    out = jeval.ranking_metrics(HITS, NUM_RELEVANT, ks=ks)
    for name, values in out.items():
        for u, (row, n) in enumerate(zip(HITS.tolist(), NUM_RELEVANT)):
            for c, k in enumerate((1, 3)):
                assert float(values[u, c]) == pytest.approx(_hand_metrics(row, int(n), k)[name], abs=1e-6), name


def test_ranking_metrics_takes_one_int_and_one_name_in_any_case():
    out = jeval.ranking_metrics(HITS, NUM_RELEVANT, ks=3, metrics="NDCG")
    assert list(out) == ["ndcg"]
    expected = [_hand_metrics(row, int(n), 3)["ndcg"] for row, n in zip(HITS.tolist(), NUM_RELEVANT)]
    np.testing.assert_allclose(np.asarray(out["ndcg"])[:, 0], expected, rtol=1e-6)
    mixed = jeval.ranking_metrics(HITS, NUM_RELEVANT, ks=(2,), metrics=("Recall", "MRR"))
    assert sorted(mixed) == ["mrr", "recall"]
    np.testing.assert_allclose(np.asarray(mixed["mrr"])[:, 0], [0.5, 1.0], rtol=1e-6)


@pytest.mark.parametrize("ks", [None, "10", 0, [], [2.5]])
def test_bad_cutoffs_of_ranking_metrics_are_config_errors(ks):
    with pytest.raises(ConfigError, match="ks"):
        jeval.ranking_metrics(HITS, NUM_RELEVANT, ks=ks)


@pytest.mark.parametrize("metrics", [None, 5, (), ("auc",)])
def test_bad_metric_names_of_ranking_metrics_are_config_errors(metrics):
    with pytest.raises(ConfigError, match="metric"):
        jeval.ranking_metrics(HITS, NUM_RELEVANT, ks=(1,), metrics=metrics)


# A small full-ranking case, scored and ranked by hand below.
USER_EMB = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], np.float32)
ITEM_EMB = np.array([[3.0, 0.0], [2.0, 2.0], [0.0, 3.0], [1.0, 1.0], [1.0, 1.0]], np.float32)
TRAIN = np.array([[0, 0], [2, 1]])
TARGETS = np.array([[0, 1], [0, 4], [1, 2], [2, 3], [2, 0]])


def _hand_split(ks, metrics):
    scores = USER_EMB.astype(np.float64) @ ITEM_EMB.T.astype(np.float64)
    masked = {0: {0}, 2: {1}}
    held = {0: {1, 4}, 1: {2}, 2: {3, 0}}
    out = {}
    for k in ks:
        per_user = []
        for u, items in held.items():
            ranked = sorted((i for i in range(5) if i not in masked.get(u, set())), key=lambda i: (-scores[u, i], i))
            per_user.append(_hand_metrics([int(i in items) for i in ranked], len(items), k))
        for name in metrics:
            out[f"{name}@{k}"] = float(np.mean([m[name] for m in per_user]))
    return out


def test_evaluate_split_takes_a_numpy_batch_size():
    got = jeval.evaluate_split(USER_EMB, ITEM_EMB, train_pairs=TRAIN, target_pairs=TARGETS, ks=(1, 3),
                               metrics=("recall", "ndcg", "map"), batch_size=np.int64(2))
    for key, value in _hand_split((1, 3), ("recall", "ndcg", "map")).items():
        assert got[key] == pytest.approx(value, abs=1e-6), key


def test_evaluate_prepared_many_takes_a_list_of_tables():
    split = jeval.prepare_split(num_items=5, train_pairs=TRAIN, target_pairs=TARGETS)
    out = jeval.evaluate_prepared_many(split, [USER_EMB, USER_EMB * 2], [ITEM_EMB, ITEM_EMB], ks=(1, 3),
                                       metrics=("recall", "mrr"))
    expected = _hand_split((1, 3), ("recall", "mrr"))  # doubling the user table keeps every ranking
    assert len(out) == 2
    for result in out:
        for key, value in expected.items():
            assert result[key] == pytest.approx(value, abs=1e-6), key


@pytest.mark.parametrize("kwargs, match", [
    ({"metrics": None}, "metrics"),
    ({"metrics": 7}, "metrics"),
    ({"ks": "10"}, "found '10'"),  # not the cut-offs '1' and '0'
    ({"ks": None}, "ks"),
])
def test_bad_evaluate_split_arguments_are_config_errors_naming_them(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        jeval.evaluate_split(USER_EMB, ITEM_EMB, train_pairs=TRAIN, target_pairs=TARGETS, **kwargs)


def test_evaluate_run_names_the_split_argument(tmp_path):
    from jaxrec.train._evaluate_run import evaluate_run

    with pytest.raises(ConfigError, match=r"split \(--split\) must be 'valid' or 'test'; found 'Test'"):
        evaluate_run(tmp_path, split="Test")
