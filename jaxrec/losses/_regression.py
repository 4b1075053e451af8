r"""Pointwise losses: squared error for ratings, binary cross-entropy for clicks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxrec._checks import as_float, check_same_shape, check_value_range
from jaxrec.losses._reduction import reduce_losses
from jaxrec.losses._parallel import batch_sum


def mse(
    predictions: ArrayLike,
    targets: ArrayLike,
    *,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    reduction: str = "mean",
    over_batch: bool = True,
) -> jax.Array:
    r"""Mean squared error between predicted and observed ratings.

    .. math::
      \mathcal{L} = \frac{\sum_i w_i m_i (\hat r_i - r_i)^2}{\sum_i w_i m_i}.

    Args:
      predictions: (...) predicted values.
      targets: observed values, the same shape as ``predictions``.
      where: optional bool mask (broadcastable, or a leading part of the shape) of the
        entries to include; e.g. the observed entries of a rating matrix.
      weights: optional per-entry weights.
      reduction: ``"mean"`` (default), ``"sum"`` (the sum of squared errors) or ``"none"``.
      over_batch: the examples are the train step's batch rows (default): under data
        parallelism the reduction runs over every device's rows (:func:`jaxrec.losses.batch_sum`).
        False for examples every device holds alike when the reduction is a ``"sum"``.

    Returns:
      A scalar, or the per-entry squared errors for ``reduction="none"``.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxrec import losses
      >>> float(losses.mse(jnp.array([1.0, 2.0]), jnp.array([0.0, 4.0])))  # (1 + 4) / 2
      2.5

    References:
      Koren, Bell and Volinsky, `Matrix Factorization Techniques for Recommender Systems
      <https://ieeexplore.ieee.org/document/5197422>`_, IEEE Computer 2009.
    """
    predictions = as_float(predictions)
    targets = as_float(targets).astype(predictions.dtype)
    check_same_shape(predictions, targets, "predictions", "targets")
    return reduce_losses(jnp.square(predictions - targets), where=where, weights=weights, reduction=reduction,
                         sum_fn=batch_sum if over_batch else jnp.sum)


def rmse(
    predictions: ArrayLike,
    targets: ArrayLike,
    *,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
) -> jax.Array:
    r"""Root mean squared error, the square root of :func:`mse` (always a mean).

    .. math::
      \mathcal{L} = \sqrt{\frac{\sum_i w_i m_i (\hat r_i - r_i)^2}{\sum_i w_i m_i}}.

    The square root has no derivative at 0; at a perfect fit the gradient returned is 0
    (a subgradient) instead of NaN.

    Args:
      predictions: (...) predicted values.
      targets: observed values, the same shape as ``predictions``.
      where: optional bool mask of the entries to include.
      weights: optional per-entry weights.

    Returns:
      A scalar.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxrec import losses
      >>> float(losses.rmse(jnp.array([3.0, 0.0]), jnp.array([0.0, 4.0])))  # sqrt((9 + 16) / 2)
      3.535...

    References:
      Koren, Bell and Volinsky, `Matrix Factorization Techniques for Recommender Systems
      <https://ieeexplore.ieee.org/document/5197422>`_, IEEE Computer 2009.
    """
    mean_square = mse(predictions, targets, where=where, weights=weights, reduction="mean")
    positive = mean_square > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, mean_square, 1.0)), 0.0)


def binary_cross_entropy(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    reduction: str = "mean",
    over_batch: bool = True,
) -> jax.Array:
    r"""Binary cross-entropy of labels given logits, computed stably.

    .. math::
      \ell_i = -y_i \log \sigma(z_i) - (1 - y_i) \log \sigma(-z_i)
             = \operatorname{softplus}(z_i) - y_i z_i,

    evaluated with ``log_sigmoid`` so that logits of any magnitude give finite values.

    Args:
      logits: (...) unnormalized log-odds.
      labels: labels in [0, 1] (0/1 clicks or soft targets), the same shape as ``logits``.
      where: optional bool mask of the entries to include.
      weights: optional per-entry weights (e.g. to up-weight rare positives).
      reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.
      over_batch: the examples are the train step's batch rows (default): under data
        parallelism the reduction runs over every device's rows (:func:`jaxrec.losses.batch_sum`).
        False for examples every device holds alike when the reduction is a ``"sum"``.

    Returns:
      A scalar, or the per-entry losses for ``reduction="none"``.

    Raises:
      DataError: ``labels`` not of ``logits``' shape, or (concrete labels only: traced ones
        cannot be inspected) a label outside [0, 1]; ``where`` / ``weights`` that do not fit.
      ConfigError: an unknown ``reduction``.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxrec import losses
      >>> float(losses.binary_cross_entropy(jnp.array([0.0]), jnp.array([1.0])))  # log 2
      0.693...

    References:
      He et al., `Neural Collaborative Filtering <https://arxiv.org/abs/1708.05031>`_, WWW 2017.
    """
    logits = as_float(logits)
    labels = as_float(labels).astype(logits.dtype)
    check_same_shape(logits, labels, "logits", "labels")
    check_value_range(labels, "labels", low=0, high=1)
    per_entry = -labels * jax.nn.log_sigmoid(logits) - (1.0 - labels) * jax.nn.log_sigmoid(-logits)
    return reduce_losses(per_entry, where=where, weights=weights, reduction=reduction,
                         sum_fn=batch_sum if over_batch else jnp.sum)
