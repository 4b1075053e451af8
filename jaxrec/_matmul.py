"""Matrix products whose gradients XLA's CPU backend computes fast (``matmul``), shared by
``jaxrec.fusion`` and ``jaxrec.models``."""

from __future__ import annotations

import jax


@jax.custom_vjp
def matmul(x: jax.Array, w: jax.Array) -> jax.Array:
    r"""``x @ w`` for a 2-D ``x`` (n, D) and ``w`` (D, K), with the same gradients, computed as
    plain matrix products: the weight gradient :math:`x^\top g` (D, K) with the narrower of
    ``x`` and the output gradient ``g`` (n, K) as the transposed operand.

    A speed-only rewrite: on XLA's CPU backend the default backward of ``x @ w`` contracts
    ``x`` over its rows in a transposed product that is slower than the same product on a
    transposed copy (VBPR's (n_items, D) feature projection every step, the kernel encoding's
    (rows, F_m) feature maps). With K >= D the gradient is ``x.T @ g`` from a materialized copy
    of ``x.T``; with K < D it is :math:`(g^\top x)^\top`, the product contracting the narrow
    ``g`` over its rows and the small (K, D) result transposed, which moves K instead of D
    columns per row (MMGCN's (n, 320) -> 64 combination layers). Values agree up to float
    rounding. When ``x`` needs no gradient (a constant feature matrix) the compiler drops its
    cotangent.
    """
    return x @ w


def _matmul_fwd(x, w):
    return x @ w, (x, w)


def _matmul_bwd(residuals, g):
    x, w = residuals
    # The barriers keep the transposes materialized instead of being folded back into the
    # product (which would be XLA's default, slower form).
    if w.shape[1] < w.shape[0]:
        dw = jax.lax.optimization_barrier(jax.lax.dot_general(g, x, (((0,), (0,)), ((), ())))).T
    else:
        dw = jax.lax.optimization_barrier(jax.lax.optimization_barrier(x.T) @ g)
    return g @ w.T, dw


matmul.defvjp(_matmul_fwd, _matmul_bwd)


@jax.custom_vjp
def constant_matmul(x: jax.Array, x_t: jax.Array, w: jax.Array) -> jax.Array:
    r"""``x @ w`` for a 2-D ``x`` (n, D) that is a constant of the step (a feature matrix),
    given with its transpose ``x_t`` (D, n) kept beside it, and ``w`` (D, K): the weight
    gradient :math:`x^\top g` is the plain product ``x_t @ g`` over the stored row-major
    transpose, with no transposed contraction and no transposed copy per step.

    A speed-only rewrite of :func:`matmul`'s weight gradient for a constant ``x``; values agree
    up to float rounding. Measured (XLA:CPU, 2 cores, VBPR's lfm2k product (1,425, 512) @
    (512, 64), best of 7 medians of 50 calls): ``x_t @ g`` 0.40 ms against 0.68 ms for
    :func:`matmul`'s ``(g^T x)^T`` and 0.93 ms for XLA's own ``x^T g``. ``x`` still gets its
    gradient ``g @ w.T`` (dropped by the compiler where nothing asks for it); ``x_t`` gets
    none, so it must be ``x.T`` as a constant, never something a gradient has to pass through.
    """
    return x @ w


def _constant_matmul_fwd(x, x_t, w):
    return x @ w, (x_t, w)


def _constant_matmul_bwd(residuals, g):
    x_t, w = residuals
    return g @ w.T, None, x_t @ g


constant_matmul.defvjp(_constant_matmul_fwd, _constant_matmul_bwd)
