"""LATTICE: the chunked learned kNN, the learned + initial item graph, encode and the loss terms
against dense numpy re-implementations of MMRec's LATTICE; the "epoch" mode; gradients;
learning (pmap parity: tests/test_model_contract.py)."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec import eval as jeval
from jaxrec import models
from jaxrec.data import make_synthetic
from jaxrec.errors import ConfigError
from jaxrec.models.lattice import LATTICE, knn_indices, refresh_learned_graph, table_graph
from jaxrec.models import normalize_batch

from _model_testing import init_compiled


# ---- dense numpy references (MMRec's src/models/lattice.py and src/utils/utils.py) ---------

def _numpy_knn(features, k):
    """build_sim + build_knn_neighbourhood: the k largest cosine similarities of each row kept
    (weighted), the item itself first."""
    x = features / np.linalg.norm(features, axis=1, keepdims=True)
    sims = x @ x.T
    ranked = sims.copy()
    np.fill_diagonal(ranked, np.inf)
    neighbours = np.argsort(-ranked, axis=1, kind="stable")[:, :k]
    adj = np.zeros_like(sims)
    np.put_along_axis(adj, neighbours, np.take_along_axis(sims, neighbours, axis=1), axis=1)
    return adj, neighbours


def _laplacian(adj):
    """compute_normalized_laplacian: D^-1/2 A D^-1/2 with row sums, inf -> 0."""
    d = adj.sum(1)
    scale = np.where(d > 0, 1.0 / np.sqrt(np.where(d > 0, d, 1.0)), 0.0)
    return adj * scale[:, None] * scale[None, :]


def _softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def _numpy_item_graph(params, raw_features, k, lambda_coeff):
    """LATTICE.forward(build_item_graph=True)'s item_adj, dense."""
    alpha = _softmax(params["modal_weight"])
    learned, original = 0.0, 0.0
    for m, raw in enumerate(raw_features):
        table = params[f"features_{m}"]["table"] if f"features_{m}" in params else raw
        projected = table @ params[f"projection_{m}"]["kernel"] + params[f"projection_{m}"]["bias"]
        learned = learned + alpha[m] * _numpy_knn(projected, k)[0]
        original = original + alpha[m] * _laplacian(_numpy_knn(raw, k)[0])
    return (1 - lambda_coeff) * _laplacian(learned) + lambda_coeff * original


def _numpy_encode(params, item_graph, train_pairs, n_users, n_items, n_ui_layers, n_layers):
    """LATTICE.forward with cf_model=lightgcn: D^-1 (A + I) user-item graph, layer mean, plus
    the L2-normalized item-graph embedding."""
    n = n_users + n_items
    adj = np.zeros((n, n))
    adj[train_pairs[:, 0], train_pairs[:, 1] + n_users] = 1.0
    adj[train_pairs[:, 1] + n_users, train_pairs[:, 0]] = 1.0
    adj += np.eye(n)
    adj /= adj.sum(1, keepdims=True)
    ego = np.concatenate([params["user_embedding"], params["item_embedding"]])
    layers = [ego]
    for _ in range(n_ui_layers):
        layers.append(adj @ layers[-1])
    mean = np.mean(layers, axis=0)
    h = params["item_embedding"]
    for _ in range(n_layers):
        h = item_graph @ h
    h = h / np.maximum(np.linalg.norm(h, axis=1, keepdims=True), 1e-12)
    return mean[:n_users], mean[n_users:] + h


def _small(seed=0, n_users=40, n_items=30, n_interactions=400):
    return make_synthetic(n_users, n_items, n_interactions=n_interactions, dims={"text": 6, "image": 5}, seed=seed)


def _host(tree):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), jax.device_get(tree))


def _init(built, seed=1):
    params = init_compiled(built.module, jax.random.PRNGKey(seed), built.ctx, False, method="encode")["params"]
    # Unequal modality weights, so that the softmax is really exercised.
    return {**params, "modal_weight": jnp.asarray([0.9, -0.4][:params["modal_weight"].shape[0]])}


# ---- the chunked kNN -----------------------------------------------------------------------

