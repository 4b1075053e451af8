"""More batch reductions under data parallelism (4 fake CPU devices): the losses and regularizers
that ``tests/test_losses_parallel.py`` leaves out, and whole tables that must NOT be reduced over
devices, each equal to a float64 numpy computation on the WHOLE batch (never to the loss itself
on one device).

The batch of 16 rows is split 4 per device; the last 7 rows are padding (weight 0), so device 3
holds only padding and device 2 one real row: a reduction done per device, a count taken per
device, or a negative set limited to one device's rows gives a different number.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec import losses

AXIS = "batch"
N_DEVICES = 4
ROWS = 16
TAU = 0.5


@pytest.fixture(scope="module")
def case():
    if jax.device_count() < N_DEVICES:
        pytest.skip("needs 4 devices (tests/conftest.py sets XLA_FLAGS for 4 fake CPU devices)")
    rng = np.random.default_rng(42)
    data = {
        "a": rng.normal(size=(ROWS, 3)).astype(np.float32),
        "b": rng.normal(size=(ROWS, 3)).astype(np.float32),
        "logits": rng.normal(size=(ROWS, 5)).astype(np.float32),
        "targets": rng.integers(0, 5, ROWS).astype(np.int32),
        "weights": np.where(np.arange(ROWS) < ROWS - 7, rng.uniform(0.5, 2.0, ROWS), 0.0).astype(np.float32),
        "row_ids": np.arange(ROWS, dtype=np.float32),
    }

    table_a, table_b = data["a"][:6], data["b"][:6]  # whole tables, the same on every device

    def step(a, b, logits, targets, weights, row_ids):
        with losses.data_parallel(AXIS):
            gathered, start = losses.batch_gather(row_ids)
            return {
                "sampled_softmax": losses.sampled_softmax(logits[:, 0], logits[:, 1:], -jnp.arange(1.0, 5.0),
                                                          weights=weights),
                "mse": losses.mse(logits[:, 0], logits[:, 1], weights=weights),
                "bce": losses.binary_cross_entropy(logits[:, 0], jax.nn.sigmoid(logits[:, 1]), weights=weights),
                "table_info_nce": losses.info_nce(table_a, table_b, TAU, over_batch=False),
                "table_mean_norm": losses.l2_mean_norm(table_a, table_b),
                "table_mean_of_squares": losses.l2_mean_of_squares(table_a),
                "softmax_ce": losses.softmax_cross_entropy(logits, targets, weights=weights),
                "info_nce_sym": losses.info_nce(a, b, TAU, symmetric=True, weights=weights, mask_negatives=True),
                "info_nce_sym_all": losses.info_nce(a, b, TAU, symmetric=True, weights=weights),
                "cos_align": losses.cosine_alignment(a, b, weights=weights),
                "mean_of_squares": losses.l2_mean_of_squares(a, b[:, :2], over_batch=True),
                "sum_of_squares_full": losses.l2_sum_of_squares_per_example(a, b, half=False, over_batch=True),
                "mean_norm_default_b": losses.l2_mean_norm(a, b, over_batch=True),
                "gathered": gathered,
                "start": start,
            }

    shards = [x.reshape(N_DEVICES, ROWS // N_DEVICES, *x.shape[1:]) for x in data.values()]
    out = jax.pmap(step, axis_name=AXIS, devices=jax.local_devices()[:N_DEVICES])(*shards)
    as_float64 = {k: v.astype(np.float64) if v.dtype.kind == "f" else v for k, v in data.items()}
    return as_float64, jax.tree.map(np.asarray, out)


def _cos_rows(x, y):
    return np.sum(x * y, 1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))


def _every_device_reports(values, expected, name):
    np.testing.assert_allclose(values, np.full(N_DEVICES, expected), rtol=1e-5, err_msg=name)


def test_softmax_cross_entropy_is_the_weighted_mean_over_every_device(case):
    data, out = case
    logits, w = data["logits"], data["weights"]
    log_probs = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    per_row = -log_probs[np.arange(ROWS), data["targets"]]
    _every_device_reports(out["softmax_ce"], np.sum(w * per_row) / np.sum(w), "softmax_ce")


def test_pointwise_and_sampled_softmax_are_weighted_means_over_every_device(case):
    data, out = case
    z, w = data["logits"], data["weights"]
    corrected = np.concatenate([z[:, :1], z[:, 1:] + np.arange(1.0, 5.0)], axis=1)  # s - log q, log q = -1..-4
    per_row = np.log(np.exp(corrected).sum(1)) - z[:, 0]
    _every_device_reports(out["sampled_softmax"], np.sum(w * per_row) / np.sum(w), "sampled_softmax")
    _every_device_reports(out["mse"], np.sum(w * (z[:, 0] - z[:, 1]) ** 2) / np.sum(w), "mse")
    y = 1.0 / (1.0 + np.exp(-z[:, 1]))
    bce = -y * np.log(1.0 / (1.0 + np.exp(-z[:, 0]))) - (1 - y) * np.log(1.0 / (1.0 + np.exp(z[:, 0])))
    _every_device_reports(out["bce"], np.sum(w * bce) / np.sum(w), "bce")


def test_whole_tables_every_device_holds_are_not_reduced_over_devices(case):
    # over_batch=False (the default of the table regularizers): one device's value, not n times it.
    data, out = case
    a, b = data["a"][:6], data["b"][:6]
    a_unit = a / np.linalg.norm(a, axis=1, keepdims=True)
    b_unit = b / np.linalg.norm(b, axis=1, keepdims=True)
    sim = a_unit @ b_unit.T / TAU
    _every_device_reports(out["table_info_nce"], np.mean(np.log(np.exp(sim).sum(1)) - np.diag(sim)), "table_info_nce")
    _every_device_reports(out["table_mean_norm"], (np.sqrt(np.sum(a**2)) + np.sqrt(np.sum(b**2))) / 6,
                          "table_mean_norm")
    _every_device_reports(out["table_mean_of_squares"], np.mean(a**2), "table_mean_of_squares")


def test_symmetric_info_nce_takes_every_devices_rows_as_negatives_in_both_directions(case):
    data, out = case
    w = data["weights"]
    real = np.flatnonzero(w != 0)
    a = data["a"][real] / np.linalg.norm(data["a"][real], axis=1, keepdims=True)
    b = data["b"][real] / np.linalg.norm(data["b"][real], axis=1, keepdims=True)
    sim = a @ b.T / TAU  # sim[i, j]: anchor a_i against b_j, over the real rows of all devices
    forward = np.log(np.exp(sim).sum(1)) - np.diag(sim)
    backward = np.log(np.exp(sim.T).sum(1)) - np.diag(sim)
    per_row = 0.5 * (forward + backward)
    _every_device_reports(out["info_nce_sym"], np.sum(w[real] * per_row) / np.sum(w[real]), "info_nce_sym")
    # Without mask_negatives the padding rows (of every device) are negatives too.
    a = data["a"] / np.linalg.norm(data["a"], axis=1, keepdims=True)
    b = data["b"] / np.linalg.norm(data["b"], axis=1, keepdims=True)
    sim = a @ b.T / TAU
    per_row = 0.5 * (np.log(np.exp(sim).sum(1)) + np.log(np.exp(sim.T).sum(1))) - np.diag(sim)
    _every_device_reports(out["info_nce_sym_all"], np.sum(w * per_row) / np.sum(w), "info_nce_sym_all")


def test_cosine_alignment_is_the_weighted_mean_over_every_device(case):
    data, out = case
    w = data["weights"]
    expected = np.sum(w * (1.0 - _cos_rows(data["a"], data["b"]))) / np.sum(w)
    _every_device_reports(out["cos_align"], expected, "cos_align")


def test_regularizers_over_the_batch_count_every_devices_rows(case):
    data, out = case
    a, b = data["a"], data["b"]
    # MMGCN's mean of squares: each array's mean over ALL its entries (16 x 3 and 16 x 2).
    _every_device_reports(out["mean_of_squares"], np.mean(a**2) + np.mean(b[:, :2] ** 2), "mean_of_squares")
    # half=False: the plain sum of squares over the 16 rows (no 1/2).
    _every_device_reports(out["sum_of_squares_full"], (np.sum(a**2) + np.sum(b**2)) / ROWS, "sum_of_squares_full")
    # EmbLoss with the default divisor: the rows of every device, not of one.
    expected = (np.sqrt(np.sum(a**2)) + np.sqrt(np.sum(b**2))) / ROWS
    _every_device_reports(out["mean_norm_default_b"], expected, "mean_norm_default_b")


def test_batch_gather_returns_all_rows_in_device_order_and_where_this_devices_rows_start(case):
    data, out = case
    for device in range(N_DEVICES):
        np.testing.assert_array_equal(out["gathered"][device], data["row_ids"])
    per_device = ROWS // N_DEVICES
    np.testing.assert_array_equal(out["start"], np.arange(N_DEVICES) * per_device)
    for device in range(N_DEVICES):
        start = int(out["start"][device])
        own = data["row_ids"].reshape(N_DEVICES, per_device)[device]
        np.testing.assert_array_equal(out["gathered"][device][start:start + per_device], own)
