"""BM3: encode and the loss terms against a dense numpy re-implementation of MMRec's BM3
(forward, calculate_loss, full_sort_predict), the dropout targets with a fixed mask and
statistically, the stop-gradient by finite differences, and learning (pmap parity: tests/test_model_contract.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec import losses, models
from jaxrec.data import make_synthetic
from jaxrec.errors import ConfigError
from jaxrec.models import bm3
from jaxrec.models.bm3 import BM3, table_dropout

from _model_testing import (init_compiled, compiled_apply, numpy_norm_adj, popularity_recall, randomized_params,
                            train_tiny)

MODALITIES = ["image", "text"]


# ---- a dense numpy reference (MMRec's src/models/bm3.py) ---------------------------------

def _linear(p, x):
    return x @ p["kernel"] + p["bias"]


def _numpy_forward(p, adj, n_users, n_layers):
    """MMRec's BM3.forward: the LightGCN layer mean; items get their ID rows added."""
    ego = np.concatenate([p["user_embedding"], p["item_embedding"]])
    layers = [ego]
    for _ in range(n_layers):
        layers.append(adj @ layers[-1])
    mean = np.mean(layers, axis=0)
    return mean[:n_users], mean[n_users:] + p["item_embedding"]


def _cos(a, b, eps=1e-8):
    return (a * b).sum(1) / (np.maximum(np.linalg.norm(a, axis=1), eps) * np.maximum(np.linalg.norm(b, axis=1), eps))


def _numpy_bm3_loss(online, target, adj, n_users, n_layers, users, items, weights, masks=None, rate=0.0):
    """MMRec's BM3.calculate_loss in numpy, split into our three terms.

    ``online`` makes the online (gradient) branch, ``target`` the detached targets (the same
    parameters in MMRec: two copies let a finite difference see the stop-gradient).
    ``masks``: 0/1 arrays over whole tables, ``{"user", "item", "modality_m"}`` (F.dropout)."""
    keep = weights > 0
    users, items = users[keep], items[keep]

    def drop(table, name):
        return table if masks is None else table * masks[name] / (1.0 - rate)

    u_on, i_on = _numpy_forward(online, adj, n_users, n_layers)
    u_tg, i_tg = _numpy_forward(target, adj, n_users, n_layers)
    u_tg, i_tg = drop(u_tg, "user")[users], drop(i_tg, "item")[items]
    pred = online["predictor"]
    id_term = (1 - _cos(_linear(pred, u_on)[users], i_tg).mean()) + (1 - _cos(_linear(pred, i_on)[items], u_tg).mean())
    modality = 0.0
    for m in range(len(MODALITIES)):
        feat_on = _linear(online[f"projection_{m}"], online[f"features_{m}"]["table"])
        feat_tg = _linear(target[f"projection_{m}"], target[f"features_{m}"]["table"])
        feat_tg = drop(feat_tg, f"modality_{m}")[items]
        feat_on = _linear(pred, feat_on)[items]
        modality += (1 - _cos(feat_on, i_tg).mean()) + (1 - _cos(feat_on, feat_tg).mean())
    reg = (np.linalg.norm(u_on) + np.linalg.norm(i_on)) / i_on.shape[0]  # EmbLoss(u_online_ori, i_online_ori)
    return {"id_alignment": id_term, "modality_alignment": modality, "reg": reg}


def _small(seed=0, n_users=30, n_items=20, n_interactions=250):
    return make_synthetic(n_users, n_items, n_interactions=n_interactions, dims={"text": 6, "image": 5}, seed=seed)


def _host(tree):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), jax.device_get(tree))


def _setup(dropout, seed=1, n_layers=2, rows=12):
    data = _small(seed=seed)
    built = models.build("bm3", data, embedding_size=8, n_layers=n_layers, dropout=dropout, modalities=MODALITIES)
    rng = np.random.default_rng(seed)
    users, items = rng.integers(0, data.n_users, rows), rng.integers(0, data.n_items, rows)
    items[:3] = items[3]  # a repeated item: its rows share one table mask, as in MMRec
    weights = np.array([1.0] * (rows - 3) + [0.0] * 3, np.float32)
    batch = {"users": users, "pos_items": items, "neg_items": rng.integers(0, data.n_items, (rows, 1)),
             "weights": weights}
    params = init_compiled(built.module, {"params": jax.random.PRNGKey(2), "dropout": jax.random.PRNGKey(3)}, built.ctx,
                               batch, True, method="loss_terms")["params"]
    train = data.split_pairs("train")
    adj = numpy_norm_adj(train[:, 0], train[:, 1], data.n_users, data.n_items)
    return data, built, batch, params, adj