@pytest.mark.parametrize("block_size,column_block_size", [(1, 30), (7, 5), (30, 8), (64, 64)])
def test_knn_indices_equal_a_dense_top_k(block_size, column_block_size):
    features = np.random.default_rng(0).standard_normal((30, 4)).astype(np.float32)
    expected = _numpy_knn(features.astype(np.float64), 5)[1]
    found = jax.jit(lambda x: knn_indices(x, 5, block_size=block_size, column_block_size=column_block_size))(features)
    np.testing.assert_array_equal(np.asarray(found), expected)
    assert np.all(np.asarray(found)[:, 0] == np.arange(30))


def test_knn_indices_rank_exact_ties_by_id():
    # Rows 0-3 identical, 4-5 identical: ties must resolve to the lower id in every tiling.
    features = np.array([[1, 0]] * 4 + [[0, 1]] * 2 + [[1, 1]], np.float32)
    for block, columns in ((1, 3), (7, 7), (2, 4)):
        found = np.asarray(knn_indices(features, 3, block_size=block, column_block_size=columns))
        np.testing.assert_array_equal(found[1], [1, 0, 2])
        np.testing.assert_array_equal(found[5], [5, 4, 6])


def test_knn_indices_checks_k():
    with pytest.raises(ConfigError, match="k must be"):
        knn_indices(jnp.ones((3, 2)), 4)


# ---- the item graph, encode, the loss terms ------------------------------------------------

@pytest.mark.parametrize("train_features", [True, False])
def test_item_graph_equals_dense_numpy(train_features):
    data = _small()
    k, lam = 4, 0.7
    built = models.build("lattice", data, embedding_size=8, feat_embed_dim=3, knn_k=k, lambda_coeff=lam,
                         modalities=["image", "text"], train_features=train_features, knn_block_size=7,
                         graph_cache="none")
    params = _init(built)
    raw = [data.modalities[name].features.astype(np.float64) for name in ("image", "text")]
    expected = _numpy_item_graph(_host(params), raw, k, lam)
    learned, original = built.module.apply({"params": params}, built.ctx, method="item_graphs")
    found = (1 - lam) * learned.to_dense(data.n_items) + lam * original.to_dense(data.n_items)
    np.testing.assert_allclose(found, expected, rtol=1e-4, atol=1e-6)
    # The learned part alone is a symmetric-normalized graph of k neighbours per modality.
    assert learned.n_edges == data.n_items * 2 * k


def test_encode_and_loss_terms_match_mmrec_lattice_in_numpy():
    data = _small(seed=1)
    k, lam = 3, 0.9
    built = models.build("lattice", data, embedding_size=8, feat_embed_dim=4, knn_k=k, lambda_coeff=lam,
                         n_layers=2, n_ui_layers=2, modalities=["image", "text"], graph_cache="none")
    params = _init(built)
    host = _host(params)
    raw = [data.modalities[name].features.astype(np.float64) for name in ("image", "text")]
    item_graph = _numpy_item_graph(host, raw, k, lam)
    train = np.unique(data.split_pairs("train"), axis=0)
    expected_u, expected_i = _numpy_encode(host, item_graph, train, data.n_users, data.n_items, 2, 2)
    user_emb, item_emb = built.module.apply({"params": params}, built.ctx, method="encode")
    np.testing.assert_allclose(np.asarray(user_emb), expected_u, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(item_emb), expected_i, rtol=1e-4, atol=1e-5)

    # bpr_loss: -mean log sigmoid(pos - neg); reg = 1/2 (|u|^2 + |i|^2 + |j|^2) / B over the real
    # rows, B their number (the model contract's padding rule; MMRec's B is the configured size).
    rng = np.random.default_rng(0)
    users, pos, neg = rng.integers(0, data.n_users, 12), rng.integers(0, data.n_items, 12), rng.integers(0, data.n_items, 12)
    weights = np.array([1.0] * 10 + [0.0] * 2, np.float32)
    terms = built.module.apply({"params": params}, built.ctx, {"users": users, "pos_items": pos,
                                                                "neg_items": neg[:, None], "weights": weights},
                               True, method="loss_terms")
    keep = weights > 0
    u, p, n = expected_u[users[keep]], expected_i[pos[keep]], expected_i[neg[keep]]
    np.testing.assert_allclose(float(terms["bpr"]), np.mean(np.logaddexp(0, -((u * p).sum(1) - (u * n).sum(1)))),
                               rtol=1e-5)
    np.testing.assert_allclose(float(terms["reg"]), 0.5 * ((u ** 2).sum() + (p ** 2).sum() + (n ** 2).sum()) / 10,
                               rtol=1e-5)


