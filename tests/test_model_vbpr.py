"""VBPR: scores and terms against the paper's formulas in numpy (early and late fusion),
MMRec's variant against a numpy re-implementation of MMRec's vbpr.py, gradients, builder
checks, learning (warm and cold start) and pmap parity."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec import models
from jaxrec.data import Interactions, Modality, MultimodalDataset, cold_items, make_synthetic, split_dataset
from jaxrec.errors import ConfigError
from jaxrec.models.vbpr import VBPR

from _model_testing import init_compiled, assert_directional_derivatives, pmap_parity_run, popularity_recall, train_tiny


def _dataset(n_users=6, n_items=8, seed=0):
    """Two modalities (text 3-d, image 2-d); items 6 and 7 have no train interaction."""
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(n_users), 3)
    items = np.concatenate([rng.choice(6, 3, replace=False) for _ in range(n_users)])
    split = np.zeros(len(users), np.int8)
    users, items = np.append(users, [0, 1, 2]), np.append(items, [6, 7, 6])
    split = np.append(split, [1, 2, 2]).astype(np.int8)
    text = rng.normal(size=(n_items, 3)).astype(np.float32)
    image = rng.normal(5.0, 3.0, size=(n_items, 2)).astype(np.float32)
    modalities = {"text": Modality("text", text, np.ones(n_items, bool)),
                  "image": Modality("image", image, np.ones(n_items, bool))}
    return MultimodalDataset("tiny", n_users, n_items, Interactions(users, items, split), modalities=modalities)


def _init(built, seed=0):
    """Parameters with every entry random (biases and beta' too, which start at zero)."""
    batch = {"users": np.zeros(2, np.int32), "pos_items": np.zeros(2, np.int32), "neg_items": np.zeros((2, 1), np.int32),
             "weights": np.ones(2, np.float32)}
    from jaxrec.train import init_entry_points

    params = init_compiled(built.module, jax.random.PRNGKey(seed), built.ctx, batch, method=init_entry_points)["params"]
    rng = np.random.default_rng(seed)
    return {k: (rng.normal(size=v.shape) * 0.5).astype(np.float32) for k, v in params.items()}


def _paper_scores(p, f, trained, dims, late):
    """x_ui = beta_i + gamma_u.gamma_i + theta_u.(E f_i) + beta'.f_i for all (u, i), in numpy;
    late: sum_m theta_u^m.(E_m f_i^m). Never-trained items have gamma_i = 0, beta_i = 0."""
    gamma_i = p["gamma_item"] * trained[:, None]
    beta_i = p["beta_item"] * trained
    if late:
        visual, start = 0.0, 0
        kv = p["E_0"].shape[1]
        for m, dm in enumerate(dims):
            theta_m = p["theta_user"][:, m * kv:(m + 1) * kv]
            visual = visual + theta_m @ (f[:, start:start + dm] @ p[f"E_{m}"]).T
            start += dm
    else:
        visual = p["theta_user"] @ (f @ p["E"]).T
    return beta_i[None, :] + p["gamma_user"] @ gamma_i.T + visual + (f @ p["beta_prime"])[None, :]


@pytest.mark.parametrize("fusion", ["early", "late"])
def test_encode_dot_products_are_the_paper_scores(fusion):
    dataset = _dataset()
    built = models.build("vbpr", dataset, embedding_size=4, visual_size=3, fusion=fusion)
    params = _init(built)
    users, items = built.module.apply({"params": params}, built.ctx, False, method="encode")
    trained = np.array([True] * 6 + [False, False])
    f = np.asarray(built.ctx["features"], np.float64)
    p64 = {k: v.astype(np.float64) for k, v in params.items()}
    expected = _paper_scores(p64, f, trained, (3, 2), fusion == "late")
    np.testing.assert_allclose(np.asarray(users) @ np.asarray(items).T, expected, rtol=1e-4, atol=1e-4)
    width = 4 + 3 * (2 if fusion == "late" else 1) + 1
    assert users.shape == (6, width) and items.shape == (8, width)


# 6 rows: 18 item rows >= 8 items, so all items are projected once and gathered; 2 rows: 6
# item rows, projected alone. Both must give the same numbers.
@pytest.mark.parametrize("rows,fusion", [(6, "early"), (2, "early"), (6, "late")])
def test_loss_terms_match_the_paper_objective_in_numpy(rows, fusion):
    dataset = _dataset()
    built = models.build("vbpr", dataset, embedding_size=4, visual_size=3, fusion=fusion)
    params = _init(built, seed=2)
    users = np.array([0, 1, 2, 3, 4, 5])[:rows]
    pos = np.array([0, 1, 2, 3, 4, 5])[:rows]
    neg = np.array([[1, 6], [7, 2], [0, 3], [5, 4], [2, 1], [3, 0]])[:rows]  # 6 and 7: never trained
    weights = np.array([1, 1, 1, 1, 1, 0], np.float32)[:rows]
    terms = built.module.apply({"params": params}, built.ctx, {"users": users, "pos_items": pos, "neg_items": neg,
                                                               "weights": weights}, True, method="loss_terms")
    p = {k: v.astype(np.float64) for k, v in params.items()}
    f = np.asarray(built.ctx["features"], np.float64)
    trained = np.array([True] * 6 + [False, False])
    x = _paper_scores(p, f, trained, (3, 2), late=fusion == "late")
    triples = [(u, i, j) for b, (u, i) in enumerate(zip(users, pos)) for j in neg[b] if weights[b] and trained[j]]
    assert len(triples) == (8 if rows == 6 else 2)
    bpr = np.mean([np.log1p(np.exp(-(x[u, i] - x[u, j]))) for u, i, j in triples])
    reg_theta = np.mean([
        np.sum(p["gamma_user"][u] ** 2) + np.sum(p["theta_user"][u] ** 2) + np.sum(p["gamma_item"][i] ** 2)
        + p["beta_item"][i] ** 2 + np.sum(p["gamma_item"][j] ** 2) + p["beta_item"][j] ** 2 for u, i, j in triples])
    reg_e = sum(np.sum(p[k] ** 2) for k in p if k.startswith("E")) + np.sum(p["beta_prime"] ** 2)
    np.testing.assert_allclose(float(terms["bpr"]), bpr, rtol=1e-5)
    np.testing.assert_allclose(float(terms["reg_theta"]), reg_theta, rtol=1e-5)
    np.testing.assert_allclose(float(terms["reg_e"]), reg_e, rtol=1e-5)


def _numpy_mmrec_vbpr(p, t_feat, v_feat, users, pos, neg):
    """MMRec's VBPR.calculate_loss (src/models/vbpr.py, one negative per row) in numpy:
    item = [i_embedding, Linear(cat(t, v))], user = u_embedding (2K wide),
    loss = -mean(log sigmoid(pos - neg)) + reg_weight * (|u|_F + |pos|_F + |neg|_F) / B."""
    raw = np.concatenate([t_feat, v_feat], axis=1)
    item = np.concatenate([p["item_embedding"], raw @ p["projection"] + p["projection_bias"]], axis=1)
    u, i, j = p["user_embedding"][users], item[pos], item[neg]
    margin = (u * i).sum(1) - (u * j).sum(1)
    reg = (np.linalg.norm(u) + np.linalg.norm(i) + np.linalg.norm(j)) / len(users)
    return np.mean(np.log1p(np.exp(-margin))), reg, item


def test_mmrec_compat_matches_mmrec_vbpr_in_numpy():
    dataset = _dataset()
    built = models.build("vbpr", dataset, embedding_size=4, visual_size=4, mmrec_compat=True)
    assert built.default_loss_weights == {"bpr": 1.0, "reg": 2.0}
    assert "features_t" not in built.ctx  # its projection is of the gathered rows (MMRec's form)
    # Raw features, text first (MMRec's torch.cat((t_feat, v_feat))).
    np.testing.assert_array_equal(np.asarray(built.ctx["features"][:, :3]), dataset.modalities["text"].features)
    params = _init(built, seed=3)
    users, pos, neg = np.array([0, 1, 3, 5]), np.array([2, 0, 4, 1]), np.array([3, 5, 0, 2])
    terms = built.module.apply({"params": params}, built.ctx, {"users": users, "pos_items": pos,
                                                               "neg_items": neg[:, None], "weights": np.ones(4)},
                               True, method="loss_terms")
    p = {k: v.astype(np.float64) for k, v in params.items()}
    mf, reg, item = _numpy_mmrec_vbpr(p, dataset.modalities["text"].features, dataset.modalities["image"].features,
                                      users, pos, neg)
    np.testing.assert_allclose(float(terms["bpr"]), mf, rtol=1e-5)
    np.testing.assert_allclose(float(terms["reg"]), reg, rtol=1e-5)
    user_emb, item_emb = built.module.apply({"params": params}, built.ctx, False, method="encode")
    np.testing.assert_allclose(np.asarray(user_emb), p["user_embedding"], rtol=1e-6)
    item[6:, :4] = 0.0  # never-trained items: free factors masked (an addition to MMRec, see the docstring)
    np.testing.assert_allclose(np.asarray(item_emb), item, rtol=1e-4, atol=1e-4)


def test_gradient_matches_finite_differences():
    dataset = _dataset()
    for args in ({"fusion": "late"}, {"mmrec_compat": True}):
        built = models.build("vbpr", dataset, embedding_size=2, visual_size=2, **args)
        batch = {"users": np.array([0, 3, 5]), "pos_items": np.array([1, 4, 0]), "neg_items": np.array([[2], [6], [3]]),
                 "weights": np.ones(3)}
        with jax.enable_x64():
            params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), _init(built, seed=5))
            loss = jax.jit(lambda p: sum(built.module.apply({"params": p}, built.ctx, batch, True,
                                                            method="loss_terms").values()))
            # Central differences along random directions of the whole parameter vector.
            assert_directional_derivatives(loss, params, eps=1e-5, atol=1e-6, rtol=1e-6)
            grads = jax.jit(jax.grad(loss))(params)
            # The never-trained negative (item 6) gets no gradient at all: it did not exist in training.
            table = "gamma_item" if "gamma_item" in grads else "item_embedding"
            assert float(jnp.abs(grads[table][6]).max()) == 0.0
            assert float(jnp.abs(grads[table][1]).max()) > 0.0


