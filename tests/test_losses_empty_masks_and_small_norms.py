"""Edge cases of the loss reductions and normalizations, against hand-worked values:

* a mean over nothing (every example masked out, or every weight 0: a batch of padding only) is
  0 with a zero gradient, as ``jaxrec.losses._reduction.reduce_losses`` documents;
* rows normalized with the norm floored at ``eps`` (``x / max(|x|, eps)``): a row whose norm is
  small but above ``eps`` is still normalized exactly;
* ``info_nce(..., mask_negatives=True)``: rows left out by ``where`` are nobody's negatives;
* ``side_mf_objective``'s mask may hold non-negative confidence weights, each weighing its
  squared error.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxrec import losses


def test_a_mean_over_no_example_is_zero_with_a_zero_gradient():
    neg = jnp.array([[0.0, 1.0], [2.0, -1.0], [0.3, 0.3]])
    nothing = jnp.zeros(3, bool)
    names = ("bpr", "mse", "softmax_ce", "info_nce", "cosine_alignment", "bpr sum")

    def means_over_nothing(p):
        return jnp.stack([
            losses.bpr(p, neg, where=nothing),
            losses.mse(p, jnp.ones(3), weights=jnp.zeros(3)),
            losses.softmax_cross_entropy(p[None, :] * jnp.ones((3, 1)), jnp.array([0, 1, 2]), where=nothing),
            losses.info_nce(neg * p[:, None], neg + 1.0, 0.5, weights=jnp.zeros(3)),
            losses.cosine_alignment(neg * p[:, None], neg + 1.0, where=nothing),
            losses.bpr(p, neg, where=nothing, reduction="sum"),
        ])

    values, jacobian = jax.jit(lambda p: (means_over_nothing(p), jax.jacrev(means_over_nothing)(p)))(
        jnp.array([1.0, -2.0, 0.5]))
    for k, name in enumerate(names):
        assert float(values[k]) == 0.0, name
        np.testing.assert_array_equal(jacobian[k], np.zeros(3), err_msg=name)


def test_rows_with_a_small_norm_above_eps_are_normalized_exactly():
    # cosine_alignment floors each norm at eps = 1e-8: a row of norm 1e-5 is far above it.
    online = jnp.array([[1e-5, 0.0], [0.0, 3e-6], [1.0, 1.0]], jnp.float32)
    target = jnp.array([[2.0, 0.0], [0.0, 1.0], [1.0, -1.0]], jnp.float32)
    alignment = jax.jit(lambda o, t: losses.cosine_alignment(o, t, reduction="none"))
    np.testing.assert_allclose(alignment(online, target), [0.0, 0.0, 1.0], atol=1e-6)
    # info_nce (eps = 1e-12) is invariant to scaling a row, down to norms of 1e-7 (|x|^2 = 1e-14).
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=(4, 3)).astype(np.float32)
    a_unit = a / np.linalg.norm(a, axis=1, keepdims=True)
    b_unit = b / np.linalg.norm(b, axis=1, keepdims=True)
    logits = a_unit.astype(np.float64) @ b_unit.T.astype(np.float64) / 0.5
    expected = np.log(np.exp(logits).sum(1)) - np.diag(logits)
    tiny = a_unit * np.array([[1e-7], [3e-7], [1.0], [2e-7]], np.float32)
    per_row = jax.jit(lambda x, y: losses.info_nce(x, y, 0.5, reduction="none"))(tiny, b)
    np.testing.assert_allclose(per_row, expected, rtol=1e-5)


def test_side_mf_objective_weighs_each_squared_error_by_its_confidence():
    # One user, three items, K = 1, no side features (W = 0): predictions U V^T = [1, 2, 3].
    U, V = np.ones((1, 1)), np.array([[1.0], [2.0], [3.0]])
    W, Z = np.zeros((1, 1)), np.zeros((3, 1))
    R = np.array([[2.0, 0.0, np.nan]])
    confidence = np.array([[2.0, 0.25, 0.0]])  # the third entry unobserved (NaN rating)
    # 2 * (2 - 1)^2 + 0.25 * (0 - 2)^2 = 2 + 1 = 3 (unweighted: 1 + 4 = 5), plus lam * (|U|^2 + |V|^2 + |W|^2)
    # = 0.1 * (1 + 14 + 0).
    got = jax.jit(losses.side_mf_objective)(U, V, W, Z, R, confidence, 0.1)
    np.testing.assert_allclose(got, 3.0 + 1.5, rtol=1e-6)
    assert math.isfinite(float(got))


def test_info_nce_mask_negatives_also_drops_the_rows_where_leaves_out():
    # Rows left out by ``where`` (not only those of weight 0) are nobody's negatives either.
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(6, 3)), rng.normal(size=(6, 3))
    where = np.array([True, False, True, True, False, True])
    weights = np.array([1.0, 1.0, 2.0, 0.0, 1.0, 0.5])  # row 3: weight 0, also out
    keep = np.flatnonzero(where & (weights != 0))
    a_unit = a[keep] / np.linalg.norm(a[keep], axis=1, keepdims=True)
    b_unit = b[keep] / np.linalg.norm(b[keep], axis=1, keepdims=True)
    logits = a_unit @ b_unit.T / 0.2
    per_row = np.log(np.exp(logits).sum(1)) - np.diag(logits)
    expected = np.sum(weights[keep] * per_row) / np.sum(weights[keep])
    got = jax.jit(lambda x, y: losses.info_nce(x, y, 0.2, where=where, weights=weights, mask_negatives=True))(a, b)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
