"""LightGCN: propagation against a dense numpy D^-1/2 A D^-1/2, loss terms against MMRec's
calculate_loss in numpy, finite-difference gradients, the graph read from ctx, learning (pmap parity: tests/test_model_contract.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec import models
from jaxrec.data import Interactions, MultimodalDataset, make_synthetic
from jaxrec.errors import ConfigError
from jaxrec.models.lightgcn import LightGCN, chunk_size_for
from jaxrec.models import normalize_batch

from _model_testing import init_compiled, assert_gradient_matches_central_differences, popularity_recall, train_tiny


def _graph_dataset():
    """7 users, 9 items; a repeated train pair (user 0, item 1), item 8 only in test, and
    user 6 only in valid (both without train edges)."""
    users = [0, 0, 0, 1, 1, 2, 2, 2, 3, 3, 4, 4, 5, 5, 5, 0, 6, 1]
    items = [1, 2, 1, 2, 3, 0, 4, 5, 5, 6, 7, 1, 3, 4, 6, 8, 2, 8]
    split = [0] * 15 + [2, 1, 2]
    return MultimodalDataset("graph", 7, 9, Interactions(np.array(users), np.array(items), np.array(split, np.int8)))


def _dense_lightgcn(dataset, users_table, items_table, n_layers):
    """Layer mean of D^-1/2 A D^-1/2 applied 0..K times, from a dense numpy adjacency."""
    n_users, n_items = dataset.n_users, dataset.n_items
    train = dataset.split_pairs("train")
    adjacency = np.zeros((n_users + n_items,) * 2)
    adjacency[train[:, 0], n_users + train[:, 1]] = 1.0  # a repeated pair is one edge
    adjacency[n_users + train[:, 1], train[:, 0]] = 1.0
    degree = adjacency.sum(1)
    scale = np.where(degree > 0, 1.0 / np.sqrt(np.where(degree > 0, degree, 1.0)), 0.0)
    normalized = scale[:, None] * adjacency * scale[None, :]
    layer = np.concatenate([users_table, items_table]).astype(np.float64)
    layers = [layer]
    for _ in range(n_layers):
        layer = normalized @ layer
        layers.append(layer)
    mean = np.mean(layers, axis=0)
    return mean[:n_users], mean[n_users:]


def _random_params(n_users, n_items, d, seed=0):
    rng = np.random.default_rng(seed)
    return {"user_embedding": rng.normal(size=(n_users, d)).astype(np.float32),
            "item_embedding": rng.normal(size=(n_items, d)).astype(np.float32)}


@pytest.mark.parametrize("n_layers", [0, 1, 2, 3])
def test_propagation_matches_dense_numpy(n_layers):
    dataset = _graph_dataset()
    built = models.build("lightgcn", dataset, embedding_size=5, n_layers=n_layers)
    params = _random_params(7, 9, 5)
    user_emb, item_emb = built.module.apply({"params": params}, built.ctx, False, method="encode")
    expected_users, expected_items = _dense_lightgcn(dataset, params["user_embedding"], params["item_embedding"],
                                                     n_layers)
    np.testing.assert_allclose(user_emb, expected_users, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(item_emb, expected_items, rtol=1e-5, atol=1e-6)
    if n_layers:  # nodes without train edges keep only their layer-0 share
        np.testing.assert_allclose(item_emb[8], params["item_embedding"][8] / (n_layers + 1), rtol=1e-6)
        np.testing.assert_allclose(user_emb[6], params["user_embedding"][6] / (n_layers + 1), rtol=1e-6)


def test_propagation_in_many_chunks_matches_dense_numpy(monkeypatch):
    # Wide embeddings and a lowered floor make the chunks smaller than the graph: the scan path runs.
    from jaxrec.models import _common
    monkeypatch.setattr(_common, "MIN_CHUNK_EDGES", 256)
    dataset = make_synthetic(40, 30, n_interactions=600, seed=4)
    width = 2048
    assert chunk_size_for(width) == 256 and 2 * len(dataset.split_pairs("train")) > 256
    built = models.build("lightgcn", dataset, embedding_size=width, n_layers=2)
    params = _random_params(40, 30, width, seed=5)
    user_emb, item_emb = jax.jit(lambda p, c: built.module.apply({"params": p}, c, False, method="encode"))(
        params, built.ctx)
    expected_users, expected_items = _dense_lightgcn(dataset, params["user_embedding"], params["item_embedding"], 2)
    np.testing.assert_allclose(user_emb, expected_users, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(item_emb, expected_items, rtol=1e-4, atol=1e-5)


def test_chunk_size_is_about_two_mebibytes_of_messages_and_at_least_8192_edges():
    assert chunk_size_for(64) == 8192
    assert chunk_size_for(24) == 16384  # 21845 rounded down to a power of two
    assert chunk_size_for(384) == 8192  # the floor
    assert chunk_size_for(1) == 2**19
    assert chunk_size_for(10**6) == 8192


def _numpy_mmrec_lightgcn_loss(dataset, params, n_layers, users, pos, neg, weights):
    """MMRec's LightGCN.calculate_loss in numpy: BPR on the layer means, EmbLoss on the ego rows
    (|U0_b|_F + |P0_b|_F + |N0_b|_F) / B over the rows of weight 1."""
    keep = weights > 0
    u_all, i_all = _dense_lightgcn(dataset, params["user_embedding"], params["item_embedding"], n_layers)
    u, p, n = users[keep], pos[keep], neg[keep]
    margin = (u_all[u] * i_all[p]).sum(1) - (u_all[u] * i_all[n]).sum(1)
    bpr = np.mean(np.log1p(np.exp(-margin)))
    ego_u, ego_i = params["user_embedding"].astype(np.float64), params["item_embedding"].astype(np.float64)
    reg = (np.linalg.norm(ego_u[u]) + np.linalg.norm(ego_i[p]) + np.linalg.norm(ego_i[n])) / keep.sum()
    return bpr, reg


def test_loss_terms_match_mmrec_in_numpy_with_padding_rows():
    dataset = _graph_dataset()
    built = models.build("lightgcn", dataset, embedding_size=4, n_layers=2)
    params = _random_params(7, 9, 4, seed=1)
    rng = np.random.default_rng(2)
    users, pos, neg = rng.integers(0, 7, 10), rng.integers(0, 9, 10), rng.integers(0, 9, 10)
    weights = np.array([1] * 7 + [0] * 3, np.float32)
    batch = {"users": users, "pos_items": pos, "neg_items": neg[:, None], "weights": weights}
    terms = built.module.apply({"params": params}, built.ctx, batch, True, method="loss_terms")
    bpr, reg = _numpy_mmrec_lightgcn_loss(dataset, params, 2, users, pos, neg, weights)
    np.testing.assert_allclose(float(terms["bpr"]), bpr, rtol=1e-5)
    np.testing.assert_allclose(float(terms["reg"]), reg, rtol=1e-5)


def test_gradient_matches_finite_differences():
    dataset = _graph_dataset()
    built = models.build("lightgcn", dataset, embedding_size=2, n_layers=2)
    batch = normalize_batch({"users": np.array([0, 2, 5]), "pos_items": np.array([1, 4, 6]), "neg_items": np.array([[3], [8], [0]])})
    with jax.enable_x64():
        params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), _random_params(7, 9, 2, seed=3))
        ctx = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64) if a.dtype == np.float32 else a, built.ctx)
        loss = jax.jit(lambda p: sum(built.module.apply({"params": p}, ctx, batch, True,
                                                        method="loss_terms").values()))
        assert_gradient_matches_central_differences(loss, params, rtol=1e-5, atol=1e-8)


def test_graph_comes_from_ctx_not_from_the_module():
    dataset = _graph_dataset()
    built = models.build("lightgcn", dataset, embedding_size=3, n_layers=2)
    params = _random_params(7, 9, 3, seed=4)
    encode = jax.jit(lambda p, c: built.module.apply({"params": p}, c, False, method="encode"))
    graph = built.ctx["graph"]
    empty = {"graph": graph._replace(edges=graph.edges._replace(weights=jnp.zeros_like(graph.weights)))}
    users, items = encode(params, empty)  # no edges: only the layer-0 share remains
    np.testing.assert_allclose(users, params["user_embedding"] / 3, rtol=1e-6)
    np.testing.assert_allclose(items, params["item_embedding"] / 3, rtol=1e-6)
    assert not np.allclose(encode(params, built.ctx)[1], items)


def test_xavier_uniform_init_and_arguments():
    dataset = make_synthetic(500, 300, n_interactions=3000, seed=0)
    built = models.build("lightgcn", dataset)
    assert built.default_loss_weights == {"bpr": 1.0, "reg": 1e-2}
    assert isinstance(built.module, LightGCN) and built.module.n_layers == 1 and built.module.embedding_size == 64
    variables = init_compiled(built.module, jax.random.PRNGKey(0), built.ctx, False, method="encode")
    users = np.asarray(variables["params"]["user_embedding"])
    bound = np.sqrt(6 / (500 + 64))  # torch.nn.init.xavier_uniform_ on a (500, 64) table
    assert users.max() <= bound and users.min() >= -bound and users.max() > 0.98 * bound
    np.testing.assert_allclose(users.std(), bound / np.sqrt(3), rtol=0.03)
    with pytest.raises(ConfigError, match="n_layers"):
        models.build("lightgcn", dataset, n_layers=-1)
    with pytest.raises(ConfigError, match="n_layers"):
        models.build("lightgcn", dataset, n_layers=1.5)
    with pytest.raises(ConfigError, match="n_layer"):
        models.build("lightgcn", dataset, n_layer=2)


def test_learns_better_than_popularity(tmp_path):
    dataset = make_synthetic(300, 200, n_interactions=9000, seed=3, popularity_skew=0.5, temperature=0.3)
    metrics = train_tiny(tmp_path / "run", dataset, "lightgcn", {"embedding_size": 16, "n_layers": 2}, epochs=25,
                         learning_rate=0.02, loss_weights={"reg": 1e-3})
    baseline = popularity_recall(dataset)
    assert metrics["test"]["recall@20"] > 1.5 * baseline, (metrics["test"], baseline)