@pytest.mark.parametrize("fusion", ["early", "late"])
def test_gradient_through_the_stored_feature_transpose(fusion):
    """A batch covering every item projects all items at once and takes E's gradient from the
    ctx's stored transpose of f: finite differences agree, and the gradient equals the one of
    the same ctx without the transpose (the plain product's backward)."""
    dataset = _dataset()
    built = models.build("vbpr", dataset, embedding_size=2, visual_size=2, fusion=fusion)
    features = np.asarray(built.ctx["features"])
    np.testing.assert_array_equal(np.asarray(built.ctx["features_t"]), features.T)
    without = {k: v for k, v in built.ctx.items() if k != "features_t"}
    # 5 rows x (1 + 1) = 10 item ids >= 8 items: the all-items path.
    batch = {"users": np.array([0, 3, 5, 1, 2]), "pos_items": np.array([1, 4, 0, 2, 5]),
             "neg_items": np.array([[2], [6], [3], [7], [0]]), "weights": np.ones(5)}
    with jax.enable_x64():
        params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), _init(built, seed=6))

        def loss_with(ctx):
            return jax.jit(lambda p: sum(built.module.apply({"params": p}, ctx, batch, True,
                                                            method="loss_terms").values()))
        loss = loss_with(built.ctx)
        assert_directional_derivatives(loss, params, eps=1e-5, atol=1e-6, rtol=1e-6)
        grads, plain = jax.grad(loss)(params), jax.grad(loss_with(without))(params)
        for name in grads:
            np.testing.assert_allclose(np.asarray(grads[name]), np.asarray(plain[name]), rtol=1e-6, atol=1e-7)
        assert any(float(jnp.abs(grads[name]).max()) > 0 for name in grads if name.startswith("E"))


