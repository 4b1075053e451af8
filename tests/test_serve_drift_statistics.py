"""The drift monitor's statistics against hand-worked numbers, in the cases the first hand-worked
test cannot tell apart: the mean of |z| over SEVERAL usable dimensions (not their maximum), only
the newest ``max_added`` added rows counting, and the training means and standard deviations
taken over EVERY training row (the fixed-size reference sample is for the distance only)."""

import math

import numpy as np
import pytest

from jaxrec.serve._monitor import DriftMonitor


def test_z_mean_and_w1_are_means_over_the_usable_dimensions():
    # dimension 0: 0, 2, 4 (mean 2, sd sqrt(8/3)); dimension 1: 0, 0, 6 (mean 2, sd sqrt(8));
    # dimension 2: constant, left out of every statistic.
    train = {"a": np.array([[0.0, 0.0, 1.0], [2.0, 0.0, 1.0], [4.0, 6.0, 1.0]])}
    monitor = DriftMonitor(train)
    monitor.record_added({"a": np.array([[5.0, 3.0, 9.0], [7.0, 1.0, -9.0]])})  # means 6, 2, 0
    report = monitor.summary()["a"]
    sd0, sd1 = math.sqrt(8 / 3), math.sqrt(8)
    z0 = abs(6 - 2) / (sd0 / math.sqrt(2))
    z1 = 0.0  # the added mean equals the training mean in dimension 1
    assert report["n_added"] == 2
    assert report["z_max"] == pytest.approx(z0)
    assert report["z_mean"] == pytest.approx((z0 + z1) / 2)
    # W1 by the quantile coupling: dimension 0, {0,2,4} vs {5,7}: every added value lies above every
    # training value, so W1 is the difference of the means, 4; dimension 1, {0,0,6} vs {1,3}:
    # 1/3 * 1 + 1/6 * 1 + 1/6 * 3 + 1/3 * 3 = 2.
    assert report["w1"] == pytest.approx((4 / sd0 + 2 / sd1) / 2)


def test_only_the_newest_max_added_rows_count():
    train = {"a": np.array([[0.0, 1.0], [2.0, 1.0], [4.0, 1.0]])}  # dimension 0: mean 2, sd sqrt(8/3)
    monitor = DriftMonitor(train, max_added=2)
    monitor.record_added({"a": np.array([[100.0, 5.0]])})  # pushed out by the two rows after it
    monitor.record_added({"a": np.array([[4.0, 5.0], [6.0, 5.0]])})
    report = monitor.summary()["a"]
    sd = math.sqrt(8 / 3)
    assert report["n_added"] == 2
    assert report["z_max"] == pytest.approx((5 - 2) / (sd / math.sqrt(2)))
    # {0,2,4} vs {4,6}: 1/3 * 4 + 1/6 * 2 + 1/6 * 4 + 1/3 * 2 = 3
    assert report["w1"] == pytest.approx(3 / sd)
    # One call with more rows than max_added keeps its last ones as well.
    single = DriftMonitor(train, max_added=2)
    single.record_added({"a": np.array([[100.0, 5.0], [4.0, 5.0], [6.0, 5.0]])})
    assert single.summary()["a"] == report


def test_training_mean_and_std_come_from_every_row_not_the_reference_sample():
    # Six training rows, at most two kept as the distance's reference sample. Over all six rows
    # dimension 0 has mean 1 and (population) sd sqrt(5); no two-row sample has mean 1.
    train = {"a": np.array([[0.0], [0.0], [0.0], [0.0], [0.0], [6.0]])}
    monitor = DriftMonitor(train, max_reference=2)
    monitor.record_added({"a": np.array([[4.0]])})
    report = monitor.summary()["a"]
    assert report["n_added"] == 1
    assert report["z_max"] == pytest.approx(3 / math.sqrt(5))
    assert report["z_mean"] == pytest.approx(3 / math.sqrt(5))
