"""FREEDOM: the frozen item graph and the loss terms against dense numpy re-implementations of
MMRec's FREEDOM, the per-epoch pruning hook, gradients, and learning (pmap parity: tests/test_model_contract.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec import models
from jaxrec.data import Interactions, make_synthetic
from jaxrec.errors import ConfigError
from jaxrec.models.freedom import FREEDOM
from jaxrec.models import normalize_batch

from _model_testing import init_compiled, numpy_norm_adj, popularity_recall, train_tiny


# ---- dense numpy references (MMRec's src/models/freedom.py, dense) ------------------------

def _numpy_knn_graph(features, k):
    """MMRec's get_knn_adj_mat + compute_normalized_laplacian: unweighted kNN of cosine
    similarities (the item itself included), D^-1/2 A D^-1/2 with row degrees."""
    x = features / np.linalg.norm(features, axis=1, keepdims=True)
    sims = x @ x.T
    np.fill_diagonal(sims, np.inf)  # the row maximum (1) in MMRec; forced first here
    adj = np.zeros_like(sims)
    neighbours = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    np.put_along_axis(adj, neighbours, 1.0, axis=1)
    d = adj.sum(1)
    return adj / np.sqrt(d)[:, None] / np.sqrt(d)[None, :]


def _numpy_forward(params, adj, item_graph, n_users, n_ui_layers, n_mm_layers):
    """MMRec's FREEDOM.forward: the layer mean over adj, plus S^L Q for the items."""
    ego = np.concatenate([params["user_embedding"], params["item_embedding"]]).astype(np.float64)
    layers = [ego]
    for _ in range(n_ui_layers):
        layers.append(adj @ layers[-1])
    mean = np.mean(layers, axis=0)
    h = params["item_embedding"].astype(np.float64)
    for _ in range(n_mm_layers):
        h = item_graph @ h
    return mean[:n_users], mean[n_users:] + h


def _softplus(x):
    return np.logaddexp(0.0, x)


def _small(seed=0, n_users=40, n_items=30, n_interactions=400):
    return make_synthetic(n_users, n_items, n_interactions=n_interactions, dims={"text": 6, "image": 5}, seed=seed)


def _host(tree):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), jax.device_get(tree))


def _item_graph(ctx, n_items):
    """The dense S of the context."""
    return ctx["item_graph"].to_dense(n_items)


# ---- the frozen item graph and the item-graph convolution ---------------------------------

@pytest.mark.parametrize("n_mm_layers", [1, 2])
def test_item_graph_convolution_equals_dense_numpy(n_mm_layers):
    data = _small()
    k, weights = 4, [0.3, 0.7]
    built = models.build("freedom", data, embedding_size=8, feat_embed_dim=8, knn_k=k, n_mm_layers=n_mm_layers,
                         modalities=["image", "text"], graph_weights=weights, graph_cache=None)
    expected_graph = sum(w * _numpy_knn_graph(data.modalities[name].features.astype(np.float64), k)
                         for w, name in zip(weights, ["image", "text"]))
    np.testing.assert_allclose(_item_graph(built.ctx, data.n_items), expected_graph, rtol=1e-5, atol=1e-7)
    variables = init_compiled(built.module, jax.random.PRNGKey(1), built.ctx, False, method="encode")
    h = built.module.apply(variables, built.ctx, method="item_graph_embeddings")
    q = np.asarray(variables["params"]["item_embedding"], np.float64)
    np.testing.assert_allclose(np.asarray(h), np.linalg.matrix_power(expected_graph, n_mm_layers) @ q,
                               rtol=1e-4, atol=1e-6)


