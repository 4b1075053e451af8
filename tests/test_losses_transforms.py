"""Every public loss under jax.jit (== eager, no re-trace), jax.vmap (== one call per sample) and check_grads.

Each case is a function of the differentiable arguments only; indices, masks and fixed data
are closed over as numpy arrays so that they take the active float precision.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxrec import losses

B, N_NEG, D = 4, 3, 3
_FIXED = np.random.default_rng(1234)
TARGETS = _FIXED.integers(0, 6, size=B)
MULTI_HOT = (_FIXED.uniform(size=(B, 6)) < 0.5).astype(float)
HITS = np.zeros((B, N_NEG), bool)
HITS[1, 2] = True
WHERE = np.array([True, False, True, True])
WEIGHTS = np.array([0.5, 1.0, 2.0, 1.5])
POS_LOG_Q = np.log(_FIXED.uniform(0.05, 0.3, size=B))
OBSERVED = _FIXED.uniform(size=(B, 5)) < 0.6
SIDE_Z = _FIXED.normal(size=(5, 2))
RATINGS = _FIXED.normal(size=(B, 5))
USERS, POS_ITEMS = _FIXED.integers(0, B, size=6), _FIXED.integers(0, 5, size=6)
NEG_ITEMS = _FIXED.integers(0, 5, size=(6, 2))
VIEWS = [_FIXED.normal(size=(5, 3)), _FIXED.normal(size=(5, 4))]


def _sampled(shape_fns):
    def make(rng):
        return tuple(fn(rng) for fn in shape_fns)

    return make


def normal(*shape):
    return lambda rng: rng.normal(size=shape)


def unit_interval(*shape):
    return lambda rng: rng.uniform(0.05, 0.95, size=shape)


def spd(n):
    def make(rng):
        x = rng.normal(size=(n, n + 1))
        return x @ x.T

    return make


CASES = {
    "bpr": (lambda p, n: losses.bpr(p, n), _sampled([normal(B), normal(B)])),
    "bpr_many_negatives_masked": (
        lambda p, n: losses.bpr(p, n, where=WHERE, weights=WEIGHTS),
        _sampled([normal(B), normal(B, N_NEG)]),
    ),
    "softmax_cross_entropy_index": (
        lambda z: losses.softmax_cross_entropy(z, TARGETS),
        _sampled([normal(B, 6)]),
    ),
    "softmax_cross_entropy_multi_hot": (
        lambda z: losses.softmax_cross_entropy(z, MULTI_HOT, normalize_targets=True, weights=WEIGHTS),
        _sampled([normal(B, 6)]),
    ),
    "sampled_softmax": (
        lambda p, n, log_q: losses.sampled_softmax(p, n, log_q, pos_log_q=POS_LOG_Q, accidental_hits=HITS),
        _sampled([normal(B), normal(B, N_NEG), normal(B, N_NEG)]),
    ),
    "mse": (lambda p, t: losses.mse(p, t, where=OBSERVED), _sampled([normal(B, 5), normal(B, 5)])),
    "rmse": (lambda p, t: losses.rmse(p, t, weights=WEIGHTS), _sampled([normal(B), normal(B)])),
    "binary_cross_entropy": (
        lambda z, y: losses.binary_cross_entropy(z, y),
        _sampled([normal(B, 2), unit_interval(B, 2)]),
    ),
    "info_nce": (lambda a, b: losses.info_nce(a, b, 0.3), _sampled([normal(B, D), normal(B, D)])),
    "info_nce_symmetric": (
        lambda a, b: losses.info_nce(a, b, 0.5, symmetric=True, where=WHERE),
        _sampled([normal(B, D), normal(B, D)]),
    ),
    # Only the online branch: the target's autodiff gradient is zero by design (stop_gradient),
    # which a finite difference would not see.
    "cosine_alignment": (
        lambda o: losses.cosine_alignment(o, VIEWS[0][:B, :D]),
        _sampled([normal(B, D)]),
    ),
    "l2_sum_of_squares": (
        lambda a, b: losses.l2_sum_of_squares(a, b, half=True),
        _sampled([normal(B, D), normal(2, D)]),
    ),
    "l2_mean_norm": (lambda a, b: losses.l2_mean_norm(a, b), _sampled([normal(B, D), normal(B, D)])),
    "l2_sum_of_squares_per_example": (
        lambda a, b: losses.l2_sum_of_squares_per_example(a, b),
        _sampled([normal(B, D), normal(B, D)]),
    ),
    "l2_mean_of_squares": (lambda a, b: losses.l2_mean_of_squares(a, b), _sampled([normal(B, D), normal(2, 5)])),
    "kernel_alignment": (lambda k, t: losses.kernel_alignment(k, t), _sampled([spd(4), spd(4)])),
    "centered_kernel_alignment": (lambda k, t: losses.centered_kernel_alignment(k, t), _sampled([spd(4), spd(4)])),
    "side_mf_objective": (
        lambda u, v, w: losses.side_mf_objective(u, v, w, SIDE_Z, RATINGS, OBSERVED, 0.1),
        _sampled([normal(B, 2), normal(5, 2), normal(2, 2)]),
    ),
    "side_mf_bpr": (
        lambda u, v, w: losses.side_mf_bpr(u, v, w, SIDE_Z, USERS, POS_ITEMS, NEG_ITEMS, 0.1, reduction="mean"),
        _sampled([normal(B, 2), normal(5, 2), normal(2, 2)]),
    ),
    "subspace_objective": (
        lambda p1, p2: losses.subspace_objective([p1, p2], VIEWS, 0.4),
        _sampled([normal(3, 2), normal(4, 2)]),
    ),
    "combine": (
        lambda p, n: losses.combine(
            {"bpr": losses.bpr(p, n), "reg": losses.l2_mean_norm(p[:, None], n[:, None])},
            {"bpr": 1.0, "reg": 0.3},
        )[0],
        _sampled([normal(B), normal(B)]),
    ),
}


def _directional_check(value_and_grad, args, rng, eps=1e-6):
    # Central finite differences of the value along random directions vs <grad, direction>.
    _, grads = value_and_grad(*args)
    for _ in range(2):
        direction = tuple(jnp.asarray(rng.normal(size=a.shape)) for a in args)
        plus, _ = value_and_grad(*(a + eps * d for a, d in zip(args, direction)))
        minus, _ = value_and_grad(*(a - eps * d for a, d in zip(args, direction)))
        numerical = (plus - minus) / (2 * eps)
        analytic = sum(jnp.vdot(g, d) for g, d in zip(grads, direction))
        np.testing.assert_allclose(analytic, numerical, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", sorted(CASES))
def test_jit_vmap_and_gradients(name):
    fn, make_args = CASES[name]
    rng = np.random.default_rng(0)
    # float64 throughout so that finite differences are accurate (the value tests beside each
    # loss run in the default float32).
    with jax.enable_x64(True):
        samples = [tuple(jnp.asarray(a, jnp.float64) for a in make_args(rng)) for _ in range(3)]
        argnums = tuple(range(len(samples[0])))
        value_and_grad = jax.jit(jax.value_and_grad(chex.assert_max_traces(fn, n=1), argnums=argnums))
        values = [value_and_grad(*args)[0] for args in samples]  # same shapes: traced once
        chex.assert_shape(values, ())
        assert values[0].dtype == jnp.float64
        np.testing.assert_allclose(values[0], fn(*samples[0]), rtol=1e-12, atol=1e-12)  # jit == eager
        stacked = tuple(jnp.stack(column) for column in zip(*samples))
        np.testing.assert_allclose(jax.jit(jax.vmap(fn))(*stacked), np.array(values), rtol=1e-12, atol=1e-12)
        _directional_check(value_and_grad, samples[0], rng)


def test_check_grads_forward_and_reverse_mode():
    # jax.test_util.check_grads in both modes, on the two losses with custom numerics
    # (softplus margins; -inf accidental hits inside a logsumexp).
    rng = np.random.default_rng(3)
    with jax.enable_x64(True):
        for name in ("bpr_many_negatives_masked", "sampled_softmax"):
            fn, make_args = CASES[name]
            args = tuple(jnp.asarray(a, jnp.float64) for a in make_args(rng))
            check_grads(jax.jit(fn), args, order=1, modes=("fwd", "rev"), atol=1e-6, rtol=1e-6)
