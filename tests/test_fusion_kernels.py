"""Kernels and explicit feature maps against naive numpy loops and closed forms."""

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxrec import fusion
from jaxrec.errors import ConfigError, DataError


def _data(seed, n, d):
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


def _naive_gram(pair_fn, x, y):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return np.array([[pair_fn(a, b) for b in y] for a in x])


NAIVE = {
    "linear": lambda a, b: float(np.dot(a, b)),
    "poly": lambda a, b: (0.3 * float(np.dot(a, b)) + 1.5) ** 3,
    "rbf": lambda a, b: math.exp(-0.2 * float(np.sum((a - b) ** 2))),
    "cosine": lambda a, b: float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b))),
}
KERNELS = {
    "linear": fusion.linear_kernel,
    "poly": functools.partial(fusion.polynomial_kernel, degree=3, coef0=1.5, gamma=0.3),
    "rbf": functools.partial(fusion.rbf_kernel, gamma=0.2),
    "cosine": fusion.cosine_kernel,
}


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_kernel_matches_naive_loop_under_jit_and_vmap(name):
    x, y = _data(0, 5, 4), _data(1, 7, 4)
    expected = _naive_gram(NAIVE[name], x, y)
    np.testing.assert_allclose(jax.jit(KERNELS[name])(x, y), expected, rtol=2e-5, atol=2e-5)
    # vmap over a leading batch of x row-sets.
    batched = jax.jit(jax.vmap(KERNELS[name], in_axes=(0, None)))(np.stack([x, 2 * x]), y)
    np.testing.assert_allclose(batched[0], expected, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(batched[1], _naive_gram(NAIVE[name], 2 * x, y), rtol=2e-5, atol=2e-5)


def test_default_gamma_is_one_over_dim():
    x, y = _data(4, 3, 5), _data(5, 2, 5)
    expected = _naive_gram(lambda a, b: math.exp(-np.sum((a - b) ** 2) / 5), x, y)
    np.testing.assert_allclose(fusion.rbf_kernel(x, y), expected, rtol=1e-5)
    expected = _naive_gram(lambda a, b: (np.dot(a, b) / 5 + 1.0) ** 3, x, y)
    np.testing.assert_allclose(fusion.polynomial_kernel(x, y), expected, rtol=1e-5)


def test_hand_worked_values():
    np.testing.assert_allclose(fusion.linear_kernel([[1.0, 2.0]], [[3.0, 4.0]]), [[11.0]])
    np.testing.assert_allclose(
        fusion.polynomial_kernel([[1.0, 2.0]], [[3.0, 4.0]], degree=2, coef0=1.0, gamma=1.0),
        [[144.0]],
    )
    np.testing.assert_allclose(
        fusion.rbf_kernel([[0.0, 0.0]], [[1.0, 0.0]], gamma=0.5), [[math.exp(-0.5)]], rtol=1e-6
    )
    np.testing.assert_allclose(fusion.cosine_kernel([[3.0, 4.0]], [[6.0, 8.0]]), [[1.0]], rtol=1e-6)


def test_cosine_zero_row_is_zero_with_finite_gradient():
    x = np.array([[0.0, 0.0], [1.0, 1.0]], np.float32)
    y = np.array([[2.0, 0.0]], np.float32)
    np.testing.assert_allclose(fusion.cosine_kernel(x, y), [[0.0], [math.sqrt(0.5)]], rtol=1e-6)
    grad = jax.jit(jax.grad(lambda a: jnp.sum(fusion.cosine_kernel(a, y))))(x)
    assert np.all(np.isfinite(grad))


def test_rbf_gradient_matches_finite_differences():
    x, y = _data(6, 3, 2).astype(np.float64), _data(7, 4, 2).astype(np.float64)
    with jax.enable_x64(True):
        check_grads(
            jax.jit(lambda a, b: fusion.rbf_kernel(a, b, gamma=0.7)), (x, y), order=2, modes=["rev"]
        )


def test_combined_kernel_is_weighted_sum():
    xs = [_data(8, 4, 3), _data(9, 4, 2), _data(10, 4, 5)]
    ys = [_data(11, 6, 3), _data(12, 6, 2), _data(13, 6, 5)]
    names = ["linear", "rbf", "cosine"]
    weights = np.array([0.5, 2.0, 1.5], np.float32)
    expected = sum(w * _naive_gram(NAIVE[n], x, y) for w, n, x, y in zip(weights, names, xs, ys))
    kernels = [KERNELS[n] for n in names]
    combined = jax.jit(lambda xs, ys, w: fusion.combined_kernel(kernels, xs, ys, w))
    np.testing.assert_allclose(combined(xs, ys, weights), expected, rtol=2e-5, atol=2e-5)
    unweighted = sum(_naive_gram(NAIVE[n], x, y) for n, x, y in zip(names, xs, ys))
    np.testing.assert_allclose(combined(xs, ys, None), unweighted, rtol=2e-5)


def test_bad_inputs_raise_jaxrec_errors():
    with pytest.raises(DataError, match="feature dimension"):
        fusion.linear_kernel(np.ones((2, 3)), np.ones((2, 4)))
    with pytest.raises(DataError, match="rank-2"):
        fusion.rbf_kernel(np.ones(3), np.ones((2, 3)))
    with pytest.raises(ConfigError, match="gamma"):
        fusion.rbf_kernel(np.ones((2, 3)), np.ones((2, 3)), gamma=-1.0)
    with pytest.raises(ConfigError, match="degree"):
        fusion.polynomial_kernel(np.ones((2, 3)), np.ones((2, 3)), degree=0)
    with pytest.raises(DataError, match="one weight per kernel"):
        fusion.combined_kernel([fusion.linear_kernel], [np.ones((2, 2))], [np.ones((2, 2))], [1.0, 2.0])
    with pytest.raises(DataError, match="one entry per modality"):
        fusion.combined_kernel([fusion.linear_kernel], [np.ones((2, 2))] * 2, [np.ones((2, 2))])


# --- explicit feature maps -------------------------------------------------------------


@pytest.mark.parametrize("degree,coef0,gamma", [(1, 1.0, 0.5), (2, 1.0, 0.5), (3, 2.0, 0.25), (2, 0.0, 1.0), (3, 0.0, None)])
def test_polynomial_features_reproduce_kernel_exactly(degree, coef0, gamma):
    x, y = _data(14, 5, 4), _data(15, 6, 4)
    phi_x = fusion.polynomial_features(x, degree=degree, coef0=coef0, gamma=gamma)
    phi_y = fusion.polynomial_features(y, degree=degree, coef0=coef0, gamma=gamma)
    assert phi_x.shape[1] == fusion.polynomial_feature_dim(4, degree=degree, coef0=coef0)
    g = 0.25 if gamma is None else gamma
    expected = _naive_gram(lambda a, b: (g * np.dot(a, b) + coef0) ** degree, x, y)
    np.testing.assert_allclose(phi_x @ phi_y.T, expected, rtol=3e-5, atol=3e-5)


def test_polynomial_feature_dim_counts_monomials():
    # d = 4, degree 3: monomials of degree <= 3 in 4 variables = C(7, 3) = 35; degree exactly 3 = 20.
    assert fusion.polynomial_feature_dim(4, degree=3, coef0=1.0) == 35
    assert fusion.polynomial_feature_dim(4, degree=3, coef0=0.0) == 20
    brute = sum(1 for e in itertools.product(range(4), repeat=4) if sum(e) <= 3)
    assert brute == 35


def test_polynomial_features_hand_worked_degree_two():
    # (x.y + 1)^2 in 2-d: phi = [1, sqrt2 x1, sqrt2 x2, x1^2, sqrt2 x1 x2, x2^2].
    x1, x2 = 2.0, -3.0
    r2 = math.sqrt(2)
    expected = sorted([1.0, r2 * x1, r2 * x2, x1 * x1, r2 * x1 * x2, x2 * x2])
    phi = fusion.polynomial_features([[x1, x2]], degree=2, coef0=1.0, gamma=1.0)
    np.testing.assert_allclose(sorted(np.asarray(phi)[0]), expected, rtol=1e-6)


def test_polynomial_features_refuse_huge_maps_and_negative_offset():
    with pytest.raises(ConfigError, match="features"):
        fusion.polynomial_features(np.ones((1, 200)), degree=4)
    with pytest.raises(ConfigError, match="coef0"):
        fusion.polynomial_features(np.ones((1, 2)), degree=2, coef0=-1.0)


def test_linear_and_cosine_features_reproduce_kernels():
    x, y = _data(16, 5, 3), _data(17, 4, 3)
    np.testing.assert_allclose(
        fusion.linear_features(x) @ fusion.linear_features(y).T, _naive_gram(NAIVE["linear"], x, y), rtol=1e-5
    )
    np.testing.assert_allclose(
        fusion.cosine_features(x) @ fusion.cosine_features(y).T,
        _naive_gram(NAIVE["cosine"], x, y),
        rtol=1e-5,
        atol=1e-6,
    )


def test_direct_sum_features_reproduce_combined_kernel():
    xs = [_data(18, 5, 3), _data(19, 5, 2), _data(20, 5, 4)]
    ys = [_data(21, 3, 3), _data(22, 3, 2), _data(23, 3, 4)]
    weights = np.array([0.3, 1.7, 0.9], np.float32)

    def phis(zs):
        return [
            fusion.linear_features(zs[0]),
            fusion.polynomial_features(zs[1], degree=3, coef0=1.5, gamma=0.3),
            fusion.cosine_features(zs[2]),
        ]

    features = jax.jit(lambda zs: fusion.direct_sum_features(phis(zs), weights))
    big_x, big_y = features(xs), features(ys)
    expected = sum(
        w * _naive_gram(NAIVE[n], x, y)
        for w, n, x, y in zip(weights, ["linear", "poly", "cosine"], xs, ys)
    )
    np.testing.assert_allclose(big_x @ big_y.T, expected, rtol=3e-5, atol=3e-5)


def _rff_squared_errors(x, gamma, num_features, seeds):
    exact = _naive_gram(lambda a, b: math.exp(-gamma * np.sum((a - b) ** 2)), x, x)

    @jax.jit
    def gram_estimates(keys):
        def one(key):
            params = fusion.init_random_fourier(key, x.shape[1], num_features=num_features, gamma=gamma)
            z = fusion.random_fourier_features(x, params)
            return z @ z.T

        return jax.vmap(one)(keys)

    keys = jnp.stack([jax.random.key(seed) for seed in seeds])
    estimates = np.asarray(gram_estimates(keys), np.float64)
    return np.mean((estimates - exact) ** 2, axis=0), exact


def test_random_fourier_is_unbiased():
    x = _data(25, 6, 3)
    exact = _naive_gram(lambda a, b: math.exp(-0.5 * np.sum((a - b) ** 2)), x, x)

    def estimate(key):
        z = fusion.random_fourier_features(
            x, fusion.init_random_fourier(key, 3, num_features=64, gamma=0.5)
        )
        return z @ z.T

    draws = jax.jit(jax.vmap(estimate))(jax.random.split(jax.random.key(0), 400))
    # 400 draws x 64 features: per-entry standard error at most sqrt(1.5 / 25600) < 0.008.
    np.testing.assert_allclose(np.mean(np.asarray(draws, np.float64), axis=0), exact, atol=0.035)


def test_random_fourier_draw_is_deterministic_and_checked():
    params_a = fusion.init_random_fourier(jax.random.key(3), 4, num_features=8)
    params_b = fusion.init_random_fourier(jax.random.key(3), 4, num_features=8)
    np.testing.assert_array_equal(params_a.frequencies, params_b.frequencies)
    np.testing.assert_array_equal(params_a.phases, params_b.phases)
    assert params_a.frequencies.shape == (4, 8) and params_a.phases.shape == (8,)
    assert np.all((params_a.phases >= 0) & (params_a.phases < 2 * np.pi))
    with pytest.raises(DataError, match="input dimension"):
        fusion.random_fourier_features(np.ones((2, 5)), params_a)
    with pytest.raises(ConfigError, match="num_features"):
        fusion.init_random_fourier(jax.random.key(0), 4, num_features=0)


def test_negative_modality_weights_raise_and_non_negative_keep_their_value():
    xs, ys = [_data(30, 3, 2), _data(31, 3, 4)], [_data(32, 2, 2), _data(33, 2, 4)]
    kernels = [fusion.linear_kernel, fusion.cosine_kernel]
    bad = np.array([1.0, -0.5], np.float32)
    # direct_sum_features took sqrt(-0.5) = NaN; combined_kernel lost positive semi-definiteness.
    with pytest.raises(DataError, match="'weights'.*negative"):
        fusion.direct_sum_features(xs, bad)
    with pytest.raises(DataError, match="'weights'.*negative"):
        fusion.combined_kernel(kernels, xs, ys, bad)
    # Concrete values only: traced weights (under jit) are not inspected.
    jax.jit(lambda w: fusion.combined_kernel(kernels, xs, ys, w))(bad)
    # Non-negative weights, zero included, keep their values (naive loops).
    weights = np.array([0.0, 2.5], np.float32)
    expected = sum(w * _naive_gram(NAIVE[n], x, y) for w, n, x, y in zip(weights, ["linear", "cosine"], xs, ys))
    np.testing.assert_allclose(fusion.combined_kernel(kernels, xs, ys, weights), expected, rtol=2e-5, atol=2e-5)
    features = fusion.direct_sum_features(xs, weights)
    np.testing.assert_allclose(features, np.concatenate([0.0 * xs[0], math.sqrt(2.5) * xs[1]], axis=1), rtol=1e-6)