def test_graph_cache_reuses_the_neighbours(tmp_path):
    data = _small()
    first = models.build("freedom", data, embedding_size=8, feat_embed_dim=8, knn_k=3, graph_cache=str(tmp_path))
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 2  # one kNN file per modality (text, image)
    second = models.build("freedom", data, embedding_size=8, feat_embed_dim=8, knn_k=3, graph_cache=str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == files
    np.testing.assert_array_equal(np.asarray(first.ctx["item_graph"].weights), np.asarray(second.ctx["item_graph"].weights))


# ---- encode and the loss terms -----------------------------------------------------------

def test_encode_and_loss_terms_match_mmrec_freedom_in_numpy():
    data = _small(seed=1)
    built = models.build("freedom", data, embedding_size=8, feat_embed_dim=8, knn_k=3, n_ui_layers=2,
                         modalities=["image", "text"], graph_weights=[0.1, 0.9], dropout=0.5, graph_cache=None)
    module, ctx = built.module, built.ctx
    rng = np.random.default_rng(0)
    users, pos, neg = rng.integers(0, data.n_users, 12), rng.integers(0, data.n_items, 12), rng.integers(0, data.n_items, 12)
    weights = np.array([1.0] * 9 + [0.0] * 3, np.float32)
    batch = {"users": users, "pos_items": pos, "neg_items": neg[:, None], "weights": weights}
    params = init_compiled(module, jax.random.PRNGKey(2), ctx, batch, True, method="loss_terms")["params"]
    host = _host(params)
    item_graph = _item_graph(ctx, data.n_items)
    train = data.split_pairs("train")
    full = numpy_norm_adj(train[:, 0], train[:, 1], data.n_users, data.n_items)

    user_emb, item_emb = module.apply({"params": params}, ctx, method="encode")
    expected_u, expected_i = _numpy_forward(host, full, item_graph, data.n_users, 2, 1)
    np.testing.assert_allclose(np.asarray(user_emb), expected_u, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(item_emb), expected_i, rtol=1e-4, atol=1e-6)

    # Training runs on the epoch's pruned graph: FREEDOM's calculate_loss in numpy.
    terms = module.apply({"params": params}, ctx, batch, True, method="loss_terms")
    pruned = ctx["train_graph"].to_dense(data.n_users + data.n_items)
    u_all, i_all = _numpy_forward(host, pruned, item_graph, data.n_users, 2, 1)
    keep = weights > 0
    u, p, n = u_all[users[keep]], i_all[pos[keep]], i_all[neg[keep]]
    expected_bpr = np.mean(_softplus(-((u * p).sum(1) - (u * n).sum(1))))
    modality = 0.0
    for m, name in enumerate(["image", "text"]):
        # trainable feature tables start at the raw features
        table = host[f"features_{m}"]["table"]
        np.testing.assert_allclose(table, data.modalities[name].features, rtol=1e-6)
        proj = table @ host[f"projection_{m}"]["kernel"] + host[f"projection_{m}"]["bias"]
        modality += np.mean(_softplus(-((u * proj[pos[keep]]).sum(1) - (u * proj[neg[keep]]).sum(1))))
    np.testing.assert_allclose(float(terms["bpr"]), expected_bpr, rtol=1e-5)
    np.testing.assert_allclose(float(terms["modality_bpr"]), modality, rtol=1e-5)


def test_pruning_hook_redraws_the_graph_each_epoch():
    data = _small(seed=2)
    built = models.build("freedom", data, embedding_size=8, feat_embed_dim=8, knn_k=3, dropout=0.6, graph_cache=None)
    n_pairs = len(np.unique(data.split_pairs("train"), axis=0))
    n_keep = int(n_pairs * 0.4)
    key = jax.random.PRNGKey(5)
    first = built.epoch_update(None, built.ctx, 0, key)["train_graph"]
    again = built.epoch_update(None, built.ctx, 0, key)["train_graph"]
    other = built.epoch_update(None, built.ctx, 1, jax.random.fold_in(key, 1))["train_graph"]
    assert first.n_edges == 2 * n_keep == other.n_edges
    np.testing.assert_array_equal(np.asarray(first.cols), np.asarray(again.cols))
    assert not np.array_equal(np.asarray(first.cols), np.asarray(other.cols))
    # The kept graph is re-normalized with its own degrees (MMRec's _normalize_adj_m).
    n = data.n_users + data.n_items
    dense = first.to_dense(n)
    binary = (dense > 0).astype(float)
    d = binary.sum(1)
    scale = np.where(d > 0, 1 / np.sqrt(np.maximum(d, 1)), 0)
    np.testing.assert_allclose(dense, binary * scale[:, None] * scale[None, :], rtol=1e-6)
    np.testing.assert_array_equal(dense, dense.T)
    # Evaluation keeps the full graph.
    assert built.epoch_update(None, built.ctx, 0, key)["graph"] is built.ctx["graph"]
    no_drop = models.build("freedom", data, embedding_size=8, feat_embed_dim=8, knn_k=3, dropout=0.0, graph_cache=None)
    assert no_drop.epoch_update is None and no_drop.ctx["train_graph"] is no_drop.ctx["graph"]


def test_gradient_matches_finite_differences():
    data = _small(seed=3, n_users=12, n_items=10, n_interactions=60)
    built = models.build("freedom", data, embedding_size=4, feat_embed_dim=4, knn_k=3, dropout=0.5,
                         modalities=["text", "image"], graph_cache=None)
    batch = normalize_batch({"users": np.array([0, 3, 7]), "pos_items": np.array([1, 4, 9]), "neg_items": np.array([[2], [0], [5]])})
    with jax.enable_x64():
        ctx = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a,
                           built.ctx)
        params = init_compiled(built.module, jax.random.PRNGKey(0), ctx, batch, True, method="loss_terms")["params"]
        params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)

        @jax.jit
        def loss(p):
            terms = built.module.apply({"params": p}, ctx, batch, True, method="loss_terms")
            return terms["bpr"] + 0.3 * terms["modality_bpr"]

        jax.test_util.check_grads(loss, (params,), order=1, modes=["rev"], atol=1e-6, rtol=1e-5)


