"""Shared input checks and the reduction helper of the loss functions.

Shape checks use chex on static shapes, so they cost nothing under ``jax.jit``; a failed check
is re-raised as :class:`jaxrec.errors.DataError` naming the argument, what was found and what
was expected. A bad option (an unknown ``reduction``) raises :class:`jaxrec.errors.ConfigError`.
"""

from __future__ import annotations

from collections.abc import Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxrec.errors import ConfigError, DataError

REDUCTIONS = ("mean", "sum", "none")


def as_float(x: ArrayLike) -> jax.Array:
    """``x`` as a jax array of a floating dtype (integers become the default float)."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    return x


def check_rank(x: ArrayLike, rank: int | Sequence[int], field: str) -> None:
    """Raise a DataError unless ``x`` has ``rank`` (or one of several ranks) dimensions."""
    try:
        chex.assert_rank(x, rank if isinstance(rank, int) else set(rank))
    except AssertionError:
        expected = f"rank {rank}" if isinstance(rank, int) else f"rank in {sorted(rank)}"
        raise DataError(
            "wrong number of dimensions", field=field, found=f"shape {np.shape(x)}", expected=expected
        ) from None


def check_shape(x: ArrayLike, shape: Sequence[int | None], field: str) -> None:
    """Raise a DataError unless ``x`` has ``shape`` (None matches any size)."""
    try:
        chex.assert_shape(x, tuple(shape))
    except AssertionError:
        wanted = tuple("any" if s is None else s for s in shape)
        raise DataError(
            "wrong shape", field=field, found=f"shape {np.shape(x)}", expected=f"shape {wanted}"
        ) from None


def check_same_shape(a: ArrayLike, b: ArrayLike, field_a: str, field_b: str) -> None:
    """Raise a DataError unless ``a`` and ``b`` have the same shape."""
    try:
        chex.assert_equal_shape([a, b])
    except AssertionError:
        raise DataError(
            f"{field_b} must have the same shape as {field_a}",
            field=field_b,
            found=f"shape {np.shape(b)}",
            expected=f"shape {np.shape(a)} (as {field_a})",
        ) from None


def check_integer(x: ArrayLike, field: str) -> None:
    """Raise a DataError unless ``x`` has an integer dtype (indices)."""
    dtype = jnp.asarray(x).dtype
    if not jnp.issubdtype(dtype, jnp.integer):
        raise DataError("indices must be integers", field=field, found=f"dtype {dtype}", expected="an integer dtype")


def check_index_range(x: ArrayLike, size: int, field: str) -> None:
    """Raise a DataError if concrete indices fall outside ``[0, size)``.

    Under ``jax.jit`` the indices are tracers and cannot be inspected; the check then does
    nothing (out-of-range gathers clamp, as everywhere in JAX).
    """
    if isinstance(x, jax.core.Tracer):
        return
    values = np.asarray(x)
    if values.size and (values.min() < 0 or values.max() >= size):
        raise DataError(
            "index out of range",
            field=field,
            found=f"indices in [{values.min()}, {values.max()}]",
            expected=f"indices in [0, {size - 1}]",
        )


def check_not_empty(arrays: Sequence, field: str) -> None:
    """Raise a DataError if a variadic list of arrays is empty."""
    if len(arrays) == 0:
        raise DataError("at least one array is needed", field=field, found="no arrays", expected="one or more arrays")


def _check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ConfigError(f"unknown reduction {reduction!r}; expected one of {', '.join(map(repr, REDUCTIONS))}")


def reduce_losses(
    losses: jax.Array,
    *,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    reduction: str = "mean",
    sum_fn=jnp.sum,
) -> jax.Array:
    r"""Reduce per-example losses with an optional mask and optional weights.

    .. math::
      \text{mean} = \frac{\sum_i w_i m_i \ell_i}{\sum_i w_i m_i}, \qquad
      \text{sum} = \sum_i w_i m_i \ell_i, \qquad
      \text{none} = (w_i m_i \ell_i)_i.

    ``where`` (bool) and ``weights`` broadcast against ``losses``; a leading-axes-only mask
    (e.g. (B,) against (B, n_neg)) is expanded on the right. Masked-out entries contribute
    nothing, even when they are NaN. A mean over nothing (all masked) is 0. ``sum_fn`` takes
    both sums (``jaxrec.losses.batch_sum`` for a batch split over devices).
    """
    _check_reduction(reduction)
    factor = None
    if weights is not None:
        factor = _expand_to(as_float(weights).astype(losses.dtype), losses, "weights")
    if where is not None:
        mask = _expand_to(jnp.asarray(where), losses, "where").astype(bool)
        # jnp.where (not a product) so that masked NaN/inf entries cannot leak into the sum.
        losses = jnp.where(mask, losses, 0.0)
        mask = mask.astype(losses.dtype)
        factor = mask if factor is None else factor * mask
    if factor is not None:
        losses = losses * factor
    if reduction == "none":
        return losses
    total = sum_fn(losses)
    if reduction == "sum":
        return total
    if factor is None:
        count = sum_fn(jnp.ones(losses.shape, losses.dtype))
    else:
        count = sum_fn(jnp.broadcast_to(factor, losses.shape))
    return jnp.where(count > 0, total / jnp.where(count > 0, count, 1.0), 0.0)


def _expand_to(x: jax.Array, losses: jax.Array, field: str) -> jax.Array:
    while x.ndim < losses.ndim and x.shape == losses.shape[: x.ndim]:
        x = x[..., None]
    try:
        return jnp.broadcast_to(x, losses.shape)
    except ValueError:
        raise DataError(
            "cannot be matched to the per-example losses",
            field=field,
            found=f"shape {x.shape}",
            expected=f"a shape that broadcasts to {losses.shape} (or a leading part of it)",
        ) from None
