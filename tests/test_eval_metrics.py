"""Per-user ranking metrics on hit matrices, and rating metrics, against naive references."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrec.eval as jeval
from jaxrec.errors import ConfigError, DataError
from test_eval_reference import naive_user_metrics

PER_USER = {
    "recall": jeval.recall_at_k,
    "ndcg": jeval.ndcg_at_k,
    "precision": jeval.precision_at_k,
    "map": jeval.map_at_k,
    "hit": jeval.hit_rate_at_k,
    "mrr": jeval.mrr_at_k,
    "hits": jeval.hits_at_k,
}


def random_hits(seed, num_users, list_len, max_relevant):
    """Random 0/1 hit lists with a consistent |T_u| >= number of hits in the list."""
    rng = np.random.default_rng(seed)
    hits = (rng.random((num_users, list_len)) < rng.uniform(0.05, 0.6, (num_users, 1)))
    num_relevant = hits.sum(1) + rng.integers(0, max_relevant, num_users)
    num_relevant = np.maximum(num_relevant, 1)
    return hits, num_relevant


@pytest.mark.parametrize("name", sorted(PER_USER))
@pytest.mark.parametrize("k", [1, 3, 7, 12])  # 12 > list_len: the list is padded with misses
def test_per_user_metric_matches_naive_loops(name, k):
    hits, num_relevant = random_hits(seed=k, num_users=64, list_len=10, max_relevant=15)
    got = np.asarray(PER_USER[name](hits, num_relevant, k=k))
    expected = [naive_user_metrics(list(map(int, row)), int(n), k)[name]
                for row, n in zip(hits, num_relevant)]
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)


def test_ranking_metrics_at_many_ks_matches_naive_loops():
    hits, num_relevant = random_hits(seed=3, num_users=32, list_len=20, max_relevant=30)
    ks = (1, 5, 10, 20, 25)
    together = jeval.ranking_metrics(hits, num_relevant, ks=ks, metrics=tuple(PER_USER))
    for name in PER_USER:
        chex.assert_shape(together[name], (32, len(ks)))
        for column, k in enumerate(ks):
            expected = [naive_user_metrics(list(map(int, row)), int(n), k)[name]
                        for row, n in zip(hits, num_relevant)]
            np.testing.assert_allclose(together[name][:, column], expected, rtol=1e-6,
                                       atol=1e-7, err_msg=f"{name}@{k}")


def test_metrics_from_the_held_out_items_places_match_naive_loops():
    # The rank path's form: each user's held-out items given by their places in the list (in a
    # shuffled slot order; a place >= max(ks) or the sentinel for an item that is no hit, and
    # users with no held-out item), not by a hit matrix.
    from jaxrec.eval import _metrics
    rng = np.random.default_rng(5)
    num_users, num_slots, ks = 48, 6, (1, 4, 10, 20)
    places = np.full((num_users, num_slots), 10_000)
    num_relevant = rng.integers(0, num_slots + 1, num_users)
    for user, n in enumerate(num_relevant):
        places[user, :n] = rng.choice(40, size=n, replace=False)  # some beyond max(ks) = 20
        rng.shuffle(places[user])
    hit_lists = [[int(rank in set(row)) for rank in range(max(ks))] for row in places]
    got = _metrics.placed_ranking_metrics(jnp.asarray(places), jnp.asarray(num_relevant), ks=ks,
                                          metrics=tuple(PER_USER))
    assert {n for n in num_relevant} >= {0, num_slots}
    assert any(0 < sum(h) < n for h, n in zip(hit_lists, num_relevant))  # held-out items beyond the list
    for name in PER_USER:
        chex.assert_shape(got[name], (num_users, len(ks)))
        for column, k in enumerate(ks):
            expected = [naive_user_metrics(hits, int(n), k)[name] if n else 0.0
                        for hits, n in zip(hit_lists, num_relevant)]
            np.testing.assert_allclose(got[name][:, column], expected, rtol=1e-6, atol=1e-7, err_msg=f"{name}@{k}")


def test_users_without_relevant_items_get_zero():
    hits = np.zeros((3, 4), bool)
    for name, fn in PER_USER.items():
        np.testing.assert_array_equal(fn(hits, np.zeros(3, int), k=3), 0.0, err_msg=name)


def test_perfect_ranking_scores_one():
    # 3 relevant items in the first 3 slots: recall, ndcg, map, hit, mrr are all 1.
    hits = np.array([[1, 1, 1, 0, 0]])
    for name in ("recall", "ndcg", "map", "hit", "mrr"):
        assert float(PER_USER[name](hits, np.array([3]), k=5)[0]) == pytest.approx(1.0), name
    assert float(jeval.precision_at_k(hits, np.array([3]), k=5)[0]) == pytest.approx(3 / 5)


def test_mmrec_normalisations_differ_from_textbook():
    # |T_u| = 4 > k = 2, both top-2 slots hit.
    hits, relevant = np.array([[1, 1]]), np.array([4])
    assert float(jeval.recall_at_k(hits, relevant, k=2)[0]) == pytest.approx(2 / 4)  # not 2/2
    assert float(jeval.map_at_k(hits, relevant, k=2)[0]) == pytest.approx(1.0)  # / min(4, 2)
    assert float(jeval.ndcg_at_k(hits, relevant, k=2)[0]) == pytest.approx(1.0)  # ideal 2 slots


def test_metrics_are_jittable_and_vmappable():
    hits, num_relevant = random_hits(seed=5, num_users=8, list_len=6, max_relevant=4)
    eager = jeval.ndcg_at_k(hits, num_relevant, k=4)
    jitted = jax.jit(lambda h, n: jeval.ndcg_at_k(h, n, k=4))(hits, num_relevant)
    vmapped = jax.vmap(lambda h, n: jeval.ndcg_at_k(h, n, k=4))(hits, num_relevant)
    np.testing.assert_allclose(jitted, eager, rtol=1e-6)
    np.testing.assert_allclose(vmapped, eager, rtol=1e-6)


def test_metric_input_errors():
    with pytest.raises(ConfigError, match="positive int"):
        jeval.recall_at_k(np.ones((2, 3)), np.ones(2), k=0)
    with pytest.raises(DataError, match="num_relevant"):
        jeval.recall_at_k(np.ones((2, 3)), np.ones(3), k=2)
    with pytest.raises(ConfigError, match="unknown ranking metric"):
        jeval.ranking_metrics(np.ones((2, 3)), np.ones(2), ks=(1,), metrics=("auc",))


def test_rmse_and_mae_match_numpy():
    rng = np.random.default_rng(0)
    predictions = rng.normal(3, 1, 200).astype(np.float32)
    targets = rng.integers(1, 6, 200).astype(np.float32)
    where = rng.random(200) < 0.7
    err = predictions.astype(np.float64) - targets
    assert float(jeval.rmse(predictions, targets)) == pytest.approx(
        math.sqrt(np.mean(err**2)), rel=1e-5)
    assert float(jeval.mae(predictions, targets)) == pytest.approx(np.mean(np.abs(err)), rel=1e-5)
    assert float(jeval.rmse(predictions, targets, where=where)) == pytest.approx(
        math.sqrt(np.mean(err[where] ** 2)), rel=1e-5)
    assert float(jeval.mae(predictions, targets, where=where)) == pytest.approx(
        np.mean(np.abs(err[where])), rel=1e-5)


def test_rating_metrics_hand_values_and_errors():
    # errors (2, 0, -1): rmse = sqrt(5/3), mae = 1
    assert float(jeval.rmse(jnp.array([3.0, 4.0, 1.0]), jnp.array([1.0, 4.0, 2.0]))) == (
        pytest.approx(math.sqrt(5 / 3)))
    assert float(jeval.mae(jnp.array([3.0, 4.0, 1.0]), jnp.array([1.0, 4.0, 2.0]))) == 1.0
    with pytest.raises(DataError, match="same shape"):
        jeval.rmse(jnp.ones(3), jnp.ones(4))
    with pytest.raises(DataError, match="where"):
        jeval.mae(jnp.ones(3), jnp.ones(3), where=jnp.ones(2, bool))