def test_epoch_mode_uses_refreshed_neighbours():
    data = _small(seed=2)
    kwargs = dict(embedding_size=8, feat_embed_dim=4, knn_k=3, modalities=["image", "text"], graph_cache="none")
    step = models.build("lattice", data, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        epoch = models.build("lattice", data, learned_graph="epoch", **kwargs)
    params = _init(step)
    # Before a refresh: the initial graphs' neighbours (of the raw features).
    raw_neighbours = np.concatenate([_numpy_knn(data.modalities[n].features.astype(np.float64), 3)[1]
                                     for n in ("image", "text")], axis=1)
    np.testing.assert_array_equal(np.asarray(epoch.ctx["learned_neighbours"]), raw_neighbours)
    refreshed = refresh_learned_graph(epoch.module, params, epoch.ctx)
    expected = step.module.apply({"params": params}, step.ctx, method="encode")
    found = epoch.module.apply({"params": params}, refreshed, method="encode")
    for a, b in zip(found, expected):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    stale = epoch.module.apply({"params": params}, epoch.ctx, method="encode")
    assert not np.allclose(np.asarray(stale[1]), np.asarray(expected[1]))


def test_epoch_mode_ivf_refresh_probing_every_cluster_equals_the_exact_refresh():
    data = _small(seed=4, n_items=60)
    kwargs = dict(embedding_size=8, feat_embed_dim=4, knn_k=3, modalities=["image", "text"], graph_cache="none",
                  learned_graph="epoch")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exact = models.build("lattice", data, **kwargs)
        full = models.build("lattice", data, knn_method="ivf", knn_n_clusters=5, knn_n_probe=5, **kwargs)
        partial = models.build("lattice", data, knn_method="ivf", knn_n_clusters=6, knn_n_probe=1, **kwargs)
    params = _init(exact)
    expected = np.asarray(refresh_learned_graph(exact.module, params, exact.ctx)["learned_neighbours"])
    # The initial graphs (raw features) and the refreshed learned lists both equal the exact ones.
    np.testing.assert_array_equal(np.asarray(full.ctx["learned_neighbours"]),
                                  np.asarray(exact.ctx["learned_neighbours"]))
    refreshed = refresh_learned_graph(full.module, params, full.ctx)["learned_neighbours"]
    np.testing.assert_array_equal(np.asarray(refreshed), expected)
    # Probing one cluster of six: still each item itself first and 3 distinct neighbours per modality.
    found = np.asarray(refresh_learned_graph(partial.module, params, partial.ctx)["learned_neighbours"])
    assert found.shape == expected.shape
    for m in range(2):
        lists = found[:, 3 * m:3 * (m + 1)]
        np.testing.assert_array_equal(lists[:, 0], np.arange(60))
        assert all(np.unique(row).size == 3 for row in lists)


def test_gradient_matches_finite_differences():
    data = _small(seed=3, n_users=12, n_items=10, n_interactions=60)
    built = models.build("lattice", data, embedding_size=4, feat_embed_dim=3, knn_k=3, n_ui_layers=1,
                         modalities=["text", "image"], graph_cache="none")
    batch = normalize_batch({"users": np.array([0, 3, 7]), "pos_items": np.array([1, 4, 9]), "neg_items": np.array([[2], [0], [5]])})
    with jax.enable_x64():
        ctx = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a,
                           built.ctx)
        params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), _init(built))

        @jax.jit
        def loss(p):
            terms = built.module.apply({"params": p}, ctx, batch, True, method="loss_terms")
            return terms["bpr"] + 0.1 * terms["reg"]

        # The kNN choice is piecewise constant: small steps keep it fixed, and the gradient
        # flows through the chosen entries (the learned similarities) and everything else.
        jax.test_util.check_grads(loss, (params,), order=1, modes=["rev"], eps=1e-6, atol=1e-5, rtol=1e-4)
        grads = jax.grad(loss)(params)
        assert float(jnp.abs(grads["projection_0"]["kernel"]).max()) > 0
        assert float(jnp.abs(grads["modal_weight"]).max()) > 0


