"""Tiled kNN graphs against a dense brute-force top-k, their normalizations, and modality mixing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxrec.data import Interactions, Modality, MultimodalDataset
from jaxrec.data.graph import (Edges, combine_item_graphs, cosine_edge_weights, item_knn_graph, knn_edges,
                               knn_neighbours, mix_item_graphs, stack_graphs, tile_top_k)
from jaxrec.errors import ConfigError, DataError


def brute_force_knn(features, k, mask=None, include_self=True):
    """Dense float64 cosine similarities; rank by (similarity desc, id asc) with a stable sort."""
    features = np.asarray(features, np.float64)
    n = len(features)
    mask = np.ones(n, bool) if mask is None else mask
    norms = np.linalg.norm(features, axis=1)
    units = features / np.where(norms > 0, norms, 1)[:, None]
    sims = units @ units.T
    rank_key = sims.copy()
    rank_key[:, ~mask] = -np.inf
    np.fill_diagonal(rank_key, np.inf if include_self else -np.inf)
    indices = np.zeros((n, k), int)
    values = np.zeros((n, k))
    valid = np.zeros((n, k), bool)
    for i in np.flatnonzero(mask):
        order = np.lexsort((np.arange(n), -rank_key[i]))[:k]  # last key is primary
        good = rank_key[i, order] > -np.inf
        indices[i] = np.where(good, order, i)
        values[i] = np.where(good, np.where(order == i, 1.0, sims[i, order]), 0.0)
        valid[i] = good
    for i in np.flatnonzero(~mask):
        indices[i] = i
    return indices, values, valid


def exact_tie_features(n, seed):
    """Rows with four entries of +-1 in 8 dims, scaled by powers of two: unit vectors are exact
    halves, so every cosine is an exact multiple of 1/4 and ties are exact in any summation order."""
    rng = np.random.default_rng(seed)
    features = np.zeros((n, 8), np.float32)
    for row in features:
        row[rng.choice(8, 4, replace=False)] = rng.choice([-1.0, 1.0], 4)
    return features * (2.0 ** rng.integers(-2, 3, (n, 1))).astype(np.float32)


@pytest.mark.parametrize("block_size", [16, 24, 1000])
def test_knn_matches_brute_force_with_masks_and_ragged_blocks(block_size):
    rng = np.random.default_rng(0)
    features = rng.standard_normal((90, 12)).astype(np.float32)
    features[7] = 0.0  # a zero vector: similarity 0 to all
    mask = rng.random(90) < 0.85
    got = knn_neighbours(features, 6, mask=mask, block_size=block_size)
    indices, values, valid = brute_force_knn(features, 6, mask)
    np.testing.assert_array_equal(got.valid, valid)
    np.testing.assert_array_equal(got.indices, indices)
    np.testing.assert_allclose(got.similarities, values, atol=2e-6)
    assert not got.valid[~mask].any()
    assert not np.isin(got.indices[got.valid], np.flatnonzero(~mask)).any(), "a missing item is a neighbour"


@pytest.mark.parametrize("include_self", [True, False])
def test_exact_ties_break_by_smaller_id_whatever_the_block_size(include_self):
    features = exact_tie_features(70, 1)
    features[10] = features[3]  # duplicates: similarity exactly 1 to each other
    features[50] = features[3]
    indices, values, valid = brute_force_knn(features, 9, include_self=include_self)
    for block_size in (8, 24, 128):
        got = knn_neighbours(features, 9, include_self=include_self, block_size=block_size)
        np.testing.assert_array_equal(got.indices, indices)
        np.testing.assert_allclose(got.similarities, values, atol=1e-6)
    if include_self:
        assert list(got.indices[10, :3]) == [10, 3, 50]  # itself first, then the tied duplicates by id
    else:
        assert list(got.indices[10, :2]) == [3, 50]
        assert not np.any(got.indices == np.arange(70)[:, None])


def test_fewer_candidates_than_k_leaves_trailing_invalid_slots():
    features = np.random.default_rng(2).standard_normal((6, 3)).astype(np.float32)
    mask = np.array([True, False, True, True, False, False])
    got = knn_neighbours(features, 5, mask=mask)
    np.testing.assert_array_equal(got.valid.sum(axis=1), [3, 0, 3, 3, 0, 0])
    assert np.all(got.similarities[~got.valid] == 0)
    with pytest.raises(ConfigError):
        knn_neighbours(features, 0)
    with pytest.raises(DataError, match="mask"):
        knn_neighbours(features, 2, mask=np.ones(6))


def dense_knn_adjacency(indices, values, valid, weighted):
    n = len(indices)
    dense = np.zeros((n, n))
    for i in range(n):
        for j, s, ok in zip(indices[i], values[i], valid[i]):
            if ok:
                dense[i, j] += s if weighted else 1.0
    return dense


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("normalization", ["sym", "rw", "none"])
def test_knn_edges_match_dense_normalization(weighted, normalization):
    rng = np.random.default_rng(3)
    features = rng.standard_normal((40, 6)).astype(np.float32)
    mask = rng.random(40) < 0.8
    neighbours = knn_neighbours(features, 5, mask=mask)
    edges = knn_edges(neighbours, weighted=weighted, normalization=normalization)
    assert edges.n_edges == 40 * 5 and np.all(np.diff(edges.rows) >= 0)
    dense = dense_knn_adjacency(*brute_force_knn(features, 5, mask), weighted)
    degree = dense.sum(axis=1)
    safe = np.where(degree > 0, degree, 1)
    if normalization == "sym":  # D from row sums, as MMRec's compute_normalized_laplacian
        scale = np.where(degree > 0, safe ** -0.5, 0)
        dense = scale[:, None] * dense * scale[None, :]
    elif normalization == "rw":
        dense = np.where(degree > 0, 1 / safe, 0)[:, None] * dense
    np.testing.assert_allclose(edges.to_dense(40), dense, rtol=1e-5, atol=1e-6)
    if not weighted and normalization == "sym":  # FREEDOM: every present item has k neighbours
        np.testing.assert_allclose(np.asarray(edges.weights).reshape(40, 5)[mask], 1 / 5, rtol=1e-6)


def test_missing_items_are_isolated_or_self_looped():
    features = np.random.default_rng(4).standard_normal((12, 4)).astype(np.float32)
    mask = np.ones(12, bool)
    mask[[2, 9]] = False
    neighbours = knn_neighbours(features, 3, mask=mask)
    x = np.random.default_rng(5).standard_normal((12, 2))
    isolated = knn_edges(neighbours, missing="isolated")
    looped = knn_edges(neighbours, missing="self_loop")
    np.testing.assert_allclose(isolated.to_dense(12)[[2, 9]], 0)
    np.testing.assert_allclose(looped.to_dense(12)[[2, 9]], np.eye(12)[[2, 9]])
    np.testing.assert_allclose(looped.to_dense(12)[mask], isolated.to_dense(12)[mask])
    np.testing.assert_allclose((looped.to_dense(12) @ x)[[2, 9]], x[[2, 9]])
    with pytest.raises(ConfigError):
        knn_edges(neighbours, missing="zeros")


def test_cosine_edge_weights_and_gradients():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((8, 5))
    rows, cols = rng.integers(0, 8, 20), rng.integers(0, 8, 20)
    units = x / np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_allclose(cosine_edge_weights(x.astype(np.float32), rows, cols),
                               np.sum(units[rows] * units[cols], 1), rtol=1e-5, atol=1e-6)
    with jax.enable_x64(True):
        check_grads(jax.jit(lambda f: cosine_edge_weights(f, rows, cols)), (jnp.asarray(x),), order=1, modes=["rev"])


def two_modality_graphs():
    rng = np.random.default_rng(7)
    image = knn_edges(knn_neighbours(rng.standard_normal((30, 6)), 4), normalization="sym")
    text = knn_edges(knn_neighbours(rng.standard_normal((30, 9)), 4, mask=rng.random(30) < 0.7), normalization="sym")
    return image, text


def test_stacked_graphs_share_the_union_pattern_and_mix_like_dense_matrices():
    image, text = two_modality_graphs()
    stack = stack_graphs([image, text], 30)
    dense_image, dense_text = image.to_dense(30), text.to_dense(30)
    assert stack.weights.shape == (2, np.count_nonzero((dense_image != 0) | (dense_text != 0)))
    np.testing.assert_allclose(Edges(stack.rows, stack.cols, stack.weights[0]).to_dense(30), dense_image, rtol=1e-6)
    np.testing.assert_allclose(Edges(stack.rows, stack.cols, stack.weights[1]).to_dense(30), dense_text, rtol=1e-6)
    # FREEDOM: mm_image_weight * image + (1 - mm_image_weight) * text.
    mixed = mix_item_graphs(jnp.array([0.1, 0.9]), stack)
    np.testing.assert_allclose(Edges(*mixed).to_dense(30), 0.1 * dense_image + 0.9 * dense_text, rtol=1e-5, atol=1e-7)
    # LATTICE: softmax over learned logits, differentiable.
    logits = np.array([0.3, -1.2])
    soft = np.exp(logits) / np.exp(logits).sum()
    combined = jax.jit(combine_item_graphs)(logits, stack)
    np.testing.assert_allclose(Edges(*combined).to_dense(30), soft[0] * dense_image + soft[1] * dense_text,
                               rtol=1e-5, atol=1e-7)
    with jax.enable_x64(True):
        stack64 = stack._replace(weights=jnp.asarray(stack.weights, jnp.float64))
        check_grads(jax.jit(lambda b: combine_item_graphs(b, stack64).weights), (jnp.asarray(logits),), order=1,
                    modes=["rev"])
    with pytest.raises(ConfigError):
        mix_item_graphs(jnp.ones(3), stack)


def test_item_knn_graph_reads_a_dataset_modality():
    rng = np.random.default_rng(8)
    features = rng.standard_normal((20, 5)).astype(np.float32)
    mask = rng.random(20) < 0.9
    dataset = MultimodalDataset("toy", 3, 20, Interactions(np.array([0, 1]), np.array([2, 3]), np.zeros(2, np.int8)),
                                modalities={"text": Modality("text", features, mask),
                                            "frames": Modality("frames", np.zeros((20, 2, 3)), mask,
                                                               lengths=np.full(20, 2))})
    edges = item_knn_graph(dataset, "text", k=4, weighted=True)
    expected = knn_edges(knn_neighbours(features, 4, mask=mask), weighted=True)
    np.testing.assert_allclose(edges.to_dense(20), expected.to_dense(20))
    with pytest.raises(DataError, match="sequence"):
        item_knn_graph(dataset, "frames", k=4)
    with pytest.raises(DataError, match="unknown modality"):
        item_knn_graph(dataset, "image", k=4)


def mmrec_freedom_knn_adjacency(features, k):
    """MMRec FREEDOM's get_knn_adj_mat + compute_normalized_laplacian, densely, in numpy."""
    context_norm = features / np.linalg.norm(features, axis=-1, keepdims=True)
    sim = context_norm @ context_norm.T
    knn_ind = np.argsort(-sim, axis=-1, kind="stable")[:, :k]
    adj = np.zeros_like(sim)
    np.put_along_axis(adj, knn_ind, 1.0, axis=-1)
    row_sum = 1e-7 + adj.sum(-1)
    r_inv_sqrt = row_sum ** -0.5
    return r_inv_sqrt[:, None] * adj * r_inv_sqrt[None, :], np.sort(sim, axis=-1)[:, ::-1]


