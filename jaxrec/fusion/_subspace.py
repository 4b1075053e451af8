r"""Subspace learning: project every modality into one shared k-dimensional space.

The objective (``jaxrec.losses.subspace_objective``) trades each view's reconstruction from
its own subspace against the agreement of the views' projections:

.. math::
  L(P) = \sum_m \lVert X_m - X_m P_m P_m^\top \rVert_F^2
       + \lambda \sum_{m \ne n} \lVert X_m P_m - X_n P_n \rVert_F^2,
  \qquad P_m^\top P_m = I_k.

``fit_subspace`` solves it on the Stiefel manifold (Riemannian gradient steps with a QR
retraction); ``SubspaceProjection`` is the trainable layer; ``cca`` is the classical two-view
closed form of the related problem (maximal agreement under a whitening constraint,
:math:`A^\top C_{xx} A = I`, instead of orthonormality), kept as a reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxrec import losses as _losses
from jaxrec.errors import ConfigError, DataError
from jaxrec._checks import as_float, canonical_masks, check_modalities, check_positive_int, check_rank


def orthonormalize(matrix: ArrayLike) -> jax.Array:
    r"""The QR retraction onto the Stiefel manifold, with the sign ambiguity removed.

    .. math::
      \operatorname{qf}(A) = Q\, \operatorname{diag}(\operatorname{sign} \operatorname{diag} R),
      \qquad A = QR,

    i.e. the unique Q with orthonormal columns whose R factor has a non-negative diagonal. Fixing
    the signs makes the map continuous, so a small step never flips a column.

    Args:
      matrix: (D, k) with D >= k and full column rank.

    Returns:
      (D, k) with orthonormal columns spanning the same space.

    Raises:
      DataError: ``matrix`` not of rank 2, or wider than tall (D < k).
    """
    check_rank(matrix, 2, "matrix")
    rows, columns = np.shape(matrix)
    if rows < columns:
        raise DataError(
            "a wide matrix has no orthonormal columns",
            field="matrix",
            found=f"shape {(rows, columns)}",
            expected=f"a (D, k) matrix with D >= k (at least {columns} rows)",
        )
    q, r = jnp.linalg.qr(as_float(matrix))
    signs = jnp.where(jnp.diagonal(r) < 0, -1.0, 1.0).astype(q.dtype)
    return q * signs[None, :]


def _tangent_gradient(projection: jax.Array, gradient: jax.Array) -> jax.Array:
    # Riemannian gradient on the Stiefel manifold (embedded metric): G - P sym(P^T G). The raw
    # Euclidean gradient is not in general a descent direction through the QR retraction: its
    # normal component P sym(P^T G) turns into a rotation inside span(P) whose first-order effect
    # has no fixed sign. The tangent part always descends, at rate |grad_R|^2.
    inner = projection.T @ gradient
    return gradient - projection @ (0.5 * (inner + inner.T))


def subspace_step(
    projections: Sequence[ArrayLike], views: Sequence[ArrayLike], *, lam: float, lr: float
) -> tuple[list[jax.Array], jax.Array]:
    r"""One Riemannian gradient step of the subspace objective, retracted by QR.

    .. math::
      P_m \leftarrow \operatorname{qf}\big(P_m - \eta\, (G_m - P_m \operatorname{sym}(P_m^\top G_m))\big),
      \qquad G_m = \partial L / \partial P_m.

    Args:
      projections: M arrays (D_m, k) with orthonormal columns.
      views: M arrays (N, D_m).
      lam: the agreement weight :math:`\lambda \ge 0`.
      lr: the step size :math:`\eta > 0` (in units of the un-normalized objective: a safe choice
        is about :math:`0.5 / ((1 + 2\lambda (M-1)) \max_m \lVert X_m \rVert_2^2)`).

    Returns:
      (the updated projections, the objective at the input projections).
    """
    value, gradients = jax.value_and_grad(_losses.subspace_objective)(
        list(projections), list(views), lam
    )
    updated = [
        orthonormalize(p - lr * _tangent_gradient(p, g)) for p, g in zip(projections, gradients)
    ]
    return updated, value


class SubspaceFit(NamedTuple):
    """The result of ``fit_subspace``.

    Attributes:
      projections: M arrays (D_m, k) with orthonormal columns.
      objective_trace: (steps + 1,) objective before the first step and after each step.
    """

    projections: list[jax.Array]
    objective_trace: jax.Array


@jax.jit(static_argnames=("steps",))
def _fit(projections, views, lam, lr, steps):
    def body(current, _):
        return subspace_step(current, views, lam=lam, lr=lr)

    final, trace = jax.lax.scan(body, projections, length=steps)
    last = _losses.subspace_objective(final, views, lam)
    return final, jnp.concatenate([trace, last[None]])


def fit_subspace(
    views: Sequence[ArrayLike],
    k: int,
    *,
    lam: float,
    steps: int,
    lr: float,
    key: jax.Array,
) -> SubspaceFit:
    r"""Fit one orthonormal projection per view into a shared k-dim space by gradient descent.

    Minimizes ``jaxrec.losses.subspace_objective`` subject to :math:`P_m^\top P_m = I_k`:
    starting from random orthonormal :math:`P_m`, each of ``steps`` iterations is one
    ``subspace_step`` (Riemannian gradient, QR retraction), so every iterate is exactly orthonormal
    (up to float rounding). Center the views first for the covariance reading of the objective.

    Args:
      views: M arrays (N, D_m), the same N rows in every view.
      k: the shared dimension, at most every D_m.
      lam: the agreement weight :math:`\lambda \ge 0`.
      steps: the number of gradient steps.
      lr: the step size (see ``subspace_step`` for a safe scale).
      key: PRNG key for the random orthonormal start.

    Returns:
      ``SubspaceFit(projections, objective_trace)``.

    References:
      Absil, Mahony & Sepulchre, Optimization Algorithms on Matrix Manifolds, Princeton
      University Press 2008, chapters 3-4 (the Riemannian gradient on the Stiefel manifold and
      its QR-based retraction).
    """
    check_modalities(views, "views")
    check_positive_int(k, "k")
    check_positive_int(steps, "steps")
    views = [as_float(v) for v in views]
    for m, view in enumerate(views):
        if view.shape[1] < k:
            raise ConfigError(f"k={k} exceeds the dimension {view.shape[1]} of views[{m}]")
    keys = jax.random.split(key, len(views))
    start = [
        orthonormalize(jax.random.normal(keys[m], (v.shape[1], k), v.dtype))
        for m, v in enumerate(views)
    ]
    final, trace = _fit(start, views, lam, lr, steps)
    return SubspaceFit(list(final), trace)


class SubspaceOutput(NamedTuple):
    """What ``SubspaceProjection`` returns.

    Attributes:
      projected: M arrays (n, k), :math:`X_m P_m` (zero where the modality is absent).
      shared: (n, k), the mean of the present projected views (zero where none is present).
      objective: scalar, the subspace objective over the rows that have every modality; add it
        to the model's loss terms as an auxiliary term.
    """

    projected: list[jax.Array]
    shared: jax.Array
    objective: jax.Array


class SubspaceProjection(nn.Module):
    r"""Learnable projections :math:`P_m \in \mathbb{R}^{D_m \times k}` into one shared space.

    .. math::
      z_m = X_m P_m, \qquad
      z = \frac{\sum_m r_m z_m}{\sum_m r_m}, \qquad
      L_{\text{aux}} = \sum_m \lVert \bar X_m - \bar X_m P_m P_m^\top \rVert_F^2
        + \lambda \sum_{m \ne n} \lVert \bar X_m P_m - \bar X_n P_n \rVert_F^2,

    where :math:`\bar X_m` keeps only the rows that have every modality (the objective compares
    views row by row). The :math:`P_m` start orthonormal; trained by a plain optimizer they drift
    off the Stiefel manifold, so either re-apply ``orthonormalize`` to them after each update or
    fit them offline with ``fit_subspace``.

    Attributes:
      dim: k, the shared dimension.
      lam: the agreement weight :math:`\lambda`.
      orthonormal: the caller guarantees orthonormal :math:`P_m` (e.g. through
        ``flax.linen.map_variables`` with :func:`orthonormalize`, as ``SubspaceMF`` does); the
        reconstruction term is then :math:`\lVert \bar X_m \rVert^2 - \lVert \bar X_m P_m \rVert^2`
        (``jaxrec.losses.subspace_objective(..., orthonormal=True)``), without the (n, D_m)
        reconstruction.

    References:
      Hotelling, Relations Between Two Sets of Variates, Biometrika 1936 (CCA, the two-view
      closed form); Xu, Tao & Xu, `A Survey on Multi-view Learning
      <https://arxiv.org/abs/1304.5634>`_, 2013 (subspace-learning approaches).
    """

    dim: int
    lam: float = 1.0
    orthonormal: bool = False

    @nn.compact
    def __call__(
        self, views: Sequence[ArrayLike], masks: Sequence[ArrayLike] | None = None
    ) -> SubspaceOutput:
        """Project M views (n, D_m) with (n,) bool row masks; see ``SubspaceOutput``."""
        check_positive_int(self.dim, "dim")
        n = check_modalities(views, "views")
        masks = canonical_masks(masks, len(views), n)
        views = [jnp.where(mask[:, None], as_float(v), 0.0) for v, mask in zip(views, masks)]
        projections = []
        for m, view in enumerate(views):
            if view.shape[1] < self.dim:
                raise ConfigError(f"dim={self.dim} exceeds the width {view.shape[1]} of views[{m}]")
            projections.append(
                self.param(
                    f"projection_{m}", nn.initializers.orthogonal(), (view.shape[1], self.dim)
                )
            )
        # One product X_m P_m per view, for the output and the objective alike: the objective's
        # complete rows are rows of it (zeroing rows of X_m zeroes the same rows of X_m P_m).
        codes = [v @ p for v, p in zip(views, projections)]
        projected = [jnp.where(mask[:, None], z, 0.0) for z, mask in zip(codes, masks)]
        present = jnp.stack(masks, axis=1)
        count = jnp.sum(present, axis=1, keepdims=True).astype(projected[0].dtype)
        shared = sum(projected) / jnp.maximum(count, 1.0)
        complete = jnp.all(present, axis=1)
        complete_views = [jnp.where(complete[:, None], v, 0.0) for v in views]
        complete_codes = [jnp.where(complete[:, None], z, 0.0) for z in codes]
        objective = _losses.subspace_objective(projections, complete_views, self.lam, orthonormal=self.orthonormal,
                                               codes=complete_codes)
        return SubspaceOutput(projected, shared, objective)


class CCAResult(NamedTuple):
    """The result of ``cca``.

    Attributes:
      x_weights: (d_x, k) canonical directions of x (unit variance canonical variates).
      y_weights: (d_y, k) canonical directions of y.
      correlations: (k,) canonical correlations, descending.
      x_mean: (d_x,) the column means removed from x.
      y_mean: (d_y,) the column means removed from y.
    """

    x_weights: jax.Array
    y_weights: jax.Array
    correlations: jax.Array
    x_mean: jax.Array
    y_mean: jax.Array


def _inverse_sqrt(matrix: jax.Array) -> jax.Array:
    eigenvalues, eigenvectors = jnp.linalg.eigh(matrix)
    # Guard only against round-off on a singular covariance; use reg for genuinely low rank data.
    floor = jnp.finfo(matrix.dtype).eps * jnp.max(eigenvalues)
    return (eigenvectors / jnp.sqrt(jnp.maximum(eigenvalues, floor))) @ eigenvectors.T


def cca(x: ArrayLike, y: ArrayLike, k: int, *, reg: float = 0.0) -> CCAResult:
    r"""Canonical correlation analysis of two views in closed form (whitening + SVD).

    With centered views and :math:`C_{xx} = X^\top X/(N-1) + \epsilon I`,
    :math:`C_{yy} = Y^\top Y/(N-1) + \epsilon I`, :math:`C_{xy} = X^\top Y/(N-1)`:

    .. math::
      C_{xx}^{-1/2} C_{xy} C_{yy}^{-1/2} = U \Sigma V^\top, \qquad
      A = C_{xx}^{-1/2} U_{:k}, \quad B = C_{yy}^{-1/2} V_{:k}, \quad \rho = \operatorname{diag}\Sigma_{:k},

    so the canonical variates :math:`XA, YB` have (regularized) identity covariance and
    cross-covariance :math:`\operatorname{diag}(\rho)`. Column signs are fixed so that each
    column of A has its largest-magnitude entry positive.

    Args:
      x: (N, d_x) first view.
      y: (N, d_y) second view.
      k: number of canonical pairs, at most min(d_x, d_y).
      reg: ridge :math:`\epsilon \ge 0` added to both auto-covariances (needed when N <= d).

    Returns:
      ``CCAResult(x_weights, y_weights, correlations, x_mean, y_mean)``.

    References:
      Hotelling, `Relations Between Two Sets of Variates
      <https://doi.org/10.1093/biomet/28.3-4.321>`_, Biometrika 1936.
    """
    check_rank(x, 2, "x")
    check_rank(y, 2, "y")
    x, y = as_float(x), as_float(y)
    if x.shape[0] != y.shape[0]:
        raise DataError(
            "the two views must have the same rows",
            field="y",
            found=f"{y.shape[0]} rows",
            expected=f"{x.shape[0]} (as x)",
        )
    check_positive_int(k, "k")
    if k > min(x.shape[1], y.shape[1]):
        raise ConfigError(f"k={k} exceeds min(d_x, d_y) = {min(x.shape[1], y.shape[1])}")
    if reg < 0:
        raise ConfigError(f"reg must be >= 0; found {reg!r}")
    return _cca(x, y, k, reg)


@jax.jit(static_argnames=("k",))
def _cca(x: jax.Array, y: jax.Array, k: int, reg: float) -> CCAResult:
    x_mean, y_mean = jnp.mean(x, axis=0), jnp.mean(y, axis=0)
    xc, yc = x - x_mean, y - y_mean
    scale = 1.0 / (x.shape[0] - 1)
    cxx = scale * xc.T @ xc + reg * jnp.eye(x.shape[1], dtype=x.dtype)
    cyy = scale * yc.T @ yc + reg * jnp.eye(y.shape[1], dtype=y.dtype)
    cxy = scale * xc.T @ yc
    whiten_x, whiten_y = _inverse_sqrt(cxx), _inverse_sqrt(cyy)
    u, singular_values, vt = jnp.linalg.svd(whiten_x @ cxy @ whiten_y, full_matrices=False)
    x_weights = whiten_x @ u[:, :k]
    y_weights = whiten_y @ vt[:k].T
    pivot = jnp.take_along_axis(x_weights, jnp.argmax(jnp.abs(x_weights), axis=0)[None], axis=0)
    signs = jnp.where(pivot < 0, -1.0, 1.0).astype(x.dtype)
    return CCAResult(x_weights * signs, y_weights * signs, singular_values[:k], x_mean, y_mean)


def principal_angles(a: ArrayLike, b: ArrayLike) -> jax.Array:
    r"""The principal angles between the column spaces of two matrices, ascending, in radians.

    .. math::
      \cos\theta_i = \sigma_i(Q_a^\top Q_b), \qquad
      \sin\theta_i = \sigma_{k+1-i}\big((I - Q_a Q_a^\top) Q_b\big),

    with orthonormal bases :math:`Q_a, Q_b` and :math:`k_a \ge k_b` (swapped otherwise). Angles
    under 45 degrees are read from their sines, where arccos would lose half the digits.

    Args:
      a: (D, k_a) full column rank.
      b: (D, k_b) full column rank.

    Returns:
      (min(k_a, k_b),) angles in [0, pi/2].

    References:
      Björck & Golub, Numerical Methods for Computing Angles Between Linear Subspaces, Math. Comp.
      27 (1973); the same split as ``scipy.linalg.subspace_angles``.
    """
    check_rank(a, 2, "a")
    check_rank(b, 2, "b")
    if np.shape(a)[0] != np.shape(b)[0]:
        raise DataError(
            "both bases must live in the same space",
            field="b",
            found=f"{np.shape(b)[0]} rows",
            expected=f"{np.shape(a)[0]} (as a)",
        )
    if np.shape(a)[1] < np.shape(b)[1]:
        a, b = b, a
    return _principal_angles(as_float(a), as_float(b))


@jax.jit
def _principal_angles(a: jax.Array, b: jax.Array) -> jax.Array:
    qa, _ = jnp.linalg.qr(a)
    qb, _ = jnp.linalg.qr(b)
    cosines = jnp.linalg.svd(qa.T @ qb, compute_uv=False)  # descending
    sines = jnp.linalg.svd(qb - qa @ (qa.T @ qb), compute_uv=False)[::-1]  # ascending
    return jnp.where(
        cosines**2 >= 0.5,
        jnp.arcsin(jnp.clip(sines, -1.0, 1.0)),
        jnp.arccos(jnp.clip(cosines, -1.0, 1.0)),
    )
