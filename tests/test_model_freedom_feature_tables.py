"""FREEDOM's trainable feature tables (MMRec's ``nn.Embedding.from_pretrained(..., freeze=False)``):
the modality BPR term reads the TABLES (not the raw features they start from), and its gradient
reaches them, checked against a hand-derived numpy value and gradient. With ``n_ui_layers=0``
and no pruning the user rows are the raw user table, so the reference needs no graph."""

import jax
import numpy as np

from jaxrec import models
from jaxrec.data import make_synthetic

from _model_testing import init_compiled

NAMES = ["image", "text"]


def _setup(train_features):
    data = make_synthetic(20, 15, n_interactions=150, dims={"image": 4, "text": 3}, seed=7)
    built = models.build("freedom", data, embedding_size=4, feat_embed_dim=4, knn_k=3, n_ui_layers=0,
                         dropout=0.0, modalities=NAMES, train_features=train_features, graph_cache="none")
    rng = np.random.default_rng(3)
    users, pos, neg = rng.integers(0, 20, 9), rng.integers(0, 15, 9), rng.integers(0, 15, 9)
    weights = np.array([1.0] * 7 + [0.0] * 2, np.float32)
    batch = {"users": users, "pos_items": pos, "neg_items": neg[:, None], "weights": weights}
    params = jax.device_get(init_compiled(built.module, jax.random.PRNGKey(0), built.ctx, batch, True,
                                          method="loss_terms")["params"])
    params = jax.tree.map(np.asarray, params)
    params["user_embedding"] = rng.normal(size=params["user_embedding"].shape).astype(np.float32)
    for m in range(len(NAMES)):
        proj = params[f"projection_{m}"]
        proj["kernel"] = rng.normal(size=proj["kernel"].shape).astype(np.float32)
        proj["bias"] = rng.normal(size=proj["bias"].shape).astype(np.float32)
        if train_features:  # the tables have moved away from the raw features they started at
            table = params[f"features_{m}"]["table"]
            params[f"features_{m}"]["table"] = (table + rng.normal(size=table.shape)).astype(np.float32)
    return data, built, batch, params


def _reference(data, params, batch, train_features):
    """sum_m mean_b softplus(u_b.phi_m(x_j) - u_b.phi_m(x_i)) over the real rows, and its
    gradient in each modality's feature rows (float64)."""
    keep = batch["weights"] > 0
    users, pos, neg = batch["users"][keep], batch["pos_items"][keep], batch["neg_items"][keep, 0]
    u = params["user_embedding"].astype(np.float64)[users]
    value, grads = 0.0, []
    for m, name in enumerate(NAMES):
        x = (params[f"features_{m}"]["table"] if train_features else data.modalities[name].features).astype(np.float64)
        w = params[f"projection_{m}"]["kernel"].astype(np.float64)
        b = params[f"projection_{m}"]["bias"].astype(np.float64)
        phi = x @ w + b
        margin = (u * phi[neg]).sum(1) - (u * phi[pos]).sum(1)
        value += np.mean(np.logaddexp(0.0, margin))
        s = 1.0 / (1.0 + np.exp(-margin)) / keep.sum()  # d softplus / d margin, over the mean
        grad = np.zeros_like(x)
        np.add.at(grad, neg, s[:, None] * (u @ w.T))
        np.add.at(grad, pos, -s[:, None] * (u @ w.T))
        grads.append(grad)
    return value, grads


def test_modality_term_reads_the_trainable_tables_and_its_gradient_reaches_them():
    data, built, batch, params = _setup(train_features=True)
    expected, expected_grads = _reference(data, params, batch, True)

    def term(p):
        return built.module.apply({"params": p}, built.ctx, batch, True, method="loss_terms")["modality_bpr"]

    value, grads = jax.jit(jax.value_and_grad(term))(params)
    np.testing.assert_allclose(float(value), expected, rtol=1e-5)
    for m in range(len(NAMES)):
        got = np.asarray(grads[f"features_{m}"]["table"])
        assert np.abs(got).max() > 1e-3
        np.testing.assert_allclose(got, expected_grads[m], rtol=1e-4, atol=1e-6)


def test_without_trainable_tables_the_raw_features_are_projected():
    data, built, batch, params = _setup(train_features=False)
    assert not any(name.startswith("features_") for name in params)
    expected, _ = _reference(data, params, batch, False)
    terms = jax.jit(lambda p: built.module.apply({"params": p}, built.ctx, batch, True, method="loss_terms"))(params)
    np.testing.assert_allclose(float(terms["modality_bpr"]), expected, rtol=1e-5)