def test_freedom_item_graph_on_lfm2k_matches_mmrec_procedure(lfm2k_path):
    k, image_weight = 10, 0.1  # FREEDOM's knn_k and mm_image_weight defaults
    audio = np.load(lfm2k_path / "vggish.npy").astype(np.float64)
    text = np.load(lfm2k_path / "all-MiniLM-L6-v2.npy").astype(np.float64)
    mixed = mix_item_graphs(jnp.array([image_weight, 1 - image_weight]), stack_graphs(
        [knn_edges(knn_neighbours(audio, k)), knn_edges(knn_neighbours(text, k))], len(text)))
    got = Edges(*mixed).to_dense(len(text))
    (dense_audio, sorted_audio), (dense_text, sorted_text) = (mmrec_freedom_knn_adjacency(f, k) for f in (audio, text))
    expected = image_weight * dense_audio + (1 - image_weight) * dense_text
    # Rows whose k-th and (k+1)-th similarities (nearly) tie may pick either item, as torch.topk may.
    clear = (sorted_audio[:, k - 1] - sorted_audio[:, k] > 1e-5) & (sorted_text[:, k - 1] - sorted_text[:, k] > 1e-5)
    assert clear.mean() > 0.9
    np.testing.assert_allclose(got[clear], expected[clear], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got.sum(axis=1), expected.sum(axis=1), rtol=1e-5)


