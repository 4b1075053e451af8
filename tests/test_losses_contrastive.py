"""InfoNCE and BM3 cosine alignment against numpy loops."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec import losses
from jaxrec.errors import ConfigError, DataError


def _cosine(x, y):
    return float(np.dot(x, y) / (np.linalg.norm(x) * np.linalg.norm(y)))


def info_nce_reference(a, b, temperature):
    # Written as MMRec's MGCN InfoNCE: -log(exp(pos / t) / sum_j exp(sim_ij / t)).
    rows = []
    for i in range(len(a)):
        positive = math.exp(_cosine(a[i], b[i]) / temperature)
        total = sum(math.exp(_cosine(a[i], b[j]) / temperature) for j in range(len(b)))
        rows.append(-math.log(positive / total))
    return np.array(rows)


def test_info_nce_matches_loop():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(6, 4)), rng.normal(size=(6, 4))
    expected = info_nce_reference(a, b, 0.2)
    np.testing.assert_allclose(losses.info_nce(a, b, 0.2), expected.mean(), rtol=1e-5)
    np.testing.assert_allclose(losses.info_nce(a, b, 0.2, reduction="none"), expected, rtol=1e-5)


def test_info_nce_symmetric_averages_both_directions():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    expected = 0.5 * (info_nce_reference(a, b, 0.5) + info_nce_reference(b, a, 0.5))
    np.testing.assert_allclose(losses.info_nce(a, b, 0.5, symmetric=True), expected.mean(), rtol=1e-5)


def test_info_nce_is_scale_invariant_and_safe_on_zero_rows():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    scaled = a * np.array([[2.0], [0.1], [7.0], [1.0]])
    np.testing.assert_allclose(losses.info_nce(scaled, b, 0.3), losses.info_nce(a, b, 0.3), rtol=1e-5)
    a[1] = 0.0  # a zero row has cosine 0 to everything: its loss is log(B)
    per_row = losses.info_nce(a, b, 0.3, reduction="none")
    np.testing.assert_allclose(per_row[1], math.log(4), rtol=1e-6)
    grad = jax.jit(jax.grad(lambda x: losses.info_nce(x, b, 0.3)))(jnp.asarray(a))
    assert np.all(np.isfinite(grad))


def test_info_nce_mask_keeps_masked_rows_as_negatives():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    where = np.array([True, True, False, True, False])
    expected = info_nce_reference(a, b, 0.2)[where].mean()
    np.testing.assert_allclose(losses.info_nce(a, b, 0.2, where=where), expected, rtol=1e-5)


def masked_info_nce_reference(a, b, temperature, keep):
    # Rows with keep False are neither anchors nor anyone's negatives (mask_negatives=True).
    rows = [i for i in range(len(a)) if keep[i]]
    per_row = []
    for i in rows:
        positive = math.exp(_cosine(a[i], b[i]) / temperature)
        total = sum(math.exp(_cosine(a[i], b[j]) / temperature) for j in rows)
        per_row.append(-math.log(positive / total))
    return np.array(per_row)


@pytest.mark.parametrize("temperature", [0.2, 0.02])  # bound-shifted sum, and the row-maximum path
def test_info_nce_mask_negatives_matches_loop_both_directions(temperature):
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(7, 4)), rng.normal(size=(7, 4))
    weights = np.array([1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0])
    keep = weights != 0
    forward = masked_info_nce_reference(a, b, temperature, keep)
    backward = masked_info_nce_reference(b, a, temperature, keep)
    np.testing.assert_allclose(losses.info_nce(a, b, temperature, weights=weights, mask_negatives=True),
                               forward.mean(), rtol=1e-5)
    np.testing.assert_allclose(losses.info_nce(a, b, temperature, weights=weights, mask_negatives=True,
                                               symmetric=True), (0.5 * (forward + backward)).mean(), rtol=1e-5)


def test_info_nce_gradient_matches_a_log_softmax_formulation():
    """The gradient of the bound-shifted, mask-as-factor sum against an independent form:
    log_softmax over the masked cosine logits (masked columns at -inf), diagonal picked."""
    rng = np.random.default_rng(6)
    a, b = jnp.asarray(rng.normal(size=(6, 5)), jnp.float32), jnp.asarray(rng.normal(size=(6, 5)), jnp.float32)
    weights = jnp.asarray([1.0, 1.0, 0.0, 1.0, 1.0, 0.0])
    keep = weights != 0

    def reference(x, y):
        xn = x / jnp.linalg.norm(x, axis=1, keepdims=True)
        yn = y / jnp.linalg.norm(y, axis=1, keepdims=True)
        logits = jnp.where(keep[None, :], xn @ yn.T / 0.2, -jnp.inf)
        per_row = -jnp.diagonal(jax.nn.log_softmax(logits, axis=1))
        return jnp.sum(jnp.where(keep, per_row, 0.0)) / jnp.sum(keep)

    def ours(x, y):
        return losses.info_nce(x, y, 0.2, weights=weights, mask_negatives=True)

    np.testing.assert_allclose(ours(a, b), reference(a, b), rtol=1e-5)
    for mine, theirs in zip(jax.grad(ours, argnums=(0, 1))(a, b), jax.grad(reference, argnums=(0, 1))(a, b)):
        np.testing.assert_allclose(mine, theirs, rtol=1e-4, atol=1e-6)


def test_cosine_logsumexp_paths_agree_and_stay_finite():
    rng = np.random.default_rng(7)
    cosines = np.clip(rng.normal(size=(4, 9)) * 0.5, -1.0, 1.0)
    keep = rng.random(9) < 0.6
    keep[0] = True
    for tau in (0.5, 0.2, 0.05):  # the bound-shifted sum, against a float64 log-sum-exp
        expected = np.log(np.sum(np.exp(cosines / tau) * keep, axis=1))
        got = losses.cosine_logsumexp(jnp.asarray(cosines / tau, jnp.float32), tau, keep=keep)
        np.testing.assert_allclose(got, expected, rtol=1e-5)
        # A traced temperature (a batched search's per-trial value) takes the path the Python
        # number takes, chosen at run time: the same bits as the Python number's jitted result.
        logits = jnp.asarray(cosines / tau, jnp.float32)
        traced = jax.jit(lambda x, t: losses.cosine_logsumexp(x, t, keep=keep))(logits, np.float32(tau))
        fixed = jax.jit(lambda x: losses.cosine_logsumexp(x, tau, keep=keep))(logits)
        np.testing.assert_allclose(traced, expected, rtol=1e-5)
        np.testing.assert_array_equal(traced, fixed)
    low = np.full((2, 5), -1.0)  # every cosine -1 at tau 0.01: e^(-200) per term, still finite
    value = losses.cosine_logsumexp(jnp.asarray(low / 0.01, jnp.float32), 0.01)
    np.testing.assert_allclose(value, -100.0 + math.log(5), rtol=1e-6)
    nothing_kept = losses.cosine_logsumexp(jnp.zeros((1, 3)), 0.2, keep=np.zeros(3, bool))
    assert np.all(np.isfinite(nothing_kept))


@pytest.mark.parametrize("tau", [0.2, 0.05, 0.01])
def test_cosine_logsumexp_stays_finite_when_every_cosine_of_a_row_is_low(tau):
    cosines = np.random.default_rng(0).uniform(-1.0, -0.5, size=(4, 7))  # no row near the bound 1/tau
    value = np.asarray(losses.cosine_logsumexp(jnp.asarray(cosines / tau, jnp.float32), tau))
    traced = jax.jit(losses.cosine_logsumexp)(jnp.asarray(cosines / tau, jnp.float32), np.float32(tau))
    np.testing.assert_array_equal(traced, value)  # below tau 1/40 too: the row-maximum path, chosen at run time
    logits = cosines / tau
    top = logits.max(axis=1)
    expected = top + np.log(np.exp(logits - top[:, None]).sum(axis=1))  # float64 reference
    assert np.all(np.isfinite(value))
    np.testing.assert_allclose(value, expected, rtol=1e-5)


def test_info_nce_errors():
    with pytest.raises(ConfigError, match="temperature"):
        losses.info_nce(jnp.ones((2, 2)), jnp.ones((2, 2)), 0.0)
    with pytest.raises(DataError, match="b"):
        losses.info_nce(jnp.ones((2, 2)), jnp.ones((3, 2)), 0.1)


def test_cosine_alignment_is_one_minus_mean_cosine():
    rng = np.random.default_rng(4)
    online, target = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    expected = 1.0 - np.mean([_cosine(online[i], target[i]) for i in range(6)])
    np.testing.assert_allclose(losses.cosine_alignment(online, target), expected, rtol=1e-5)
    np.testing.assert_allclose(losses.cosine_alignment(online, 3.0 * online), 0.0, atol=1e-6)
    np.testing.assert_allclose(losses.cosine_alignment(online, -online), 2.0, rtol=1e-6)


def test_cosine_alignment_gradient_to_target_is_exactly_zero():
    rng = np.random.default_rng(5)
    online, target = jnp.asarray(rng.normal(size=(4, 3))), jnp.asarray(rng.normal(size=(4, 3)))
    grad_online, grad_target = jax.jit(jax.grad(losses.cosine_alignment, argnums=(0, 1)))(online, target)
    np.testing.assert_array_equal(grad_target, np.zeros((4, 3)))
    assert np.abs(np.asarray(grad_online)).max() > 1e-3
    # Online gradient: -(1/B) d cos / d o = -(1/B) (t_hat - cos * o_hat) / |o|.
    o, t = np.asarray(online, np.float64), np.asarray(target, np.float64)
    o_norm, t_norm = np.linalg.norm(o, axis=1, keepdims=True), np.linalg.norm(t, axis=1, keepdims=True)
    cos = np.sum(o * t, axis=1, keepdims=True) / (o_norm * t_norm)
    expected = -(t / t_norm - cos * o / o_norm) / o_norm / 4
    np.testing.assert_allclose(grad_online, expected, rtol=1e-4, atol=1e-6)


def test_info_nce_temperature_must_be_a_scalar():
    eye = jnp.eye(2)
    with pytest.raises(ConfigError, match="temperature must be a scalar"):
        losses.info_nce(eye, eye, jnp.array([0.5, 0.5]))
    with pytest.raises(ConfigError, match="temperature must be a scalar"):
        losses.info_nce(eye, eye, np.array([0.5]))
    with pytest.raises(ConfigError, match="temperature must be a scalar"):
        losses.info_nce_by_id(eye, eye, jnp.array([0, 1]), jnp.array([0.5, 0.5]))
    # A number, a 0-d array and a traced scalar keep the value log(1 + e^(-1/0.5)).
    expected = math.log(1.0 + math.exp(-2.0))
    np.testing.assert_allclose(losses.info_nce(eye, eye, 0.5), expected, rtol=1e-5)
    np.testing.assert_allclose(losses.info_nce(eye, eye, jnp.float32(0.5)), expected, rtol=1e-5)
    np.testing.assert_allclose(jax.jit(lambda t: losses.info_nce(eye, eye, t))(0.5), expected, rtol=1e-5)


def test_info_nce_and_cosine_alignment_where_weights_must_be_per_row():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    with pytest.raises(DataError, match="'where'"):
        losses.info_nce(a, b, 0.2, where=np.ones(3, bool))
    with pytest.raises(DataError, match="'weights'"):  # checked before mask_negatives uses them
        losses.info_nce(a, b, 0.2, weights=np.ones(2), mask_negatives=True)
    with pytest.raises(DataError, match="'weights'"):
        losses.cosine_alignment(a, b, weights=np.ones(1))
    where = np.array([True, False, True, True])
    expected = info_nce_reference(a, b, 0.2)[where].mean()
    np.testing.assert_allclose(losses.info_nce(a, b, 0.2, where=where), expected, rtol=1e-5)
