"""Softmax restricted to a mask (attention over the modalities an item has)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxrec._checks import check_broadcastable


def masked_softmax(logits: jax.Array, mask: jax.Array, axis: int = -1) -> jax.Array:
    r"""Softmax over the entries where ``mask`` is True; zero elsewhere.

    .. math::
      \alpha_j = \frac{[m_j] \exp(z_j)}{\sum_l [m_l] \exp(z_l)}, \qquad
      \alpha = 0 \text{ when no } m_j \text{ is set}.

    Finite for every input, gradients included: masked logits never reach ``exp`` (they are
    replaced before it), and an all-masked slice divides by one instead of zero.

    Args:
      logits: scores, any shape.
      mask: bool, broadcastable to ``logits``.
      axis: the axis to normalize over.

    Returns:
      weights with the shape of ``logits``; each slice sums to one, or to zero where fully masked.

    Raises:
      DataError: a ``mask`` that does not broadcast to the shape of ``logits``.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxrec.fusion import masked_softmax
      >>> logits = jnp.array([[0.0, 0.0, 100.0], [1.0, 1.0, 1.0]])
      >>> masked_softmax(logits, jnp.array([[True, True, False], [False, False, False]]))
      Array([[0.5, 0.5, 0. ],
             [0. , 0. , 0. ]], dtype=float32)
    """
    logits = jnp.asarray(logits)
    check_broadcastable(mask, logits.shape, "mask", "logits")
    mask = jnp.broadcast_to(mask, logits.shape)
    # The shift is a constant of the softmax, so no gradient needs to flow through it.
    shift = jnp.max(jnp.where(mask, logits, -jnp.inf), axis=axis, keepdims=True)
    shift = jax.lax.stop_gradient(jnp.where(jnp.isfinite(shift), shift, 0.0))
    unnormalized = jnp.exp(jnp.where(mask, logits - shift, 0.0)) * mask
    total = jnp.sum(unnormalized, axis=axis, keepdims=True)
    return unnormalized / jnp.where(total > 0, total, 1.0)