def test_chunked_item_graph_gives_the_same_loss_and_gradient():
    # propagation_chunk=7 entries: under one row per chunk of the (30, 2 x 2 k) tables, every
    # chunk rematerialized in the backward pass; the numbers equal the one-shot propagation.
    data = _small(seed=5)
    built = models.build("lattice", data, embedding_size=6, feat_embed_dim=3, knn_k=3, modalities=["image", "text"],
                         graph_cache="none")
    chunked = built.module.clone(propagation_chunk=7)
    params = _init(built)
    batch = normalize_batch({"users": np.array([0, 3, 7, 9]), "pos_items": np.array([1, 4, 9, 20]),
                             "neg_items": np.array([[2], [0], [5], [11]])})

    def loss(module):
        return jax.jit(jax.value_and_grad(lambda p: sum(module.apply({"params": p}, built.ctx, batch, True,
                                                                     method="loss_terms").values())))(params)

    (value, grads), (value_chunked, grads_chunked) = loss(built.module), loss(chunked)
    np.testing.assert_allclose(float(value_chunked), float(value), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grads_chunked), jax.tree.leaves(grads)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


def test_builder_checks():
    data = _small()
    with pytest.raises(ConfigError, match="learned_graph"):
        models.build("lattice", data, learned_graph="batch", graph_cache="none")
    with pytest.raises(ConfigError, match="lambda_coeff"):
        models.build("lattice", data, lambda_coeff=1.5, graph_cache="none")
    with pytest.raises(ConfigError, match="knn_k"):
        models.build("lattice", data, knn_k=31, graph_cache="none")
    with pytest.raises(ConfigError, match="graph_cache"):
        models.build("lattice", data, graph_cache=3)
    with pytest.raises(ConfigError, match="knn_method"):
        models.build("lattice", data, knn_method="annoy", graph_cache="none")
    with pytest.raises(ConfigError, match="needs knn_n_clusters"):
        models.build("lattice", data, knn_method="ivf", knn_n_probe=2, graph_cache="none")
    with pytest.raises(ConfigError, match="knn_n_probe"):
        models.build("lattice", data, knn_method="ivf", knn_n_clusters=4, knn_n_probe=5, graph_cache="none")
    with pytest.raises(ConfigError, match="apply to knn_method 'ivf' only"):
        models.build("lattice", data, knn_n_clusters=4, graph_cache="none")
    assert isinstance(models.build("lattice", data, knn_k=2, graph_cache="none").module, LATTICE)


# ---- learning and parallelism -------------------------------------------------------------

_SYNTHETIC = dict(n_users=300, n_items=200, n_interactions=9000, dims={"text": 16, "image": 8}, seed=3,
                  popularity_skew=0.5, temperature=0.3)


def test_learns_better_than_popularity(tmp_path):
    from jaxrec.train import config_from_dict, train_and_evaluate

    dataset = make_synthetic(**_SYNTHETIC)
    config = config_from_dict({
        "data": {"synthetic": {}},
        "model": {"name": "lattice", "args": {"embedding_size": 16, "feat_embed_dim": 8, "knn_k": 5,
                                              "graph_cache": "none"}},
        "train": {"epochs": 10, "batch_size": 512, "learning_rate": 0.01, "patience": 10, "seed": 0,
                  "checkpoint_every": 10},
        "eval": {"ks": [20], "metrics": ["recall"]},
        "loss_weights": {"reg": 1e-4},
    })
    metrics = train_and_evaluate(config, tmp_path / "run", dataset=dataset, quiet=True)
    popularity = np.bincount(dataset.split_pairs("train")[:, 1], minlength=dataset.n_items).astype(np.float32)
    baseline = jeval.evaluate_protocol(
        np.ones((dataset.n_users, 1), np.float32), popularity[:, None], split="test",
        train_pairs=dataset.split_pairs("train"), valid_pairs=dataset.split_pairs("valid"),
        test_pairs=dataset.split_pairs("test"), ks=[20], metrics=["recall"])["recall@20"]
    assert metrics["test"]["recall@20"] > 1.3 * baseline, (metrics["test"], baseline)