def test_init_and_builder_checks():
    dataset = _dataset()
    built = models.build("vbpr", dataset)
    assert isinstance(built.module, VBPR)
    assert built.default_loss_weights == {"bpr": 1.0, "reg_theta": 1e-4, "reg_e": 0.0}
    features = np.asarray(built.ctx["features"])
    np.testing.assert_allclose(features[:6].mean(0), 0.0, atol=1e-5)  # standardized on the 6 train items
    variables = init_compiled(built.module, jax.random.PRNGKey(0), built.ctx, False, method="encode")["params"]
    assert np.all(np.asarray(variables["beta_item"]) == 0) and np.all(np.asarray(variables["beta_prime"]) == 0)
    with pytest.raises(ConfigError, match="fusion"):
        models.build("vbpr", dataset, fusion="attention")
    with pytest.raises(ConfigError, match="early fusion"):
        models.build("vbpr", dataset, fusion="late", mmrec_compat=True)
    with pytest.raises(ConfigError, match="visual_size"):
        models.build("vbpr", dataset, visual_size=-1)
    with pytest.raises(ConfigError, match="no argument 'visual_dim'"):
        models.build("vbpr", dataset, visual_dim=8)
    with pytest.raises(ConfigError, match="no modality 'audio'"):
        models.build("vbpr", dataset, modalities=["audio"])


