"""The contrastive wrapper: its InfoNCE terms against numpy on independently computed views,
the base's terms and ranking kept, bprmf and lightgcn bases, host updates, learning (pmap parity: tests/test_model_contract.py)."""

import jax
import numpy as np
import pytest

from jaxrec import models
from jaxrec.data import make_synthetic
from jaxrec.errors import ConfigError
from jaxrec.features import fit_standardizer
from jaxrec.models import Built, register

from _model_testing import init_compiled, popularity_recall, train_tiny


def _dataset():
    return make_synthetic(40, 30, n_interactions=500, dims={"text": 6, "image": 5}, seed=2)


def _numpy_info_nce(a, b, temperature, weights):
    """Mean over rows of weight 1 of -log softmax_j(cos(a_i, b_j) / t)[i] over the rows j of weight
    1 (padding rows count for nothing, not even as negatives: the model contract)."""
    real = weights > 0
    a = a[real] / np.linalg.norm(a[real], axis=1, keepdims=True)
    b = b[real] / np.linalg.norm(b[real], axis=1, keepdims=True)
    weights = weights[real]
    logits = a @ b.T / temperature
    log_softmax = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    per_row = -np.diag(log_softmax)
    return np.sum(per_row * weights) / np.sum(weights)


def _dense(params):
    return params["kernel"].astype(np.float64), params["bias"].astype(np.float64)


def _numpy_mlp(params, x):
    w1, b1 = _dense(params["hidden"])
    w2, b2 = _dense(params["output"])
    h = x @ w1 + b1
    return np.where(h > 0, h, 0.01 * h) @ w2 + b2


def _standardized(dataset, name):
    return fit_standardizer(dataset, name).apply(dataset.modalities[name].features.astype(np.float64))


def _numpy_lightgcn_items(dataset, params, n_layers):
    n_users = dataset.n_users
    train = np.unique(dataset.split_pairs("train"), axis=0)
    adjacency = np.zeros((n_users + dataset.n_items,) * 2)
    adjacency[train[:, 0], n_users + train[:, 1]] = adjacency[n_users + train[:, 1], train[:, 0]] = 1
    scale = 1 / np.sqrt(np.maximum(adjacency.sum(1), 1))
    normalized = scale[:, None] * adjacency * scale
    layer = np.concatenate([params["user_embedding"], params["item_embedding"]]).astype(np.float64)
    layers = [layer]
    for _ in range(n_layers):
        layers.append(normalized @ layers[-1])
    mean = np.mean(layers, axis=0)
    return mean[:n_users], mean[n_users:]


def _batch(dataset, size=12, padding=3, seed=0):
    rng = np.random.default_rng(seed)
    weights = np.array([1] * (size - padding) + [0] * padding, np.float32)
    return {"users": rng.integers(0, dataset.n_users, size), "pos_items": rng.integers(0, dataset.n_items, size),
            "neg_items": rng.integers(0, dataset.n_items, (size, 1)), "weights": weights}


def _init(built, batch, seed=0):
    variables = init_compiled(built.module, jax.random.PRNGKey(seed), built.ctx, batch, False,
                                  method=lambda m, c, b, t: (m.encode(c, t), m.loss_terms(c, b, t)))
    return jax.tree.map(np.asarray, variables["params"])


# 12 rows (40 users, 30 items): the views of the gathered rows; 48 rows: both tables are
# contrasted over their distinct rows weighted by their counts (losses.info_nce_by_id).
@pytest.mark.parametrize("rows", [12, 48])
@pytest.mark.parametrize("base,base_args", [("bprmf", {"embedding_size": 8}),
                                            ("lightgcn", {"embedding_size": 8, "n_layers": 2})])
def test_info_nce_terms_match_numpy_on_independent_views(base, base_args, rows):
    dataset = _dataset()
    built = models.build("contrastive", dataset, base=base, base_args=base_args, modality=["text", "image"],
                         temperature=0.3, proj_dim=5, user_side=True)
    batch = _batch(dataset, size=rows)
    params = _init(built, batch)
    terms = built.module.apply({"params": params}, built.ctx, batch, True, method="loss_terms")

    if base == "bprmf":
        user_emb = params["base"]["user_embedding"].astype(np.float64)
        item_emb = params["base"]["item_embedding"].astype(np.float64)
    else:
        user_emb, item_emb = _numpy_lightgcn_items(dataset, params["base"], 2)
    w, b = _dense(params["item_head"])
    item_view = item_emb[batch["pos_items"]] @ w + b
    w, b = _dense(params["user_head"])
    user_view = user_emb[batch["users"]] @ w + b
    train = np.unique(dataset.split_pairs("train"), axis=0)
    expected_items = expected_users = 0.0
    for name in ("text", "image"):
        features = _standardized(dataset, name)
        mlp = params[f"mlp_{name}"]
        expected_items += _numpy_info_nce(item_view, _numpy_mlp(mlp, features[batch["pos_items"]]), 0.3,
                                          batch["weights"])
        profiles = np.stack([features[train[train[:, 0] == u, 1]].mean(0) for u in batch["users"]])
        expected_users += _numpy_info_nce(user_view, _numpy_mlp(mlp, profiles), 0.3, batch["weights"])
    np.testing.assert_allclose(float(terms["info_nce"]), expected_items, rtol=1e-5)
    np.testing.assert_allclose(float(terms["info_nce_user"]), expected_users, rtol=1e-5)


@pytest.mark.parametrize("base,base_args", [("bprmf", {"embedding_size": 8}),
                                            ("lightgcn", {"embedding_size": 8, "n_layers": 1})])