# ---- encode and the loss terms ------------------------------------------------------------

# 12 rows: fewer than the 30 users and 20 items, so the predictor and the projections map the
# batch's rows; 40 rows: they map every row of the tables, then the batch's rows are gathered.
@pytest.mark.parametrize("n_layers,rows", [(0, 12), (2, 12), (2, 40)])
def test_encode_and_loss_terms_match_mmrec_bm3_in_numpy(n_layers, rows):
    data, built, batch, params, adj = _setup(dropout=0.0, n_layers=n_layers, rows=rows)
    for m, name in enumerate(MODALITIES):  # trainable feature tables start at the raw features
        np.testing.assert_allclose(params[f"features_{m}"]["table"], data.modalities[name].features, rtol=1e-6)
    params = randomized_params(built)  # no leaf at a special value (zero bias, raw features)
    host = _host(params)
    # full_sort_predict applies the predictor to both sides before the dot product
    user_emb, item_emb = compiled_apply(built.module, params, built.ctx, False, method="encode")
    u_on, i_on = _numpy_forward(host, adj, data.n_users, n_layers)
    expected_scores = _linear(host["predictor"], u_on) @ _linear(host["predictor"], i_on).T
    np.testing.assert_allclose(np.asarray(user_emb @ item_emb.T), expected_scores, rtol=1e-4, atol=1e-4)
    terms = compiled_apply(built.module, params, built.ctx, batch, True, method="loss_terms")
    expected = _numpy_bm3_loss(host, host, adj, data.n_users, n_layers, batch["users"], batch["pos_items"],
                               batch["weights"])
    assert set(terms) == set(expected)
    for name in expected:
        np.testing.assert_allclose(float(terms[name]), expected[name], rtol=1e-5, err_msg=name)


def test_per_item_terms_under_pmap_match_numpy_on_the_whole_batch():
    """160 rows over 4 devices: 40 per device, more than the 20 items, so every device takes the
    per-item form; the item weights' sums run over the devices (batch_mean), so the terms are
    the whole batch's."""
    if jax.device_count() < 4:
        pytest.skip("needs 4 devices (tests/conftest.py sets XLA_FLAGS for 4 fake CPU devices)")
    data, built, batch, params, adj = _setup(dropout=0.0, rows=160)
    params = randomized_params(built)

    def terms(params, batch):
        with losses.data_parallel("batch"):
            return built.module.apply({"params": params}, built.ctx, batch, True, method="loss_terms")

    shards = {name: np.asarray(value).reshape(4, 40, *np.shape(value)[1:]) for name, value in batch.items()}
    got = jax.pmap(terms, axis_name="batch", in_axes=(None, 0), devices=jax.local_devices()[:4])(params, shards)
    host = _host(params)
    expected = _numpy_bm3_loss(host, host, adj, data.n_users, 2, batch["users"], batch["pos_items"], batch["weights"])
    for name in expected:
        np.testing.assert_allclose(np.asarray(got[name]), expected[name], rtol=1e-5, err_msg=name)


# 40 rows (more than the 20 items): the modality terms are computed once per item and weighted
# by the item's rows (BM3._alignments_by_item); 12 rows: per row.
@pytest.mark.parametrize("rows", [12, 40])
def test_dropout_targets_with_a_fixed_mask_match_numpy(monkeypatch, rows):
    rate = 0.5
    data, built, batch, params, adj = _setup(dropout=rate, rows=rows)
    rng = np.random.default_rng(7)
    shapes = {"user": (data.n_users, 8), "item": (data.n_items, 8), "modality_0": (data.n_items, 8),
              "modality_1": (data.n_items, 8)}
    masks = {name: (rng.random(shape) > rate).astype(np.float64) for name, shape in shapes.items()}
    order = iter(["user", "item", "modality_0", "modality_1"])  # the model draws its masks in this order
    calls = []

    def fixed_mask_dropout(key, table_shape, rows, values, rate_):
        name = next(order)
        calls.append(name)
        assert table_shape == shapes[name] and rate_ == rate
        return values * jnp.asarray(masks[name], jnp.float32)[rows] / (1.0 - rate_)

    monkeypatch.setattr(bm3, "table_dropout", fixed_mask_dropout)
    terms = built.module.apply({"params": params}, built.ctx, batch, True, method="loss_terms",
                               rngs={"dropout": jax.random.PRNGKey(0)})
    assert calls == list(shapes)
    host = _host(params)
    expected = _numpy_bm3_loss(host, host, adj, data.n_users, 2, batch["users"], batch["pos_items"],
                               batch["weights"], masks=masks, rate=rate)
    for name in expected:
        np.testing.assert_allclose(float(terms[name]), expected[name], rtol=1e-5, err_msg=name)