def test_mmrec_mode_fresh_graph_with_gradient_at_an_epochs_first_step_only():
    # MMRec's schedule: the epoch hook's detached table equals the graph of the same parameters;
    # epoch step 0 recomputes it with gradient (the "step" mode's loss and gradient), later steps
    # use it as a constant (same loss value; no gradient to the projections, features, modality
    # weights; the ID tables' gradient unchanged).
    data = _small(seed=5)
    kwargs = dict(embedding_size=6, feat_embed_dim=3, knn_k=3, modalities=["image", "text"], graph_cache="none")
    step_mode = models.build("lattice", data, **kwargs)
    built = models.build("lattice", data, learned_graph="mmrec", **kwargs)
    params = _init(step_mode)
    ctx = built.epoch_update(params, built.ctx, 0, None)
    ids, weights = jax.jit(lambda p: step_mode.module.apply({"params": p}, step_mode.ctx, method="item_table"))(params)
    np.testing.assert_array_equal(np.asarray(ctx["item_ids"]), np.asarray(ids))
    np.testing.assert_allclose(np.asarray(ctx["item_weights"]), np.asarray(weights), rtol=1e-6)
    batch = normalize_batch({"users": np.array([0, 3, 7, 9]), "pos_items": np.array([1, 4, 9, 20]),
                             "neg_items": np.array([[2], [0], [5], [11]])})

    def loss(module, c):
        return jax.jit(jax.value_and_grad(lambda p: sum(module.apply({"params": p}, c, batch, True,
                                                                     method="loss_terms").values())))(params)

    value, grads = loss(step_mode.module, step_mode.ctx)
    first, first_grads = loss(built.module, {**ctx, models.EPOCH_STEP: jnp.int32(0)})
    later, later_grads = loss(built.module, {**ctx, models.EPOCH_STEP: jnp.int32(3)})
    np.testing.assert_allclose(float(first), float(value), rtol=1e-6)
    np.testing.assert_allclose(float(later), float(value), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(first_grads), jax.tree.leaves(grads)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
    graph_only = [first_grads["projection_0"]["kernel"], first_grads["modal_weight"], first_grads["features_1"]["table"]]
    assert all(float(jnp.abs(g).max()) > 0 for g in graph_only)
    for name in ("projection_0", "projection_1", "modal_weight", "features_0", "features_1"):
        assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(later_grads[name])), name
    for name in ("user_embedding", "item_embedding"):
        np.testing.assert_allclose(np.asarray(later_grads[name]), np.asarray(grads[name]), rtol=1e-5, atol=1e-7)
    # The builder's marker (the optimizer skips these leaves outside first steps) is exactly the
    # set of leaves whose gradient is zero in a later step.
    marked = dict(jax.tree_util.tree_flatten_with_path(built.epoch_start_params(params))[0])
    for path, g in jax.tree_util.tree_flatten_with_path(later_grads)[0]:
        assert marked[path] == (float(jnp.abs(g).max()) == 0), jax.tree_util.keystr(path)
    assert models.build("lattice", data, learned_graph="epoch", **kwargs).epoch_start_params is None
    # Evaluation encodes with the hook's table: the step mode's embeddings.
    encoded = built.module.apply({"params": params}, ctx, False, method="encode")
    expected = step_mode.module.apply({"params": params}, step_mode.ctx, False, method="encode")
    for a, b in zip(encoded, expected):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_mmrec_mode_trainer_moves_the_graph_parameters_in_first_steps_only():
    """MMRec's torch Adam skips the parameters without a gradient: under the trainer's step the
    item graph's parameters change at each epoch's first step and stay bit for bit through the
    others (their own optimizer state), while the ID tables move at every step."""
    from jaxrec.train import config_from_dict, epoch_context, init_state, prepare_experiment
    from jaxrec.train._step import make_train_step

    data = dict(n_users=40, n_items=30, n_interactions=400, dims={"image": 5, "text": 4}, seed=5)
    config = config_from_dict({
        "data": {"synthetic": data},
        "model": {"name": "lattice", "args": {"embedding_size": 6, "feat_embed_dim": 3, "knn_k": 3,
                                              "graph_cache": "none", "learned_graph": "mmrec"}},
        "train": {"epochs": 2, "batch_size": 64, "learning_rate": 0.01, "seed": 3},
        "eval": {"ks": [20], "metrics": ["recall"]}})
    exp = prepare_experiment(config)
    steps = exp.steps_per_epoch
    assert steps >= 3
    step = jax.jit(make_train_step(exp.module, exp.tx, exp.loss_weights, steps_per_epoch=steps))
    state = init_state(exp.module, exp.built.ctx, exp.sampler.example_batch(), exp.tx, 3)
    marked = jax.tree.leaves(exp.built.epoch_start_params(state.params))
    history = [jax.tree.leaves(jax.device_get(state.params))]
    for epoch in range(2):
        ctx = epoch_context(exp.built, state.params, 3, epoch)
        batches = exp.sampler.batches(epoch)
        for s in range(steps):
            state, _ = step(state, ctx, {k: v[s] for k, v in batches.items()})
            history.append(jax.tree.leaves(jax.device_get(state.params)))
    for t in range(1, len(history)):
        first_step = (t - 1) % steps == 0
        for is_graph, now, before in zip(marked, history[t], history[t - 1]):
            moved = not np.array_equal(np.asarray(now), np.asarray(before))
            assert moved == (first_step or not is_graph), (t, is_graph)


