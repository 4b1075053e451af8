"""Serving audit of the monitors: the drift monitor fed one item's features as a flat row."""

import math

import numpy as np
import pytest

from jaxrec.errors import DataError
from jaxrec.serve._monitor import DriftMonitor


def test_drift_monitor_reads_a_flat_row_as_one_item():
    # One item's features as a (d,) row were reshaped to d rows of width 1: the report compared
    # their mean with every training dimension (and counted d items).
    train = {"a": np.array([[0.0, 1.0], [2.0, 1.0], [4.0, 1.0]])}
    flat, rows = DriftMonitor(train), DriftMonitor(train)
    flat.record_added({"a": np.array([5.0, 7.0])})
    rows.record_added({"a": np.array([[5.0, 7.0]])})
    report = flat.summary()["a"]
    sd = math.sqrt(8 / 3)  # dimension 1 is constant in training: left out
    assert report["n_added"] == 1
    assert report["z_max"] == pytest.approx((5 - 2) / sd)
    assert report["w1"] == pytest.approx((5 + 3 + 1) / 3 / sd)  # W1 to one point: mean |5 - x| over 0, 2, 4
    assert report == rows.summary()["a"]
    with pytest.raises(DataError, match="features.a"):
        flat.record_added({"a": np.ones((1, 3))})
    assert flat.summary()["a"]["n_added"] == 1  # nothing recorded
