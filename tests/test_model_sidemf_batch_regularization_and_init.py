"""SideMF's ``regularization="batch"`` with the ``ratings`` objective against numpy
(:math:`\\frac{1}{|\\Omega_B|}\\sum (\\lVert U_u\\rVert^2 + \\lVert t_jV_j\\rVert^2) + \\lVert W\\rVert_F^2`
over the real rows, padding left out), and its initialization (the module docstring: U, V
Xavier-normal, W = 0, so training starts from plain MF)."""

import jax
import numpy as np

from jaxrec import models
from jaxrec.data import Interactions, Modality, MultimodalDataset, make_synthetic

from _model_testing import init_compiled


def _rated_dataset():
    """6 users, 8 items with ratings; item 7 has no train interaction."""
    rng = np.random.default_rng(4)
    users = np.array([0, 0, 1, 1, 2, 3, 3, 4, 5, 5, 2, 4])
    items = np.array([0, 1, 2, 3, 4, 5, 6, 0, 1, 2, 7, 7])
    split = np.array([0] * 10 + [1, 2], np.int8)
    ratings = rng.integers(1, 6, len(users)).astype(np.float32)
    text = rng.normal(size=(8, 3)).astype(np.float32)
    return MultimodalDataset("rated", 6, 8, Interactions(users, items, split, ratings=ratings),
                             modalities={"text": Modality("text", text, np.ones(8, bool))})


def test_ratings_batch_regularization_matches_numpy():
    dataset = _rated_dataset()
    built = models.build("sidemf", dataset, embedding_size=3, objective="ratings", regularization="batch")
    rng = np.random.default_rng(1)
    params = {"user_factors": rng.normal(size=(6, 3)).astype(np.float32),
              "item_factors": rng.normal(size=(8, 3)).astype(np.float32),
              "feature_map": (0.5 * rng.normal(size=(3, 3))).astype(np.float32)}
    users, items = np.array([0, 3, 5, 2, 4, 1]), np.array([1, 6, 2, 7, 0, 3])  # item 7: never trained
    ratings = np.array([4.0, 2.0, 5.0, 3.0, 1.0, 9.0], np.float32)
    weights = np.array([1, 1, 1, 1, 1, 0], np.float32)  # the last row is padding
    batch = {"users": users, "pos_items": items, "ratings": ratings, "weights": weights}
    terms = built.module.apply({"params": params}, built.ctx, batch, True, method="loss_terms")

    U, V, W = (params[k].astype(np.float64) for k in ("user_factors", "item_factors", "feature_map"))
    t = np.ones(8)
    t[7] = 0.0
    V = V * t[:, None]
    Z = np.asarray(built.ctx["features"], np.float64)
    real = weights > 0
    u, j = users[real], items[real]
    predicted = np.sum(U[u] * (V[j] + Z[j] @ W), axis=1)
    np.testing.assert_allclose(float(terms["mse"]), np.mean((ratings[real] - predicted) ** 2), rtol=1e-5)
    expected_reg = np.mean(np.sum(U[u] ** 2, 1) + np.sum(V[j] ** 2, 1)) + np.sum(W ** 2)
    np.testing.assert_allclose(float(terms["reg"]), expected_reg, rtol=1e-5)


def test_initialization_xavier_normal_factors_and_zero_feature_map():
    dataset = make_synthetic(600, 500, n_interactions=3000, dims={"text": 16}, seed=0)
    built = models.build("sidemf", dataset, embedding_size=32)
    params = init_compiled(built.module, jax.random.PRNGKey(0), built.ctx, False, method="encode")["params"]
    params = jax.tree.map(np.asarray, jax.device_get(params))
    assert params["feature_map"].shape == (16, 32) and np.all(params["feature_map"] == 0)
    for name, n in (("user_factors", 600), ("item_factors", 500)):
        x = params[name].astype(np.float64).ravel()
        std = np.sqrt(2.0 / (n + 32))  # torch.nn.init.xavier_normal_
        np.testing.assert_allclose(x.std(), std, rtol=0.03, err_msg=name)
        assert 0.06 < np.mean(np.abs(x) > np.sqrt(3) * std) < 0.11, name  # normal, not uniform