@pytest.mark.parametrize("typed", [False, True])
def test_bernoulli_table_is_jax_random_bernoulli_bit_for_bit(typed):
    draw = jax.jit(bm3.bernoulli_table, static_argnums=(1, 2))
    for seed in range(3):
        key = jax.random.key(seed) if typed else jax.random.PRNGKey(seed)
        for p in (0.5, 0.7, 0.123):
            for shape in ((37, 8), (5, 3), (1, 1)):
                np.testing.assert_array_equal(np.asarray(draw(key, p, shape)),
                                              np.asarray(jax.random.bernoulli(key, p, shape)))


def test_table_dropout_statistics():
    rate, n, d = 0.3, 400, 50
    values = np.arange(1.0, 1.0 + n * d, dtype=np.float32).reshape(n, d)
    rows = np.arange(n)
    dropped = np.asarray(table_dropout(jax.random.PRNGKey(0), (n, d), rows, values, rate))
    kept = dropped != 0
    np.testing.assert_allclose(dropped[kept], values[kept] / (1 - rate), rtol=1e-6)  # inverted scaling
    share = kept.mean()  # binomial: sd sqrt(0.21 / 20000) = 0.0032
    assert abs(share - (1 - rate)) < 0.015, share
    # one mask over the whole table: a row gathered twice is masked alike, other rows are not
    again = np.asarray(table_dropout(jax.random.PRNGKey(0), (n, d), np.array([5, 5, 6]), values[[5, 5, 6]], rate))
    np.testing.assert_array_equal(again[0], dropped[5])
    np.testing.assert_array_equal(again[1], dropped[5])
    np.testing.assert_array_equal(again[2], dropped[6])
    assert table_dropout(None, (n, d), rows, values, 0.0) is values


def test_dropout_changes_with_the_key_and_is_off_outside_training():
    data, built, batch, params, adj = _setup(dropout=0.5)
    apply = jax.jit(lambda key, train: built.module.apply({"params": params}, built.ctx, batch, train,
                                                          method="loss_terms", rngs={"dropout": key}),
                    static_argnums=1)
    first, again, other = apply(jax.random.PRNGKey(0), True), apply(jax.random.PRNGKey(0), True), apply(
        jax.random.PRNGKey(1), True)
    assert float(first["id_alignment"]) == float(again["id_alignment"])
    assert float(first["id_alignment"]) != float(other["id_alignment"])
    assert float(first["reg"]) == float(other["reg"])  # the online tables are not perturbed
    evaluation = apply(jax.random.PRNGKey(0), False)
    expected = _numpy_bm3_loss(_host(params), _host(params), adj, data.n_users, 2, batch["users"],
                               batch["pos_items"], batch["weights"])
    np.testing.assert_allclose(float(evaluation["id_alignment"]), expected["id_alignment"], rtol=1e-5)


# ---- gradients -----------------------------------------------------------------------------

