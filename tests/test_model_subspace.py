"""Subspace recommender: its auxiliary term against jaxrec.losses.subspace_objective and a naive
numpy version, orthonormal projections by parametrization, scores, cold items, gradients,
argument checks, learning (pmap parity: tests/test_model_contract.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxrec import losses, models
from jaxrec.data import make_synthetic
from jaxrec.errors import ConfigError

from _model_testing import (compiled_apply, popularity_recall, randomized_params,
                            tiny_multimodal_dataset, train_tiny)


# Items 0, 4, 6 and 7 have every modality; item 7 has no train interaction, so only 0, 4, 6
# enter the objective.
_PRESENCE = np.array([[1, 1, 1], [1, 0, 0], [0, 1, 1], [0, 0, 0], [1, 1, 1], [1, 1, 0], [1, 1, 1], [1, 1, 1]], bool)


def _tiny_dataset(n_users=5):
    """8 items with three modalities, varied presence (_PRESENCE); item 7 is never trained."""
    return tiny_multimodal_dataset(_PRESENCE, [("text", 5), ("image", 3), ("audio", 4)], n_users)


def _numpy_qf(matrix):
    q, r = np.linalg.qr(np.asarray(matrix, np.float64))
    return q * np.where(np.diag(r) < 0, -1.0, 1.0)[None, :]


def _numpy_objective(projections, views, rows, lam):
    """sum_m sum_{i in rows} |x_im - P_m P_m^T x_im|^2 + lam sum_{m != n} sum_i |P_m^T x_im - P_n^T x_in|^2."""
    total = 0.0
    for i in rows:
        for m, (P, X) in enumerate(zip(projections, views)):
            x = np.asarray(X[i], np.float64)
            total += np.sum((x - P @ (P.T @ x)) ** 2)
            for n, (Q, Y) in enumerate(zip(projections, views)):
                if n != m:
                    total += lam * np.sum((P.T @ x - Q.T @ np.asarray(Y[i], np.float64)) ** 2)
    return total


@pytest.mark.parametrize("orthonormal", [True, False])
def test_subspace_term_is_the_subspace_objective(orthonormal):
    built = models.build("subspace", _tiny_dataset(), embedding_size=4, shared_dim=2, agreement=0.7,
                         orthonormal=orthonormal)
    params = randomized_params(built)
    raw = [np.asarray(params["subspace"][f"projection_{m}"], np.float64) for m in range(3)]
    expected_projections = [_numpy_qf(w) for w in raw] if orthonormal else raw
    projections = compiled_apply(built.module, params, built.ctx, method="projections")
    for P, expected in zip(projections, expected_projections):
        np.testing.assert_allclose(np.asarray(P), expected, rtol=1e-5, atol=1e-6)
        if orthonormal:
            np.testing.assert_allclose(np.asarray(P).T @ np.asarray(P), np.eye(2), atol=1e-6)
    batch = {"users": np.array([0, 1]), "pos_items": np.array([0, 4]), "neg_items": np.array([[2], [5]]),
             "weights": np.ones(2, np.float32)}
    term = float(compiled_apply(built.module, params, built.ctx, batch, True, method="loss_terms")["subspace"])
    views = built.ctx["modalities"]
    np.testing.assert_allclose(term, _numpy_objective(expected_projections, views, [0, 4, 6], 0.7), rtol=1e-5)
    complete_trained = np.zeros(8, bool)
    complete_trained[[0, 4, 6]] = True
    library = losses.subspace_objective(projections, [np.where(complete_trained[:, None], x, 0.0) for x in views], 0.7)
    np.testing.assert_allclose(term, float(library), rtol=1e-5)


def test_scores_match_numpy_and_cold_items_use_features_alone():
    built = models.build("subspace", _tiny_dataset(), embedding_size=4, shared_dim=2)
    params = randomized_params(built, seed=3)
    users, items = compiled_apply(built.module, params, built.ctx, False, method="encode")
    P = [_numpy_qf(params["subspace"][f"projection_{m}"]) for m in range(3)]
    B = np.asarray(params["to_embedding"]["kernel"], np.float64)
    trained = np.asarray(built.ctx["trained"])
    expected = np.asarray(params["item_embedding"], np.float64) * trained[:, None]
    for i in range(8):
        present = [m for m in range(3) if _PRESENCE[i, m]]
        if present:
            z = np.mean([np.asarray(built.ctx["modalities"][m][i], np.float64) @ P[m] for m in present], axis=0)
            expected[i] += z @ B
    np.testing.assert_allclose(np.asarray(items), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(users), params["user_embedding"])
    assert not trained[7]
    zeroed = dict(params, item_embedding=np.zeros_like(params["item_embedding"]))
    _, content = compiled_apply(built.module, zeroed, built.ctx, False, method="encode")
    np.testing.assert_array_equal(np.asarray(items)[7], np.asarray(content)[7])
    np.testing.assert_allclose(np.asarray(items)[3], params["item_embedding"][3], rtol=1e-6)  # no modality: ID only


def test_subspace_term_gradient_matches_finite_differences():
    built = models.build("subspace", _tiny_dataset(), embedding_size=3, shared_dim=2, agreement=0.5)
    batch = {"users": np.array([0, 1]), "pos_items": np.array([0, 4]), "neg_items": np.array([[2], [5]]),
             "weights": np.ones(2)}
    with jax.enable_x64():
        params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), randomized_params(built, seed=4))
        ctx = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64) if a.dtype == np.float32 else a, built.ctx)
        term = jax.jit(lambda p: built.module.apply({"params": p}, ctx, batch, True, method="loss_terms")["subspace"])
        check_grads(term, (params,), order=1, modes=("rev",), atol=1e-5, rtol=1e-5)


def test_builder_checks_arguments():
    dataset = _tiny_dataset()
    with pytest.raises(ConfigError, match="exceeds the narrowest modality's width 3 \\('image'\\)"):
        models.build("subspace", dataset, shared_dim=4)
    with pytest.raises(ConfigError, match="agreement"):
        models.build("subspace", dataset, shared_dim=2, agreement=-1.0)
    with pytest.raises(ConfigError, match="orthonormal"):
        models.build("subspace", dataset, shared_dim=2, orthonormal=1)
    built = models.build("subspace", dataset, shared_dim=2)
    assert built.default_loss_weights == {"bpr": 1.0, "reg": 1.0, "subspace": 1e-5}


# ---- learning ---------------------------------------------------------------------------

_SYNTHETIC = dict(n_users=200, n_items=120, n_interactions=5000, seed=3, popularity_skew=0.5, temperature=0.3,
                  dims={"text": 24, "image": 16})


def test_learns_better_than_popularity(tmp_path):
    dataset = make_synthetic(**_SYNTHETIC)
    metrics = train_tiny(tmp_path / "subspace", dataset, "subspace", {"embedding_size": 16, "shared_dim": 8},
                         epochs=12, learning_rate=0.01, loss_weights={"reg": 1e-3, "subspace": 1e-4})
    baseline = popularity_recall(dataset)
    assert metrics["test"]["recall@20"] > 1.5 * baseline, (metrics["test"], baseline)
