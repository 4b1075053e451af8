r"""Whole-model objectives: matrix factorization with item side features, and multi-view subspaces.

Samples are ROWS throughout: users are the rows of :math:`U` and :math:`R`, items the rows of
:math:`V` and :math:`Z`, data points the rows of each view :math:`X_m`.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxrec.errors import ConfigError, DataError
from jaxrec.losses._ranking import bpr
from jaxrec.losses._regularizers import l2_sum_of_squares
from jaxrec._checks import as_float, check_index_range, check_integer, check_rank, check_same_shape, check_shape


def _check_side_mf_factors(U, V, W, Z):
    U, V, W, Z = (as_float(x) for x in (U, V, W, Z))
    check_rank(U, 2, "U")
    n_factors = U.shape[1]
    check_shape(V, (None, n_factors), "V")
    check_shape(W, (None, n_factors), "W")
    check_shape(Z, (V.shape[0], W.shape[0]), "Z")
    return U, V, W, Z


def side_mf_objective(U, V, W, Z, R, mask, lam) -> jax.Array:
    r"""Masked squared-error matrix factorization whose item factors include side features.

    Each item's latent vector is a free part plus a linear map of its side features,
    :math:`V + Z W`, so items with similar features (image, text) start from similar factors:

    .. math::
      \mathcal{L}(U, V, W) = \sum_{u,i} M_{ui} \big(R_{ui} - [U (V + Z W)^\top]_{ui}\big)^2
        + \lambda \big(\lVert U \rVert_F^2 + \lVert V \rVert_F^2 + \lVert W \rVert_F^2\big).

    The data term is a sum (not a mean) over observed entries, so :math:`\lambda` has the
    scale of one observation.

    Args:
      U: (N, K) user factors.
      V: (M, K) free item factors.
      W: (D, K) map from side features to factors.
      Z: (M, D) item side features (rows are items).
      R: (N, M) ratings; entries where ``mask`` is 0 are ignored (NaN allowed there).
      mask: (N, M) 1/True for observed entries (or non-negative confidence weights).
      lam: :math:`\lambda \ge 0`.

    Returns:
      A scalar.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxrec import losses
      >>> U, V, W, Z = jnp.ones((1, 1)), jnp.ones((1, 1)), jnp.ones((1, 1)), jnp.ones((1, 1))
      >>> float(losses.side_mf_objective(U, V, W, Z, jnp.array([[5.0]]), jnp.ones((1, 1)), 0.5))
      10.5

    References:
      Singh and Gordon, `Relational Learning via Collective Matrix Factorization
      <https://dl.acm.org/doi/10.1145/1401890.1401969>`_, KDD 2008;
      Gantner et al., `Learning Attribute-to-Feature Mappings for Cold-Start Recommendations
      <https://ieeexplore.ieee.org/document/5693971>`_, ICDM 2010.
    """
    U, V, W, Z = _check_side_mf_factors(U, V, W, Z)
    R = as_float(R).astype(U.dtype)
    mask = jnp.asarray(mask)
    check_shape(R, (U.shape[0], V.shape[0]), "R")
    check_same_shape(R, mask, "R", "mask")
    observed = mask != 0
    # Zero the unobserved ratings BEFORE the product: a NaN there would otherwise reach the
    # gradient through jnp.where's unselected branch (0 * NaN = NaN).
    residuals = jnp.where(observed, R, 0.0) - U @ (V + Z @ W).T
    weighted = jnp.where(observed, mask.astype(U.dtype) * jnp.square(residuals), 0.0)
    return jnp.sum(weighted) + lam * l2_sum_of_squares(U, V, W)


def side_mf_bpr(
    U,
    V,
    W,
    Z,
    users: ArrayLike,
    pos_items: ArrayLike,
    neg_items: ArrayLike,
    lam,
    *,
    where: ArrayLike | None = None,
    reduction: str = "sum",
) -> jax.Array:
    r"""The pairwise (BPR) form of :func:`side_mf_objective` for implicit feedback.

    With item vectors :math:`q_i = V_i + Z_i W` and scores :math:`x_{ui} = U_u^\top q_i`, over
    sampled triples :math:`(u, i, j)` of a user, an item it interacted with and one without:

    .. math::
      \mathcal{L}(U, V, W) = \sum_{(u,i,j)} -\ln \sigma(x_{ui} - x_{uj})
        + \lambda \big(\lVert U \rVert_F^2 + \lVert V \rVert_F^2 + \lVert W \rVert_F^2\big),

    BPR-Opt with the regularizer of :func:`side_mf_objective` on the full factor matrices.
    ``reduction="mean"`` averages the pairwise term instead (for mini-batches of a fixed size;
    :math:`\lambda` is then relative to one triple's loss). Item vectors are computed for the
    batch's items only, never for the whole catalogue.

    Args:
      U: (N, K) user factors.
      V: (M, K) free item factors.
      W: (D, K) map from side features to factors.
      Z: (M, D) item side features.
      users: (B,) int user indices.
      pos_items: (B,) int indices of items each user interacted with.
      neg_items: (B,) or (B, n_neg) int indices of sampled negatives.
      lam: :math:`\lambda \ge 0`.
      where: optional bool mask, (B,) per triple or (B, n_neg) per pair (padding rows).
      reduction: ``"sum"`` (default, BPR-Opt) or ``"mean"`` of the pairwise term.

    Returns:
      A scalar.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxrec import losses
      >>> U, V, W, Z = jnp.ones((1, 1)), jnp.array([[1.0], [0.0]]), jnp.zeros((1, 1)), jnp.zeros((2, 1))
      >>> # x_u0 - x_u1 = 1: softplus(-1) + 0 * |.|^2
      >>> float(losses.side_mf_bpr(U, V, W, Z, jnp.array([0]), jnp.array([0]), jnp.array([1]), 0.0))
      0.313...

    References:
      Rendle et al., `BPR: Bayesian Personalized Ranking from Implicit Feedback
      <https://arxiv.org/abs/1205.2618>`_, UAI 2009;
      He and McAuley, `VBPR: Visual Bayesian Personalized Ranking from Implicit Feedback
      <https://arxiv.org/abs/1510.01784>`_, AAAI 2016.
    """
    U, V, W, Z = _check_side_mf_factors(U, V, W, Z)
    if reduction not in ("sum", "mean"):
        raise ConfigError(f"side_mf_bpr reduction must be 'sum' or 'mean', got {reduction!r}")
    users, pos_items, neg_items = (jnp.asarray(x) for x in (users, pos_items, neg_items))
    for name, index, size in (
        ("users", users, U.shape[0]),
        ("pos_items", pos_items, V.shape[0]),
        ("neg_items", neg_items, V.shape[0]),
    ):
        check_integer(index, name)
        check_index_range(index, size, name)
    check_rank(users, 1, "users")
    check_same_shape(users, pos_items, "users", "pos_items")
    check_rank(neg_items, (1, 2), "neg_items")
    check_shape(neg_items, (users.shape[0],) + (None,) * (neg_items.ndim - 1), "neg_items")

    def item_vectors(items):
        return V[items] + Z[items] @ W

    user_vectors = U[users]
    pos_scores = jnp.sum(user_vectors * item_vectors(pos_items), axis=-1)
    neg_vectors = item_vectors(neg_items)
    if neg_items.ndim == 1:
        neg_scores = jnp.sum(user_vectors * neg_vectors, axis=-1)
    else:
        neg_scores = jnp.einsum("bk,bnk->bn", user_vectors, neg_vectors)
    pairwise = bpr(pos_scores, neg_scores, where=where, reduction=reduction)
    return pairwise + lam * l2_sum_of_squares(U, V, W)


def subspace_objective(projections: Sequence[ArrayLike], views: Sequence[ArrayLike], lam, *,
                       orthonormal: bool = False, codes: Sequence[ArrayLike] | None = None) -> jax.Array:
    r"""Multi-view subspace objective: reconstruct each view, and make the views' projections agree.

    .. math::
      \mathcal{L}(P_1, \dots, P_M) = \sum_{m=1}^{M} \lVert X_m - X_m P_m P_m^\top \rVert_F^2
        + \lambda \sum_{m \ne n} \lVert X_m P_m - X_n P_n \rVert_F^2,

    where the second sum runs over ORDERED pairs, so each unordered pair counts twice. With
    orthonormal :math:`P_m` (enforced by the caller, e.g. ``jaxrec.fusion.fit_subspace``) the
    first term is the variance of :math:`X_m` outside its subspace,
    :math:`\lVert X_m - X_m P_m P_m^\top \rVert_F^2 = \lVert X_m \rVert_F^2 - \lVert X_m P_m \rVert_F^2`
    (:math:`P_m^\top P_m = I_k`), which ``orthonormal=True`` computes: no (N, D_m) reconstruction,
    one product per view (shared with the agreement term). On the manifold its gradient differs from
    the general form's only by :math:`2 P_m (P_m^\top X_m^\top X_m P_m)`, a normal direction that a
    parametrization :math:`P = \operatorname{qf}(W)` maps to zero, so the gradient in :math:`W` is
    the same (up to float rounding; the difference of the two squared norms rounds relative to
    :math:`\lVert X_m \rVert_F^2`).

    Args:
      projections: M arrays :math:`P_m` of shape (D_m, k).
      views: M arrays :math:`X_m` of shape (N, D_m), rows are samples, rows paired across views.
      lam: agreement weight :math:`\lambda \ge 0`.
      orthonormal: the caller guarantees :math:`P_m^\top P_m = I_k` (e.g. by construction);
        the reconstruction term is then computed as the difference of squared norms.
      codes: the products :math:`X_m P_m` (N, k), when the caller has them already (a layer that
        also outputs the projections): they are used instead of computing them again here.

    Returns:
      A scalar.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxrec import losses
      >>> X1, X2 = jnp.array([[1.0, 2.0]]), jnp.array([[3.0]])
      >>> P1, P2 = jnp.array([[1.0], [0.0]]), jnp.array([[1.0]])
      >>> float(losses.subspace_objective([P1, P2], [X1, X2], 0.5))  # 2^2 + 0.5 * 2 * (1 - 3)^2
      8.0

    References:
      Hotelling, `Relations Between Two Sets of Variates
      <https://doi.org/10.2307/2333955>`_, Biometrika 1936 (the agreement term's CCA limit);
      Xu, Tao and Xu, `A Survey on Multi-view Learning <https://arxiv.org/abs/1304.5634>`_, 2013.
    """
    if isinstance(projections, jax.Array) or isinstance(views, jax.Array):
        raise DataError(
            "projections and views must be sequences of arrays, one per view",
            field="projections" if isinstance(projections, jax.Array) else "views",
            found="a single array",
            expected="a list of arrays",
        )
    projections = [as_float(p) for p in projections]
    views = [as_float(x) for x in views]
    if len(views) == 0 or len(projections) != len(views):
        raise DataError(
            "need one projection per view and at least one view",
            field="projections",
            found=f"{len(projections)} projections for {len(views)} views",
            expected=f"{max(len(views), 1)} projections",
        )
    check_rank(views[0], 2, "views[0]")
    check_rank(projections[0], 2, "projections[0]")
    n_samples, k = views[0].shape[0], projections[0].shape[1]
    for m, (p, x) in enumerate(zip(projections, views)):
        check_shape(x, (n_samples, None), f"views[{m}]")
        check_shape(p, (x.shape[1], k), f"projections[{m}]")
    if codes is None:
        codes = [x @ p for p, x in zip(projections, views)]
    else:
        codes = [as_float(z) for z in codes]
        if len(codes) != len(views):
            raise DataError("need one code array per view", field="codes",
                            found=f"{len(codes)} code arrays for {len(views)} views", expected=f"{len(views)}")
        for m, z in enumerate(codes):
            check_shape(z, (n_samples, k), f"codes[{m}]")
    if orthonormal:
        reconstruction = sum(jnp.sum(jnp.square(x)) - jnp.sum(jnp.square(z)) for x, z in zip(views, codes))
    else:
        reconstruction = sum(jnp.sum(jnp.square(x - z @ p.T)) for p, x, z in zip(projections, views, codes))
    agreement = sum(
        jnp.sum(jnp.square(codes[m] - codes[n])) for m in range(len(codes)) for n in range(m + 1, len(codes))
    )
    # Each unordered pair {m, n} appears twice among the ordered pairs m != n.
    return reconstruction + lam * 2.0 * agreement