def test_builder_checks():
    data = _small()
    with pytest.raises(ConfigError, match="feat_embed_dim"):
        models.build("freedom", data, embedding_size=8, feat_embed_dim=4, graph_cache=None)
    with pytest.raises(ConfigError, match="dropout"):
        models.build("freedom", data, dropout=1.0, graph_cache=None)
    with pytest.raises(ConfigError, match="graph_weights"):
        models.build("freedom", data, modalities=["text", "image"], graph_weights=[1.0], graph_cache=None)
    with pytest.raises(ConfigError, match="no modality"):
        models.build("freedom", data, modalities=["video"], graph_cache=None)
    with pytest.raises(ConfigError, match="has no argument"):
        models.build("freedom", data, knn=3)
    assert isinstance(models.build("freedom", data, knn_k=2, graph_cache=None).module, FREEDOM)


# ---- learning and parallelism -------------------------------------------------------------

_SYNTHETIC = dict(n_users=300, n_items=200, n_interactions=9000, dims={"text": 16, "image": 8}, seed=3,
                  popularity_skew=0.5, temperature=0.3)


def test_learns_better_than_popularity(tmp_path):
    dataset = make_synthetic(**_SYNTHETIC)
    args = {"embedding_size": 16, "feat_embed_dim": 16, "knn_k": 5, "graph_cache": "none", "dropout": 0.5}
    metrics = train_tiny(tmp_path / "run", dataset, "freedom", args, epochs=20, learning_rate=0.01,
                         loss_weights={"modality_bpr": 1e-3}, parallel="none")
    baseline = popularity_recall(dataset)
    assert metrics["test"]["recall@20"] > 1.3 * baseline, (metrics["test"], baseline)


