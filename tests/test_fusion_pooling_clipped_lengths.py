"""``masked_mean_pool`` clips lengths to [0, T], as documented: a length past the padded length T
averages all T steps (it does not divide by the longer length), and a length of 0 or below pools
to zeros. Reference: numpy means over the clipped steps."""

import jax
import numpy as np

from jaxrec import fusion


def test_lengths_outside_zero_to_t_are_clipped():
    x = np.random.default_rng(0).normal(size=(4, 3, 2)).astype(np.float32)
    lengths = np.array([5, 3, 0, -2], np.int32)  # T = 3
    expected = np.stack([x[0].mean(0), x[1].mean(0), np.zeros(2), np.zeros(2)])
    np.testing.assert_allclose(jax.jit(fusion.masked_mean_pool)(x, lengths), expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(fusion.lengths_to_mask(lengths, 3),
                                  [[True] * 3, [True] * 3, [False] * 3, [False] * 3])
