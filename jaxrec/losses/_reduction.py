"""The reduction of per-example losses shared by the loss functions: mean, sum or none, with
an optional mask and optional weights. A bad ``reduction`` raises
:class:`jaxrec.errors.ConfigError`; weights or a mask that do not fit the losses raise
:class:`jaxrec.errors.DataError`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxrec._checks import as_float
from jaxrec.errors import ConfigError, DataError

REDUCTIONS = ("mean", "sum", "none")


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