# ---- learning ---------------------------------------------------------------------------

_SYNTHETIC = dict(n_users=300, n_items=200, n_interactions=9000, seed=3, popularity_skew=0.5, temperature=0.3)


def _train(tmp_path, dataset, args=None, epochs=25):
    return train_tiny(tmp_path / "run", dataset, "vbpr", {"embedding_size": 16, "visual_size": 16, **(args or {})},
                      epochs=epochs, learning_rate=0.01, loss_weights={"reg_theta": 1e-3, "reg_e": 1e-3})


def test_learns_better_than_popularity(tmp_path):
    dataset = make_synthetic(**_SYNTHETIC)
    metrics = _train(tmp_path, dataset, {"fusion": "late"})
    baseline = popularity_recall(dataset)
    assert metrics["test"]["recall@20"] > 1.5 * baseline, (metrics["test"], baseline)


def test_cold_start_items_beat_popularity(tmp_path):
    # 600 items: 60 new test items, so that a top-20 list is a real choice among them.
    dataset = split_dataset(make_synthetic(**dict(_SYNTHETIC, n_items=600)), "cold_start_items", holdout=0.2, seed=0)
    metrics = _train(tmp_path, dataset)
    test_items = cold_items(dataset).test
    # Popularity of the new items by their TEST counts: the best non-personalized ranking
    # there can be (it peeks at the answers).
    oracle = popularity_recall(dataset, test_items, np.bincount(dataset.split_pairs("test")[:, 1],
                                                                minlength=dataset.n_items))
    assert oracle > 20 / len(test_items)
    assert metrics["test"]["recall@20"] > 1.3 * oracle, (metrics["test"], oracle)


# Standardized features for the MMRec variant too: raw vggish-scale inputs make float32 sums
# differ in the 4th digit with the order of reduction.
@pytest.mark.parametrize("args", [{"fusion": "late"}, {"mmrec_compat": True, "feature_scaling": "standardize"}])
def test_pmap_on_four_devices_matches_one_device(args):
    assert jax.device_count() >= 4
    dataset = make_synthetic(80, 60, n_interactions=1200, seed=1)
    built = models.build("vbpr", dataset, embedding_size=8, visual_size=4, **args)
    assert np.asarray(built.ctx["trained"]).all()  # every pair counts: each device's mean is over 16 pairs
    # Per-example means and whole-parameter terms average exactly over devices; MMRec's
    # norm-based EmbLoss does not (see jaxrec.train._step), so it is left out here.
    weights = {"bpr": 1.0, "reg": 0.0} if args.get("mmrec_compat") else {"bpr": 1.0, "reg_theta": 0.1, "reg_e": 0.01}
    run = pmap_parity_run(built, dataset, weights, n_negatives=1, learning_rate=0.05)
    assert run.n_devices == 4
    np.testing.assert_allclose(run.single_loss, run.pmap_loss, rtol=1e-5)
    for name in run.single.params:
        if name == "projection_bias":
            # MMRec's Linear bias b adds theta_u.b to a positive and a negative alike: its exact
            # gradient is 0, and what it gets is rounding noise, which Adam scales up to
            # learning-rate-sized steps; that noise differs with the order of the sums.
            continue
        np.testing.assert_allclose(run.pmapped.params[name], run.single.params[name], rtol=2e-5, atol=2e-6)
        assert not np.allclose(run.single.params[name], run.start.params[name])
