"""``jaxrec._matmul.matmul`` (re-exported by ``jaxrec.models._common``): ``x @ w`` with a
hand-written backward (the weight gradient's transposed operand chosen by shape), and
``constant_matmul`` (a constant ``x`` with its stored transpose), checked against float64
NumPy products."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec._matmul import constant_matmul, matmul

# (n, D, K): K < D takes the (g^T x)^T branch, K >= D the x^T g one; n = 1 and K = 1 are the edges.
SHAPES = [(37, 12, 3), (37, 8, 8), (37, 3, 12), (1, 5, 2), (9, 4, 1), (9, 1, 4)]


def _grads_numpy(x, w, cotangent):
    x64, w64, g64 = (np.asarray(a, np.float64) for a in (x, w, cotangent))
    return x64 @ w64, g64 @ w64.T, x64.T @ g64


@pytest.mark.parametrize("n,d,k", SHAPES)
def test_value_and_gradients_match_numpy(n, d, k):
    rng = np.random.default_rng(n * 100 + d * 10 + k)
    x, w, cotangent = (rng.standard_normal(s).astype(np.float32) for s in ((n, d), (d, k), (n, k)))
    value, pullback = jax.vjp(jax.jit(matmul), jnp.asarray(x), jnp.asarray(w))
    dx, dw = pullback(jnp.asarray(cotangent))
    want_value, want_dx, want_dw = _grads_numpy(x, w, cotangent)
    assert dw.shape == (d, k) and dx.shape == (n, d)
    np.testing.assert_allclose(np.asarray(value), want_value, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(dx), want_dx, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(dw), want_dw, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n,d,k", [(23, 10, 2), (23, 2, 10)])
def test_gradients_under_vmap_are_each_trials_own(n, d, k):
    """A batched search maps the step over a leading trial axis: each trial's gradient must be
    its own product, in both branches, also when the result is transposed by the caller
    (``matmul(q, keys.T)``, LGMRec's logits) and when ``x`` is a constant shared by all trials."""
    rng = np.random.default_rng(7)
    trials = 3
    xs = rng.standard_normal((trials, n, d)).astype(np.float32)
    keys = rng.standard_normal((trials, k, d)).astype(np.float32)   # w = keys.T, (d, k)
    cotangent = rng.standard_normal((n, k)).astype(np.float32)

    def loss(x, key_table):
        return jnp.sum(matmul(x, key_table.T) * cotangent)

    dxs, dkeys = jax.jit(jax.vmap(jax.grad(loss, argnums=(0, 1))))(jnp.asarray(xs), jnp.asarray(keys))
    shared = jax.jit(jax.vmap(jax.grad(loss, argnums=1), in_axes=(None, 0)))(jnp.asarray(xs[0]), jnp.asarray(keys))
    for t in range(trials):
        _, want_dx, want_dw = _grads_numpy(xs[t], keys[t].T, cotangent)
        np.testing.assert_allclose(np.asarray(dxs[t]), want_dx, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.asarray(dkeys[t]), want_dw.T, rtol=1e-5, atol=1e-5)
        _, _, want_shared = _grads_numpy(xs[0], keys[t].T, cotangent)
        np.testing.assert_allclose(np.asarray(shared[t]), want_shared.T, rtol=1e-5, atol=1e-5)



@pytest.mark.parametrize("n,d,k", SHAPES)
def test_constant_matmul_value_and_gradients_match_numpy(n, d, k):
    """The weight gradient comes from the stored transpose; ``x`` keeps its own gradient and the
    transpose gets none (a constant, as the docstring requires)."""
    rng = np.random.default_rng(n * 100 + d * 10 + k + 1)
    x, w, cotangent = (rng.standard_normal(s).astype(np.float32) for s in ((n, d), (d, k), (n, k)))
    x_t = np.ascontiguousarray(x.T)
    value, pullback = jax.vjp(jax.jit(constant_matmul), jnp.asarray(x), jnp.asarray(x_t), jnp.asarray(w))
    dx, dx_t, dw = pullback(jnp.asarray(cotangent))
    want_value, want_dx, want_dw = _grads_numpy(x, w, cotangent)
    assert dw.shape == (d, k) and dx.shape == (n, d) and dx_t.shape == (d, n)
    np.testing.assert_allclose(np.asarray(value), want_value, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(dx), want_dx, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(dw), want_dw, rtol=1e-5, atol=1e-5)
    assert not np.any(np.asarray(dx_t))


def test_constant_matmul_under_vmap_gives_each_trial_its_weight_gradient():
    """A batched search maps the step over trials whose weights differ and whose constant is shared."""
    rng = np.random.default_rng(11)
    trials, n, d, k = 3, 29, 9, 4
    x = rng.standard_normal((n, d)).astype(np.float32)
    ws = rng.standard_normal((trials, d, k)).astype(np.float32)
    target = rng.standard_normal((n, k)).astype(np.float32)

    def loss(w):  # a nonlinear loss: its output gradient depends on the trial's weights
        return jnp.sum(jnp.square(constant_matmul(jnp.asarray(x), jnp.asarray(x.T.copy()), w) - target))

    grads = jax.jit(jax.vmap(jax.grad(loss)))(jnp.asarray(ws))
    for t in range(trials):
        g = 2.0 * (x.astype(np.float64) @ ws[t] - target)
        np.testing.assert_allclose(np.asarray(grads[t]), x.astype(np.float64).T @ g, rtol=1e-4, atol=1e-4)
