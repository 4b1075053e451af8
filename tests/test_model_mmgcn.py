"""MMGCN: the forward pass and loss terms against a numpy re-implementation of MMRec's MMGCN,
frozen tables (MMRec's code), learning, arguments (pmap parity: tests/test_model_contract.py)."""

import jax
import numpy as np
import pytest

from jaxrec import models
from jaxrec.data import Interactions, Modality, MultimodalDataset, make_synthetic
from jaxrec.errors import ConfigError
from jaxrec.models import normalize_batch

from _model_testing import init_compiled, popularity_recall, train_tiny


def _dataset():
    """6 users, 8 items, two modalities; item 7 has no train interaction."""
    rng = np.random.default_rng(0)
    pairs = sorted({(u, i) for u in range(6) for i in rng.choice(7, 3, replace=False)})
    users, items = (np.array(c) for c in zip(*pairs))
    split = np.zeros(len(users), np.int8)
    users, items = np.append(users, [0, 3]), np.append(items, [7, 7])
    split = np.append(split, [1, 2]).astype(np.int8)
    modalities = {"audio": Modality("audio", rng.normal(size=(8, 5)).astype(np.float32), np.ones(8, bool)),
                  "text": Modality("text", rng.normal(size=(8, 3)).astype(np.float32), np.ones(8, bool))}
    return MultimodalDataset("mm", 6, 8, Interactions(users, items, split), modalities=modalities)


def _leaky(x):
    return np.where(x > 0, x, 0.01 * x)


