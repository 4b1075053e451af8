r"""Subspace recommender: modalities aligned in one shared space, fused with ID embeddings.

:class:`jaxrec.fusion.SubspaceProjection` maps each modality's (standardized) features
:math:`X_m` into a shared k-dimensional space by :math:`P_m \in \mathbb{R}^{D_m \times k}`; an
item's shared vector is the mean of its present projected views, mapped to the embedding space
by a learned :math:`B \in \mathbb{R}^{k \times d}` and added to its ID embedding:

.. math::
  z_i = \frac{\sum_m r_{im}\, x_{im}^\top P_m}{\sum_m r_{im}}, \qquad
  q_i = t_i e_i + B^\top z_i, \qquad \hat y_{ui} = p_u^\top q_i,

(:math:`t_i = 1` for items with a train interaction, :math:`r_{im} = 1` where item i has
modality m). The projections are trained jointly with the ranking loss, the subspace objective
of :func:`jaxrec.losses.subspace_objective` being an auxiliary term:

.. math::
  \mathcal{L}_\text{subspace} = \sum_m \lVert \bar X_m - \bar X_m P_m P_m^\top \rVert_F^2
    + \lambda \sum_{m \ne n} \lVert \bar X_m P_m - \bar X_n P_n \rVert_F^2,

over :math:`\bar X_m`, the rows of the TRAINED items that have every modality (never the
held-out items of a cold-start split, whose features a deployed model would not have seen),
weighted by ``loss_weights.subspace``. The term is a sum over items, not a mean: its weight
scales with :math:`1 / (n_\text{items} D)`. The total is
``bpr + reg * EmbLoss + subspace * L_subspace``.

The objective assumes orthonormal :math:`P_m` (a plain optimizer would shrink them to make
the views agree). With ``orthonormal=True`` (default) they are parametrized as
:math:`P_m = \operatorname{qf}(W_m)` (:func:`jaxrec.fusion.orthonormalize`, the sign-fixed QR
factor) through ``flax.linen.map_variables``: the optimizer updates the free :math:`W_m`
(stored under ``params/subspace/projection_m``) and every forward pass sees exactly
orthonormal projections, so nothing has to run after each update. With ``orthonormal=False``
the :math:`W_m` are used as they are and only the reconstruction term holds them near the
manifold. With orthonormal :math:`P_m` the reconstruction term is computed as
:math:`\lVert \bar X_m \rVert_F^2 - \lVert \bar X_m P_m \rVert_F^2` (the same value on the manifold, and
the same gradient in :math:`W_m`; ``jaxrec.losses.subspace_objective(..., orthonormal=True)``),
which removes the (n, D_m) reconstruction from every step.

Loss terms: ``bpr``, ``reg`` (MMRec's ``EmbLoss`` on the batch's :math:`p_u` and full item
vectors :math:`q_i`, as :func:`jaxrec.models._common.bpr_emb_loss`) and ``subspace``. Cold-start items are
scored from :math:`B^\top z_i` alone (ID embedding masked, never a training negative;
``id_dropout`` drops trained items' ID embeddings at random in training, as in
:mod:`jaxrec.models.fusion_mf`).

References:
  Hotelling, Relations Between Two Sets of Variates, Biometrika 1936; Xu, Tao and Xu,
  `A Survey on Multi-view Learning <https://arxiv.org/abs/1304.5634>`_, 2013; Absil, Mahony
  and Sepulchre, Optimization Algorithms on Matrix Manifolds, 2008 (the QR retraction).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxrec import fusion as jfusion
from jaxrec.errors import ConfigError
from jaxrec.models._init import xavier_normal
from jaxrec.models._registry import Built, register
from jaxrec.models._modality_inputs import (batch_items, check_id_dropout, modality_inputs, with_id_dropout)
from jaxrec.models._common import (bpr_emb_loss, check_positive_int, masked_rows, trained_item_mask)


def _orthonormal_projections(variables):
    # The subspace layer's only parameters are its (D_m, k) projections.
    return jax.tree.map(jfusion.orthonormalize, variables)


class SubspaceMF(nn.Module):
    """ID embeddings plus shared-subspace item vectors (see the module docstring).

    ``ctx``: ``{"modalities": [M arrays (n_items, D_m)], "masks": [M bool (n_items,)],
    "trained": bool (n_items,)}``.

    Attributes:
      n_users, n_items: table sizes.
      embedding_size: d.
      shared_dim: k, the shared space's dimension (at most every D_m).
      agreement: :math:`\\lambda`, the weight of the views' agreement in the objective.
      orthonormal: parametrize :math:`P_m = \\operatorname{qf}(W_m)`.
      id_dropout: probability of dropping an item's ID embedding in a training step.
    """

    n_users: int
    n_items: int
    embedding_size: int = 64
    shared_dim: int = 64
    agreement: float = 1.0
    orthonormal: bool = True
    id_dropout: float = 0.0

    def setup(self):
        d = self.embedding_size
        self.user_embedding = self.param("user_embedding", xavier_normal, (self.n_users, d))
        self.item_embedding = self.param("item_embedding", xavier_normal, (self.n_items, d))
        layer = jfusion.SubspaceProjection
        if self.orthonormal:
            layer = nn.map_variables(layer, "params", trans_in_fn=_orthonormal_projections, init=True)
        self.subspace = layer(dim=self.shared_dim, lam=self.agreement, orthonormal=self.orthonormal)
        self.to_embedding = nn.Dense(d, use_bias=False, kernel_init=xavier_normal)

    def _id_vectors(self, ctx, items):
        return masked_rows(self.item_embedding, ctx["trained"], items)

    def item_content(self, ctx, rows):
        """(R, d) shared-space item vectors :math:`B^\\top z_i` of item ``rows`` (R,)."""
        xs = [jnp.asarray(x)[rows] for x in ctx["modalities"]]
        out = self.subspace(xs, [jnp.asarray(m)[rows] for m in ctx["masks"]])
        return self.to_embedding(out.shared)

    def _trained_rows(self, ctx):
        """One pass of the subspace layer over the catalogue with only the TRAINED items' views:
        (n_items, d) content vectors (zero for untrained items) and the objective over the
        trained items that have every modality."""
        trained = jnp.asarray(ctx["trained"])
        out = self.subspace([jnp.asarray(x) for x in ctx["modalities"]],
                            [jnp.asarray(m) & trained for m in ctx["masks"]])
        return self.to_embedding(out.shared), out.objective

    def subspace_objective(self, ctx):
        """The auxiliary term: the subspace objective over the trained items with every modality."""
        return self._trained_rows(ctx)[1]

    def projections(self, ctx):
        """The M projections :math:`P_m` (D_m, k) the layer uses (orthonormal when ``orthonormal``)."""
        del ctx
        params = self.subspace.variables["params"]
        projections = [params[f"projection_{m}"] for m in range(len(params))]
        return [jfusion.orthonormalize(p) for p in projections] if self.orthonormal else projections

    def encode(self, ctx, train: bool = False):
        """Users :math:`p_u` and items :math:`t_i e_i + B^\\top z_i`, (n, d) each."""
        del train
        items = jnp.arange(self.n_items)
        return self.user_embedding, self._id_vectors(ctx, items) + self.item_content(ctx, items)

    def loss_terms(self, ctx, batch, train: bool = False):
        """``{"bpr", "reg", "subspace"}`` for a batch (``users``, ``pos_items``, ``neg_items``,
        ``weights``)."""
        users = batch["users"]
        items, pairs = batch_items(batch, ctx["trained"])
        id_vectors = self._id_vectors(with_id_dropout(self, ctx, self.id_dropout, train), items)
        # Every item a pair counts is trained (positives are train interactions, untrained
        # negatives are dropped), so one pass over the trained rows gives both the content
        # and the objective (which spans the catalogue anyway).
        content, objective = self._trained_rows(ctx)
        item_vectors = id_vectors + content[items]
        p = self.user_embedding[users]
        scores = jnp.einsum("bd,bkd->bk", p, item_vectors)
        terms = bpr_emb_loss(p, item_vectors[:, 0], item_vectors[:, 1:], pairs, batch["weights"], per="pair",
                            scores=(scores[:, 0], scores[:, 1:]))
        return {**terms, "subspace": objective}


@register("subspace", traced_args={"id_dropout": 0.0})
def build(dataset, *, embedding_size: int = 64, modalities: list[str] | None = None,
          feature_scaling: str = "standardize", shared_dim: int = 64, agreement: float = 1.0,
          orthonormal: bool = True, id_dropout: float = 0.0) -> Built:
    """The subspace recommender for ``dataset``.

    Args:
      dataset: a :class:`~jaxrec.data.MultimodalDataset` with at least one item modality.
      embedding_size: d (64 as MMRec).
      modalities: the modalities to align, in order (default: all).
      feature_scaling: ``"standardize"`` (default, fitted on train items), ``"l2"`` or ``"none"``.
      shared_dim: k, at most the narrowest modality's width.
      agreement: :math:`\\lambda \\ge 0`.
      orthonormal: keep :math:`P_m` orthonormal by parametrization (default) or train them freely.
      id_dropout: probability of dropping an item's ID embedding in a training step (default 0;
        see :mod:`jaxrec.models.fusion_mf`).

    Returns:
      :class:`~jaxrec.models.Built`, default weights ``{bpr: 1, reg: 1, subspace: 1e-5}``.
    """
    check_positive_int(embedding_size, "embedding_size", "subspace")
    check_positive_int(shared_dim, "shared_dim", "subspace")
    if isinstance(agreement, bool) or not isinstance(agreement, (int, float)) or not agreement >= 0:
        raise ConfigError(f"model subspace: model.args.agreement must be a number >= 0; found {agreement!r}")
    if not isinstance(orthonormal, bool):
        raise ConfigError(f"model subspace: model.args.orthonormal must be true or false; found {orthonormal!r}")
    features, masks, names = modality_inputs(dataset, modalities, scaling=feature_scaling, model="subspace")
    narrowest = min(x.shape[1] for x in features)
    if shared_dim > narrowest:
        raise ConfigError(f"model subspace: shared_dim={shared_dim} exceeds the narrowest modality's width "
                          f"{narrowest} ({names[[x.shape[1] for x in features].index(narrowest)]!r})")
    module = SubspaceMF(n_users=dataset.n_users, n_items=dataset.n_items, embedding_size=embedding_size,
                        shared_dim=shared_dim, agreement=float(agreement), orthonormal=orthonormal,
                        id_dropout=check_id_dropout(id_dropout, "subspace"))
    ctx = {"modalities": features, "masks": masks, "trained": trained_item_mask(dataset)}
    return Built(module=module, ctx=ctx, default_loss_weights={"bpr": 1.0, "reg": 1.0, "subspace": 1e-5})