# ---- the group-max pruned tile top-k ---------------------------------------------------------

def numpy_top_k(values, k):
    """Each row's k largest (value descending, then smaller index), by a stable lexsort."""
    order = np.stack([np.lexsort((np.arange(row.size), -row))[:k] for row in values])
    return np.take_along_axis(values, order, axis=1), order


@pytest.mark.parametrize("axis", [1, 0])
@pytest.mark.parametrize("group_size", [1, 3, 8, 16, 64])
def test_tile_top_k_equals_a_lexsort_with_many_ties_and_infinities(axis, group_size):
    rng = np.random.default_rng(11)
    values = rng.integers(-3, 4, (37, 150)).astype(np.float32) / 4  # 7 levels: ties everywhere
    values[rng.random(values.shape) < 0.2] = -np.inf
    values[5, :] = -np.inf  # a line with no finite entry
    values[:, 9] = -np.inf
    values[9, 140:] = np.inf
    values[20, 3] = np.inf
    lines = values if axis == 1 else values.T
    k = 7
    expected_values, expected_ids = numpy_top_k(lines, k)
    got_values, got_ids = jax.jit(lambda v: tile_top_k(v, k, axis=axis, group_size=group_size))(values)
    np.testing.assert_array_equal(np.asarray(got_values), expected_values)
    np.testing.assert_array_equal(np.asarray(got_ids), expected_ids)