def test_base_terms_and_ranking_are_the_base_models(base, base_args):
    dataset = _dataset()
    plain = models.build(base, dataset, **base_args)
    built = models.build("contrastive", dataset, base=base, base_args=base_args, modality="text")
    assert built.default_loss_weights == dict(plain.default_loss_weights, info_nce=0.1)
    batch = _batch(dataset, seed=1)
    params = _init(built, batch, seed=3)
    wrapped = built.module.apply({"params": params}, built.ctx, batch, True, method="loss_terms")
    alone = plain.module.apply({"params": params["base"]}, plain.ctx, batch, True, method="loss_terms")
    assert set(wrapped) == set(alone) | {"info_nce"}
    for name in alone:
        np.testing.assert_allclose(wrapped[name], alone[name], rtol=1e-6)
    for a, b in zip(built.module.apply({"params": params}, built.ctx, False, method="encode"),
                    plain.module.apply({"params": params["base"]}, plain.ctx, False, method="encode")):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_contrast_rows_uses_the_first_rows_only():
    dataset = _dataset()
    full = models.build("contrastive", dataset, base="bprmf", base_args={"embedding_size": 4}, modality="text")
    part = models.build("contrastive", dataset, base="bprmf", base_args={"embedding_size": 4}, modality="text",
                        contrast_rows=5)
    batch = _batch(dataset, size=12, padding=0, seed=4)
    params = _init(full, batch)
    head = {k: v[:5] for k, v in batch.items()}
    partial = part.module.apply({"params": params}, part.ctx, batch, True, method="loss_terms")
    np.testing.assert_allclose(partial["info_nce"], full.module.apply({"params": params}, full.ctx, head, True,
                                                                     method="loss_terms")["info_nce"], rtol=1e-6)
    whole = full.module.apply({"params": params}, full.ctx, batch, True, method="loss_terms")
    np.testing.assert_allclose(partial["bpr"], whole["bpr"], rtol=1e-6)  # base terms: the whole batch
    assert abs(float(partial["info_nce"]) - float(whole["info_nce"])) > 1e-3


def test_gradient_reaches_the_base_embeddings_through_the_term():
    dataset = _dataset()
    built = models.build("contrastive", dataset, base="bprmf", base_args={"embedding_size": 4}, modality="image")
    batch = _batch(dataset, padding=0)
    params = _init(built, batch)
    grads = jax.jit(jax.grad(lambda p: built.module.apply({"params": p}, built.ctx, batch, True,
                                                  method="loss_terms")["info_nce"]))(params)
    item_grad = grads["base"]["item_embedding"]
    touched = np.unique(batch["pos_items"])
    assert np.all(np.any(item_grad[touched] != 0, axis=1))
    assert np.all(np.delete(item_grad, touched, axis=0) == 0)
    assert np.all(grads["base"]["user_embedding"] == 0)  # user_side is off


_host_calls = []


@register("test_contrastive_host_base")
def _host_base(dataset, *, embedding_size: int = 4):
    inner = models.build("bprmf", dataset, embedding_size=embedding_size)

    def epoch_update(params, ctx, epoch, rng):
        _host_calls.append((epoch, params))
        return {**ctx, "epoch": np.int32(epoch)}

    return Built(inner.module, {"epoch": np.int32(-1)}, inner.default_loss_weights, epoch_update)


def test_base_epoch_update_runs_on_the_base_context_and_parameters():
    dataset = _dataset()
    built = models.build("contrastive", dataset, base="test_contrastive_host_base", modality="text")
    params = {"base": {"user_embedding": np.ones(3)}, "heads": {"text": np.zeros(2)}}
    ctx = built.epoch_update(params, built.ctx, 3, jax.random.PRNGKey(0))
    assert len(_host_calls) == 1 and _host_calls[0][0] == 3 and _host_calls[0][1] is params["base"]
    assert int(ctx["base"]["epoch"]) == 3 and int(built.ctx["base"]["epoch"]) == -1
    assert ctx["features"] is built.ctx["features"]
    assert models.build("contrastive", dataset, base="bprmf").epoch_update is None


def test_arguments_are_checked():
    dataset = _dataset()
    with pytest.raises(ConfigError, match="base must name another"):
        models.build("contrastive", dataset, base="contrastive")
    with pytest.raises(ConfigError, match="unknown model 'lightgnc'.*lightgcn"):
        models.build("contrastive", dataset, base="lightgnc")
    with pytest.raises(ConfigError, match="n_layer"):
        models.build("contrastive", dataset, base="lightgcn", base_args={"n_layer": 2})
    with pytest.raises(ConfigError, match="temperature"):
        models.build("contrastive", dataset, temperature=0)
    with pytest.raises(ConfigError, match="no modality 'audio'"):
        models.build("contrastive", dataset, modality="audio")
    with pytest.raises(ConfigError, match="at least one"):
        models.build("contrastive", dataset, modality=[])
    with pytest.raises(ConfigError, match="proj_dim"):
        models.build("contrastive", dataset, proj_dim=0)
    with pytest.raises(ConfigError, match="contrast_rows"):
        models.build("contrastive", dataset, contrast_rows=-3)


def test_learns_better_than_popularity(tmp_path):
    dataset = make_synthetic(300, 200, n_interactions=9000, dims={"text": 16}, seed=3, popularity_skew=0.5,
                             temperature=0.3)
    args = {"base": "lightgcn", "base_args": {"embedding_size": 16}, "modality": "text", "proj_dim": 16,
            "user_side": True}
    metrics = train_tiny(tmp_path / "run", dataset, "contrastive", args, epochs=20, learning_rate=0.02,
                         loss_weights={"reg": 1e-3, "info_nce": 0.05, "info_nce_user": 0.05})
    baseline = popularity_recall(dataset)
    assert metrics["test"]["recall@20"] > 1.5 * baseline, (metrics["test"], baseline)
