"""The reduction of per-example losses shared by the loss functions: mean, sum or none, with
an optional mask and optional weights. A bad ``reduction`` raises
:class:`jaxrec.errors.ConfigError`; weights or a mask that do not fit the losses raise
:class:`jaxrec.errors.DataError`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
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
    leading_only: bool = False,
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

    With ``leading_only=True`` (losses whose ``where`` / ``weights`` are documented per
    example, (B,), or per entry) a non-scalar ``where`` / ``weights`` must have a leading part
    of ``losses``' shape exactly: (B,) or (B, n_neg) against (B, n_neg) losses, never a trailing
    broadcast such as an (n_neg,) mask applied across the negatives.

    Raises:
      ConfigError: an unknown ``reduction``.
      DataError: ``where`` or ``weights`` whose shape does not fit ``losses`` (see
        :func:`check_where_weights`).
    """
    _check_reduction(reduction)
    check_where_weights(losses.shape, where, weights, leading_only=leading_only)
    factor = None
    if weights is not None:
        factor = _expand_to(as_float(weights).astype(losses.dtype), losses)
    if where is not None:
        mask = _expand_to(jnp.asarray(where), losses).astype(bool)
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


def check_where_weights(shape, where, weights, *, leading_only: bool = False) -> None:
    """Raise a DataError unless ``where`` and ``weights`` (each optional) fit losses of ``shape``.

    Static: only their shapes are looked at. A mask or weights fit when they are a leading part
    of ``shape`` (expanded on the right) or, unless ``leading_only``, broadcast to it; with
    ``leading_only`` a non-scalar must be exactly a leading part of ``shape``.
    """
    shape = tuple(shape)
    for field, x in (("where", where), ("weights", weights)):
        if x is None:
            continue
        x_shape = tuple(np.shape(x))
        if leading_only:
            leading = [shape[:k] for k in range(1, len(shape) + 1)]
            if x_shape and x_shape not in leading:
                raise DataError(
                    "must be one value per example or per entry of the losses",
                    field=field,
                    found=f"shape {x_shape}",
                    expected=" or ".join(f"shape {s}" for s in leading),
                )
            continue
        expanded = x_shape
        while len(expanded) < len(shape) and expanded == shape[: len(expanded)]:
            expanded = expanded + (1,)
        try:
            ok = np.broadcast_shapes(expanded, shape) == shape
        except ValueError:
            ok = False
        if not ok:
            raise DataError(
                "cannot be matched to the per-example losses",
                field=field,
                found=f"shape {x_shape}",
                expected=f"a shape that broadcasts to {shape} (or a leading part of it)",
            )


def _expand_to(x: jax.Array, losses: jax.Array) -> jax.Array:
    # The shapes were checked by check_where_weights.
    while x.ndim < losses.ndim and x.shape == losses.shape[: x.ndim]:
        x = x[..., None]
    return jnp.broadcast_to(x, losses.shape)