def test_items_without_train_interactions_are_scored_by_their_content_neighbours():
    data = _small(seed=4)
    inter = data.interactions
    untrained = np.array([2, 11, 27])
    split = np.where(np.isin(inter.items, untrained), 2, inter.split).astype(inter.split.dtype)  # train -> test
    data = data.replace(interactions=Interactions(inter.users, inter.items, split))
    built = models.build("freedom", data, embedding_size=8, feat_embed_dim=8, knn_k=3, dropout=0.0,
                         modalities=["image", "text"], graph_weights=[0.5, 0.5], graph_cache=None)
    assert built.module.mask_untrained
    module, ctx = built.module, built.ctx
    batch = normalize_batch({"users": np.array([0, 5, 9]), "pos_items": np.array([1, 4, 9]),
                             "neg_items": np.array([[3], [0], [5]])})
    params = module.init(jax.random.PRNGKey(3), ctx, batch, True, method="loss_terms")["params"]
    host = _host(params)
    trained = np.ones(data.n_items, bool)
    trained[untrained] = False
    masked = dict(host, item_embedding=host["item_embedding"] * trained[:, None])
    train = data.split_pairs("train")
    full = numpy_norm_adj(train[:, 0], train[:, 1], data.n_users, data.n_items)
    item_graph = _item_graph(ctx, data.n_items)
    _, items = module.apply({"params": params}, ctx, method="encode")
    _, expected = _numpy_forward(masked, full, item_graph, data.n_users, 2, 1)
    np.testing.assert_allclose(np.asarray(items), expected, rtol=1e-4, atol=1e-6)
    # An untrained item is its content neighbours' ID vectors, S Q~ (its own row is zero).
    np.testing.assert_allclose(np.asarray(items)[untrained], (item_graph @ masked["item_embedding"])[untrained],
                               rtol=1e-4, atol=1e-6)
    # Their ID rows get no gradient, from any term, even when drawn as negatives.
    batch = normalize_batch({"users": np.array([0, 5, 9]), "pos_items": np.array([1, 4, 9]),
                             "neg_items": np.array([[2], [11], [27]])})
    grads = jax.grad(lambda p: sum(module.apply({"params": p}, ctx, batch, True, method="loss_terms").values()))(params)
    item_grads = np.asarray(grads["item_embedding"])
    assert np.all(item_grads[untrained] == 0) and np.abs(item_grads[trained]).sum() > 0
    # With every item trained nothing is masked.
    assert not models.build("freedom", _small(seed=4), embedding_size=8, feat_embed_dim=8, knn_k=3,
                            graph_cache=None).module.mask_untrained


@pytest.mark.parametrize("n_mm_layers", [0, 1, 2])
# 2 ids < 30 / 8 (ROWS_ONLY_BELOW of the 30 items): the batch's rows only; 10 and 80 ids: every row
@pytest.mark.parametrize("batch_rows", [1, 5, 40])
def test_loss_terms_at_the_batch_rows_equal_the_full_propagation(n_mm_layers, batch_rows):
    """The terms and their gradients equal those of e = propagated(...) over every item, then gathered."""
    from jaxrec.models._common import batch_triples, bpr_of, counted_pairs

    data = _small(seed=5)
    inter = data.interactions
    split = np.where(np.isin(inter.items, [3, 17]), 2, inter.split).astype(inter.split.dtype)  # two untrained items
    data = data.replace(interactions=Interactions(inter.users, inter.items, split))
    built = models.build("freedom", data, embedding_size=8, feat_embed_dim=8, knn_k=3, n_mm_layers=n_mm_layers,
                         dropout=0.5, modalities=["image", "text"], graph_weights=[0.1, 0.9], graph_cache=None)
    module, ctx = built.module, built.ctx
    rng = np.random.default_rng(1)
    batch = normalize_batch({"users": rng.integers(0, data.n_users, batch_rows),
                             "pos_items": rng.integers(0, data.n_items, batch_rows),
                             "neg_items": rng.integers(0, data.n_items, (batch_rows, 1)),
                             "weights": (rng.random(batch_rows) > 0.2).astype(np.float32)})
    params = init_compiled(module, jax.random.PRNGKey(4), ctx, batch, True, method="loss_terms")["params"]

    def full_bpr(module):
        users, positives, negatives, _ = batch_triples(batch)
        user_all, item_all = module.propagated(ctx, ctx["train_graph"])
        return bpr_of(user_all[users], item_all[positives], item_all[negatives], counted_pairs(batch))

    def loss(p):
        return module.apply({"params": p}, ctx, batch, True, method="loss_terms")["bpr"]

    expected, expected_grads = jax.value_and_grad(lambda p: nn_apply(full_bpr, module, p))(params)
    value, grads = jax.value_and_grad(loss)(params)
    np.testing.assert_allclose(float(value), float(expected), rtol=1e-6)
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(expected_grads)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-7)
    rows = jnp.asarray([0, 3, 3, 29])  # the last layer at these rows only
    np.testing.assert_allclose(
        np.asarray(module.apply({"params": params}, ctx, None, rows, method="item_graph_embeddings")),
        np.asarray(module.apply({"params": params}, ctx, method="item_graph_embeddings"))[np.asarray(rows)],
        rtol=1e-6, atol=1e-7)


