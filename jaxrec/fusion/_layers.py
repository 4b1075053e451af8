"""Small building blocks shared by the fusion modules."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxrec._checks import as_float, canonical_masks, check_modalities, check_positive_int


class MLP(nn.Module):
    """A stack of Dense layers with an activation between them (none after the last).

    Attributes:
      features: the width of each layer; the last is the output width.
      activation: the nonlinearity between layers.
    """

    features: Sequence[int]
    activation: Callable[[jax.Array], jax.Array] = nn.relu

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Map (..., d) inputs to (..., features[-1]) outputs."""
        for i, width in enumerate(self.features):
            check_positive_int(width, f"features[{i}]")
            x = nn.Dense(width, name=f"dense_{i}")(x)
            if i + 1 < len(self.features):
                x = self.activation(x)
        return x


def present_inputs(
    modalities: Sequence[ArrayLike], masks: Sequence[ArrayLike] | None
) -> tuple[list[jax.Array], list[jax.Array]]:
    """Validate modalities and masks; zero the rows of absent modalities.

    Absent rows may hold any placeholder (NaN included). Zeroing them before any layer keeps the
    placeholder out of the outputs and, since ``where`` routes no cotangent to the unselected
    branch, out of the gradients too.

    Returns:
      (modalities with absent rows zeroed, float32/float inputs; (n,) bool masks).
    """
    n = check_modalities(modalities)
    masks = canonical_masks(masks, len(modalities), n)
    cleaned = [jnp.where(mask[:, None], as_float(x), 0.0) for x, mask in zip(modalities, masks)]
    return cleaned, masks


def fill_empty_rows(
    module: nn.Module, fused: jax.Array, any_present: jax.Array, learned_default: bool
) -> jax.Array:
    """Give rows with no modality at all a learned default vector (or keep their zeros)."""
    if not learned_default:
        return jnp.where(any_present[:, None], fused, 0.0)
    default = module.param("missing_default", nn.initializers.zeros_init(), (fused.shape[-1],))
    return jnp.where(any_present[:, None], fused, default)
