"""Temporal pooling of sequence modalities (video frames, audio segments) into one vector.

A sequence modality is a padded (n, T, d) array with per-item lengths (n,); only the first
``lengths[i]`` steps of item i are real, and nothing in the padding may change the result.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxrec.errors import DataError
from jaxrec._checks import as_float, check_integer, check_positive_int, check_rank
from jaxrec.fusion._masked_softmax import masked_softmax


def _check_sequence(x: ArrayLike, lengths: ArrayLike) -> tuple[jax.Array, jax.Array]:
    check_rank(x, 3, "x")
    check_rank(lengths, 1, "lengths")
    check_integer(lengths, "lengths", "lengths")
    if jnp.shape(lengths)[0] != jnp.shape(x)[0]:
        raise DataError(
            "need one length per sequence",
            field="lengths",
            found=f"shape {jnp.shape(lengths)}",
            expected=f"({jnp.shape(x)[0]},) to match x of shape {jnp.shape(x)}",
        )
    return as_float(x), jnp.asarray(lengths)


def lengths_to_mask(lengths: ArrayLike, max_length: int) -> jax.Array:
    r"""The (n, T) step mask of padded sequences: :math:`m_{it} = [t < \ell_i]`.

    Args:
      lengths: (n,) integer lengths; values past ``max_length`` count as ``max_length``.
      max_length: T, the padded length.

    Returns:
      (n, T) bool mask.

    Raises:
      DataError: ``lengths`` not a rank-1 array of an integer dtype.
    """
    check_rank(lengths, 1, "lengths")
    check_integer(lengths, "lengths", "lengths")
    return jnp.arange(max_length)[None, :] < jnp.asarray(lengths)[:, None]


def masked_mean_pool(x: ArrayLike, lengths: ArrayLike) -> jax.Array:
    r"""Average each sequence over its valid steps.

    .. math::
      h_i = \frac{1}{\ell_i} \sum_{t < \ell_i} x_{it}, \qquad h_i = 0 \text{ if } \ell_i = 0.

    Args:
      x: (n, T, d) padded sequences; the padding may hold anything, NaN included.
      lengths: (n,) integer valid lengths (clipped to [0, T]).

    Returns:
      (n, d) pooled vectors.

    Raises:
      DataError: ``x`` not of rank 3, or ``lengths`` not an (n,) array of an integer dtype.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxrec.fusion import masked_mean_pool
      >>> x = jnp.array([[[1.0], [3.0], [99.0]], [[5.0], [7.0], [9.0]]])
      >>> masked_mean_pool(x, jnp.array([2, 0]))
      Array([[2.],
             [0.]], dtype=float32)
    """
    x, lengths = _check_sequence(x, lengths)
    mask = lengths_to_mask(lengths, x.shape[1])
    total = jnp.sum(jnp.where(mask[..., None], x, 0.0), axis=1)
    count = jnp.sum(mask, axis=1, keepdims=True).astype(x.dtype)
    return total / jnp.maximum(count, 1.0)


class MaskedMeanPooling(nn.Module):
    r"""Masked mean over valid time steps (no parameters); see :func:`masked_mean_pool`.

    .. math::
      h_i = \frac{1}{\ell_i} \sum_{t < \ell_i} x_{it}
    """

    @nn.compact
    def __call__(self, x: ArrayLike, lengths: ArrayLike) -> jax.Array:
        """Pool (n, T, d) padded sequences with (n,) lengths into (n, d) vectors."""
        return masked_mean_pool(x, lengths)


class AttentionPooling(nn.Module):
    r"""Attention pooling with one learned query, normalized over the valid steps only.

    .. math::
      s_{it} = \frac{q^\top (W x_{it} + b)}{\sqrt{a}}, \qquad
      \alpha_{it} = \frac{[t < \ell_i]\, e^{s_{it}}}{\sum_{\tau < \ell_i} e^{s_{i\tau}}}, \qquad
      h_i = \sum_{t} \alpha_{it}\, x_{it},

    with :math:`W \in \mathbb{R}^{a \times d}` and query :math:`q \in \mathbb{R}^{a}` learned; an
    empty sequence (:math:`\ell_i = 0`) pools to the zero vector. The attention weights are sown
    into the ``"intermediates"`` collection as ``"attention_weights"`` (n, T).

    Attributes:
      attention_dim: a, the width of the keys and the query.

    References:
      Yang et al., `Hierarchical Attention Networks for Document Classification
      <https://aclanthology.org/N16-1174/>`_, NAACL 2016 (the learned-context-vector form).
    """

    attention_dim: int = 32

    @nn.compact
    def __call__(self, x: ArrayLike, lengths: ArrayLike) -> jax.Array:
        """Pool (n, T, d) padded sequences with (n,) lengths into (n, d) vectors."""
        check_positive_int(self.attention_dim, "attention_dim")
        x, lengths = _check_sequence(x, lengths)
        mask = lengths_to_mask(lengths, x.shape[1])
        # Zero the padding before any arithmetic so NaN/inf placeholders cannot leak into outputs
        # or gradients (0 * NaN is NaN).
        x = jnp.where(mask[..., None], x, 0.0)
        keys = nn.Dense(self.attention_dim, name="key")(x)
        query = self.param("query", nn.initializers.normal(1.0), (self.attention_dim,))
        scores = keys @ query / math.sqrt(self.attention_dim)
        weights = masked_softmax(scores, mask, axis=1)
        self.sow("intermediates", "attention_weights", weights)
        return jnp.einsum("nt,ntd->nd", weights, x)
