"""KernelEncoding: its feature inner products are the weighted combined kernel over present modalities."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec import fusion
from jaxrec.errors import ConfigError, DataError

SPECS = (
    fusion.KernelSpec("linear"),
    fusion.KernelSpec("polynomial", degree=2, coef0=1.0, gamma=0.5),
    fusion.KernelSpec("cosine"),
    fusion.KernelSpec("rbf", gamma=0.3, num_features=64),
)
DIMS = (3, 4, 5, 2)


def _inputs(seed, n=6):
    rng = np.random.default_rng(seed)
    xs = [rng.normal(size=(n, d)).astype(np.float32) for d in DIMS]
    masks = [rng.random(n) < 0.7 for _ in DIMS]
    masks[0][0] = masks[1][0] = masks[2][0] = masks[3][0] = False  # row 0 has nothing
    masks[0][1] = masks[1][1] = masks[2][1] = masks[3][1] = True  # row 1 has everything
    return xs, masks


def _naive_kernels(x, y, rff):
    """Per-modality numpy Gram blocks; the RBF block uses the same random draw as the module."""
    x = [np.asarray(a, np.float64) for a in x]
    y = [np.asarray(a, np.float64) for a in y]
    linear = x[0] @ y[0].T
    poly = (0.5 * x[1] @ y[1].T + 1.0) ** 2
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    cosine = unit(x[2]) @ unit(y[2]).T
    omega, phase = (np.asarray(rff["frequencies"], np.float64), np.asarray(rff["phases"], np.float64))
    z = lambda a: math.sqrt(2 / omega.shape[1]) * np.cos(a @ omega + phase)  # noqa: E731
    rff_block = z(x[3]) @ z(y[3]).T
    return [linear, poly, cosine, rff_block]


def _expected_gram(xs, masks, weights, rff):
    blocks = _naive_kernels(xs, xs, rff)
    both = [np.outer(m, m) for m in masks]
    return sum(w * b * p for w, b, p in zip(weights, blocks, both))


WEIGHTED = fusion.KernelEncoding(SPECS, init_weights=(0.5, 2.0, 1.5, 0.8))
INIT_WEIGHTED = jax.jit(WEIGHTED.init)  # one compile shared by the tests that need a real init


def _random_variables(module, seed, *args, **kwargs):
    """Variables with the module's structure (traced by eval_shape, so no init compile), random values."""
    shapes = jax.eval_shape(lambda key: module.init(key, *args, **kwargs), jax.random.key(0))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: (0.5 * rng.normal(size=s.shape)).astype(s.dtype), shapes)


