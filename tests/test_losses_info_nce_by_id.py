"""``losses.info_nce_by_id``: InfoNCE of table rows picked by id, computed on the distinct rows.

References, each independent of the function under test: MMRec's MGCN ``InfoNCE`` written as a
float64 loop over the gathered batch rows (repeated ids repeated, padding rows dropped when they
are nobody's negatives), and for gradients ``losses.info_nce`` of the gathered (B, d) rows, a
different computation of the same sum (a (B, B) logits matrix, no counts).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec import losses
from jaxrec.errors import ConfigError, DataError

AXIS = "batch"
N_DEVICES = 4


def _needs_devices():
    if jax.device_count() < N_DEVICES:
        pytest.skip("needs 4 devices (tests/conftest.py sets XLA_FLAGS for 4 fake CPU devices)")


def _loop_reference(a, b, ids, temperature, weights, mask_negatives):
    """The weighted mean over rows of -log(exp(cos_bb / t) / sum_c exp(cos_bc / t)), in float64."""
    a, b = np.asarray(a, np.float64)[ids], np.asarray(b, np.float64)[ids]
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    negatives = [c for c in range(len(ids)) if not mask_negatives or weights[c] != 0]
    total = weight_sum = 0.0
    for r in range(len(ids)):
        if weights[r] == 0:
            continue
        denominator = sum(math.exp(float(a[r] @ b[c]) / temperature) for c in negatives)
        total += weights[r] * -(float(a[r] @ b[r]) / temperature - math.log(denominator))
        weight_sum += weights[r]
    return total / weight_sum


def _case(n_rows=7, batch=16, dim=5, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n_rows, dim)).astype(np.float32)
    b = (a + 0.7 * rng.normal(size=(n_rows, dim))).astype(np.float32)
    ids = rng.integers(0, n_rows - 1, batch)  # repeats; the last row's id never occurs
    weights = rng.uniform(0.5, 2.0, batch).astype(np.float32)
    weights[[3, 9]] = 0.0  # padding rows
    return a, b, ids, weights


@pytest.mark.parametrize("temperature", [0.2, 0.01])  # the bound shift and the row-maximum path
@pytest.mark.parametrize("mask_negatives", [True, False])
def test_value_matches_mmrec_loop_on_the_gathered_rows(temperature, mask_negatives):
    a, b, ids, weights = _case()
    value = losses.info_nce_by_id(a, b, ids, temperature, weights=weights, mask_negatives=mask_negatives)
    expected = _loop_reference(a, b, ids, temperature, weights, mask_negatives)
    np.testing.assert_allclose(float(value), expected, rtol=2e-5)


@pytest.mark.parametrize("temperature", [0.2, 0.01])
def test_gradients_match_the_gathered_form(temperature):
    a, b, ids, weights = _case(seed=1)

    def by_id(a, b):
        return losses.info_nce_by_id(a, b, ids, temperature, weights=weights, mask_negatives=True)

    def gathered(a, b):
        return losses.info_nce(a[ids], b[ids], temperature, weights=weights, mask_negatives=True)

    got, expected = jax.grad(by_id, argnums=(0, 1))(a, b), jax.grad(gathered, argnums=(0, 1))(a, b)
    for g, e in zip(got, expected):
        assert np.abs(np.asarray(e)).max() > 1e-3  # the gradients are not trivially zero
        np.testing.assert_allclose(np.asarray(g), np.asarray(e), rtol=2e-4, atol=2e-6)
    # Rows no batch row holds (id 6) get no gradient either way.
    np.testing.assert_array_equal(np.asarray(got[0])[6], 0.0)


def test_a_table_larger_than_the_batch_is_the_gathered_form_itself():
    a, b, ids, weights = _case(n_rows=40, batch=16)
    value = losses.info_nce_by_id(a, b, ids, 0.2, weights=weights, mask_negatives=True)
    same = losses.info_nce(a[ids], b[ids], 0.2, weights=weights, mask_negatives=True)
    assert float(value) == float(same)
    np.testing.assert_allclose(float(value), _loop_reference(a, b, ids, 0.2, weights, True), rtol=2e-5)


def test_without_weights_every_row_counts_once():
    a, b, ids, _ = _case(seed=2)
    expected = _loop_reference(a, b, ids, 0.5, np.ones(len(ids)), False)
    np.testing.assert_allclose(float(losses.info_nce_by_id(a, b, ids, 0.5)), expected, rtol=2e-5)


def test_traced_temperature_takes_each_path_as_a_number_does():
    a, b, ids, weights = _case(seed=3)
    run = jax.jit(lambda t: losses.info_nce_by_id(a, b, ids, t, weights=weights, mask_negatives=True))
    for temperature in (0.2, 0.01):
        np.testing.assert_allclose(float(run(jnp.float32(temperature))),
                                   _loop_reference(a, b, ids, temperature, weights, True), rtol=2e-5)


def test_cosine_logsumexp_multiplicities_equal_repeated_columns():
    rng = np.random.default_rng(4)
    logits = rng.uniform(-1, 1, (3, 4)).astype(np.float32)
    counts = np.array([2.0, 0.0, 1.0, 3.0], np.float32)
    repeated = np.repeat(logits, counts.astype(int), axis=1).astype(np.float64)
    for temperature in (0.5, 0.01):  # both shifts
        x = logits / temperature
        expected = np.log(np.exp(repeated / temperature).sum(1))
        got = losses.cosine_logsumexp(jnp.asarray(x), temperature, keep=jnp.asarray(counts))
        np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5)


def test_bad_input_is_named():
    a, b, ids, _ = _case()
    with pytest.raises(ConfigError, match="temperature"):
        losses.info_nce_by_id(a, b, ids, 0.0)
    with pytest.raises(DataError, match="ids.*must be integers"):
        losses.info_nce_by_id(a, b, ids.astype(np.float32), 0.2)
    with pytest.raises(DataError, match="ids"):
        losses.info_nce_by_id(a, b, ids[:, None], 0.2)
    with pytest.raises(DataError, match="b"):
        losses.info_nce_by_id(a, b[:, :3], ids, 0.2)


def test_under_pmap_equals_the_whole_batch_on_one_device():
    _needs_devices()
    # 32 rows over 4 devices: 8 per device, table of 7 rows (the table form on every device);
    # device 3 holds padding only, so its anchors weigh nothing but the others' negatives count.
    a, b, ids, weights = _case(batch=32, seed=5)
    weights[24:] = 0.0

    def loss(a, b, ids, weights):
        return losses.info_nce_by_id(a, b, ids, 0.2, weights=weights, mask_negatives=True)

    def step(a, b, ids, weights):
        with losses.data_parallel(AXIS):
            value, grads = jax.value_and_grad(loss, argnums=(0, 1))(a, b, ids, weights)
        return value, jax.lax.pmean(grads, AXIS)

    value, grads = jax.pmap(step, axis_name=AXIS, in_axes=(None, None, 0, 0),
                            devices=jax.local_devices()[:N_DEVICES])(
        a, b, ids.reshape(N_DEVICES, -1), weights.reshape(N_DEVICES, -1))
    expected = _loop_reference(a, b, ids, 0.2, weights, True)
    np.testing.assert_allclose(np.asarray(value), expected, rtol=2e-5)
    one_device = jax.grad(loss, argnums=(0, 1))(a, b, ids, weights)
    for g, e in zip(grads, one_device):
        np.testing.assert_allclose(np.asarray(g)[0], np.asarray(e), rtol=2e-4, atol=2e-6)


def test_rows_every_device_holds_alike_are_not_summed_over_devices():
    """over_batch=False (the contrastive model's ``contrast_rows``): every device holds the same
    rows, so neither the counts nor the mean run over the devices."""
    _needs_devices()
    a, b, ids, weights = _case(seed=6)

    def step(ids, weights):
        with losses.data_parallel(AXIS):
            return losses.info_nce_by_id(a, b, ids, 0.2, weights=weights, mask_negatives=True, over_batch=False)

    value = jax.pmap(step, axis_name=AXIS, devices=jax.local_devices()[:N_DEVICES])(
        np.stack([ids] * N_DEVICES), np.stack([weights] * N_DEVICES))
    np.testing.assert_allclose(np.asarray(value), _loop_reference(a, b, ids, 0.2, weights, True), rtol=2e-5)


def test_out_of_range_or_negative_ids_raise_and_valid_ids_keep_their_value():
    a, b, ids, _ = _case()
    n = a.shape[0]
    for bad in (np.append(ids, n), np.append(ids, -1)):  # past the table / negative
        with pytest.raises(DataError, match="'ids'.*index out of range"):
            losses.info_nce_by_id(a, b, bad, 0.2)
    table = jnp.eye(3)  # the reported case: id 7 of a 3-row table was silently dropped
    with pytest.raises(DataError, match="'ids'"):
        losses.info_nce_by_id(table, table, jnp.array([0, 1, 2, 7]), 0.5)
    with pytest.raises(DataError, match="'ids'.*integers"):
        losses.info_nce_by_id(table, table, jnp.array([0.0, 1.0]), 0.5)
    # Valid ids: the independent float64 loop (the docstring's value 0.5856 for eye(3)).
    np.testing.assert_allclose(losses.info_nce_by_id(table, table, jnp.array([0, 2, 2]), 0.5),
                               _loop_reference(np.eye(3), np.eye(3), np.array([0, 2, 2]), 0.5, np.ones(3), False),
                               rtol=1e-5)
    np.testing.assert_allclose(losses.info_nce_by_id(a, b, ids, 0.2),
                               _loop_reference(a, b, ids, 0.2, np.ones(len(ids)), False), rtol=2e-5)
    # Under jit the ids are traced and cannot be inspected: no check, the same value.
    run = jax.jit(lambda i: losses.info_nce_by_id(a, b, i, 0.2))
    np.testing.assert_allclose(run(ids), _loop_reference(a, b, ids, 0.2, np.ones(len(ids)), False), rtol=2e-5)


def test_weights_of_the_wrong_length_raise():
    a, b, ids, _ = _case()
    with pytest.raises(DataError, match="'weights'"):
        losses.info_nce_by_id(a, b, ids, 0.2, weights=np.ones(len(ids) + 1))
