"""Rating-prediction metrics: root mean squared error and mean absolute error."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxrec.errors import DataError


def _errors(predictions: ArrayLike, targets: ArrayLike, where: ArrayLike | None):
    predictions = jnp.asarray(predictions)
    targets = jnp.asarray(targets)
    if predictions.shape != targets.shape:
        raise DataError(
            "predictions and targets must have the same shape",
            field="targets",
            found=f"shape {targets.shape}",
            expected=f"shape {predictions.shape} (the shape of predictions)",
        )
    if where is None:
        where = jnp.ones(predictions.shape, bool)
    else:
        where = jnp.asarray(where)
        if where.shape != predictions.shape:
            raise DataError(
                "where must have the shape of predictions",
                field="where",
                found=f"shape {where.shape}",
                expected=f"shape {predictions.shape}",
            )
        where = where.astype(bool)
    dtype = jnp.result_type(predictions.dtype, targets.dtype, jnp.float32)
    errors = predictions.astype(dtype) - targets.astype(dtype)
    return jnp.where(where, errors, 0.0), where.sum()


def rmse(
    predictions: ArrayLike, targets: ArrayLike, *, where: ArrayLike | None = None
) -> jax.Array:
    r"""Root mean squared error of predicted ratings.

    .. math::
      \mathrm{RMSE} = \sqrt{\frac{1}{|W|} \sum_{(u, i) \in W} (\hat r_{ui} - r_{ui})^2}

    where :math:`W` is the set of entries selected by ``where`` (all entries by default). The
    mean is over ratings, not over users (MMRec and Cornac's ``user_based=False``).

    Args:
      predictions: ``(...)`` predicted ratings.
      targets: ``(...)`` observed ratings, the shape of ``predictions``.
      where: optional ``(...)`` bool mask of the entries to include.

    Returns:
      scalar RMSE; NaN when no entry is selected.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxrec.eval import rmse
      >>> round(float(rmse(jnp.array([3.0, 4.0]), jnp.array([1.0, 4.0]))), 4)
      1.4142
    """
    errors, count = _errors(predictions, targets, where)
    return jnp.sqrt(jnp.sum(errors**2) / count)


def mae(
    predictions: ArrayLike, targets: ArrayLike, *, where: ArrayLike | None = None
) -> jax.Array:
    r"""Mean absolute error of predicted ratings.

    .. math::
      \mathrm{MAE} = \frac{1}{|W|} \sum_{(u, i) \in W} |\hat r_{ui} - r_{ui}|

    Args:
      predictions: ``(...)`` predicted ratings.
      targets: ``(...)`` observed ratings, the shape of ``predictions``.
      where: optional ``(...)`` bool mask of the entries to include.

    Returns:
      scalar MAE; NaN when no entry is selected.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxrec.eval import mae
      >>> float(mae(jnp.array([3.0, 4.0]), jnp.array([1.0, 5.0])))
      1.5
    """
    errors, count = _errors(predictions, targets, where)
    return jnp.sum(jnp.abs(errors)) / count
