"""``fusion.rbf_kernel`` returns entries in (0, 1], as documented, even where float32 cancellation
in ``|x|^2 + |y|^2 - 2 x.y`` leaves a (slightly) negative squared distance: rows far from the
origin, compared with themselves (the definition: exp(-gamma * d) with d >= 0). Values away from
the cancellation are checked against loops in ``tests/test_fusion_kernels.py``."""

import numpy as np

from jaxrec import fusion


def test_rbf_entries_stay_in_the_unit_interval_for_rows_far_from_the_origin():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(20, 8)) * 30 + 100).astype(np.float32)  # |x|^2 near 1e5: cancellation
    gram = np.asarray(fusion.rbf_kernel(x, x, gamma=0.5))
    assert np.all(gram >= 0.0)  # far-apart rows underflow to 0 in float32
    assert np.all(gram <= 1.0), gram.max()
    # The diagonal is the kernel of a row with itself: 1 up to the cancellation's float32 error.
    np.testing.assert_allclose(np.diag(gram), 1.0, atol=2e-2)