@pytest.mark.parametrize("rows", [12, 40])
def test_gradient_matches_finite_differences_of_the_online_branch(rows):
    """jax.grad of the weighted loss equals the numpy loss's finite differences in the ONLINE
    parameters with the targets held at the current parameters (the stop-gradient); 40 rows
    take the per-item form of the modality terms."""
    data, built, batch, params, adj = _setup(dropout=0.0, seed=4, rows=rows)
    weights = {"id_alignment": 1.0, "modality_alignment": 2.0, "reg": 0.1}
    with jax.enable_x64():
        ctx = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a,
                           built.ctx)
        p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)

        def loss(p):
            terms = built.module.apply({"params": p}, ctx, batch, True, method="loss_terms")
            return sum(weights[k] * v for k, v in terms.items())

        grads = _host(jax.jit(jax.grad(loss))(p64))
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    host = _host(params)
    flat, treedef = jax.tree_util.tree_flatten(host)
    grad_flat = jax.tree.leaves(grads)
    rng = np.random.default_rng(0)
    eps = 1e-6

    def numpy_loss(leaves):
        online = jax.tree_util.tree_unflatten(treedef, leaves)
        terms = _numpy_bm3_loss(online, host, adj, data.n_users, 2, batch["users"], batch["pos_items"],
                                batch["weights"])
        return sum(weights[k] * v for k, v in terms.items())

    for leaf_index, (leaf, grad) in enumerate(zip(flat, grad_flat)):
        for _ in range(6):
            index = tuple(int(rng.integers(s)) for s in leaf.shape)
            bumped = []
            for step in (eps, -eps):
                changed = leaf.copy()
                changed[index] += step
                bumped.append(numpy_loss(flat[:leaf_index] + [changed] + flat[leaf_index + 1:]))
            numeric = (bumped[0] - bumped[1]) / (2 * eps)
            np.testing.assert_allclose(grad[index], numeric, rtol=1e-4, atol=1e-7)


def test_builder_checks():
    data = _small()
    built = models.build("bm3", data)
    assert isinstance(built.module, BM3) and built.module.n_layers == 1 and built.module.dropout == 0.5
    assert built.default_loss_weights == {"id_alignment": 1.0, "modality_alignment": 2.0, "reg": 0.1}
    with pytest.raises(ConfigError, match="dropout"):
        models.build("bm3", data, dropout=1.0)
    with pytest.raises(ConfigError, match="n_layers"):
        models.build("bm3", data, n_layers=-1)
    with pytest.raises(ConfigError, match="no modality"):
        models.build("bm3", data, modalities=["video"])
    with pytest.raises(ConfigError, match="has no argument"):
        models.build("bm3", data, cl_weight=2.0)


# ---- learning and parallelism ----------------------------------------------------------------

_SYNTHETIC = dict(n_users=300, n_items=200, n_interactions=9000, dims={"text": 16, "image": 8}, seed=3,
                  popularity_skew=0.5, temperature=0.3)


def test_learns_better_than_popularity(tmp_path):
    dataset = make_synthetic(**_SYNTHETIC)
    # The synthetic features are noisy views of the items' factors: with MMRec's cl_weight (2)
    # they outweigh the ID views here (recall@20 at most 1.25x popularity's after 20-25 epochs);
    # with 0.2 the IDs lead (about 1.5x).
    metrics = train_tiny(tmp_path / "run", dataset, "bm3", {"embedding_size": 32, "n_layers": 1, "dropout": 0.5},
                         epochs=20, learning_rate=0.01, loss_weights={"modality_alignment": 0.2})
    baseline = popularity_recall(dataset)
    assert metrics["test"]["recall@20"] > 1.3 * baseline, (metrics["test"], baseline)


def test_cosine_alignments_equal_cosine_alignment_pair_by_pair():
    rng = np.random.default_rng(5)
    online = [jnp.asarray(rng.normal(size=(9, 4)), jnp.float32) for _ in range(3)]
    target = [jnp.asarray(rng.normal(size=(9, 4)), jnp.float32) for _ in range(3)]
    online[1] = online[1].at[2].set(0.0)  # a zero row: the norms' eps clamp
    target[0] = target[0].at[4].set(0.0)
    pairs = [(0, 1), (1, 0), (2, 1), (2, 2)]
    for weights in (np.array([1.0] * 6 + [0.0] * 3, np.float32), np.zeros(9, np.float32)):
        got = bm3.cosine_alignments(online, target, pairs, jnp.asarray(weights))
        for (a, b), value in zip(pairs, got):
            expected = losses.cosine_alignment(online[a], target[b], weights=jnp.asarray(weights))
            np.testing.assert_allclose(float(value), float(expected), rtol=1e-6, atol=1e-7)
    # the targets are constants: no gradient reaches them
    grads = jax.grad(lambda t: sum(bm3.cosine_alignments(online, t, pairs, jnp.ones(9))))(target)
    assert all(float(jnp.abs(g).max()) == 0.0 for g in grads)
