"""MSE, RMSE and binary cross-entropy against plain numpy formulas."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec import losses
from jaxrec.errors import DataError


def test_mse_and_rmse_match_numpy():
    rng = np.random.default_rng(0)
    predictions, targets = rng.normal(size=(4, 5)), rng.normal(size=(4, 5))
    squared = [(p - t) ** 2 for p, t in zip(predictions.ravel(), targets.ravel())]
    np.testing.assert_allclose(losses.mse(predictions, targets), sum(squared) / 20, rtol=1e-6)
    np.testing.assert_allclose(losses.mse(predictions, targets, reduction="sum"), sum(squared), rtol=1e-6)
    np.testing.assert_allclose(losses.rmse(predictions, targets), math.sqrt(sum(squared) / 20), rtol=1e-6)


def test_mse_over_observed_entries_of_a_rating_matrix():
    rng = np.random.default_rng(1)
    predictions, ratings = rng.normal(size=(3, 4)), rng.integers(1, 6, size=(3, 4)).astype(float)
    observed = rng.uniform(size=(3, 4)) < 0.5
    observed[0, 0] = True
    ratings[~observed] = np.nan  # unobserved entries must not matter, even as NaN
    expected = np.mean((predictions[observed] - ratings[observed]) ** 2)
    np.testing.assert_allclose(losses.mse(predictions, ratings, where=observed), expected, rtol=1e-6)
    np.testing.assert_allclose(losses.rmse(predictions, ratings, where=observed), np.sqrt(expected), rtol=1e-6)


def test_weighted_mse_is_weighted_mean():
    predictions, targets = np.array([1.0, 2.0, 3.0]), np.array([0.0, 0.0, 0.0])
    weights = np.array([1.0, 2.0, 0.0])
    # (1 * 1 + 2 * 4 + 0 * 9) / (1 + 2 + 0) = 3
    np.testing.assert_allclose(losses.mse(predictions, targets, weights=weights), 3.0, rtol=1e-6)


def test_rmse_gradient_at_a_perfect_fit_is_zero_not_nan():
    grad = jax.jit(jax.grad(losses.rmse))(jnp.ones(3), jnp.ones(3))
    np.testing.assert_array_equal(grad, 0.0)
    # Away from zero: d/dp sqrt(mean (p - t)^2) = (p - t) / (n * rmse).
    p, t = jnp.array([1.0, 3.0]), jnp.array([0.0, 0.0])
    expected = np.array([1.0, 3.0]) / (2 * np.sqrt(5.0))
    np.testing.assert_allclose(jax.jit(jax.grad(losses.rmse))(p, t), expected, rtol=1e-6)


def bce_reference(logits, labels):
    total = 0.0
    for z, y in zip(np.ravel(logits), np.ravel(labels)):
        p = 1.0 / (1.0 + math.exp(-z))
        total += -(y * math.log(p) + (1 - y) * math.log(1 - p))
    return total / np.size(logits)


def test_binary_cross_entropy_matches_formula():
    rng = np.random.default_rng(2)
    logits = rng.normal(scale=3.0, size=(6, 2))
    labels = rng.uniform(size=(6, 2))  # soft labels too
    np.testing.assert_allclose(losses.binary_cross_entropy(logits, labels), bce_reference(logits, labels), rtol=1e-5)


def test_binary_cross_entropy_is_stable_at_huge_logits():
    logits = jnp.array([1e4, -1e4, 1e4, -1e4])
    labels = jnp.array([1.0, 0.0, 0.0, 1.0])
    per_entry = losses.binary_cross_entropy(logits, labels, reduction="none")
    np.testing.assert_allclose(per_entry, [0.0, 0.0, 1e4, 1e4], rtol=1e-6)
    grad = jax.jit(jax.grad(losses.binary_cross_entropy))(logits, labels)
    np.testing.assert_allclose(grad, np.array([0.0, 0.0, 1.0, -1.0]) / 4, atol=1e-7)


def test_pointwise_shape_errors():
    with pytest.raises(DataError, match="targets"):
        losses.mse(jnp.zeros(3), jnp.zeros(4))
    with pytest.raises(DataError, match="labels"):
        losses.binary_cross_entropy(jnp.zeros((2, 2)), jnp.zeros(2))


def test_mse_keeps_its_documented_broadcasting():
    # mse's where is documented as broadcastable (or a leading part): a per-column mask stays valid.
    predictions, targets = np.arange(6.0).reshape(2, 3), np.zeros((2, 3))
    columns = np.array([True, False, True])
    expected = np.mean(np.square(predictions[:, columns]))
    np.testing.assert_allclose(losses.mse(predictions, targets, where=columns), expected, rtol=1e-6)
    with pytest.raises(DataError, match="'where'"):
        losses.mse(predictions, targets, where=np.ones(4, bool))


def test_binary_cross_entropy_labels_must_lie_in_the_unit_interval():
    logits = np.array([0.5, -1.0, 2.0])
    for labels in ([0.0, 2.0, 1.0], [-0.5, 0.0, 1.0]):
        with pytest.raises(DataError, match="'labels'.*\\[0, 1\\]"):
            losses.binary_cross_entropy(logits, np.array(labels))
    # Concrete values only: traced labels (under jit) are not inspected.
    value = jax.jit(losses.binary_cross_entropy)(logits, np.array([0.0, 2.0, 1.0]))
    assert np.isfinite(value)
    # Hard, soft and boundary labels keep the formula's value.
    labels = np.array([1.0, 0.0, 0.3])
    np.testing.assert_allclose(losses.binary_cross_entropy(logits, labels), bce_reference(logits, labels), rtol=1e-5)
    np.testing.assert_allclose(losses.binary_cross_entropy(logits, labels.astype(bool)),
                               bce_reference(logits, labels.astype(bool).astype(float)), rtol=1e-5)
