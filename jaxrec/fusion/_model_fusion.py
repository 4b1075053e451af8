"""Model-level fusion: one scorer per modality, the scores combined with learned weights."""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxrec.errors import ConfigError, DataError
from jaxrec._checks import (as_float, canonical_masks, check_broadcastable, check_modalities, check_nonnegative,
                             check_same_length, check_shape)

MODEL_FUSION_WEIGHTINGS = ("softmax", "nonneg")


def combine_modality_scores(
    scores: ArrayLike, present: ArrayLike, weights: ArrayLike, *, normalize: bool
) -> jax.Array:
    r"""Combine per-modality scores with non-negative weights over the present modalities.

    .. math::
      s = \sum_m r_m w_m s_m \quad\text{or, normalized,}\quad
      s = \frac{\sum_m r_m w_m s_m}{\sum_m r_m w_m},

    and :math:`s = 0` where no modality is present.

    Args:
      scores: (..., M) per-modality scores.
      present: (..., M) bool, True where the modality is present (broadcastable to ``scores``).
      weights: (M,) non-negative weights.
      normalize: whether to renormalize the weights over the present modalities.

    Returns:
      (...) combined scores.

    Raises:
      DataError: ``scores`` a scalar; ``present`` that does not broadcast to ``scores``' shape;
        ``weights`` not of shape (M,), or (concrete weights only: traced ones cannot be
        inspected) a negative weight.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxrec.fusion import combine_modality_scores
      >>> scores = jnp.array([[1.0, 2.0, 4.0]])
      >>> present = jnp.array([[True, False, True]])
      >>> combine_modality_scores(scores, present, jnp.array([1.0, 5.0, 3.0]), normalize=True)
      Array([3.25], dtype=float32)
    """
    scores = as_float(scores)
    if scores.ndim == 0:
        raise DataError("per-modality scores need a last axis of modalities", field="scores",
                        found="shape ()", expected="shape (..., M)")
    check_broadcastable(present, scores.shape, "present", "scores")
    check_shape(weights, (scores.shape[-1],), "weights")
    check_nonnegative(weights, "weights")
    present = jnp.broadcast_to(jnp.asarray(present, bool), scores.shape)
    effective = jnp.where(present, jnp.asarray(weights, scores.dtype), 0.0)
    combined = jnp.sum(effective * jnp.where(present, scores, 0.0), axis=-1)
    if not normalize:
        return combined
    total = jnp.sum(effective, axis=-1)
    return combined / jnp.where(total > 0, total, 1.0)


class ModelLevelFusion(nn.Module):
    r"""Model-level fusion: per-modality scorers whose scores are mixed by learned weights.

    .. math::
      s_m(u, i) = u_m^\top B_m\, i_m \quad (B_m = I \text{ unless } \texttt{bilinear}), \qquad
      s(u, i) = \sum_m \tilde w_m(i)\, s_m(u, i),

    with, for ``weighting="softmax"``, :math:`\tilde w_m(i) = r_m(i) e^{\theta_m} / \sum_l r_l(i)
    e^{\theta_l}` (a softmax over the item's present modalities) and, for ``"nonneg"``,
    :math:`\tilde w_m(i) = r_m(i) \operatorname{softplus}(\theta_m)`. An item with no modality
    scores 0. Initialization: equal logits :math:`\theta_m = 0` for ``"softmax"`` (the mean over
    the present modalities) and :math:`\operatorname{softplus}(\theta_m) = 1` for ``"nonneg"`` (MMGCN's
    plain sum); the bilinear :math:`B_m` LeCun-normal.

    ``pairwise=True`` scores every user against every item (full ranking): users (B, d) and items
    (I, d) give (B, I); otherwise users and items are aligned rows, (n, d) each, giving (n,).

    Attributes:
      weighting: ``"softmax"`` or ``"nonneg"``.
      bilinear: whether each scorer has a learned (d_u_m, d_i_m) matrix :math:`B_m`.

    References:
      Wei et al., MMGCN: Multi-modal Graph Convolution Network for Personalized Recommendation
      of Micro-video, ACM Multimedia 2019 (per-modality user-item scores, summed).
    """

    weighting: str = "softmax"
    bilinear: bool = False

    @nn.compact
    def __call__(
        self,
        users: Sequence[ArrayLike],
        items: Sequence[ArrayLike],
        masks: Sequence[ArrayLike] | None = None,
        *,
        pairwise: bool = False,
    ) -> jax.Array:
        """Score users against items.

        Args:
          users: M arrays (n, d_u_m) (or (B, d_u_m) when pairwise), the user side of each scorer.
          items: M arrays (n, d_i_m) (or (I, d_i_m)), the item side of each scorer.
          masks: M bool arrays (n,) (or (I,)), True where the item has that modality.
          pairwise: score all user-item pairs instead of aligned rows.

        Returns:
          (n,) scores, or (B, I) when pairwise.
        """
        if self.weighting not in MODEL_FUSION_WEIGHTINGS:
            raise ConfigError(
                f"unknown weighting {self.weighting!r}; expected one of {MODEL_FUSION_WEIGHTINGS}"
            )
        check_same_length(users, items, "users", "items")
        num_users = check_modalities(users, "users")
        num_items = check_modalities(items, "items")
        if not pairwise and num_users != num_items:
            raise DataError(
                "aligned scoring needs as many user rows as item rows (or pairwise=True)",
                field="users",
                found=f"{num_users} rows",
                expected=f"{num_items}",
            )
        masks = canonical_masks(masks, len(items), num_items)
        per_modality = []
        for m, (u, i) in enumerate(zip(users, items)):
            u, i = as_float(u), as_float(i)
            if self.bilinear:
                form = self.param(
                    f"bilinear_{m}", nn.initializers.lecun_normal(), (u.shape[1], i.shape[1])
                )
                u = u @ form
            elif u.shape[1] != i.shape[1]:
                raise DataError(
                    "dot-product scorers need equal user and item widths (or bilinear=True)",
                    field=f"items[{m}]",
                    found=f"width {i.shape[1]}",
                    expected=f"{u.shape[1]}",
                )
            # Absent items' rows may hold placeholders; keep them out of the products.
            i = jnp.where(masks[m][:, None], i, 0.0)
            per_modality.append(u @ i.T if pairwise else jnp.sum(u * i, axis=1))
        scores = jnp.stack(per_modality, axis=-1)
        present = jnp.stack(masks, axis=-1)  # (n, M) or (I, M): broadcasts over users when pairwise
        num_modalities = len(items)
        if self.weighting == "softmax":
            logits = self.param("logits", nn.initializers.zeros_init(), (num_modalities,))
            # exp(theta - max) is the softmax numerator; the per-item renormalization follows.
            weights = jnp.exp(logits - jax.lax.stop_gradient(jnp.max(logits)))
            return combine_modality_scores(scores, present, weights, normalize=True)
        raw = self.param(
            "raw_weights",
            nn.initializers.constant(math.log(math.expm1(1.0))),
            (num_modalities,),
        )
        return combine_modality_scores(scores, present, jax.nn.softplus(raw), normalize=False)

    def modality_weights(self) -> jax.Array:
        """The global modality weights (softmax over all modalities, or the softplus weights)."""
        params = self.variables["params"]
        if self.weighting == "softmax":
            return jax.nn.softmax(params["logits"])
        return jax.nn.softplus(params["raw_weights"])
