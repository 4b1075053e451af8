"""Subspace learning and CCA against scipy / numpy computations on planted problems."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from jaxrec import fusion
from jaxrec.errors import ConfigError, DataError


def _numpy_objective(projections, views, lam):
    """The multi-view subspace objective, written out independently of jaxrec.losses."""
    total = 0.0
    codes = [x @ p for p, x in zip(projections, views)]
    for p, x, z in zip(projections, views, codes):
        total += np.sum((x - z @ p.T) ** 2)
    for m in range(len(views)):
        for n in range(len(views)):
            if m != n:
                total += lam * np.sum((codes[m] - codes[n]) ** 2)
    return total


def _orthonormal(rng, rows, cols):
    return np.linalg.qr(rng.normal(size=(rows, cols)))[0]


def _planted(seed, n=400, dims=(8, 6), shared=2, private=2, private_scale=2.0, noise=0.1):
    """Views X_m = Z A_m^T + S_m B_m^T + noise, with [A_m, B_m] orthonormal.

    The private signal S_m has more variance than the shared Z, so per-view PCA finds the private
    directions while the shared subspace is span(A_m).
    """
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, shared))
    views, shared_bases = [], []
    for d in dims:
        basis = _orthonormal(rng, d, min(d, shared + private))
        a, b = basis[:, :shared], basis[:, shared:]
        s = private_scale * rng.normal(size=(n, b.shape[1]))
        x = z @ a.T + s @ b.T + noise * rng.normal(size=(n, d))
        views.append((x - x.mean(0)) / np.sqrt(n))  # per-row scale keeps lr independent of n
        shared_bases.append(a)
    return views, shared_bases


def _pca_basis(x, k):
    return np.linalg.svd(x - x.mean(0), full_matrices=False)[2][:k].T


def test_orthonormalize_is_the_sign_fixed_q_factor():
    a = np.random.default_rng(0).normal(size=(6, 3))
    q = np.asarray(fusion.orthonormalize(a), np.float64)
    np.testing.assert_allclose(q.T @ q, np.eye(3), atol=1e-5)
    r = q.T @ a  # a = q r with r upper triangular and a positive diagonal
    np.testing.assert_allclose(np.tril(r, -1), 0.0, atol=1e-5)
    assert np.all(np.diag(r) > 0)
    np.testing.assert_allclose(q @ r, a, atol=1e-5)


def test_principal_angles_match_scipy():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(7, 3)), rng.normal(size=(7, 2))
    expected = np.sort(scipy.linalg.subspace_angles(a, b))
    np.testing.assert_allclose(fusion.principal_angles(a, b), expected, atol=1e-5)
    np.testing.assert_allclose(fusion.principal_angles(b, a), expected, atol=1e-5)
    # Tiny angles come from sines, so float32 resolves them far below sqrt(eps) ~ 3e-4.
    tilted = a + 1e-4 * rng.normal(size=a.shape)
    expected = np.sort(scipy.linalg.subspace_angles(a, tilted))
    assert expected.max() < 1e-3
    np.testing.assert_allclose(fusion.principal_angles(a, tilted), expected, atol=2e-6)
    np.testing.assert_allclose(fusion.principal_angles(a, a @ rng.normal(size=(3, 3))), 0.0, atol=1e-5)


def test_subspace_step_keeps_orthonormality_and_decreases_monotonically():
    views, shared_bases = _planted(2)
    lam, lr = 1.0, 0.02
    rng = np.random.default_rng(3)
    projections = [jnp.asarray(_orthonormal(rng, v.shape[1], 2), jnp.float32) for v in views]
    step = jax.jit(lambda p: fusion.subspace_step(p, views, lam=lam, lr=lr))
    values = []
    for _ in range(60):
        projections, value = step(projections)
        values.append(float(value))
        for p in projections:  # every iterate stays on the Stiefel manifold
            np.testing.assert_allclose(np.asarray(p).T @ np.asarray(p), np.eye(2), atol=2e-5)
    # The reported value is the objective at the step's input, computed independently here too.
    final = _numpy_objective([np.asarray(p, np.float64) for p in projections], views, lam)
    values.append(final)
    assert np.all(np.diff(values) <= 1e-5 * values[0]), np.diff(values).max()
    # It descends to the objective of the planted shared bases (about 16.1, from about 24.8).
    planted = _numpy_objective(shared_bases, views, lam)
    assert values[-1] < 1.01 * planted < 0.7 * values[0]


def test_subspace_step_first_order_decrease_is_the_riemannian_gradient_norm():
    """(f(P) - f(step(P, lr))) / lr -> |G - P sym(P^T G)|^2 as lr -> 0 (gradient by finite differences)."""
    views, _ = _planted(4, n=60, dims=(4, 3))
    lam = 0.7
    rng = np.random.default_rng(5)
    projections = [_orthonormal(rng, v.shape[1], 2) for v in views]
    with jax.enable_x64(True):
        base = _numpy_objective(projections, views, lam)
        riemannian_sq = 0.0
        eps = 1e-6
        for m, p in enumerate(projections):
            grad = np.zeros_like(p)
            for idx in np.ndindex(p.shape):
                bumped = [q.copy() for q in projections]
                bumped[m][idx] += eps
                lowered = [q.copy() for q in projections]
                lowered[m][idx] -= eps
                grad[idx] = (_numpy_objective(bumped, views, lam) - _numpy_objective(lowered, views, lam)) / (2 * eps)
            tangent = grad - p @ (0.5 * (p.T @ grad + grad.T @ p))
            riemannian_sq += np.sum(tangent * grad)
        lr = 1e-5
        step = jax.jit(lambda p: fusion.subspace_step(p, views, lam=lam, lr=lr))
        stepped, value = step(projections)
        np.testing.assert_allclose(float(value), base, rtol=1e-10)
        after = _numpy_objective([np.asarray(p) for p in stepped], views, lam)
    np.testing.assert_allclose((base - after) / lr, riemannian_sq, rtol=1e-3)


def test_fit_subspace_recovers_the_planted_shared_subspace_better_than_pca():
    views, shared_bases = _planted(6)
    fit = fusion.fit_subspace(views, 2, lam=2.0, steps=300, lr=0.02, key=jax.random.key(0))
    trace = np.asarray(fit.objective_trace)
    assert trace.shape == (301,)
    assert np.all(np.diff(trace) <= 1e-5 * trace[0])
    np.testing.assert_allclose(
        trace[-1], _numpy_objective([np.asarray(p, np.float64) for p in fit.projections], views, 2.0), rtol=1e-4
    )
    for p, x, a in zip(fit.projections, views, shared_bases):
        np.testing.assert_allclose(np.asarray(p).T @ np.asarray(p), np.eye(2), atol=2e-5)
        learned = np.max(fusion.principal_angles(p, a))
        pca = np.max(fusion.principal_angles(_pca_basis(x, 2), a))
        assert learned < 0.1 and pca > 1.2, (learned, pca)  # radians; pi/2 = 1.571 is orthogonal


def test_cca_matches_generalized_eigenproblem():
    views, shared_bases = _planted(7, n=300, dims=(5, 4), private_scale=1.0, noise=0.5)
    x, y = (v * np.sqrt(300) for v in views)
    unregularized = None
    for reg in (0.0, 0.3):
        with jax.enable_x64(True):
            result = fusion.cca(x, y, 3, reg=reg)
        xc, yc = x - x.mean(0), y - y.mean(0)
        cxx = xc.T @ xc / 299 + reg * np.eye(5)
        cyy = yc.T @ yc / 299 + reg * np.eye(4)
        cxy = xc.T @ yc / 299
        # Cxy Cyy^-1 Cyx a = rho^2 Cxx a, solved by scipy's symmetric-definite eigensolver.
        eigenvalues = scipy.linalg.eigh(cxy @ np.linalg.solve(cyy, cxy.T), cxx, eigvals_only=True)
        expected = np.sqrt(np.sort(eigenvalues)[::-1][:3])
        np.testing.assert_allclose(result.correlations, expected, rtol=1e-8)
        a, b = np.asarray(result.x_weights), np.asarray(result.y_weights)
        np.testing.assert_allclose(a.T @ cxx @ a, np.eye(3), atol=1e-8)
        np.testing.assert_allclose(b.T @ cyy @ b, np.eye(3), atol=1e-8)
        np.testing.assert_allclose(a.T @ cxy @ b, np.diag(expected), atol=1e-8)
        unregularized = (expected, a) if unregularized is None else unregularized
    # Two strong shared directions (population correlation 1 / (1 + 0.5^2) = 0.8), then noise;
    # the top two canonical directions of x span the planted shared subspace.
    expected, a = unregularized
    assert expected[1] > 0.65 and expected[2] < 0.3
    assert np.max(fusion.principal_angles(a[:, :2], shared_bases[0])) < 0.35  # measured 0.20 rad


def test_cca_float32_default_precision():
    views, _ = _planted(8, n=300, dims=(5, 4), private_scale=1.0, noise=0.5)
    x, y = (v.astype(np.float32) for v in views)
    with jax.enable_x64(True):
        reference = fusion.cca(x.astype(np.float64), y.astype(np.float64), 2).correlations
    np.testing.assert_allclose(jax.jit(fusion.cca, static_argnums=2)(x, y, 2).correlations, reference, rtol=1e-3)


def test_subspace_projection_layer_matches_numpy_and_trains_with_retraction():
    views, _ = _planted(9, n=50, dims=(5, 4))
    views = [v.astype(np.float32) for v in views]
    masks = [np.ones(50, bool), np.arange(50) % 5 != 0]  # every fifth row lacks view 1
    module = fusion.SubspaceProjection(dim=2, lam=1.5)
    variables = jax.jit(module.init)(jax.random.key(0), views, masks)
    ps = [np.asarray(variables["params"][f"projection_{m}"], np.float64) for m in range(2)]
    for p in ps:
        np.testing.assert_allclose(p.T @ p, np.eye(2), atol=1e-5)
    out = jax.jit(module.apply)(variables, views, masks)
    complete = masks[0] & masks[1]
    expected_objective = _numpy_objective(ps, [v[complete] for v in views], 1.5)
    np.testing.assert_allclose(out.objective, expected_objective, rtol=1e-5)
    np.testing.assert_allclose(out.projected[1], np.where(masks[1][:, None], views[1] @ ps[1], 0), atol=1e-6)
    expected_shared = np.where(complete[:, None], (views[0] @ ps[0] + views[1] @ ps[1]) / 2, views[0] @ ps[0])
    np.testing.assert_allclose(out.shared, expected_shared, atol=1e-6)

    @jax.jit
    def train_step(params):
        grads = jax.grad(lambda p: module.apply({"params": p}, views, masks).objective)(params)
        return jax.tree.map(lambda p, g: fusion.orthonormalize(p - 0.02 * g), params, grads)

    params = variables["params"]
    for _ in range(30):
        params = train_step(params)
    trained = float(jax.jit(module.apply)({"params": params}, views, masks).objective)
    assert trained < 0.7 * float(out.objective)


def test_subspace_config_errors():
    views, _ = _planted(10, n=20, dims=(3, 2))
    with pytest.raises(ConfigError, match="exceeds"):
        fusion.fit_subspace(views, 3, lam=1.0, steps=2, lr=0.1, key=jax.random.key(0))
    with pytest.raises(ConfigError, match="exceeds"):
        fusion.cca(views[0], views[1], 3)
    with pytest.raises(DataError, match="same rows"):
        fusion.cca(views[0], views[1][:5], 1)
    with pytest.raises(ConfigError, match="exceeds"):
        fusion.SubspaceProjection(dim=3).init(jax.random.key(0), views)


def test_orthonormalize_rejects_a_wide_matrix():
    # A (2, 5) matrix used to come back as (2, 2): only D >= k has k orthonormal columns.
    with pytest.raises(DataError, match="'matrix'.*\\(2, 5\\).*D >= k"):
        fusion.orthonormalize(np.ones((2, 5)))
    with pytest.raises(DataError, match="'matrix'"):
        jax.jit(fusion.orthonormalize)(jnp.ones((3, 4)))  # a static fact: raised under jit too
    # Square and tall matrices keep the sign-fixed Q factor (numpy's QR, signs flipped to R > 0).
    for shape in ((4, 4), (5, 2)):
        a = np.random.default_rng(7).normal(size=shape)
        q, r = np.linalg.qr(a)
        expected = q * np.where(np.diag(r) < 0, -1.0, 1.0)[None, :]
        got = fusion.orthonormalize(a)
        assert got.shape == shape
        np.testing.assert_allclose(got, expected, atol=1e-5)


def test_the_layer_multiplies_each_view_by_its_projection_once():
    """The output and the objective share one product X_m P_m per view (the objective's complete
    rows are rows of it), so the gradient has one weight product per view too."""
    from _model_testing import count_products

    views, _ = _planted(3, n=40, dims=(5, 4))
    views = [v.astype(np.float32) for v in views]
    masks = [np.ones(40, bool), np.arange(40) % 4 != 0]
    module = fusion.SubspaceProjection(dim=2, lam=0.5, orthonormal=True)
    params = module.init(jax.random.key(0), views, masks)["params"]

    def loss(params):
        out = module.apply({"params": params}, views, masks)
        return out.objective + jnp.sum(out.shared ** 2)

    for m, width in enumerate((5, 4)):
        assert count_products(loss, params, shape=(40, 2)) == 2  # X_0 P_0 and X_1 P_1
        assert count_products(jax.grad(loss), params, shape=(2, width)) == 1  # (X_m^T g_m)^T


def test_the_objective_takes_the_callers_products():
    from jaxrec import losses

    rng = np.random.default_rng(4)
    views = [rng.normal(size=(6, 3)).astype(np.float32), rng.normal(size=(6, 2)).astype(np.float32)]
    ps = [_orthonormal(rng, 3, 2).astype(np.float32), _orthonormal(rng, 2, 2).astype(np.float32)]
    for orthonormal in (False, True):
        given = losses.subspace_objective(ps, views, 0.7, orthonormal=orthonormal, codes=[x @ p for p, x in zip(ps, views)])
        np.testing.assert_allclose(float(given), _numpy_objective([p.astype(np.float64) for p in ps],
                                                                  [v.astype(np.float64) for v in views], 0.7), rtol=1e-5)
    with pytest.raises(DataError, match=r"codes\[1\]"):
        losses.subspace_objective(ps, views, 0.7, codes=[views[0] @ ps[0], np.zeros((6, 3), np.float32)])
    with pytest.raises(DataError, match="codes"):
        losses.subspace_objective(ps, views, 0.7, codes=[views[0] @ ps[0]])
