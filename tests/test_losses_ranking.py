"""BPR, full softmax cross-entropy and sampled softmax against naive numpy loops."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec import losses
from jaxrec.errors import ConfigError, DataError


def _softplus(x: float) -> float:
    # Reference softplus written with plain math, stable on both sides.
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def bpr_reference(pos, neg, where=None, weights=None):
    pos, neg = np.asarray(pos, np.float64), np.asarray(neg, np.float64)
    if neg.ndim == 1:
        neg = neg[:, None]
    total, count = 0.0, 0.0
    for b in range(len(pos)):
        for j in range(neg.shape[1]):
            keep = 1.0
            if where is not None:
                keep = float(np.asarray(where).reshape(len(pos), -1)[b, 0 if np.ndim(where) == 1 else j])
            weight = 1.0 if weights is None else float(np.asarray(weights)[b])
            total += keep * weight * -math.log(1.0 / (1.0 + math.exp(-(pos[b] - neg[b, j]))))
            count += keep * weight
    return total / count


def test_bpr_matches_loop_single_negative():
    rng = np.random.default_rng(0)
    pos, neg = rng.normal(size=7), rng.normal(size=7)
    np.testing.assert_allclose(losses.bpr(pos, neg), bpr_reference(pos, neg), rtol=1e-6)


def test_bpr_matches_loop_many_negatives_mean_over_all_pairs():
    rng = np.random.default_rng(1)
    pos, neg = rng.normal(size=5), rng.normal(size=(5, 4))
    np.testing.assert_allclose(losses.bpr(pos, neg), bpr_reference(pos, neg), rtol=1e-6)
    per_pair = losses.bpr(pos, neg, reduction="none")
    assert per_pair.shape == (5, 4)
    np.testing.assert_allclose(per_pair[2, 3], bpr_reference(pos[2:3], neg[2:3, 3]), rtol=1e-6)
    np.testing.assert_allclose(losses.bpr(pos, neg, reduction="sum"), 20 * bpr_reference(pos, neg), rtol=1e-6)


def test_bpr_where_and_weights_per_positive():
    rng = np.random.default_rng(2)
    pos, neg = rng.normal(size=6), rng.normal(size=(6, 3))
    where = np.array([True, False, True, True, False, True])
    weights = rng.uniform(0.5, 2.0, size=6)
    got = losses.bpr(pos, neg, where=where, weights=weights)
    np.testing.assert_allclose(got, bpr_reference(pos, neg, where=where, weights=weights), rtol=1e-6)


def test_bpr_per_pair_mask_excludes_pairs_even_if_nan():
    pos = np.array([1.0, 2.0])
    neg = np.array([[0.0, np.nan], [1.0, 3.0]])
    where = np.array([[True, False], [True, True]])
    got = losses.bpr(pos, neg, where=where)
    expected = (_softplus(-1.0) + _softplus(-1.0) + _softplus(1.0)) / 3
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_bpr_is_stable_at_huge_margins():
    pos = jnp.array([1e4, -1e4], jnp.float32)
    neg = jnp.zeros(2, jnp.float32)
    value, (grad_pos, grad_neg) = jax.jit(jax.value_and_grad(losses.bpr, argnums=(0, 1)))(pos, neg)
    # softplus(-1e4) = 0 and softplus(1e4) = 1e4: mean 5e3; d/dpos = -sigmoid(-margin) / 2.
    np.testing.assert_allclose(value, 5e3, rtol=1e-6)
    np.testing.assert_allclose(grad_pos, [0.0, -0.5], atol=1e-7)
    np.testing.assert_allclose(grad_neg, [0.0, 0.5], atol=1e-7)
    assert np.isfinite(value) and np.all(np.isfinite(grad_pos))


def test_bpr_gradient_matches_closed_form():
    rng = np.random.default_rng(3)
    pos, neg = rng.normal(size=4), rng.normal(size=(4, 2))
    grad_pos = jax.jit(jax.grad(losses.bpr))(jnp.asarray(pos), jnp.asarray(neg))
    margins = pos[:, None] - neg
    expected = (-1.0 / (1.0 + np.exp(margins))).sum(axis=1) / margins.size
    np.testing.assert_allclose(grad_pos, expected, rtol=1e-5)


def test_bpr_shape_errors():
    with pytest.raises(DataError, match="neg_scores"):
        losses.bpr(jnp.zeros(3), jnp.zeros(4))
    with pytest.raises(DataError, match="pos_scores"):
        losses.bpr(jnp.zeros((3, 1)), jnp.zeros(3))
    with pytest.raises(ConfigError, match="reduction"):
        losses.bpr(jnp.zeros(3), jnp.zeros(3), reduction="avg")
    with pytest.raises(DataError, match="where"):
        losses.bpr(jnp.zeros(3), jnp.zeros((3, 2)), where=jnp.ones(5, bool))


def softmax_reference(logits, targets):
    logits = np.asarray(logits, np.float64)
    total = 0.0
    for b in range(logits.shape[0]):
        partition = sum(math.exp(z) for z in logits[b])
        if np.ndim(targets) == 1:
            total += -(logits[b, targets[b]] - math.log(partition))
        else:
            total += -sum(targets[b][j] * (logits[b, j] - math.log(partition)) for j in range(logits.shape[1]))
    return total / logits.shape[0]


def test_softmax_cross_entropy_integer_targets():
    rng = np.random.default_rng(4)
    logits, targets = rng.normal(size=(5, 9)), rng.integers(0, 9, size=5)
    np.testing.assert_allclose(
        losses.softmax_cross_entropy(logits, targets), softmax_reference(logits, targets), rtol=1e-6
    )


def test_softmax_cross_entropy_multi_hot_targets():
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(4, 6))
    multi_hot = (rng.uniform(size=(4, 6)) < 0.4).astype(np.float32)
    multi_hot[0, :] = 0.0
    multi_hot[1, :2] = 1.0
    np.testing.assert_allclose(
        losses.softmax_cross_entropy(logits, multi_hot), softmax_reference(logits, multi_hot), rtol=1e-6
    )
    normalized = multi_hot / np.maximum(multi_hot.sum(1, keepdims=True), 1)
    np.testing.assert_allclose(
        losses.softmax_cross_entropy(logits, multi_hot, normalize_targets=True),
        softmax_reference(logits, normalized),
        rtol=1e-6,
    )
    # One-hot float targets agree with integer targets.
    targets = rng.integers(0, 6, size=4)
    np.testing.assert_allclose(
        losses.softmax_cross_entropy(logits, np.eye(6)[targets]),
        losses.softmax_cross_entropy(logits, targets),
        rtol=1e-6,
    )


def test_softmax_cross_entropy_large_logits_and_bad_targets():
    logits = jnp.array([[1e4, 0.0, -1e4]])
    np.testing.assert_allclose(losses.softmax_cross_entropy(logits, jnp.array([1])), 1e4, rtol=1e-6)
    with pytest.raises(DataError, match="index out of range"):
        losses.softmax_cross_entropy(jnp.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(DataError, match="targets"):
        losses.softmax_cross_entropy(jnp.zeros((2, 3)), jnp.zeros((2, 4)))


def sampled_softmax_reference(pos, neg, neg_log_q, pos_log_q=None, hits=None):
    total = 0.0
    for b in range(len(pos)):
        positive = pos[b] - (0.0 if pos_log_q is None else pos_log_q[b])
        denominator = math.exp(positive)
        for j in range(neg.shape[1]):
            if hits is not None and hits[b, j]:
                continue
            log_q = neg_log_q[j] if np.ndim(neg_log_q) == 1 else neg_log_q[b, j]
            denominator += math.exp(neg[b, j] - log_q)
        total += -math.log(math.exp(positive) / denominator)
    return total / len(pos)


def test_sampled_softmax_log_q_correction_matches_loop():
    rng = np.random.default_rng(6)
    pos, neg = rng.normal(size=4), rng.normal(size=(4, 5))
    q = rng.dirichlet(np.ones(5))
    got = losses.sampled_softmax(pos, neg, np.log(q))
    np.testing.assert_allclose(got, sampled_softmax_reference(pos, neg, np.log(q)), rtol=1e-6)
    per_row_q = rng.uniform(0.01, 0.2, size=(4, 5))
    pos_q = rng.uniform(0.01, 0.2, size=4)
    got = losses.sampled_softmax(pos, neg, np.log(per_row_q), pos_log_q=np.log(pos_q))
    expected = sampled_softmax_reference(pos, neg, np.log(per_row_q), np.log(pos_q))
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_sampled_softmax_uniform_q_on_both_sides_is_plain_softmax_over_the_sample():
    rng = np.random.default_rng(7)
    pos, neg = rng.normal(size=3), rng.normal(size=(3, 4))
    log_q = np.full(4, -math.log(100.0))
    got = losses.sampled_softmax(pos, neg, log_q, pos_log_q=np.full(3, -math.log(100.0)))
    logits = np.concatenate([pos[:, None], neg], axis=1)
    np.testing.assert_allclose(got, softmax_reference(logits, np.zeros(3, int)), rtol=1e-6)


def test_sampled_softmax_accidental_hits_are_removed_with_zero_gradient():
    rng = np.random.default_rng(8)
    pos, neg = rng.normal(size=3), rng.normal(size=(3, 4))
    log_q = np.log(rng.dirichlet(np.ones(4)))
    hits = np.zeros((3, 4), bool)
    hits[0, 1] = hits[2, 0] = hits[2, 3] = True
    got = losses.sampled_softmax(pos, neg, log_q, accidental_hits=hits)
    np.testing.assert_allclose(got, sampled_softmax_reference(pos, neg, log_q, hits=hits), rtol=1e-6)
    grad_of_negatives = jax.jit(jax.grad(lambda n: losses.sampled_softmax(pos, n, log_q, accidental_hits=hits)))
    grad_neg = grad_of_negatives(jnp.asarray(neg))
    assert np.all(np.isfinite(grad_neg))
    np.testing.assert_array_equal(np.asarray(grad_neg)[hits], 0.0)
    assert np.all(np.asarray(grad_neg)[~hits] > 0)


def test_sampled_softmax_shape_errors():
    with pytest.raises(DataError, match="neg_log_q"):
        losses.sampled_softmax(jnp.zeros(3), jnp.zeros((3, 4)), jnp.zeros(5))
    with pytest.raises(DataError, match="accidental_hits"):
        losses.sampled_softmax(jnp.zeros(3), jnp.zeros((3, 4)), jnp.zeros(4), accidental_hits=jnp.zeros((3, 5), bool))


def test_bpr_where_or_weights_of_the_wrong_length_raise_even_when_it_equals_n_neg():
    pos, neg = jnp.array([3.0, -3.0, 0.0]), jnp.zeros((3, 2))
    # (2,) == n_neg used to broadcast across the negatives (1.263, no error).
    with pytest.raises(DataError, match="'where'.*shape \\(3,\\) or shape \\(3, 2\\)"):
        losses.bpr(pos, neg, where=jnp.array([True, False]))
    with pytest.raises(DataError, match="'weights'"):
        losses.bpr(pos, neg, weights=jnp.array([1.0, 2.0]))
    with pytest.raises(DataError, match="'where'"):
        losses.bpr(pos, neg, where=jnp.ones((1, 2), bool))
    with pytest.raises(DataError, match="'where'"):  # one negative per positive: (1,) is no (3,)
        losses.bpr(pos, jnp.zeros(3), where=jnp.ones(1, bool))
    with pytest.raises(DataError, match="'where'"):  # raised before tracing under jit as well
        jax.jit(lambda p, n: losses.bpr(p, n, where=jnp.array([True, False])))(pos, neg)
    with pytest.raises(DataError, match="'where'"):  # side_mf_bpr reduces through bpr
        losses.side_mf_bpr(jnp.ones((2, 2)), jnp.ones((3, 2)), jnp.ones((2, 2)), jnp.ones((3, 2)),
                           jnp.array([0, 1, 1]), jnp.array([0, 1, 2]), jnp.array([[1, 2], [0, 2], [0, 1]]), 0.0,
                           where=jnp.array([True, False]))
    # The shapes the docstring allows keep their values (numpy loop reference).
    where = np.array([True, False, True])
    np.testing.assert_allclose(losses.bpr(pos, neg, where=where), bpr_reference(pos, neg, where=where), rtol=1e-6)
    pairs = np.array([[True, False], [True, True], [False, True]])
    np.testing.assert_allclose(losses.bpr(pos, neg, where=pairs), bpr_reference(pos, neg, where=pairs), rtol=1e-6)
    weights = np.array([0.5, 1.0, 2.0])
    np.testing.assert_allclose(losses.bpr(pos, neg, weights=weights), bpr_reference(pos, neg, weights=weights),
                               rtol=1e-6)
    np.testing.assert_allclose(losses.bpr(pos, neg, where=jnp.ones((3, 2), bool)), bpr_reference(pos, neg),
                               rtol=1e-6)


def test_per_row_losses_reject_where_or_weights_of_another_length():
    logits, targets = jnp.zeros((3, 4)), jnp.array([0, 1, 2])
    with pytest.raises(DataError, match="'where'"):
        losses.softmax_cross_entropy(logits, targets, where=jnp.ones(1, bool))
    with pytest.raises(DataError, match="'weights'"):
        losses.sampled_softmax(jnp.zeros(3), jnp.zeros((3, 2)), jnp.zeros(2), weights=jnp.ones(2))
    # (B,) still works: log 4 for every row of zero logits.
    np.testing.assert_allclose(losses.softmax_cross_entropy(logits, targets, where=np.array([True, False, True])),
                               math.log(4.0), rtol=1e-6)

