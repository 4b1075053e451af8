"""``fusion.cca``'s documented sign convention: each column of the x weights has its
largest-magnitude entry positive, and the paired y column follows it so that every canonical
correlation (the covariance of the paired variates, computed here in numpy) is positive."""

import numpy as np
import pytest

from jaxrec import fusion


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_each_x_column_has_its_largest_entry_positive_and_the_pairs_correlate_positively(seed):
    rng = np.random.default_rng(seed)
    shared = rng.normal(size=(200, 2))
    x = shared @ rng.normal(size=(2, 4)) + 0.5 * rng.normal(size=(200, 4))
    y = shared @ rng.normal(size=(2, 3)) + 0.5 * rng.normal(size=(200, 3))
    for sign in (1.0, -1.0):  # flipping a view flips the raw directions; the convention fixes them
        result = fusion.cca((sign * x).astype(np.float32), y.astype(np.float32), 2)
        a, b = np.asarray(result.x_weights, np.float64), np.asarray(result.y_weights, np.float64)
        pivots = a[np.argmax(np.abs(a), axis=0), np.arange(2)]
        assert np.all(pivots > 0), pivots
        u = (sign * x - (sign * x).mean(0)) @ a
        v = (y - y.mean(0)) @ b
        covariance = np.sum(u * v, axis=0) / (len(x) - 1)
        assert np.all(covariance > 0.3), covariance
