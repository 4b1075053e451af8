"""Shared input checks and masking helpers for the fusion package.

The checks run on static shapes only, so they cost nothing under ``jax.jit`` and raise
:class:`jaxrec.errors.DataError` / :class:`jaxrec.errors.ConfigError` before tracing goes on.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.errors import ConfigError, DataError


def as_float(x) -> jax.Array:
    """``x`` as a jax array, cast to float32 unless it already has a floating dtype."""
    x = jnp.asarray(x)
    return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.float32)


def check_rank(x, rank: int, field: str) -> None:
    """Raise a DataError unless ``x`` has exactly ``rank`` dimensions."""
    if np.ndim(x) != rank:
        raise DataError(
            "wrong number of dimensions",
            field=field,
            found=f"shape {tuple(np.shape(x))}",
            expected=f"a rank-{rank} array",
        )


def check_same_length(a: Sequence, b: Sequence, field_a: str, field_b: str) -> None:
    """Raise a DataError unless two per-modality lists have the same length."""
    if len(a) != len(b):
        raise DataError(
            f"{field_a} and {field_b} must have one entry per modality",
            field=field_b,
            found=f"{len(b)} entries",
            expected=f"{len(a)} (as many as {field_a})",
        )


def check_modalities(xs: Sequence, field: str = "modalities") -> int:
    """Check a non-empty list of (n, d_m) arrays with a common n; return n."""
    if isinstance(xs, (jax.Array, np.ndarray)) or len(xs) == 0:
        raise DataError(
            "expected a non-empty list of per-modality arrays",
            field=field,
            found=type(xs).__name__ if len(xs) else "an empty list",
            expected="a list of (n, d_m) arrays, one per modality",
        )
    n = None
    for m, x in enumerate(xs):
        check_rank(x, 2, f"{field}[{m}]")
        if n is None:
            n = np.shape(x)[0]
        elif np.shape(x)[0] != n:
            raise DataError(
                "all modalities must have the same number of rows",
                field=f"{field}[{m}]",
                found=f"{np.shape(x)[0]} rows",
                expected=f"{n} rows (as {field}[0])",
            )
    return n


def canonical_masks(masks: Sequence | None, num_modalities: int, n: int) -> list[jax.Array]:
    """Return per-modality (n,) bool row masks, all True when ``masks`` is None."""
    if masks is None:
        return [jnp.ones((n,), bool) for _ in range(num_modalities)]
    if len(masks) != num_modalities:
        raise DataError(
            "need one row mask per modality",
            field="masks",
            found=f"{len(masks)} masks",
            expected=f"{num_modalities}",
        )
    out = []
    for m, mask in enumerate(masks):
        if np.shape(mask) != (n,):
            raise DataError(
                "a row mask must be a (n,) boolean vector",
                field=f"masks[{m}]",
                found=f"shape {tuple(np.shape(mask))}",
                expected=f"shape ({n},)",
            )
        out.append(jnp.asarray(mask).astype(bool))
    return out


def check_positive_int(value, name: str) -> None:
    """Raise a ConfigError unless ``value`` is a positive integer."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name} must be a positive integer; found {value!r}")


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

    Example:
      >>> logits = jnp.array([[0.0, 0.0, 100.0], [1.0, 1.0, 1.0]])
      >>> masked_softmax(logits, jnp.array([[True, True, False], [False, False, False]]))
      Array([[0.5, 0.5, 0. ],
             [0. , 0. , 0. ]], dtype=float32)
    """
    mask = jnp.broadcast_to(mask, logits.shape)
    # The shift is a constant of the softmax, so no gradient needs to flow through it.
    shift = jnp.max(jnp.where(mask, logits, -jnp.inf), axis=axis, keepdims=True)
    shift = jax.lax.stop_gradient(jnp.where(jnp.isfinite(shift), shift, 0.0))
    unnormalized = jnp.exp(jnp.where(mask, logits - shift, 0.0)) * mask
    total = jnp.sum(unnormalized, axis=axis, keepdims=True)
    return unnormalized / jnp.where(total > 0, total, 1.0)
