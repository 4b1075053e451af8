r"""Batch reductions that stay exact when a train step splits its batch over devices.

A loss over a batch is a function :math:`L = f(S, R)` of sums over the batch's rows
:math:`S = \sum_b s_b` (sums of per-row losses, of weights, of squared entries) and of
quantities :math:`R` that every device holds whole (parameters, whole tables, a graph
propagation, a draw from the step's shared key). Under ``jax.pmap`` each device holds a shard
of the rows, so every such sum must run over all devices BEFORE its non-linear part (a
division, a square root, a logarithm): a mean of per-device means is not the batch mean when
the shards weigh differently, and a sum of per-device norms is not the norm.

:func:`batch_sum` is that sum: a plain ``jnp.sum`` normally, and inside
:func:`data_parallel` (which the trainer enters while it traces a ``pmap`` step) also a
``lax.psum`` over the named axis. Its gradient multiplies the cotangent by the axis size
:math:`n`, so device :math:`d`'s gradient of :math:`L` is
:math:`n\,f_S\,\partial s_d/\partial\theta + f_R\,\partial R/\partial\theta`, and the
trainer's plain ``pmean`` of the devices' gradients is exactly :math:`\partial L/\partial\theta`.
:func:`batch_gather` gives every device all rows of a per-row array (InfoNCE's in-batch
negatives); its gradient is the all-gather's own transpose (a sum-scatter), which the same
``pmean`` turns into the exact gradient. Under ``jit`` over a sharded batch the compiler
partitions the global computation and nothing here is needed.

A mean over rows that every device holds alike (e.g. a batch drawn from the shared key) may
also go through :func:`batch_sum`: numerator and count both scale by :math:`n`.
"""

from __future__ import annotations

import contextlib
import functools
import threading

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import ArrayLike

_STATE = threading.local()


def current_axis() -> str | None:
    """The device axis of the step being traced, or None outside :func:`data_parallel`."""
    return getattr(_STATE, "axis", None)


@contextlib.contextmanager
def data_parallel(axis_name: str | None):
    r"""While tracing a ``pmap`` train step, batch reductions also sum over ``axis_name``.

    .. math::
      \operatorname{batch\_sum}(x) = \sum_{d} \sum_i x^{(d)}_i \quad \text{inside}, \qquad
      \sum_i x_i \quad \text{outside}.

    The trainer enters it around the traced step; models and losses take no extra argument.

    Args:
      axis_name: the ``pmap`` axis name (None: no effect).

    Returns:
      A context manager.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxrec import losses
      >>> def step(x):
      ...     with losses.data_parallel("batch"):
      ...         return losses.batch_sum(x)
      >>> devices = jax.local_devices()[:1]
      >>> float(jax.pmap(step, axis_name="batch", devices=devices)(jnp.ones((1, 3)))[0])
      3.0

    References:
      Li et al., `PyTorch Distributed: Experiences on Accelerating Data Parallel Training
      <https://arxiv.org/abs/2006.15704>`_, VLDB 2020 (gradient averaging over replicas).
    """
    previous = current_axis()
    _STATE.axis = axis_name
    try:
        yield
    finally:
        _STATE.axis = previous


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _psum_scaled(x, axis_name):
    return lax.psum(x, axis_name)


def _psum_forward(x, axis_name):
    return lax.psum(x, axis_name), None


def _psum_backward(axis_name, _, cotangent):
    # Every device's loss is the same global value, so every device's cotangent is the same:
    # the sum over devices of the cotangents is n times this one.
    return (cotangent * lax.axis_size(axis_name),)


_psum_scaled.defvjp(_psum_forward, _psum_backward)


def batch_sum(x: ArrayLike) -> jax.Array:
    r"""The sum of all entries of ``x``, over every device of a data-parallel step.

    .. math::
      \operatorname{batch\_sum}(x) = \sum_{d=1}^{n} \sum_i x^{(d)}_i

    (:math:`n = 1` outside :func:`data_parallel`). See the module docstring for the gradient.

    Args:
      x: an array of this device's rows (or any per-row quantity).

    Returns:
      A scalar, the same on every device.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxrec import losses
      >>> float(losses.batch_sum(jnp.array([[1.0, 2.0], [3.0, 4.0]])))
      10.0

    References:
      Li et al., `PyTorch Distributed: Experiences on Accelerating Data Parallel Training
      <https://arxiv.org/abs/2006.15704>`_, VLDB 2020 (gradient averaging over replicas).
    """
    total = jnp.sum(jnp.asarray(x))
    axis = current_axis()
    return total if axis is None else _psum_scaled(total, axis)


def batch_mean(values: ArrayLike, weights: ArrayLike | None = None) -> jax.Array:
    r"""The weighted mean of per-row ``values`` over the whole batch, 0 when nothing weighs.

    .. math::
      \frac{\operatorname{batch\_sum}(w \odot v)}{\operatorname{batch\_sum}(w)}

    Args:
      values: per-row values (any shape).
      weights: weights broadcastable to ``values`` (default: all 1).

    Returns:
      A scalar.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxrec import losses
      >>> float(losses.batch_mean(jnp.array([1.0, 3.0, 100.0]), jnp.array([1.0, 1.0, 0.0])))
      2.0

    References:
      Li et al., `PyTorch Distributed: Experiences on Accelerating Data Parallel Training
      <https://arxiv.org/abs/2006.15704>`_, VLDB 2020 (gradient averaging over replicas).
    """
    values = jnp.asarray(values)
    weights = jnp.ones_like(values) if weights is None else jnp.broadcast_to(jnp.asarray(weights, values.dtype),
                                                                           values.shape)
    total, count = batch_sum(weights * values), batch_sum(weights)
    return jnp.where(count > 0, total / jnp.where(count > 0, count, 1.0), 0.0)


def batch_gather(x: ArrayLike) -> tuple[jax.Array, jax.Array | int]:
    r"""Every device's rows of ``x`` in device order, and where this device's rows start.

    .. math::
      X = [x^{(1)}; \ldots; x^{(n)}], \qquad \text{start} = (d - 1)\, B_d

    (``(x, 0)`` outside :func:`data_parallel`).

    Args:
      x: (B_d, ...) this device's rows.

    Returns:
      ``(X (n B_d, ...), start)``.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxrec import losses
      >>> rows, start = losses.batch_gather(jnp.ones((2, 3)))
      >>> rows.shape, start
      ((2, 3), 0)

    References:
      Li et al., `PyTorch Distributed: Experiences on Accelerating Data Parallel Training
      <https://arxiv.org/abs/2006.15704>`_, VLDB 2020 (gradient averaging over replicas).
    """
    x = jnp.asarray(x)
    axis = current_axis()
    if axis is None:
        return x, 0
    return lax.all_gather(x, axis, tiled=True), lax.axis_index(axis) * x.shape[0]
