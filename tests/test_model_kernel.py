"""Kernel recommender: its item-item similarity is the weighted combined kernel (numpy and
jaxrec.fusion.combined_kernel), random Fourier features, scores against numpy, cold items,
argument checks, learning (pmap parity: tests/test_model_contract.py)."""

import functools

import numpy as np
import pytest

from jaxrec import fusion, models
from jaxrec.data import make_synthetic
from jaxrec.errors import ConfigError

from _model_testing import (compiled_apply, popularity_recall, randomized_params,
                            tiny_multimodal_dataset, train_tiny)


_PRESENCE = np.array([[1, 1, 1], [1, 0, 0], [0, 1, 1], [0, 0, 0], [1, 1, 1], [1, 1, 0], [1, 1, 1], [0, 0, 1]], bool)
_KERNELS = ["linear", {"kind": "polynomial", "degree": 2, "coef0": 1.0}, "cosine"]


def _tiny_dataset(n_users=5):
    """8 items with three modalities, varied presence (_PRESENCE); item 7 is never trained."""
    return tiny_multimodal_dataset(_PRESENCE, [("text", 3), ("image", 2), ("audio", 4)], n_users)


def _numpy_combined_kernel(xs, masks, weights):
    """sum_m w_m r_im r_jm k_m(x_im, x_jm) with linear, (x.y / 2 + 1)^2 and cosine kernels, by loops."""
    n = len(masks[0])
    K = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            for m, (x, mask) in enumerate(zip(xs, masks)):
                if not (mask[i] and mask[j]):
                    continue
                a, b = np.asarray(x[i], np.float64), np.asarray(x[j], np.float64)
                if m == 0:
                    k = a @ b
                elif m == 1:
                    k = (a @ b / len(a) + 1.0) ** 2
                else:
                    k = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
                K[i, j] += weights[m] * k
    return K