def test_tile_top_k_on_random_tiles_equals_lax_top_k():
    rng = np.random.default_rng(12)
    for shape, k, group_size in (((64, 200), 10, 16), ((50, 333), 4, 32), ((200, 48), 10, 4)):
        values = np.round(rng.standard_normal(shape), 1).astype(np.float32)
        for axis in (0, 1):
            expected = jax.lax.top_k(values if axis == 1 else values.T, k)
            got = tile_top_k(values, k, axis=axis, group_size=group_size)
            np.testing.assert_array_equal(np.asarray(got[0]), np.asarray(expected[0]))
            np.testing.assert_array_equal(np.asarray(got[1]), np.asarray(expected[1]))
    with pytest.raises(ConfigError, match="axis"):
        tile_top_k(np.zeros((4, 4), np.float32), 2, axis=2)


@pytest.mark.parametrize("include_self", [True, False])
def test_pruned_tiles_keep_exact_ties_with_masks(include_self):
    # 400 items with exact cosine ties; blocks of 64/128 rows cut into groups of 4/16 columns,
    # so every tile is pruned (more groups than k) and ties cross group and block borders.
    features = exact_tie_features(400, 13)
    features[[17, 230, 399]] = features[5]
    mask = np.random.default_rng(14).random(400) < 0.9
    mask[5] = mask[230] = True
    indices, values, valid = brute_force_knn(features, 9, mask, include_self=include_self)
    for block_size, group_size in ((64, 4), (128, 16), (56, 8)):
        got = knn_neighbours(features, 9, mask=mask, include_self=include_self, block_size=block_size,
                             group_size=group_size)
        np.testing.assert_array_equal(got.valid, valid)
        np.testing.assert_array_equal(got.indices, indices)
        np.testing.assert_allclose(got.similarities, values, atol=1e-6)
    with pytest.raises(ConfigError, match="group_size"):
        knn_neighbours(features, 3, group_size=0)
