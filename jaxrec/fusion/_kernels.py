"""Positive-definite kernels on modality features and their weighted combination.

Every kernel takes two row-sets ``x`` (n, d) and ``y`` (p, d) and returns the (n, p) Gram
block; ``combined_kernel`` sums such blocks over modalities (multiple kernel learning's
fixed-weight form).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxrec.errors import ConfigError, DataError
from jaxrec._checks import as_float, check_nonnegative, check_rank, check_same_length

Kernel = Callable[[ArrayLike, ArrayLike], jax.Array]


def _check_pair(x: ArrayLike, y: ArrayLike) -> tuple[jax.Array, jax.Array]:
    check_rank(x, 2, "x")
    check_rank(y, 2, "y")
    x, y = as_float(x), as_float(y)
    if x.shape[1] != y.shape[1]:
        raise DataError(
            "x and y must have the same feature dimension",
            field="y",
            found=f"shape {y.shape}",
            expected=f"(p, {x.shape[1]}) to match x of shape {x.shape}",
        )
    return x, y


def resolve_gamma(gamma: float | None, dim: int) -> float:
    """The kernel width: ``gamma`` itself, or ``1 / dim`` when None (scikit-learn's default)."""
    if gamma is None:
        return 1.0 / dim
    if not gamma > 0:
        raise ConfigError(f"gamma must be positive; found {gamma!r}")
    return float(gamma)


def normalize_rows(x: jax.Array) -> jax.Array:
    """Scale each row to unit Euclidean norm; all-zero rows stay zero (with finite gradients)."""
    squared_norm = jnp.sum(x * x, axis=-1, keepdims=True)
    nonzero = squared_norm > 0
    # sqrt'(0) is infinite, so the zero rows must never reach the sqrt or the division.
    norm = jnp.sqrt(jnp.where(nonzero, squared_norm, 1.0))
    return jnp.where(nonzero, x / norm, 0.0)


def linear_kernel(x: ArrayLike, y: ArrayLike) -> jax.Array:
    r"""The linear kernel, the plain inner product.

    .. math::
      k(x, y) = x^\top y

    Args:
      x: (n, d) rows.
      y: (p, d) rows.

    Returns:
      (n, p) Gram block.

    Example:
      >>> from jaxrec.fusion import linear_kernel
      >>> linear_kernel([[1.0, 2.0]], [[3.0, 4.0]])
      Array([[11.]], dtype=float32)
    """
    x, y = _check_pair(x, y)
    return x @ y.T


def polynomial_kernel(
    x: ArrayLike, y: ArrayLike, *, degree: int = 3, coef0: float = 1.0, gamma: float | None = None
) -> jax.Array:
    r"""The polynomial kernel.

    .. math::
      k(x, y) = (\gamma\, x^\top y + c_0)^{p}

    Args:
      x: (n, d) rows.
      y: (p, d) rows.
      degree: the integer power :math:`p \ge 1`.
      coef0: the offset :math:`c_0` (non-negative for a positive-definite kernel).
      gamma: the scale :math:`\gamma > 0`; ``None`` means ``1 / d``.

    Returns:
      (n, p) Gram block.

    Example:
      >>> from jaxrec.fusion import polynomial_kernel
      >>> polynomial_kernel([[1.0, 2.0]], [[3.0, 4.0]], degree=2, coef0=1.0, gamma=1.0)
      Array([[144.]], dtype=float32)
    """
    x, y = _check_pair(x, y)
    if not isinstance(degree, int) or degree < 1:
        raise ConfigError(f"degree must be a positive integer; found {degree!r}")
    gamma = resolve_gamma(gamma, x.shape[1])
    return (gamma * (x @ y.T) + coef0) ** degree


def rbf_kernel(x: ArrayLike, y: ArrayLike, *, gamma: float | None = None) -> jax.Array:
    r"""The Gaussian (radial basis function) kernel.

    .. math::
      k(x, y) = \exp(-\gamma \lVert x - y \rVert^2)

    Args:
      x: (n, d) rows.
      y: (p, d) rows.
      gamma: the inverse width :math:`\gamma > 0`; ``None`` means ``1 / d``.

    Returns:
      (n, p) Gram block with entries in (0, 1].

    Example:
      >>> from jaxrec.fusion import rbf_kernel
      >>> rbf_kernel([[0.0, 0.0]], [[1.0, 0.0]], gamma=0.5)
      Array([[0.60653067]], dtype=float32)
    """
    x, y = _check_pair(x, y)
    gamma = resolve_gamma(gamma, x.shape[1])
    squared_distance = (
        jnp.sum(x * x, axis=1)[:, None] + jnp.sum(y * y, axis=1)[None, :] - 2.0 * (x @ y.T)
    )
    # Cancellation can leave tiny negative distances for identical rows.
    return jnp.exp(-gamma * jnp.maximum(squared_distance, 0.0))


def cosine_kernel(x: ArrayLike, y: ArrayLike) -> jax.Array:
    r"""The cosine-similarity kernel (the linear kernel on unit-normalized rows).

    .. math::
      k(x, y) = \frac{x^\top y}{\lVert x \rVert\, \lVert y \rVert}, \qquad k = 0 \text{ if } x = 0
      \text{ or } y = 0.

    Args:
      x: (n, d) rows.
      y: (p, d) rows.

    Returns:
      (n, p) Gram block with entries in [-1, 1].

    Example:
      >>> from jaxrec.fusion import cosine_kernel
      >>> cosine_kernel([[3.0, 4.0]], [[6.0, 8.0]])
      Array([[1.]], dtype=float32)
    """
    x, y = _check_pair(x, y)
    return normalize_rows(x) @ normalize_rows(y).T


def combined_kernel(
    kernels: Sequence[Kernel],
    xs: Sequence[ArrayLike],
    ys: Sequence[ArrayLike],
    weights: ArrayLike | None = None,
) -> jax.Array:
    r"""A non-negative weighted sum of per-modality kernels.

    .. math::
      K(x, y) = \sum_{m=1}^{M} w_m\, k_m(x_m, y_m)

    A sum of positive-definite kernels with :math:`w_m \ge 0` is positive definite; its feature
    space is the direct sum of the per-modality feature spaces scaled by :math:`\sqrt{w_m}`.

    Args:
      kernels: M callables ``k(x, y) -> (n, p)``; bind options with ``functools.partial``.
      xs: M arrays (n, d_m), the modalities of the left rows.
      ys: M arrays (p, d_m), the modalities of the right rows.
      weights: (M,) non-negative weights; ``None`` means all ones.

    Returns:
      (n, p) Gram block.

    Raises:
      DataError: ``kernels``, ``xs`` and ``ys`` of different lengths or empty; ``weights`` not
        of shape (M,), or (concrete weights only: traced ones cannot be inspected) a negative
        weight, which would make the sum no longer positive semi-definite.

    References:
      Gönen & Alpaydın, `Multiple Kernel Learning Algorithms
      <https://jmlr.org/papers/v12/gonen11a.html>`_, JMLR 2011.
    """
    check_same_length(kernels, xs, "kernels", "xs")
    check_same_length(kernels, ys, "kernels", "ys")
    if len(kernels) == 0:
        raise DataError("combined_kernel needs at least one modality", field="kernels", found="[]")
    if weights is None:
        weights = jnp.ones((len(kernels),), jnp.float32)
    weights = jnp.asarray(weights)
    if weights.shape != (len(kernels),):
        raise DataError(
            "need one weight per kernel",
            field="weights",
            found=f"shape {weights.shape}",
            expected=f"({len(kernels)},)",
        )
    check_nonnegative(weights, "weights")
    return sum(weights[m] * kernel(xs[m], ys[m]) for m, kernel in enumerate(kernels))