@pytest.mark.parametrize("projection", [True, False])
def test_item_similarity_is_the_weighted_combined_kernel(projection):
    dataset = _tiny_dataset()
    width = 3 + 6 + 4  # linear 3, polynomial degree 2 over 2 inputs: C(4, 2) = 6, cosine 4
    built = models.build("kernel", dataset, embedding_size=width, kernels=_KERNELS, projection=projection)
    params = randomized_params(built)
    params["item_embedding"] = np.zeros_like(params["item_embedding"])
    if projection:
        params["kernel_encoding"]["projection"]["kernel"] = np.eye(width, dtype=np.float32)
    weights = np.log1p(np.exp(np.asarray(params["kernel_encoding"]["raw_weights"], np.float64)))
    assert np.ptp(weights) > 0.1  # really different modality weights
    _, items = compiled_apply(built.module, params, built.ctx, False, method="encode")
    gram = np.asarray(items, np.float64) @ np.asarray(items, np.float64).T
    xs, masks = built.ctx["modalities"], built.ctx["masks"]
    np.testing.assert_allclose(gram, _numpy_combined_kernel(xs, masks, weights), rtol=1e-4, atol=1e-5)

    kernels = [fusion.linear_kernel, functools.partial(fusion.polynomial_kernel, degree=2, coef0=1.0),
               fusion.cosine_kernel]
    both = [np.outer(mask, mask) for mask in masks]
    library = sum(weights[m] * both[m] * np.asarray(fusion.combined_kernel([kernels[m]], [xs[m]], [xs[m]]))
                  for m in range(3))
    np.testing.assert_allclose(gram, library, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(gram[3], 0.0)  # no modality, no similarity


def test_scores_match_numpy_and_cold_items_use_features_alone():
    dataset = _tiny_dataset()
    built = models.build("kernel", dataset, embedding_size=5, kernels=_KERNELS)
    params = randomized_params(built, seed=2)
    users, items = compiled_apply(built.module, params, built.ctx, False, method="encode")
    # Phi from a projection-free build with the same modality weights; its Gram is the
    # weighted combined kernel (checked against loops), so Phi is the kernel's feature map.
    free = models.build("kernel", dataset, embedding_size=13, kernels=_KERNELS, projection=False)
    free_params = {"user_embedding": np.zeros((5, 13), np.float32), "item_embedding": np.zeros((8, 13), np.float32),
                   "kernel_encoding": {"raw_weights": params["kernel_encoding"]["raw_weights"]}}
    _, phi = compiled_apply(free.module, free_params, free.ctx, False, method="encode")
    phi = np.asarray(phi, np.float64)
    weights = np.log1p(np.exp(np.asarray(params["kernel_encoding"]["raw_weights"], np.float64)))
    np.testing.assert_allclose(phi @ phi.T, _numpy_combined_kernel(built.ctx["modalities"], built.ctx["masks"], weights),
                               rtol=1e-4, atol=1e-5)
    A = np.asarray(params["kernel_encoding"]["projection"]["kernel"], np.float64)
    trained = np.asarray(built.ctx["trained"])
    expected = np.asarray(params["item_embedding"], np.float64) * trained[:, None] + phi @ A
    np.testing.assert_allclose(np.asarray(items), expected, rtol=1e-4, atol=1e-5)
    assert not trained[7]
    np.testing.assert_allclose(np.asarray(items)[7], (phi @ A)[7], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(users), params["user_embedding"])

    # Loss: BPR over pairs with a trained negative; EmbLoss of p_u and the full item vectors.
    batch = {"users": np.array([0, 1, 2]), "pos_items": np.array([0, 1, 4]),
             "neg_items": np.array([[7, 3], [5, 2], [6, 7]]), "weights": np.ones(3, np.float32)}
    terms = compiled_apply(built.module, params, built.ctx, batch, True, method="loss_terms")
    P = np.asarray(params["user_embedding"], np.float64)
    pairs = [(b, j) for b in range(3) for j in batch["neg_items"][b] if j != 7]
    margins = [P[b] @ (expected[batch["pos_items"][b]] - expected[j]) for b, j in pairs]
    np.testing.assert_allclose(float(terms["bpr"]), np.mean(np.log1p(np.exp(-np.array(margins)))), rtol=1e-5)
    reg = (np.linalg.norm([P[b] for b, _ in pairs]) + np.linalg.norm([expected[batch["pos_items"][b]] for b, _ in pairs])
           + np.linalg.norm([expected[j] for _, j in pairs])) / len(pairs)
    np.testing.assert_allclose(float(terms["reg"]), reg, rtol=1e-5)


def test_rbf_uses_random_fourier_features_drawn_from_the_seed():
    dataset = make_synthetic(40, 30, n_interactions=300, dims={"a": 5, "b": 3}, seed=0)
    built = models.build("kernel", dataset, kernels={"kind": "rbf", "num_features": 4096, "gamma": 0.1})
    again = models.build("kernel", dataset, kernels={"kind": "rbf", "num_features": 4096, "gamma": 0.1})
    other = models.build("kernel", dataset, kernels={"kind": "rbf", "num_features": 4096, "gamma": 0.1},
                         kernel_seed=1)
    for x, y, z in zip(built.ctx["modalities"], again.ctx["modalities"], other.ctx["modalities"]):
        np.testing.assert_array_equal(x, y)
        assert x.shape == (30, 4096) and not np.allclose(x, z)
    assert all(spec.kind == "linear" for spec in built.module.specs)
    scaled = models.build("kernel", dataset, kernels="linear")  # the standardized inputs
    for features, rff in zip(scaled.ctx["modalities"], built.ctx["modalities"]):
        x = np.asarray(features, np.float64)
        exact = np.exp(-0.1 * ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
        approx = np.asarray(rff, np.float64) @ np.asarray(rff, np.float64).T
        assert np.abs(approx - exact).max() < 0.08  # O(1 / sqrt(D)) per entry
        assert np.abs(approx - exact).mean() < 0.02


def test_builder_checks_arguments():
    dataset = _tiny_dataset()
    with pytest.raises(ConfigError, match="embedding_size must equal the kernel feature width 13"):
        models.build("kernel", dataset, embedding_size=8, kernels=_KERNELS, projection=False)
    with pytest.raises(ConfigError, match="one per modality"):
        models.build("kernel", dataset, kernels=["linear", "cosine"])
    with pytest.raises(ConfigError, match="unknown kernel kind"):
        models.build("kernel", dataset, kernels="laplacian")
    with pytest.raises(ConfigError, match="kind required"):
        models.build("kernel", dataset, kernels={"kind": "rbf", "width": 2.0})
    with pytest.raises(ConfigError, match="projection"):
        models.build("kernel", dataset, projection="yes")
    with pytest.raises(ConfigError, match="polynomial map"):
        models.build("kernel", make_synthetic(30, 20, n_interactions=200, dims={"a": 2000}, seed=0),
                     kernels={"kind": "polynomial", "degree": 2})


# ---- learning ---------------------------------------------------------------------------

_SYNTHETIC = dict(n_users=200, n_items=120, n_interactions=5000, seed=3, popularity_skew=0.5, temperature=0.3,
                  dims={"text": 24, "image": 16})


def test_learns_better_than_popularity(tmp_path):
    dataset = make_synthetic(**_SYNTHETIC)
    metrics = train_tiny(tmp_path / "kernel", dataset, "kernel", {"embedding_size": 16, "kernels": ["cosine", "rbf"]},
                         epochs=12, learning_rate=0.01, loss_weights={"reg": 1e-3})
    baseline = popularity_recall(dataset)
    assert metrics["test"]["recall@20"] > 1.5 * baseline, (metrics["test"], baseline)
