r"""SideMF: matrix factorization whose item factors include projected side features.

Each item's vector is a free factor plus a linear map of its fused modality features,

.. math::
  q_j = t_j V_j + W^\top z_j, \qquad \hat y_{uj} = U_u^\top q_j,

where :math:`z_j \in \mathbb{R}^D` concatenates the item's modalities, each standardized
per dimension with statistics fitted on train items (early fusion; rows of items lacking
a modality are zero, i.e. the train mean), and :math:`t_j \in \{0, 1\}` is 1 when item
:math:`j` has at least one train interaction. Items without one -- cold-start items -- are
scored from their features alone: their free factor is masked to zero in ``encode`` and in
the loss, and they are also dropped when drawn as a training negative (a new item does not
exist at training time, so nothing may be learnt about it), so the random initial
:math:`V_j` of a never-trained item never adds noise to its score.

Two objectives (``objective``), both :mod:`jaxrec.losses` functions split into unweighted
terms as the model contract asks:

- ``"bpr"`` (implicit feedback, the default): the pairwise form
  :func:`jaxrec.losses.side_mf_bpr` with ``reduction="mean"``,

  .. math::
    \mathcal{L}_\text{bpr} = \frac{1}{|P|}\sum_{(u,i,j) \in P} \operatorname{softplus}(\hat y_{uj} - \hat y_{ui}),

- ``"ratings"`` (explicit feedback): the squared error of :func:`jaxrec.losses.side_mf_objective`
  averaged over the batch's observed ratings,

  .. math::
    \mathcal{L}_\text{mse} = \frac{1}{|\Omega_B|}\sum_{(u,j) \in \Omega_B} (r_{uj} - \hat y_{uj})^2,

  so over one batch holding every observed rating once,
  :math:`|\Omega|\,\mathcal{L}_\text{mse} + \lambda\,\mathcal{L}_\text{reg}` IS
  ``side_mf_objective(U, t ⊙ V, W, Z, R, M, λ)``.

with the regularizer (``regularization``)

- ``"full"`` (default, the objectives' own): :math:`\mathcal{L}_\text{reg} = \lVert U\rVert_F^2 +
  \lVert V\rVert_F^2 + \lVert W\rVert_F^2` on the whole matrices, so that
  ``bpr + λ reg`` is exactly ``side_mf_bpr(..., λ, reduction="mean")``;
- ``"batch"``: the squared norms of the batch's rows, averaged over its triples,
  :math:`\frac{1}{|P|}\sum_{(u,i,j)} (\lVert U_u\rVert^2 + \lVert t_iV_i\rVert^2 + \lVert t_jV_j\rVert^2)
  + \lVert W\rVert_F^2` (per-sample SGD regularization as in BPR-Opt's learning algorithm).

``loss_weights: {reg: λ}`` sets :math:`\lambda`. Initialization: :math:`U, V` Xavier-normal
(as MMRec's embeddings), :math:`W = 0`, so training starts from plain MF and learns how much
the features add.

References:
  Singh and Gordon, `Relational Learning via Collective Matrix Factorization
  <https://dl.acm.org/doi/10.1145/1401890.1401969>`_, KDD 2008;
  Gantner et al., `Learning Attribute-to-Feature Mappings for Cold-Start Recommendations
  <https://ieeexplore.ieee.org/document/5693971>`_, ICDM 2010;
  Rendle et al., `BPR: Bayesian Personalized Ranking from Implicit Feedback
  <https://arxiv.org/abs/1205.2618>`_, UAI 2009.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import linen as nn

from jaxrec import losses
from jaxrec.errors import ConfigError
from jaxrec.models._common import (check_choice, check_positive_int, counted_pairs, item_side_features, rows_or_all,
                                   trained_item_mask)
from jaxrec.models._init import xavier_normal
from jaxrec.models._registry import Built, register

OBJECTIVES = ("bpr", "ratings")
REGULARIZATIONS = ("full", "batch")


# ---- the model -------------------------------------------------------------------------


class SideMF(nn.Module):
    """MF with item vectors ``t ⊙ V + Z W`` (see the module docstring).

    ``ctx``: ``{"features": (n_items, D) float32 Z, "trained": (n_items,) bool t}``.

    Attributes:
      n_users, n_items: table sizes.
      feature_dim: D.
      embedding_size: K.
      objective: ``"bpr"`` or ``"ratings"``.
      regularization: ``"full"`` or ``"batch"``.
    """

    n_users: int
    n_items: int
    feature_dim: int
    embedding_size: int = 64
    objective: str = "bpr"
    regularization: str = "full"

    def setup(self):
        k = self.embedding_size
        self.user_factors = self.param("user_factors", xavier_normal, (self.n_users, k))
        self.item_factors = self.param("item_factors", xavier_normal, (self.n_items, k))
        self.feature_map = self.param("feature_map", nn.initializers.zeros, (self.feature_dim, k))

    def _free_item_factors(self, ctx):
        return jnp.where(ctx["trained"][:, None], self.item_factors, 0.0)

    def encode(self, ctx, train: bool = False):
        """``(U (n_users, K), t ⊙ V + Z W (n_items, K))``."""
        del train
        return self.user_factors, self._free_item_factors(ctx) + ctx["features"] @ self.feature_map

    def loss_terms(self, ctx, batch, train: bool = False):
        """``{"bpr", "reg"}`` (objective ``bpr``) or ``{"mse", "reg"}`` (objective ``ratings``,
        which needs ``batch["ratings"]`` (B,) for the ``pos_items``)."""
        del train
        U, W, Z = self.user_factors, self.feature_map, ctx["features"]
        V = self._free_item_factors(ctx)
        if self.objective == "ratings":
            return self._rating_terms(U, V, W, Z, batch)
        negatives, pairs = batch["neg_items"], counted_pairs(batch, ctx["trained"])
        users = U[batch["users"]]
        positives, negative_vectors = self._item_vectors(V, W, Z, batch["pos_items"], negatives)
        pos_scores = jnp.sum(users * positives, axis=-1)
        neg_scores = jnp.einsum("bk,bnk->bn", users, negative_vectors)
        # = losses.side_mf_bpr(U, V, W, Z, users, pos, neg, 0, where=pairs, reduction="mean"),
        # without recomputing z W per batch row when all items cost less (tests check both).
        terms = {"bpr": losses.bpr(pos_scores, neg_scores, where=pairs)}
        if self.regularization == "full":
            terms["reg"] = losses.l2_sum_of_squares(U, V, W)
        else:
            n_pairs = jnp.maximum(losses.batch_sum(pairs), 1)
            pair_weight = pairs.astype(U.dtype)
            row_pairs = jnp.sum(pair_weight, axis=1)  # each row's user and positive count once per pair
            row_norms = jnp.sum(jnp.square(users), -1) + jnp.sum(jnp.square(V[batch["pos_items"]]), -1)
            neg_norms = jnp.sum(jnp.square(V[negatives]), -1)
            terms["reg"] = (losses.batch_sum(row_pairs * row_norms) + losses.batch_sum(pair_weight * neg_norms)) \
                / n_pairs + jnp.sum(jnp.square(W))
        return terms

    def _item_vectors(self, V, W, Z, *item_arrays):
        """``t ⊙ V + Z W`` rows of each index array (:func:`~jaxrec.models._common.rows_or_all`)."""
        return rows_or_all(lambda rows: V[rows] + Z[rows] @ W, self.n_items, *item_arrays)

    def _rating_terms(self, U, V, W, Z, batch):
        if "ratings" not in batch:
            raise ConfigError("model sidemf with objective 'ratings' needs batch['ratings'] (B,) for the "
                              "batch's pos_items; use objective 'bpr' for implicit feedback")
        users, items = batch["users"], batch["pos_items"]
        [vectors] = self._item_vectors(V, W, Z, items)
        predicted = jnp.sum(U[users] * vectors, axis=-1)
        keep = batch["weights"] > 0
        squared = jnp.where(keep, jnp.square(batch["ratings"] - predicted), 0.0)
        terms = {"mse": losses.batch_sum(squared) / jnp.maximum(losses.batch_sum(keep), 1)}
        if self.regularization == "full":
            terms["reg"] = losses.l2_sum_of_squares(U, V, W)
        else:
            row = jnp.sum(jnp.square(U[users]), -1) + jnp.sum(jnp.square(V[items]), -1)
            terms["reg"] = (losses.batch_sum(jnp.where(keep, row, 0.0)) / jnp.maximum(losses.batch_sum(keep), 1)
                            + jnp.sum(jnp.square(W)))
        return terms


@register("sidemf")
def build(dataset, *, embedding_size: int = 64, modalities: list[str] | None = None,
          feature_scaling: str = "standardize", objective: str = "bpr", regularization: str = "full") -> Built:
    """SideMF for ``dataset``.

    Args:
      dataset: a :class:`~jaxrec.data.MultimodalDataset` with item modalities.
      embedding_size: K.
      modalities: the modalities fused into :math:`z` (default: all), concatenated in order.
      feature_scaling: ``"standardize"`` (default), ``"l2"`` or ``"none"`` per modality
        (:func:`item_side_features`).
      objective: ``"bpr"`` (default) or ``"ratings"``.
      regularization: ``"full"`` (default) or ``"batch"``.

    Returns:
      :class:`~jaxrec.models.Built`; default weights ``{bpr|mse: 1, reg: 1e-5}``.
    """
    check_positive_int(embedding_size, "embedding_size", "sidemf")
    check_choice(objective, "objective", OBJECTIVES, "sidemf")
    check_choice(regularization, "regularization", REGULARIZATIONS, "sidemf")
    if objective == "ratings" and dataset.interactions.ratings is None:
        raise ConfigError("model sidemf: objective 'ratings' needs a dataset with ratings; this one has none")
    features, _, _ = item_side_features(dataset, modalities, scaling=feature_scaling, model="sidemf")
    module = SideMF(n_users=dataset.n_users, n_items=dataset.n_items, feature_dim=features.shape[1],
                    embedding_size=embedding_size, objective=objective, regularization=regularization)
    ctx = {"features": features, "trained": trained_item_mask(dataset)}
    data_term = "bpr" if objective == "bpr" else "mse"
    return Built(module=module, ctx=ctx, default_loss_weights={data_term: 1.0, "reg": 1e-5})
