"""Cut-offs at or above the number of items: the whole catalogue is the list, the last-ranked
item included. A hand-worked case, checked for every way the evaluation finds its hits.

Four items scored 4, 3, 2, 1 by user 0 (no training item) and -4, -3, -2, -1 by user 1
(training item 2 masked), ks = (3, 4, 6):

* user 0 ranks 0, 1, 2, 3; held-out item 3 is 4th: hits [0, 0, 0, 1].
  recall@3 = 0, recall@4 = recall@6 = 1; ndcg@4 = ndcg@6 = 1/log2(5); precision@4 = 1/4,
  precision@6 = 1/6; map@4 = (1/4)/1; mrr@4 = 1/4.
* user 1 ranks 3, 1, 0 (2 masked); held-out item 0 is 3rd: hits [0, 0, 1].
  recall@3 = 1; ndcg@3 = 1/log2(4) = 1/2; precision@3 = 1/3, @4 = 1/4, @6 = 1/6;
  map@3 = 1/3; mrr@3 = 1/3.
"""

import math

import numpy as np
import pytest

import jaxrec.eval as jeval
from jaxrec.eval import _evaluate, _ranking

USER_EMB = np.array([[1.0], [-1.0]], np.float32)
ITEM_EMB = np.array([[4.0], [3.0], [2.0], [1.0]], np.float32)
TRAIN = np.array([[1, 2]])
TARGETS = np.array([[0, 3], [1, 0]])
A = 1 / math.log2(5)
EXPECTED = {
    "recall@3": 0.5, "recall@4": 1.0, "recall@6": 1.0,
    "ndcg@3": 0.25, "ndcg@4": (A + 0.5) / 2, "ndcg@6": (A + 0.5) / 2,
    "precision@3": 1 / 6, "precision@4": 1 / 4, "precision@6": 1 / 6,
    "map@3": 1 / 6, "map@4": (1 / 4 + 1 / 3) / 2, "map@6": (1 / 4 + 1 / 3) / 2,
    "hit@3": 0.5, "hit@4": 1.0, "hit@6": 1.0,
    "mrr@3": 1 / 6, "mrr@4": (1 / 4 + 1 / 3) / 2, "mrr@6": (1 / 4 + 1 / 3) / 2,
}


@pytest.mark.parametrize("hits_from", ["rank_slots", "target_slots", "scatter"])
def test_a_cutoff_past_the_catalogue_lists_the_last_ranked_item(hits_from, monkeypatch):
    if hits_from != "rank_slots":
        monkeypatch.setattr(_ranking, "MAX_RANK_SLOTS", 0)
    if hits_from == "scatter":
        monkeypatch.setattr(_evaluate, "_MAX_TARGET_SLOTS", 0)
    got = jeval.evaluate_split(USER_EMB, ITEM_EMB, train_pairs=TRAIN, target_pairs=TARGETS, ks=(3, 4, 6),
                               batch_size=2)
    assert got["num_users"] == 2
    assert {key: got[key] for key in EXPECTED} == pytest.approx(EXPECTED, abs=1e-6)


def test_top_k_items_past_the_catalogue():
    items, scores = jeval.top_k_items(USER_EMB, ITEM_EMB, np.array([0, 1]), k=6, exclude_pairs=TRAIN)
    np.testing.assert_array_equal(items, [[0, 1, 2, 3, -1, -1], [3, 1, 0, -1, -1, -1]])
    np.testing.assert_array_equal(scores[0, :4], [4, 3, 2, 1])
    assert np.all(np.isneginf(scores[0, 4:])) and np.all(np.isneginf(scores[1, 3:]))


def test_sharded_ranking_past_the_catalogue():
    import jax
    from jax.sharding import Mesh
    mesh = Mesh(np.asarray(jax.devices()[:4]).reshape(2, 2), ("data", "model"))
    split = jeval.prepare_split(num_items=4, train_pairs=TRAIN, target_pairs=TARGETS, batch_size=2)
    got = jeval.evaluate_prepared_sharded(split, USER_EMB, ITEM_EMB, mesh=mesh, ks=(3, 4, 6))
    assert {key: got[key] for key in EXPECTED} == pytest.approx(EXPECTED, abs=1e-6)
