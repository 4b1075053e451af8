"""Neighbour-table graphs (n, K): propagation, cosine entries and normalization against dense
numpy matrices; chunked (rematerialized) and one-shot forms give the same values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.data.graph import (neighbour_cosine, neighbour_edges, normalize_edges, normalize_neighbour_weights,
                               propagate_neighbours)
from jaxrec.errors import ConfigError


def _table(n=23, k=5, d=4, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, n, (n, k)).astype(np.int32)
    ids[:, 1] = ids[:, 0]  # a duplicate (row, column) pair in every row: the entries add up
    weights = rng.random((n, k)).astype(np.float32)
    weights[3] = 0.0  # an empty row: degree 0
    return ids, weights, rng.standard_normal((n, d)).astype(np.float32)


def _dense(ids, weights):
    n = len(ids)
    matrix = np.zeros((n, n))
    np.add.at(matrix, (np.repeat(np.arange(n), ids.shape[1]), ids.ravel()), weights.ravel().astype(np.float64))
    return matrix


@pytest.mark.parametrize("chunk_entries", [None, 5, 12, 2**20])
def test_propagation_equals_the_dense_product_chunked_or_not(chunk_entries):
    ids, weights, x = _table()
    found = jax.jit(lambda w, e: propagate_neighbours(ids, w, e, chunk_entries=chunk_entries))(weights, x)
    np.testing.assert_allclose(np.asarray(found), _dense(ids, weights) @ x, rtol=1e-5, atol=1e-6)


def test_chunked_gradients_equal_the_dense_gradients():
    ids, weights, x = _table(seed=1)
    g = np.random.default_rng(2).standard_normal(x.shape)

    def loss(w, e, chunk):
        return jnp.sum(jnp.asarray(g, jnp.float32) * propagate_neighbours(ids, w, e, chunk_entries=chunk))

    # d/dW_ij <G, A E> = G_i . E_{N_ij};  d/dE <G, A E> = A^T G.
    expected_w = np.einsum("id,ikd->ik", g, x[ids])
    expected_e = _dense(ids, weights).T @ g
    for chunk in (None, 10):  # 10 entries: 2 rows per chunk, 12 rematerialized chunks
        dw, de = jax.jit(jax.grad(loss, argnums=(0, 1)), static_argnums=2)(weights, x, chunk)
        np.testing.assert_allclose(np.asarray(dw), expected_w, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.asarray(de), expected_e, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunk_entries", [None, 7])
def test_neighbour_cosine_equals_numpy_and_zero_rows_give_zero(chunk_entries):
    ids, _, x = _table(d=6, seed=3)
    x[5] = 0.0
    units = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30)
    expected = np.einsum("id,ikd->ik", units, units[ids])
    found = np.asarray(neighbour_cosine(x, ids, chunk_entries=chunk_entries))
    np.testing.assert_allclose(found, expected, rtol=1e-5, atol=1e-6)
    assert np.all(found[5] == 0) and np.all(found[ids == 5] == 0)
    # Its gradient through the chunks equals the one-shot gradient.
    grads = [jax.grad(lambda f, c=c: jnp.sum(neighbour_cosine(f, ids, chunk_entries=c) ** 2))(x)
             for c in (None, chunk_entries)]
    np.testing.assert_allclose(np.asarray(grads[0]), np.asarray(grads[1]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("normalization", ["sym", "rw", "none"])
def test_normalization_equals_the_edge_list_normalization(normalization):
    ids, weights, _ = _table(seed=4)
    found = np.asarray(normalize_neighbour_weights(ids, weights, normalization=normalization))
    dense = _dense(ids, weights)
    degrees = dense.sum(1)
    inv = np.where(degrees > 0, 1 / np.where(degrees > 0, degrees, 1), 0)
    scaled = {"sym": np.sqrt(inv)[:, None] * dense * np.sqrt(inv)[None, :], "rw": inv[:, None] * dense,
              "none": dense}[normalization]
    np.testing.assert_allclose(_dense(ids, found), scaled, rtol=1e-5, atol=1e-7)
    edges = normalize_edges(neighbour_edges(ids, weights), len(ids), normalization=normalization)
    np.testing.assert_allclose(np.asarray(edges.weights), found.ravel(), rtol=1e-6)


def test_shape_and_setting_errors():
    ids, weights, x = _table()
    with pytest.raises(ConfigError, match="match the neighbour table"):
        propagate_neighbours(ids, weights[:, :2], x)
    with pytest.raises(ConfigError, match=r"\(n, K\)"):
        neighbour_cosine(x, ids.ravel())
    with pytest.raises(ConfigError, match="chunk_entries"):
        propagate_neighbours(ids, weights, x, chunk_entries=0)