def _numpy_gcn(dataset, features, params, id_embedding, concat, n_layers=3):
    """MMRec's GCN.forward (src/models/mmgcn.py) in numpy: PyG mean aggregation over the
    train graph (both directions), no self-loops."""
    n = dataset.n_users + dataset.n_items
    train = np.unique(dataset.split_pairs("train"), axis=0)
    adjacency = np.zeros((n, n))
    adjacency[train[:, 0], dataset.n_users + train[:, 1]] = 1
    adjacency[dataset.n_users + train[:, 1], train[:, 0]] = 1
    degree = adjacency.sum(1, keepdims=True)
    mean_of_neighbours = np.divide(adjacency, degree, out=np.zeros_like(adjacency), where=degree > 0)
    if "projection" in params:
        features = features @ params["projection"]["kernel"] + params["projection"]["bias"]
    x = np.concatenate([params["preference"], features]).astype(np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    for layer in range(1, n_layers + 1):
        h = _leaky(mean_of_neighbours @ (x @ params[f"conv_{layer}"]))
        linear, combine = params[f"linear_{layer}"], params[f"combine_{layer}"]
        x_hat = _leaky(x @ linear["kernel"] + linear["bias"]) + id_embedding
        if concat:
            x = _leaky(np.concatenate([h, x_hat], axis=1) @ combine["kernel"] + combine["bias"])
        else:
            x = _leaky(h @ combine["kernel"] + combine["bias"] + x_hat)
    return x


def _numpy_representation(dataset, params, concat):
    outputs = [_numpy_gcn(dataset, dataset.modalities[name].features, params[f"gcn_{name}"],
                          params["id_embedding"], concat) for name in ("audio", "text")]
    return (outputs[0] + outputs[1]) / 2


def _params(built, seed=0):
    variables = init_compiled(built.module, jax.random.PRNGKey(seed), built.ctx, False, method="encode")
    return jax.tree.map(np.asarray, variables["params"])


@pytest.mark.parametrize("concat", [True, False])
@pytest.mark.parametrize("latent", [4, 8])  # 8: features (5 wide) + 1 < 8, the folded projection
def test_forward_matches_numpy_mmrec(concat, latent):
    dataset = _dataset()
    built = models.build("mmgcn", dataset, latent_dims={"audio": latent}, embedding_size=3, concat=concat)
    params = _params(built)
    assert params["gcn_audio"]["preference"].shape == (6, latent)  # projected modality: preferences of width latent
    assert params["gcn_text"]["preference"].shape == (6, 3)  # raw modality: of the feature width
    assert "projection" not in params["gcn_text"]
    users, items = built.module.apply({"params": params}, built.ctx, False, method="encode")
    expected = _numpy_representation(dataset, params, concat)
    np.testing.assert_allclose(users, expected[:6], rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(items, expected[6:], rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("latent", [4, 8])
def test_loss_terms_match_numpy_mmrec_with_padding_rows(latent):
    dataset = _dataset()
    built = models.build("mmgcn", dataset, latent_dims={"audio": latent}, embedding_size=3)
    params = _params(built, seed=1)
    rng = np.random.default_rng(3)
    users, pos, neg = rng.integers(0, 6, 9), rng.integers(0, 8, 9), rng.integers(0, 8, 9)
    weights = np.array([1] * 6 + [0] * 3, np.float32)
    batch = {"users": users, "pos_items": pos, "neg_items": neg[:, None], "weights": weights}
    terms = built.module.apply({"params": params}, built.ctx, batch, True, method="loss_terms")

    # MMRec's calculate_loss on the real rows: user_tensor = users repeated twice, item_tensor =
    # (pos, neg) interleaved; reg = mean(id[user]^2 + id[item]^2) + mean(preference^2) per modality.
    keep = weights > 0
    u, p, n = users[keep], pos[keep] + 6, neg[keep] + 6
    out = _numpy_representation(dataset, params, True)
    score = np.stack([(out[u] * out[p]).sum(1), (out[u] * out[n]).sum(1)], axis=1)
    bpr = -np.mean(np.log(1 / (1 + np.exp(-(score @ np.array([1.0, -1.0]))))))
    ids = params["id_embedding"].astype(np.float64)
    user_tensor, item_tensor = np.repeat(u, 2), np.stack([p, n], axis=1).ravel()
    reg = (ids[user_tensor] ** 2 + ids[item_tensor] ** 2).mean()
    reg += sum((params[f"gcn_{m}"]["preference"].astype(np.float64) ** 2).mean() for m in ("audio", "text"))
    np.testing.assert_allclose(float(terms["bpr"]), bpr, rtol=1e-5)
    np.testing.assert_allclose(float(terms["reg"]), reg, rtol=1e-5)


def test_frozen_tables_get_no_gradient():
    dataset = _dataset()
    batch = normalize_batch({"users": np.array([0, 1, 4]), "pos_items": np.array([1, 2, 3]), "neg_items": np.array([[5], [7], [0]])})
    for learn in (False, True):
        built = models.build("mmgcn", dataset, latent_dims={"audio": 4}, embedding_size=3, learn_embeddings=learn)
        params = _params(built)
        grads = jax.jit(jax.grad(lambda p: sum(built.module.apply({"params": p}, built.ctx, batch, True,
                                                          method="loss_terms").values())))(params)
        frozen = [grads["id_embedding"], grads["gcn_audio"]["preference"], grads["gcn_text"]["preference"]]
        assert all(np.any(g != 0) for g in frozen) == learn
        assert all(np.all(g == 0) for g in frozen) != learn
        assert np.any(grads["gcn_audio"]["conv_1"] != 0) and np.any(grads["gcn_text"]["combine_3"]["kernel"] != 0)


def test_torch_initializations():
    dataset = make_synthetic(300, 200, n_interactions=2000, dims={"text": 100}, seed=0)
    built = models.build("mmgcn", dataset, latent_dims={"text": 128})
    gcn = _params(built)["gcn_text"]
    # Xavier-normal (n, d) tables and conv weights; torch's Linear default U(+-1/sqrt(fan_in)).
    np.testing.assert_allclose(gcn["preference"].std(), np.sqrt(2 / (300 + 128)), rtol=0.03)
    np.testing.assert_allclose(gcn["conv_1"].std(), np.sqrt(2 / (128 + 128)), rtol=0.03)
    bound = 1 / np.sqrt(100)
    kernel = gcn["projection"]["kernel"]
    assert kernel.shape == (100, 128) and np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.98 * bound
    assert np.abs(gcn["combine_2"]["kernel"]).max() <= 1 / np.sqrt(128)  # 64 + 64 inputs, default init
    np.testing.assert_allclose(gcn["combine_1"]["kernel"].std(), np.sqrt(2 / (128 + 64 + 64)), rtol=0.05)


def test_arguments_are_checked():
    dataset = _dataset()
    with pytest.raises(ConfigError, match="latent_dims"):
        models.build("mmgcn", dataset, latent_dims={"image": 4})
    with pytest.raises(ConfigError, match="latent_dims.audio"):
        models.build("mmgcn", dataset, latent_dims={"audio": 0})
    with pytest.raises(ConfigError, match="no modality 'video'"):
        models.build("mmgcn", dataset, modalities=["video"])
    with pytest.raises(ConfigError, match="learn_embeddings"):
        models.build("mmgcn", dataset, learn_embeddings="yes")
    with pytest.raises(ConfigError, match="n_layers"):
        models.build("mmgcn", dataset, n_layers=0)
    built = models.build("mmgcn", dataset, modalities=["text"])
    assert built.module.modalities == ("text",) and built.default_loss_weights == {"bpr": 1.0, "reg": 0.0}


def test_learns_better_than_popularity(tmp_path):
    dataset = make_synthetic(300, 200, n_interactions=9000, dims={"image": 24}, seed=3,
                             popularity_skew=0.5, temperature=0.3)
    metrics = train_tiny(tmp_path / "run", dataset, "mmgcn", {"embedding_size": 16, "latent_dims": {"image": 16}},
                         epochs=30, learning_rate=0.01)
    baseline = popularity_recall(dataset)
    assert metrics["test"]["recall@20"] > 1.5 * baseline, (metrics["test"], baseline)


def test_raw_modality_constants_match_dense_neighbour_means():
    dataset = _dataset()
    built = models.build("mmgcn", dataset, latent_dims={"audio": 4}, embedding_size=3)
    assert set(built.ctx["raw"]) == {"text"} and set(built.ctx["features"]) == {"audio"}
    raw = built.ctx["raw"]["text"]
    features = dataset.modalities["text"].features.astype(np.float64)
    normalized = features / np.linalg.norm(features, axis=1, keepdims=True)
    train = np.unique(dataset.split_pairs("train"), axis=0)
    adjacency = np.zeros((6, 8))
    adjacency[train[:, 0], train[:, 1]] = 1
    degree = adjacency.sum(1, keepdims=True)
    user_means = np.divide(adjacency, degree, out=np.zeros_like(adjacency), where=degree > 0) @ normalized
    np.testing.assert_allclose(raw["items"], normalized, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(raw["user_means"], user_means, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(raw["user_means_t"], np.asarray(raw["user_means"]).T)
    np.testing.assert_array_equal(raw["items_t"], np.asarray(raw["items"]).T)
    item_rows = built.ctx["blocks"]["items"].to_dense(8)[:8, :6]
    item_degree = adjacency.sum(0)[:, None]
    np.testing.assert_allclose(item_rows, np.divide(adjacency.T, item_degree, out=np.zeros((8, 6)),
                                                    where=item_degree > 0), rtol=1e-6)
