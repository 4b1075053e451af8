"""MGCN: the kNN graphs, encode and the loss terms against a dense numpy re-implementation of
MMRec's MGCN, padding rows, central-difference gradients, and learning (pmap parity: tests/test_model_contract.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from jaxrec import models
from jaxrec.data import Modality, make_synthetic
from jaxrec.errors import ConfigError
from jaxrec.models.mgcn import MGCN

from _model_testing import (
    assert_gradient_matches_central_differences,
    compiled_apply,
    numpy_norm_adj,
    popularity_recall,
    randomized_params,
    tiny_multimodal_dataset,
    train_tiny,
)


# ---- dense numpy reference (MMRec's src/models/mgcn.py, dense) ----------------------------

def _numpy_knn_graph(features, mask, k):
    """MMRec's build_sim + build_knn_normalized_graph(norm_type="sym"): the top-k cosine
    similarities of each row as weights (the item itself first), D^-1/2 A D^-1/2 with row
    degrees. Items without the modality have no row and are no one's neighbour."""
    x = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-300)
    sims = x @ x.T
    sims[:, ~mask] = -np.inf
    np.fill_diagonal(sims, np.inf)
    adj = np.zeros_like(sims)
    for i in np.flatnonzero(mask):
        neighbours = np.argsort(-sims[i], kind="stable")[:min(k, int(mask.sum()))]
        adj[i, neighbours] = np.where(neighbours == i, 1.0, sims[i, neighbours])
    d = adj.sum(1)
    scale = np.where(d > 0, 1 / np.sqrt(np.where(d > 0, d, 1)), 0)
    return adj * scale[:, None] * scale[None, :]


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _linear(p, x):
    return x @ p["kernel"] + p.get("bias", 0.0)


def _numpy_forward(p, adj, item_graphs, n_users, n_ui_layers, n_layers):
    """MMRec's MGCN.forward(adj, train=True): (users, items, side, content)."""
    ego = np.concatenate([p["user_embedding"], p["item_embedding"]])
    layers = [ego]
    for _ in range(n_ui_layers):
        layers.append(adj @ layers[-1])
    content = np.mean(layers, axis=0)
    r = adj[:n_users, n_users:]
    views = []
    for m, graph in enumerate(item_graphs):
        feats = _linear(p[f"projection_{m}"], p[f"features_{m}"]["table"])
        h = p["item_embedding"] * _sigmoid(_linear(p[f"purifier_{m}"], feats))
        for _ in range(n_layers):
            h = graph @ h
        views.append(np.concatenate([r @ h, h]))
    query = lambda e: _linear(p["query_out"], np.tanh(_linear(p["query_hidden"], e)))  # noqa: E731
    att = np.concatenate([query(e) for e in views], axis=-1)
    weight = np.exp(att - att.max(1, keepdims=True))
    weight /= weight.sum(1, keepdims=True)
    common = sum(weight[:, m:m + 1] * e for m, e in enumerate(views))
    sep = [_sigmoid(_linear(p[f"preference_{m}"], content)) * (e - common) for m, e in enumerate(views)]
    side = (sum(sep) + common) / (len(views) + 1)
    final = content + side
    return final[:n_users], final[n_users:], side, content


def _numpy_info_nce(a, b, temperature):
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    pos = np.exp((a * b).sum(-1) / temperature)
    total = np.exp(a @ b.T / temperature).sum(1)
    return np.mean(-np.log(pos / total))


def _numpy_loss(p, adj, item_graphs, n_users, users, pos, neg):
    """MMRec's calculate_loss split into its terms (one negative per row, batch_size = B)."""
    u_all, i_all, side, content = _numpy_forward(p, adj, item_graphs, n_users, 2, 1)
    u, i, j = u_all[users], i_all[pos], i_all[neg]
    bpr = -np.mean(np.log(_sigmoid((u * i).sum(1) - (u * j).sum(1))))
    reg = 0.5 * ((u ** 2).sum() + (i ** 2).sum() + (j ** 2).sum()) / len(users)
    cl = (_numpy_info_nce(side[n_users:][pos], content[n_users:][pos], 0.2)
          + _numpy_info_nce(side[:n_users][users], content[:n_users][users], 0.2))
    return {"bpr": bpr, "reg": reg, "cl": cl}