def nn_apply(fn, module, params):
    from flax import linen as nn

    return nn.apply(fn, module)({"params": params})


def test_item_graph_edges_are_a_table_row_by_row():
    data = _small(seed=6)
    built = models.build("freedom", data, embedding_size=8, feat_embed_dim=8, knn_k=4, modalities=["image", "text"],
                         graph_cache=None)
    graph = built.ctx["item_graph"]
    width = graph.n_edges // data.n_items
    assert graph.n_edges == width * data.n_items and width <= 8  # at most the two modalities' lists
    np.testing.assert_array_equal(np.asarray(graph.rows), np.repeat(np.arange(data.n_items), width))
    entries = np.asarray(graph.weights).reshape(data.n_items, width)
    ids = np.asarray(graph.cols).reshape(data.n_items, width)
    unused = entries == 0
    assert np.all(ids[unused] == np.broadcast_to(np.arange(data.n_items)[:, None], ids.shape)[unused])
    # No pair twice in a row (the union of the modalities' lists).
    assert all(len(set(row[~free])) == (~free).sum() for row, free in zip(ids, unused))


def test_positives_and_negatives_share_one_projection_of_the_features():
    """With the whole table projected (the batch holds as many ids as there are items), each
    modality's features are multiplied by its projection once, and its gradient takes one
    product per weight and per (trained) feature table, as MMRec's ``text_trs(text_embedding.weight)``
    read at the positives and the negatives does."""
    from _model_testing import count_products

    data = _small(seed=2)
    d = 8
    built = models.build("freedom", data, embedding_size=d, feat_embed_dim=d, knn_k=3, dropout=0.5,
                         modalities=["image", "text"], graph_weights=[0.1, 0.9], graph_cache=None)
    module, ctx = built.module, built.ctx
    rng = np.random.default_rng(3)
    n = data.n_items  # 2n ids >= n items: the whole-table path
    batch = normalize_batch({"users": rng.integers(0, data.n_users, n), "pos_items": rng.integers(0, data.n_items, n),
                             "neg_items": rng.integers(0, data.n_items, (n, 1)), "weights": np.ones(n, np.float32)})
    params = init_compiled(module, jax.random.PRNGKey(0), ctx, batch, True, method="loss_terms")["params"]

    def modality_bpr(p):
        return module.apply({"params": p}, ctx, batch, True, method="loss_terms")["modality_bpr"]

    widths = [data.modalities[name].features.shape[1] for name in ("image", "text")]
    assert count_products(modality_bpr, params, shape=(data.n_items, d)) == len(widths)
    for width in widths:
        # the weight gradient (d, width) or (width, d), the feature table's (n_items, width)
        weight = (count_products(jax.grad(modality_bpr), params, shape=(d, width))
                  + count_products(jax.grad(modality_bpr), params, shape=(width, d)))
        assert weight == 1
        assert count_products(jax.grad(modality_bpr), params, shape=(data.n_items, width)) == 1