def test_feature_inner_products_equal_weighted_masked_combined_kernel():
    xs, masks = _inputs(0)
    module = WEIGHTED
    variables = INIT_WEIGHTED(jax.random.key(0), xs, masks)
    assert set(variables) == {"params", "constants"}  # RFF draw is not a trainable param
    features = jax.jit(module.apply)(variables, xs, masks)
    assert features.shape == (6, 3 + 15 + 5 + 64)
    weights = np.asarray(module.apply(variables, method="modality_weights"))
    np.testing.assert_allclose(weights, [0.5, 2.0, 1.5, 0.8], rtol=1e-5)
    expected = _expected_gram(xs, masks, weights, variables["constants"]["rff_3"])
    np.testing.assert_allclose(features @ features.T, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(features[0], 0.0)  # the item with no modality


def test_exact_kernels_without_masks_match_public_combined_kernel():
    xs, _ = _inputs(1)
    exact_specs = SPECS[:3]
    module = fusion.KernelEncoding(exact_specs)
    variables = _random_variables(module, 1, xs[:3])
    features = jax.jit(module.apply)(variables, xs[:3])
    weights = jax.nn.softplus(variables["params"]["raw_weights"])
    expected = fusion.combined_kernel([s.kernel for s in exact_specs], xs[:3], xs[:3], weights)
    np.testing.assert_allclose(features @ features.T, expected, rtol=1e-4, atol=1e-4)


def test_identity_projection_keeps_the_kernel_and_learned_projection_is_linear():
    xs, masks = _inputs(2)
    width = 3 + 15 + 5 + 64
    module = fusion.KernelEncoding(SPECS, out_dim=width)
    variables = _random_variables(module, 2, xs, masks)
    variables["params"]["projection"]["kernel"] = jnp.eye(width)
    variables["params"]["raw_weights"] = jnp.full((4,), math.log(math.e - 1))  # softplus -> 1
    features = jax.jit(module.apply)(variables, xs, masks)
    weights = np.ones(4)
    expected = _expected_gram(xs, masks, weights, variables["constants"]["rff_3"])
    np.testing.assert_allclose(features @ features.T, expected, rtol=1e-4, atol=1e-4)

    projected = fusion.KernelEncoding(SPECS, out_dim=7)
    projected_vars = _random_variables(projected, 3, xs, masks)
    raw = jax.jit(fusion.KernelEncoding(SPECS).apply)(
        {"params": {"raw_weights": projected_vars["params"]["raw_weights"]}, "constants": projected_vars["constants"]},
        xs,
        masks,
    )
    np.testing.assert_allclose(
        jax.jit(projected.apply)(projected_vars, xs, masks),
        raw @ projected_vars["params"]["projection"]["kernel"],
        rtol=1e-5,
        atol=1e-5,
    )


def test_random_features_fixed_after_init_and_seeded():
    xs, masks = _inputs(3)
    module = WEIGHTED
    a = INIT_WEIGHTED(jax.random.key(5), xs, masks)
    b = INIT_WEIGHTED(jax.random.key(5), xs, masks)
    c = INIT_WEIGHTED(jax.random.key(6), xs, masks)
    np.testing.assert_array_equal(a["constants"]["rff_3"]["frequencies"], b["constants"]["rff_3"]["frequencies"])
    assert not np.allclose(a["constants"]["rff_3"]["frequencies"], c["constants"]["rff_3"]["frequencies"])
    # Gradients reach only the trainable weights; the draw is an input of apply, not a param.
    grads = jax.jit(jax.grad(lambda p: jnp.sum(module.apply({"params": p, "constants": a["constants"]}, xs, masks) ** 2)))(
        a["params"]
    )
    assert set(grads) == {"raw_weights"}
    assert np.all(np.isfinite(grads["raw_weights"]))


def test_missing_rows_with_nan_placeholders_are_inert():
    xs, masks = _inputs(4)
    module = fusion.KernelEncoding(SPECS, out_dim=5)
    variables = _random_variables(module, 4, xs, masks)
    poisoned = [np.where(m[:, None], x, np.nan) for x, m in zip(xs, masks)]
    clean = jax.jit(module.apply)(variables, xs, masks)
    np.testing.assert_allclose(jax.jit(module.apply)(variables, poisoned, masks), clean, rtol=1e-6)
    grads = jax.jit(jax.grad(lambda p: jnp.sum(module.apply({**variables, "params": p}, poisoned, masks) ** 2)))(
        variables["params"]
    )
    chex_finite = jax.tree.leaves(jax.tree.map(lambda g: bool(np.all(np.isfinite(g))), grads))
    assert all(chex_finite)


def test_weights_learn_toward_the_informative_kernel_under_jit():
    """A tiny regression: the target Gram is 3 * linear kernel, so the linear weight should grow."""
    rng = np.random.default_rng(7)
    xs = [rng.normal(size=(12, 3)).astype(np.float32), rng.normal(size=(12, 3)).astype(np.float32)]
    module = fusion.KernelEncoding((fusion.KernelSpec("linear"), fusion.KernelSpec("cosine")))
    variables = {"params": {"raw_weights": jnp.full((2,), math.log(math.e - 1))}}  # both weights 1
    target = 3.0 * xs[0] @ xs[0].T

    @jax.jit
    def loss(params):
        f = module.apply({"params": params}, xs)
        return jnp.mean((f @ f.T - target) ** 2)

    @jax.jit
    def train(params):
        def step(_, p):
            return jax.tree.map(lambda a, g: a - 0.05 * g, p, jax.grad(loss)(p))

        return jax.lax.fori_loop(0, 600, step, params)

    params = train(variables["params"])
    weights = np.asarray(jax.nn.softplus(params["raw_weights"]))
    assert weights[0] == pytest.approx(3.0, rel=0.05) and weights[1] < 0.25  # both start at 1


def test_bad_configs_raise():
    with pytest.raises(ConfigError, match="unknown kernel kind"):
        fusion.KernelSpec("laplacian")
    with pytest.raises(ConfigError, match="coef0"):
        fusion.KernelSpec("polynomial", coef0=-1.0)
    xs, _ = _inputs(0)
    with pytest.raises(DataError, match="one modality array per kernel spec"):
        fusion.KernelEncoding(SPECS).init(jax.random.key(0), xs[:2])
    with pytest.raises(DataError, match="row mask"):
        fusion.KernelEncoding(SPECS).init(jax.random.key(0), xs, [np.ones(3, bool)] * 4)
    with pytest.raises(ConfigError, match="init_weights"):
        fusion.KernelEncoding(SPECS, init_weights=(1.0, 0.0, 1.0, 1.0)).init(jax.random.key(0), xs)


def test_projection_by_blocks_is_the_dense_layer_on_the_direct_sum():
    """The projection is computed per modality block (no concatenation); its parameters, their
    initial values and the gradients in them are those of ``nn.Dense`` on the direct sum
    (checked against float64 NumPy of the concatenated form)."""
    import flax.linen as nn

    xs, masks = _inputs(5, n=9)
    module = fusion.KernelEncoding(SPECS, out_dim=7, use_bias=True, init_weights=(0.5, 2.0, 1.5, 0.8))
    key = jax.random.key(11)
    variables = module.init(key, xs, masks)
    width = 3 + 15 + 5 + 64

    class DenseOnTheDirectSum(nn.Module):  # the earlier form's parameter path: a Dense named "projection"
        @nn.compact
        def __call__(self, phi):
            return nn.Dense(7, name="projection")(phi)

    reference = DenseOnTheDirectSum().init(key, jnp.zeros((1, width)))["params"]["projection"]
    params = variables["params"]
    assert jax.tree.map(jnp.shape, params["projection"]) == {"kernel": (width, 7), "bias": (7,)}
    np.testing.assert_array_equal(params["projection"]["kernel"], reference["kernel"])
    np.testing.assert_array_equal(params["projection"]["bias"], reference["bias"])

    raw = fusion.KernelEncoding(SPECS)  # the direct sum itself, (n, width)
    cotangent = np.random.default_rng(5).normal(size=(9, 7))

    def loss(p):
        return jnp.sum(module.apply({**variables, "params": p}, xs, masks) * cotangent)

    grads = jax.jit(jax.grad(loss))(params)
    phi = np.asarray(raw.apply({"params": {"raw_weights": params["raw_weights"]},
                                "constants": variables["constants"]}, xs, masks), np.float64)
    kernel = np.asarray(params["projection"]["kernel"], np.float64)
    np.testing.assert_allclose(module.apply(variables, xs, masks), phi @ kernel, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grads["projection"]["kernel"], phi.T @ cotangent, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(grads["projection"]["bias"], cotangent.sum(0), rtol=1e-5, atol=1e-5)
    # d/d theta_m of sqrt(softplus(theta_m)) * phi_m A_m: the block's share over 2 w_m, times sigmoid(theta_m).
    theta = np.asarray(params["raw_weights"], np.float64)
    w = np.log1p(np.exp(theta))
    starts = np.cumsum([0, 3, 15, 5, 64])
    block_share = [np.sum((phi[:, a:b] @ kernel[a:b]) * cotangent) for a, b in zip(starts[:-1], starts[1:])]
    want = np.asarray(block_share) / (2 * w) / (1 + np.exp(-theta))
    np.testing.assert_allclose(grads["raw_weights"], want, rtol=1e-4, atol=1e-5)