def _host(tree):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), jax.device_get(tree))


def _dense_graphs(data, built, names):
    train = data.split_pairs("train")
    adj = numpy_norm_adj(train[:, 0], train[:, 1], data.n_users, data.n_items)
    return adj, [built.ctx["item_graphs"][m].to_dense(data.n_items) for m in range(len(names))]


# ---- the kNN graphs, encode and the loss terms --------------------------------------------

def test_knn_graphs_equal_dense_numpy():
    presence = np.ones((8, 2), bool)
    presence[[1, 6], 0] = False  # two items without the first modality
    data = tiny_multimodal_dataset(presence, [("audio", 5), ("text", 4)])
    built = models.build("mgcn", data, embedding_size=4, knn_k=3, graph_cache="none")
    for m, name in enumerate(["audio", "text"]):
        modality = data.modalities[name]
        expected = _numpy_knn_graph(modality.features.astype(np.float64), modality.mask, 3)
        np.testing.assert_allclose(built.ctx["item_graphs"][m].to_dense(8), expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("missing,batch", [(False, 12), (True, 12), (False, 48)])
def test_encode_and_loss_terms_match_mmrec_mgcn_in_numpy(missing, batch):
    """A batch of 12 rows contrasts the gathered rows (the tables hold 30 users, 20 items); one of
    48 rows (repeated ids) contrasts the tables' distinct rows by their counts (info_nce_by_id)."""
    data = make_synthetic(30, 20, n_interactions=250, dims={"image": 5, "text": 6}, seed=1)
    if missing:  # item 3 lacks the image modality: no neighbours there, zero features
        image = data.modalities["image"]
        mask, features = image.mask.copy(), image.features.copy()
        mask[3], features[3] = False, 0.0
        data = data.replace(modalities={**data.modalities, "image": Modality("image", features, mask)})
    built = models.build("mgcn", data, embedding_size=6, knn_k=4, modalities=["image", "text"], graph_cache="none")
    params = randomized_params(built, seed=2, scale=0.5)
    host = _host(params)
    adj, item_graphs = _dense_graphs(data, built, ["image", "text"])

    user_emb, item_emb = compiled_apply(built.module, params, built.ctx, False, method="encode")
    expected_u, expected_i, _, _ = _numpy_forward(host, adj, item_graphs, data.n_users, 2, 1)
    np.testing.assert_allclose(np.asarray(user_emb), expected_u, rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(np.asarray(item_emb), expected_i, rtol=2e-4, atol=2e-5)

    # Real rows and three padding rows (weight 0, arbitrary ids) that must change nothing.
    rng = np.random.default_rng(0)
    users, pos, neg = rng.integers(0, 30, batch), rng.integers(0, 20, batch), rng.integers(0, 20, batch)
    real = batch - 3
    weights = np.array([1.0] * real + [0.0] * 3, np.float32)
    rows = {"users": users, "pos_items": pos, "neg_items": neg[:, None], "weights": weights}
    terms = compiled_apply(built.module, params, built.ctx, rows, True, method="loss_terms")
    expected = _numpy_loss(host, adj, item_graphs, data.n_users, users[:real], pos[:real], neg[:real])
    assert set(terms) == set(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(float(terms[name]), value, rtol=2e-5, err_msg=name)


def test_several_negatives_average_the_regularizer():
    data = make_synthetic(30, 20, n_interactions=250, dims={"image": 5, "text": 6}, seed=4)
    built = models.build("mgcn", data, embedding_size=4, knn_k=3, graph_cache="none")
    params = randomized_params(built, seed=3)
    rng = np.random.default_rng(1)
    users, pos, neg = rng.integers(0, 30, 8), rng.integers(0, 20, 8), rng.integers(0, 20, (8, 3))
    batch = {"users": users, "pos_items": pos, "neg_items": neg, "weights": np.ones(8, np.float32)}
    terms = compiled_apply(built.module, params, built.ctx, batch, True, method="loss_terms")
    u_all, i_all = (np.asarray(a, np.float64) for a in compiled_apply(built.module, params, built.ctx, False,
                                                                        method="encode"))
    u, i, j = u_all[users], i_all[pos], i_all[neg]
    margins = (u * i).sum(1)[:, None] - np.einsum("bd,bnd->bn", u, j)
    np.testing.assert_allclose(float(terms["bpr"]), np.mean(np.logaddexp(0, -margins)), rtol=1e-5)
    reg = 0.5 * ((u ** 2).sum() + (i ** 2).sum() + (j ** 2).sum(-1).mean(-1).sum()) / 8
    np.testing.assert_allclose(float(terms["reg"]), reg, rtol=1e-5)


@pytest.mark.parametrize("rows", [4, 8])
def test_gradient_matches_central_differences(rows):
    """4 rows contrast the gathered rows; 8 (5 users, 8 items) the tables' distinct rows."""
    presence = np.ones((8, 2), bool)
    presence[5, 1] = False
    data = tiny_multimodal_dataset(presence, [("image", 3), ("text", 4)])
    built = models.build("mgcn", data, embedding_size=3, knn_k=3, graph_cache="none")
    batch = {"users": np.array([0, 2, 4, 1, 2, 0, 2, 3])[:rows], "pos_items": np.array([1, 4, 6, 1, 4, 2, 0, 5])[:rows],
             "neg_items": np.array([[3], [0], [5], [2], [6], [3], [1], [0]])[:rows],
             "weights": np.array([1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0])[:rows]}
    checked = ["item_embedding", "purifier_0/kernel", "projection_1/bias", "query_hidden/kernel",
               "query_out/kernel", "preference_1/kernel", "features_0/table"]
    with jax.enable_x64():
        ctx = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a,
                           built.ctx)
        base = traverse_util.flatten_dict(randomized_params(built, seed=5, scale=0.8), sep="/")
        base = {name: jnp.asarray(value, jnp.float64) for name, value in base.items()}

        @jax.jit
        def loss(flat):
            params = traverse_util.unflatten_dict({**base, **flat}, sep="/")
            terms = built.module.apply({"params": params}, ctx, batch, True, method="loss_terms")
            return terms["bpr"] + 0.7 * terms["reg"] + 0.4 * terms["cl"]

        flat = {name: base[name] for name in checked}
        assert_gradient_matches_central_differences(loss, flat, rtol=1e-5, atol=1e-8)


def test_builder_checks():
    data = make_synthetic(30, 20, n_interactions=250, dims={"image": 5, "text": 6}, seed=0)
    with pytest.raises(ConfigError, match="temperature"):
        models.build("mgcn", data, temperature=0.0, graph_cache="none")
    with pytest.raises(ConfigError, match="knn_k"):
        models.build("mgcn", data, knn_k=0, graph_cache="none")
    with pytest.raises(ConfigError, match="n_ui_layers"):
        models.build("mgcn", data, n_ui_layers=-1, graph_cache="none")
    with pytest.raises(ConfigError, match="no modality"):
        models.build("mgcn", data, modalities=["video"], graph_cache="none")
    with pytest.raises(ConfigError, match="has no argument"):
        models.build("mgcn", data, cl_loss=0.1)
    built = models.build("mgcn", data, knn_k=2, graph_cache="none")
    assert isinstance(built.module, MGCN) and set(built.default_loss_weights) == {"bpr", "reg", "cl"}


# ---- learning and parallelism -------------------------------------------------------------

_SYNTHETIC = dict(n_users=300, n_items=200, n_interactions=9000, dims={"text": 16, "image": 8}, seed=3,
                  popularity_skew=0.5, temperature=0.3)


def test_learns_better_than_popularity(tmp_path):
    dataset = make_synthetic(**_SYNTHETIC)
    args = {"embedding_size": 16, "knn_k": 5, "graph_cache": "none"}
    metrics = train_tiny(tmp_path / "run", dataset, "mgcn", args, epochs=6, learning_rate=0.01,
                         loss_weights={"reg": 1e-4, "cl": 0.01}, parallel="none")
    baseline = popularity_recall(dataset)
    assert metrics["test"]["recall@20"] > 1.3 * baseline, (metrics["test"], baseline)
