"""Temporal pooling of padded sequences against naive per-item numpy loops."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec import fusion
from jaxrec.errors import DataError

LENGTHS = np.array([3, 5, 0, 1, 4])


def _sequences(seed, pad_value=0.0):
    x = np.random.default_rng(seed).normal(size=(5, 5, 3)).astype(np.float32)
    for i, length in enumerate(LENGTHS):
        x[i, length:] = pad_value
    return x


def _random_variables(module, seed, *args, **kwargs):
    """Variables with the module's structure (traced by eval_shape, so no init compile), random values."""
    shapes = jax.eval_shape(lambda key: module.init(key, *args, **kwargs), jax.random.key(0))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: (0.5 * rng.normal(size=s.shape)).astype(s.dtype), shapes)


def test_lengths_to_mask():
    np.testing.assert_array_equal(
        fusion.lengths_to_mask(np.array([0, 2, 4]), 3),
        [[False, False, False], [True, True, False], [True, True, True]],
    )


def test_masked_mean_matches_loop_and_ignores_padding():
    x = _sequences(0)
    expected = np.stack(
        [x[i, :n].mean(axis=0) if n else np.zeros(3) for i, n in enumerate(LENGTHS)]
    )
    np.testing.assert_allclose(fusion.masked_mean_pool(x, LENGTHS), expected, rtol=1e-6, atol=1e-7)
    for pad in (1e6, -3.0, np.nan, np.inf):
        np.testing.assert_allclose(
            fusion.masked_mean_pool(_sequences(0, pad), LENGTHS), expected, rtol=1e-6, atol=1e-7
        )
    module = fusion.MaskedMeanPooling()
    np.testing.assert_allclose(module.apply({}, x, LENGTHS), expected, rtol=1e-6, atol=1e-7)


def _naive_attention_pool(x, lengths, kernel, bias, query):
    out = np.zeros((x.shape[0], x.shape[2]))
    for i, n in enumerate(lengths):
        if n == 0:
            continue
        scores = [float(query @ (x[i, t] @ kernel + bias)) / math.sqrt(len(query)) for t in range(n)]
        scores = np.array(scores) - max(scores)
        weights = np.exp(scores) / np.exp(scores).sum()
        out[i] = sum(w * x[i, t] for t, w in enumerate(weights))
    return out


def test_attention_pooling_matches_loop_and_ignores_padding():
    x = _sequences(1)
    module = fusion.AttentionPooling(attention_dim=4)
    variables = _random_variables(module, 0, x, LENGTHS)
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"])
    expected = _naive_attention_pool(
        x.astype(np.float64), LENGTHS, p["key"]["kernel"], p["key"]["bias"], p["query"]
    )
    out, state = jax.jit(module.apply, static_argnames="mutable")(variables, x, LENGTHS, mutable="intermediates")
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    weights = np.asarray(state["intermediates"]["attention_weights"][0])
    np.testing.assert_allclose(weights.sum(axis=1), (LENGTHS > 0).astype(float), rtol=1e-6)
    assert np.all(weights[fusion.lengths_to_mask(LENGTHS, 5) == 0] == 0)
    for pad in (1e6, -7.0, np.nan):
        np.testing.assert_allclose(
            jax.jit(module.apply)(variables, _sequences(1, pad), LENGTHS), expected, rtol=1e-5, atol=1e-6
        )


def test_attention_pooling_gradients_finite_with_empty_and_nan_padded_sequences():
    x = _sequences(2, np.nan)
    module = fusion.AttentionPooling(attention_dim=4)
    variables = _random_variables(module, 1, x, LENGTHS)

    def loss(params, inputs):
        return jnp.sum(module.apply({"params": params}, inputs, LENGTHS) ** 2)

    param_grads, input_grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(variables["params"], x)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(param_grads))
    assert np.all(np.isfinite(input_grads))
    # Padded steps receive no gradient at all.
    assert np.all(input_grads[~np.asarray(fusion.lengths_to_mask(LENGTHS, 5))] == 0)


def test_pooling_is_jit_and_vmap_safe():
    x = _sequences(3)
    module = fusion.AttentionPooling(attention_dim=4)
    variables = _random_variables(module, 2, x, LENGTHS)
    eager = module.apply(variables, x, LENGTHS)
    np.testing.assert_allclose(jax.jit(module.apply)(variables, x, LENGTHS), eager, rtol=1e-6)
    # vmap over two batches (the second with different lengths) equals two separate calls.
    other = np.array([5, 0, 2, 2, 1])
    batched = jax.jit(jax.vmap(module.apply, in_axes=(None, 0, 0)))(variables, np.stack([x, x]), np.stack([LENGTHS, other]))
    np.testing.assert_allclose(batched[0], eager, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(batched[1], jax.jit(module.apply)(variables, x, other), rtol=1e-5, atol=1e-6)
    pooled = jax.jit(jax.vmap(fusion.masked_mean_pool))(np.stack([x, x]), np.stack([LENGTHS, other]))
    np.testing.assert_allclose(pooled[1], fusion.masked_mean_pool(x, other), rtol=1e-6)


def test_pooling_shape_errors():
    with pytest.raises(DataError, match="one length per sequence"):
        fusion.masked_mean_pool(np.zeros((4, 3, 2)), np.ones(3, int))
    with pytest.raises(DataError, match="rank-3"):
        fusion.masked_mean_pool(np.zeros((4, 3)), np.ones(4, int))


def test_lengths_must_be_integers():
    x = _sequences(3)
    with pytest.raises(DataError, match="'lengths'.*integers.*float32"):
        fusion.masked_mean_pool(x, LENGTHS.astype(np.float32))
    with pytest.raises(DataError, match="'lengths'.*integers"):
        fusion.lengths_to_mask(np.array([1.5, 2.0]), 3)
    with pytest.raises(DataError, match="'lengths'.*integers"):
        fusion.AttentionPooling(attention_dim=2).init(jax.random.key(0), x, LENGTHS.astype(np.float32))
    # Integer lengths (any integer dtype) keep the per-item mean of the valid steps.
    expected = np.stack([x[i, :n].mean(0) if n else np.zeros(3) for i, n in enumerate(LENGTHS)])
    for lengths in (LENGTHS, LENGTHS.astype(np.int32), LENGTHS.astype(np.uint8)):
        np.testing.assert_allclose(fusion.masked_mean_pool(x, lengths), expected, rtol=1e-6, atol=1e-7)
