"""Side-feature MF (squared and BPR forms) and the multi-view subspace objective, against loops."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec import losses
from jaxrec.errors import ConfigError, DataError


def _factors(rng, n_users=4, n_items=5, n_features=3, k=2):
    return (
        rng.normal(size=(n_users, k)),
        rng.normal(size=(n_items, k)),
        rng.normal(size=(n_features, k)),
        rng.normal(size=(n_items, n_features)),
    )


def _item_factor(V, W, Z, i, c):
    return V[i, c] + sum(Z[i, d] * W[d, c] for d in range(W.shape[0]))


def _score(U, V, W, Z, u, i):
    return sum(U[u, c] * _item_factor(V, W, Z, i, c) for c in range(U.shape[1]))


def _frobenius_squared(*arrays):
    return sum(float(v) ** 2 for a in arrays for v in np.ravel(a))


def side_mf_reference(U, V, W, Z, R, mask, lam):
    total = 0.0
    for u in range(R.shape[0]):
        for i in range(R.shape[1]):
            if mask[u, i]:
                total += mask[u, i] * (R[u, i] - _score(U, V, W, Z, u, i)) ** 2
    return total + lam * _frobenius_squared(U, V, W)


def test_side_mf_objective_matches_loop():
    rng = np.random.default_rng(0)
    U, V, W, Z = _factors(rng)
    R = rng.integers(1, 6, size=(4, 5)).astype(float)
    mask = (rng.uniform(size=(4, 5)) < 0.6).astype(float)
    got = losses.side_mf_objective(U, V, W, Z, R, mask, 0.3)
    np.testing.assert_allclose(got, side_mf_reference(U, V, W, Z, R, mask, 0.3), rtol=1e-5)


def test_side_mf_objective_hand_worked():
    # One user, one item, K = D = 1: prediction 1 * (1 + 1 * 1) = 2, (5 - 2)^2 = 9, reg 0.5 * 3 = 1.5.
    one = np.ones((1, 1))
    np.testing.assert_allclose(losses.side_mf_objective(one, one, one, one, np.array([[5.0]]), one, 0.5), 10.5)


def test_side_mf_objective_ignores_nan_in_unobserved_entries_including_gradient():
    rng = np.random.default_rng(1)
    U, V, W, Z = _factors(rng)
    R = rng.normal(size=(4, 5))
    mask = rng.uniform(size=(4, 5)) < 0.5
    clean = np.where(mask, R, 0.0)
    dirty = np.where(mask, R, np.nan)
    np.testing.assert_allclose(
        losses.side_mf_objective(U, V, W, Z, dirty, mask, 0.1),
        losses.side_mf_objective(U, V, W, Z, clean, mask, 0.1),
        rtol=1e-6,
    )
    grads = jax.jit(jax.grad(losses.side_mf_objective, argnums=(0, 1, 2)))(U, V, W, Z, dirty, mask, 0.1)
    assert all(np.all(np.isfinite(g)) for g in grads)


def test_side_mf_objective_gradient_vanishes_at_an_exact_fit_without_reg():
    rng = np.random.default_rng(2)
    U, V, W, Z = _factors(rng)
    R = U @ (V + Z @ W).T
    grads = jax.jit(jax.grad(losses.side_mf_objective, argnums=(0, 1, 2)))(U, V, W, Z, R, np.ones_like(R), 0.0)
    for g in grads:
        np.testing.assert_allclose(g, 0.0, atol=1e-4)


def side_mf_bpr_reference(U, V, W, Z, users, pos, neg, lam, reduction="sum"):
    neg = np.asarray(neg).reshape(len(users), -1)
    pair_losses = []
    for b in range(len(users)):
        for j in range(neg.shape[1]):
            margin = _score(U, V, W, Z, users[b], pos[b]) - _score(U, V, W, Z, users[b], neg[b, j])
            pair_losses.append(-math.log(1.0 / (1.0 + math.exp(-margin))))
    data = sum(pair_losses) if reduction == "sum" else sum(pair_losses) / len(pair_losses)
    return data + lam * _frobenius_squared(U, V, W)


@pytest.mark.parametrize("neg_shape", [(6,), (6, 3)])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_side_mf_bpr_matches_loop(neg_shape, reduction):
    rng = np.random.default_rng(3)
    U, V, W, Z = _factors(rng)
    users, pos = rng.integers(0, 4, size=6), rng.integers(0, 5, size=6)
    neg = rng.integers(0, 5, size=neg_shape)
    got = losses.side_mf_bpr(U, V, W, Z, users, pos, neg, 0.05, reduction=reduction)
    expected = side_mf_bpr_reference(U, V, W, Z, users, pos, neg, 0.05, reduction)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_side_mf_bpr_mask_drops_padding_triples():
    rng = np.random.default_rng(4)
    U, V, W, Z = _factors(rng)
    users, pos, neg = rng.integers(0, 4, size=5), rng.integers(0, 5, size=5), rng.integers(0, 5, size=5)
    where = np.array([True, True, False, True, False])
    got = losses.side_mf_bpr(U, V, W, Z, users, pos, neg, 0.0, where=where)
    expected = side_mf_bpr_reference(U, V, W, Z, users[where], pos[where], neg[where], 0.0)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_side_mf_errors():
    rng = np.random.default_rng(5)
    U, V, W, Z = _factors(rng)
    with pytest.raises(DataError, match="Z"):
        losses.side_mf_objective(U, V, W, Z[:, :2], np.zeros((4, 5)), np.ones((4, 5)), 0.1)
    with pytest.raises(DataError, match="mask"):
        losses.side_mf_objective(U, V, W, Z, np.zeros((4, 5)), np.ones((4, 4)), 0.1)
    with pytest.raises(DataError, match="pos_items"):
        losses.side_mf_bpr(U, V, W, Z, np.array([0]), np.array([5]), np.array([1]), 0.1)
    with pytest.raises(DataError, match="users"):
        losses.side_mf_bpr(U, V, W, Z, np.array([0.0]), np.array([1]), np.array([1]), 0.1)
    with pytest.raises(ConfigError, match="reduction"):
        losses.side_mf_bpr(U, V, W, Z, np.array([0]), np.array([1]), np.array([2]), 0.1, reduction="none")


def subspace_reference(projections, views, lam):
    # Naive loops: codes Y_m = X_m P_m, reconstructions Y_m P_m^T, then the ordered-pair triple loop.
    def matmul(a, b):
        rows, inner, cols = a.shape[0], a.shape[1], b.shape[1]
        return np.array([[sum(a[i, t] * b[t, j] for t in range(inner)) for j in range(cols)] for i in range(rows)])

    codes = [matmul(x, p) for p, x in zip(projections, views)]
    reconstruction = 0.0
    for p, x, y in zip(projections, views, codes):
        back = matmul(y, p.T)
        reconstruction += sum((x[i, d] - back[i, d]) ** 2 for i in range(x.shape[0]) for d in range(x.shape[1]))
    agreement = 0.0
    for m in range(len(views)):
        for n in range(len(views)):
            if m == n:
                continue
            for i in range(codes[m].shape[0]):
                agreement += sum((codes[m][i, c] - codes[n][i, c]) ** 2 for c in range(codes[m].shape[1]))
    return reconstruction + lam * agreement


def test_subspace_objective_matches_triple_loop():
    rng = np.random.default_rng(6)
    dims, k = (4, 3, 5), 2
    views = [rng.normal(size=(6, d)) for d in dims]
    projections = [np.linalg.qr(rng.normal(size=(d, k)))[0] for d in dims]
    got = losses.subspace_objective(projections, views, 0.7)
    np.testing.assert_allclose(got, subspace_reference(projections, views, 0.7), rtol=1e-5)
    # Also for projections that are not orthonormal (the objective itself does not assume it).
    raw = [rng.normal(size=(d, k)) for d in dims]
    np.testing.assert_allclose(
        losses.subspace_objective(raw, views, 0.2), subspace_reference(raw, views, 0.2), rtol=1e-5
    )


def test_subspace_objective_hand_worked_two_views():
    # X1 = [[1, 0], [0, 2]], P1 = e1: codes [1, 0]; reconstruction residual [[0, 0], [0, 2]] -> 4.
    # X2 = [[2], [1]], P2 = [[1]]: codes [2, 1]; exact reconstruction -> 0.
    # Agreement over ordered pairs: 2 * ((1 - 2)^2 + (0 - 1)^2) = 4; lam = 0.25 -> 1. Total 5.
    views = [np.array([[1.0, 0.0], [0.0, 2.0]]), np.array([[2.0], [1.0]])]
    projections = [np.array([[1.0], [0.0]]), np.array([[1.0]])]
    np.testing.assert_allclose(losses.subspace_objective(projections, views, 0.25), 5.0, rtol=1e-6)
    np.testing.assert_allclose(losses.subspace_objective(projections, views, 0.0), 4.0, rtol=1e-6)


def test_subspace_objective_orthonormal_form_matches_triple_loop_and_hand_worked_case():
    rng = np.random.default_rng(7)
    dims, k = (4, 3, 5), 2
    views = [rng.normal(size=(6, d)) for d in dims]
    projections = [np.linalg.qr(rng.normal(size=(d, k)))[0] for d in dims]
    got = losses.subspace_objective(projections, views, 0.7, orthonormal=True)
    np.testing.assert_allclose(got, subspace_reference(projections, views, 0.7), rtol=1e-5)
    views = [np.array([[1.0, 0.0], [0.0, 2.0]]), np.array([[2.0], [1.0]])]  # the hand-worked case above
    projections = [np.array([[1.0], [0.0]]), np.array([[1.0]])]
    np.testing.assert_allclose(losses.subspace_objective(projections, views, 0.25, orthonormal=True), 5.0, rtol=1e-6)


def test_subspace_objective_orthonormal_form_has_the_same_gradient_through_qf():
    """Through P = qf(W) the two forms' gradients in W agree (they differ in P only along the
    normal direction P S, S symmetric); off the manifold the plain form's gradient in P does
    differ, so the test would see a form that is not the objective restricted to the manifold."""
    from jaxrec.fusion import orthonormalize

    rng = np.random.default_rng(8)
    dims, k = (6, 4), 3
    with jax.enable_x64():
        views = [jnp.asarray(rng.normal(size=(9, d))) for d in dims]
        raw = [jnp.asarray(rng.normal(size=(d, k))) for d in dims]

        def objective(ws, orthonormal):
            return losses.subspace_objective([orthonormalize(w) for w in ws], views, 0.4, orthonormal=orthonormal)

        plain = jax.grad(objective)(raw, False)
        short = jax.grad(objective)(raw, True)
        for g, h in zip(plain, short):
            assert np.abs(np.asarray(g)).max() > 1e-3
            np.testing.assert_allclose(np.asarray(h), np.asarray(g), rtol=1e-9, atol=1e-9)
        # In P itself (no qf) the gradients differ: the normal component is not zero.
        ps = [orthonormalize(w) for w in raw]
        in_p = [jax.grad(lambda p, o=o: losses.subspace_objective(p, views, 0.4, orthonormal=o))(ps) for o in (False, True)]
        assert max(float(jnp.abs(a - b).max()) for a, b in zip(*in_p)) > 1e-3


def test_subspace_objective_errors():
    views = [np.ones((3, 2)), np.ones((3, 4))]
    with pytest.raises(DataError, match="projections"):
        losses.subspace_objective([np.ones((2, 1))], views, 0.1)
    with pytest.raises(DataError, match=r"projections\[1\]"):
        losses.subspace_objective([np.ones((2, 1)), np.ones((4, 2))], views, 0.1)
    with pytest.raises(DataError, match=r"views\[1\]"):
        losses.subspace_objective([np.ones((2, 1)), np.ones((4, 1))], [np.ones((3, 2)), np.ones((2, 4))], 0.1)
    with pytest.raises(DataError, match="sequences"):
        losses.subspace_objective(jnp.ones((2, 2, 1)), views, 0.1)