def test_mmrec_mode_first_step_takes_the_hooks_lists_and_a_negative_step_searches_them():
    # Epoch step 0 (the trainer, right after the hook ran on the same parameters) takes the
    # learned neighbour lists from ctx["item_ids"]; -1 (the builder's value, which runners
    # without epochs keep) searches them again. Equal on the hook's ctx; on a ctx from other
    # parameters, -1 still gives the fresh loss and 0 the loss on that ctx's lists.
    data = _small(seed=5)
    built = models.build("lattice", data, learned_graph="mmrec", embedding_size=6, feat_embed_dim=3, knn_k=3,
                         modalities=["image", "text"], graph_cache="none")
    assert int(built.ctx[models.EPOCH_STEP]) == -1
    params, other = _init(built), _init(built, seed=7)
    current = built.epoch_update(params, built.ctx, 0, None)
    stale = built.epoch_update(other, built.ctx, 0, None)
    assert not np.array_equal(np.asarray(current["item_ids"]), np.asarray(stale["item_ids"]))
    batch = normalize_batch({"users": np.array([0, 3, 7, 9]), "pos_items": np.array([1, 4, 9, 20]),
                             "neg_items": np.array([[2], [0], [5], [11]])})
    loss = jax.jit(jax.value_and_grad(lambda p, c: sum(built.module.apply({"params": p}, c, batch, True,
                                                                         method="loss_terms").values())))

    def at(c, step):
        return loss(params, {**c, models.EPOCH_STEP: jnp.int32(step)})

    searched, searched_grads = at(current, -1)
    for value, grads in (at(current, 0), at(stale, -1)):
        np.testing.assert_allclose(float(value), float(searched), rtol=1e-6)
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(searched_grads)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
    assert abs(float(at(stale, 0)[0]) - float(searched)) > 1e-6


def test_table_graph_is_the_table_and_its_sorted_transpose():
    # The mmrec mode's detached item graph: (n, K) table -> row-sorted edges and the transpose
    # sorted by column (ties in table order); duplicate (row, column) slots are summed.
    rng = np.random.default_rng(0)
    n, k = 7, 5
    ids = rng.integers(0, n, (n, k)).astype(np.int32)
    ids[:, 1] = ids[:, 0]  # duplicates
    weights = rng.random((n, k)).astype(np.float32)
    dense = np.zeros((n, n))
    np.add.at(dense, (np.repeat(np.arange(n), k), ids.ravel()), weights.ravel())
    graph = jax.jit(table_graph)(jnp.asarray(ids), jnp.asarray(weights))
    np.testing.assert_allclose(graph.edges.to_dense(n), dense, rtol=1e-6)
    np.testing.assert_allclose(graph.transposed.to_dense(n), dense.T, rtol=1e-6)
    for edges in (graph.edges, graph.transposed):
        assert np.all(np.diff(np.asarray(edges.rows)) >= 0)
    order = np.argsort(ids.ravel(), kind="stable")
    np.testing.assert_array_equal(np.asarray(graph.transposed.cols), np.repeat(np.arange(n), k)[order])
