"""Batch reductions under data parallelism: every loss over a batch split across 4 (fake CPU)
devices equals its value on the whole batch, and the devices' mean gradient is its gradient.

The references are independent: numpy on the whole batch for the values, ``jax.grad`` of the
one-device function for the gradients.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec import losses

AXIS = "batch"
N_DEVICES = 4


@pytest.fixture(scope="module", autouse=True)
def _devices():
    if jax.device_count() < N_DEVICES:
        pytest.skip("needs 4 devices (tests/conftest.py sets XLA_FLAGS for 4 fake CPU devices)")


def _data(seed=0, rows=16, dim=3):
    rng = np.random.default_rng(seed)
    theta = rng.normal(size=(dim, dim)).astype(np.float32)
    x = rng.normal(size=(rows, dim)).astype(np.float32)
    y = rng.normal(size=(rows, dim)).astype(np.float32)
    # The last 7 rows are padding: device 3 holds none but padding, device 2 one real row.
    weights = (np.arange(rows) < rows - 7).astype(np.float32)
    return theta, x, y, weights


def _objective(theta, x, y, weights):
    """Every batch reduction kind at once: a weighted BPR mean, MMRec's EmbLoss (norms, not
    squared), a per-example squared sum, InfoNCE with in-batch negatives, a weighted mean."""
    u, v = x @ theta, jnp.tanh(y @ theta)
    pos, neg = jnp.sum(u * v, -1), jnp.sum(u * v * v, -1)[:, None]  # row-local scores
    count = jnp.maximum(losses.batch_sum(weights), 1.0)
    return {"bpr": losses.bpr(pos, neg, weights=weights),
            "emb": losses.l2_mean_norm(u * weights[:, None], v * weights[:, None], batch_size=count, over_batch=True),
            "squares": losses.l2_sum_of_squares_per_example(u * weights[:, None], batch_size=count, over_batch=True),
            "info_nce": losses.info_nce(u, v, 0.5, weights=weights, mask_negatives=True),
            "mean": losses.batch_mean(jnp.sum(u, -1), weights),
            "table": losses.l2_sum_of_squares(theta)}  # replicated: not a batch reduction


def _total(terms):
    return sum(terms.values())


def _sharded(fn, theta, *rows):
    stack = [a.reshape(N_DEVICES, -1, *a.shape[1:]) for a in rows]

    def step(theta, *shard):
        with losses.data_parallel(AXIS):
            (_, terms), grads = jax.value_and_grad(lambda t: (_total(fn(t, *shard)), fn(t, *shard)),
                                                   has_aux=True)(theta)
        return terms, jax.lax.pmean(grads, AXIS)

    terms, grads = jax.pmap(step, axis_name=AXIS, devices=jax.local_devices()[:N_DEVICES])(
        jnp.stack([theta] * N_DEVICES), *stack)
    return jax.tree.map(lambda t: np.asarray(t), terms), np.asarray(grads)


def test_outside_a_parallel_step_batch_sum_is_a_plain_sum():
    x = np.arange(12.0).reshape(3, 4)
    assert float(losses.batch_sum(x)) == x.sum()
    assert float(losses.batch_mean(np.array([1.0, 3.0, 100.0]), np.array([1.0, 1.0, 0.0]))) == 2.0
    rows, start = losses.batch_gather(x)
    assert rows is not None and np.array_equal(np.asarray(rows), x) and start == 0


def test_values_match_numpy_on_the_whole_batch():
    theta, x, y, w = _data()
    terms, _ = _sharded(_objective, theta, x, y, w)
    u, v = x @ theta, np.tanh(y @ theta)
    real = w > 0
    margin = (u * v).sum(1) - (u * v * v).sum(1)
    np.testing.assert_allclose(terms["bpr"][0], np.mean(np.logaddexp(0, -margin[real])), rtol=1e-5)
    emb = (np.linalg.norm(u[real]) + np.linalg.norm(v[real])) / real.sum()
    np.testing.assert_allclose(terms["emb"][0], emb, rtol=1e-5)
    np.testing.assert_allclose(terms["squares"][0], 0.5 * (u[real] ** 2).sum() / real.sum(), rtol=1e-5)
    a = u[real] / np.linalg.norm(u[real], axis=1, keepdims=True)
    b = v[real] / np.linalg.norm(v[real], axis=1, keepdims=True)
    logits = a @ b.T / 0.5
    info_nce = np.mean(np.log(np.exp(logits).sum(1)) - np.diag(logits))
    np.testing.assert_allclose(terms["info_nce"][0], info_nce, rtol=1e-5)
    np.testing.assert_allclose(terms["mean"][0], u[real].sum(1).mean(), rtol=1e-5)
    for name, values in terms.items():  # every device reports the same, whole-batch value
        np.testing.assert_allclose(values, values[0], rtol=1e-6, err_msg=name)


def test_mean_of_device_gradients_is_the_whole_batch_gradient():
    theta, x, y, w = _data(seed=1)
    expected = jax.grad(lambda t: _total(_objective(t, x, y, w)))(theta)
    _, grads = _sharded(_objective, theta, x, y, w)
    for device in range(N_DEVICES):
        np.testing.assert_allclose(grads[device], np.asarray(expected), rtol=2e-5, atol=1e-6)


def test_the_data_tells_a_per_device_reduction_from_the_whole_batch_one():
    # A guard on this file's data, not on jaxrec: the exactness tests above could not catch a
    # reduction done per device (EmbLoss per device, averaged over devices) if the two gave the
    # same number on this data. They differ by more than 10% here (and a device holding only
    # padding would divide 0 by 0).
    theta, x, y, w = _data()
    u = x @ theta
    shards = np.split(np.arange(len(w)), N_DEVICES)
    per_device = [np.linalg.norm(u[s][w[s] > 0]) / max(w[s].sum(), 1) for s in shards]
    whole = np.linalg.norm(u[w > 0]) / w.sum()
    assert abs(np.mean(per_device) - whole) > 0.1 * whole
