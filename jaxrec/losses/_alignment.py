r"""Kernel-target alignment: how well a kernel matrix agrees with a target (ideal) kernel."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxrec._checks import as_float, check_rank, check_same_shape, check_shape


def _frobenius_cosine(a: jax.Array, b: jax.Array, eps: float) -> jax.Array:
    inner = jnp.sum(a * b)
    # sqrt(max(|a|^2 |b|^2, eps^2)): finite value and gradient when either matrix is zero.
    squared_norms = jnp.sum(jnp.square(a)) * jnp.sum(jnp.square(b))
    return inner / jnp.sqrt(jnp.maximum(squared_norms, eps * eps))


def _center(kernel: jax.Array) -> jax.Array:
    # H K H with H = I - 11^T / n, without forming H: subtract row and column means, add back
    # the grand mean.
    return (
        kernel
        - jnp.mean(kernel, axis=0, keepdims=True)
        - jnp.mean(kernel, axis=1, keepdims=True)
        + jnp.mean(kernel)
    )


def kernel_alignment(kernel: ArrayLike, target: ArrayLike, *, eps: float = 1e-12) -> jax.Array:
    r"""Kernel-target alignment: the cosine of two kernel matrices in Frobenius inner product.

    .. math::
      A(K, T) = \frac{\langle K, T \rangle_F}{\lVert K \rVert_F \, \lVert T \rVert_F},
      \qquad \langle K, T \rangle_F = \sum_{ij} K_{ij} T_{ij},

    in :math:`[-1, 1]`; 1 when :math:`K` is a positive multiple of :math:`T`. With
    :math:`T = y y^\top` it measures how well :math:`K` separates the labels :math:`y`. The
    denominator is bounded below by ``eps`` so an all-zero kernel gives 0, not NaN.

    Args:
      kernel: (n, n) kernel (Gram) matrix :math:`K`.
      target: (n, n) target kernel :math:`T`, e.g. :math:`y y^\top` or a co-interaction matrix.
      eps: lower bound of the denominator.

    Returns:
      A scalar.

    Raises:
      DataError: ``kernel`` not a square (n, n) matrix, or ``target`` not of its shape.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxrec import losses
      >>> y = jnp.array([1.0, -1.0])
      >>> float(losses.kernel_alignment(jnp.eye(2), jnp.outer(y, y)))  # 2 / (sqrt(2) * 2)
      0.707...

    References:
      Cristianini, Shawe-Taylor, Elisseeff and Kandola, `On Kernel-Target Alignment
      <https://proceedings.neurips.cc/paper/2001/hash/1f71e393b3809197ed66df836fe833e5-Abstract.html>`_,
      NeurIPS 2001.
    """
    kernel = as_float(kernel)
    target = as_float(target).astype(kernel.dtype)
    check_rank(kernel, 2, "kernel")
    check_shape(kernel, (kernel.shape[0], kernel.shape[0]), "kernel")
    check_same_shape(kernel, target, "kernel", "target")
    return _frobenius_cosine(kernel, target, eps)


def centered_kernel_alignment(kernel: ArrayLike, target: ArrayLike, *, eps: float = 1e-12) -> jax.Array:
    r"""Centered kernel alignment: :func:`kernel_alignment` of the centered kernels.

    .. math::
      \rho(K, T) = \frac{\langle K_c, T_c \rangle_F}{\lVert K_c \rVert_F \, \lVert T_c \rVert_F},
      \qquad K_c = H K H, \quad H = I_n - \tfrac1n \mathbf{1}\mathbf{1}^\top.

    Centering removes the constant component that makes uncentered alignment of any two
    positive kernels large; it is the normalized HSIC and is invariant to adding a constant
    to either kernel.

    Args:
      kernel: (n, n) kernel matrix :math:`K`.
      target: (n, n) target kernel :math:`T`.
      eps: lower bound of the denominator (a constant kernel centers to 0 and gives 0).

    Returns:
      A scalar.

    Raises:
      DataError: ``kernel`` not a square (n, n) matrix, or ``target`` not of its shape.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxrec import losses
      >>> k = jnp.array([[2.0, 1.0], [1.0, 2.0]])
      >>> float(losses.centered_kernel_alignment(k + 5.0, k))  # a constant shift changes nothing
      1.0

    References:
      Cortes, Mohri and Rostamizadeh, `Algorithms for Learning Kernels Based on Centered
      Alignment <https://jmlr.org/papers/v13/cortes12a.html>`_, JMLR 13, 2012.
    """
    kernel = as_float(kernel)
    target = as_float(target).astype(kernel.dtype)
    check_rank(kernel, 2, "kernel")
    check_shape(kernel, (kernel.shape[0], kernel.shape[0]), "kernel")
    check_same_shape(kernel, target, "kernel", "target")
    return _frobenius_cosine(_center(kernel), _center(target), eps)
