"""Parameter initializers that reproduce PyTorch's, so that models start where MMRec's do.

* ``xavier_uniform`` / ``xavier_normal``: ``torch.nn.init.xavier_uniform_`` / ``xavier_normal_``
  (MMRec's ID tables and most projections): variance ``2 / (fan_in + fan_out)``.
* ``torch_linear_kernel`` / ``torch_linear_bias(fan_in)``: ``torch.nn.Linear``'s defaults,
  ``kaiming_uniform_(a=sqrt(5))`` for the weight and :math:`U(\\pm 1/\\sqrt{\\text{fan\\_in}})`
  for the bias (a Linear layer MMRec leaves at its default).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import linen as nn

xavier_uniform = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")
xavier_normal = nn.initializers.variance_scaling(1.0, "fan_avg", "normal")
# kaiming_uniform_(a=sqrt(5)) is U(±sqrt(6 / ((1 + 5) fan_in))) = U(±1/sqrt(fan_in)): variance 1/(3 fan_in).
torch_linear_kernel = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_linear_bias(fan_in: int):
    """torch.nn.Linear's default bias init, :math:`U(\\pm 1/\\sqrt{\\text{fan\\_in}})`."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init
