"""Sharded full-ranking evaluation with signed-zero ties, against the naive per-user reference.

With one-dimensional embeddings in {-1, 0, 1} a dot product is a single product, so the
scores hold both -0.0 and +0.0 (``-1 * 0``). Ranking must treat them as the same score and
break the tie by item id, as ``jaxrec.eval`` promises and as the plain-Python reference of
``test_eval_reference`` does (Python's ``-0.0 == 0.0``); XLA's top-k alone would order -0.0
below +0.0. The mesh splits the items over the model axis (with padding rows) and the users
over the data axis.
"""

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

import jaxrec.eval as jeval
from test_eval_reference import naive_evaluate

N_USERS, N_ITEMS = 14, 10
KS = (1, 3, 5, 12)  # 12 > 10 items


def case():
    rng = np.random.default_rng(3)
    user_emb = rng.integers(-1, 2, (N_USERS, 1)).astype(np.float32)
    item_emb = rng.integers(-1, 2, (N_ITEMS, 1)).astype(np.float32)
    user_emb[:4, 0] = -1.0  # several users whose zero scores are all -0.0
    item_emb[[1, 4, 6], 0] = 0.0
    train = np.stack([rng.integers(0, N_USERS, 25), rng.integers(0, N_ITEMS, 25)], 1)
    test = np.stack([rng.integers(0, N_USERS, 40), rng.integers(0, N_ITEMS, 40)], 1)
    scores = np.outer(user_emb[:, 0].astype(np.float64), item_emb[:, 0].astype(np.float64))
    return user_emb, item_emb, train, test, scores


@pytest.mark.parametrize("shape", [(2, 2), (1, 4)])
def test_sharded_ranking_ties_signed_zeros_by_item_id(shape):
    user_emb, item_emb, train, test, scores = case()
    zeros = scores[scores == 0]
    assert np.signbit(zeros).any() and not np.signbit(zeros).all()
    mesh = Mesh(np.asarray(jax.devices()[:4]).reshape(shape), ("data", "model"))
    split = jeval.prepare_split(num_items=N_ITEMS, train_pairs=train, target_pairs=test, batch_size=4)
    metrics = ("recall", "ndcg", "precision", "map", "hit", "mrr")
    got = jeval.evaluate_prepared_sharded(split, user_emb, item_emb, mesh=mesh, ks=KS, metrics=metrics)
    expected = naive_evaluate(scores, train_pairs=train, target_pairs=test, ks=KS, metrics=metrics)
    assert got["num_users"] == expected["num_users"] and got["num_targets"] == expected["num_targets"]
    for key in expected:
        assert got[key] == pytest.approx(expected[key], abs=2e-6), key
