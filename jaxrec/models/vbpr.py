r"""VBPR: Visual Bayesian Personalized Ranking (He & McAuley, AAAI 2016), for any item modalities.

The paper's predictor, with :math:`f_i \in \mathbb{R}^D` the item's (fused) modality features:

.. math::
  \hat x_{ui} = \alpha + \beta_u + \beta_i + \gamma_u^\top \gamma_i
      + \theta_u^\top (E f_i) + \beta'^\top f_i .

:math:`\alpha` and :math:`\beta_u` do not change a user's ranking and cancel in every BPR
difference, so they are left out (as in the paper's own training). Fusion (``fusion``):

- ``"early"``: :math:`f_i` concatenates the modalities, one :math:`E \in \mathbb{R}^{K' \times D}`
  (stored transposed, ``(D, K')``);
- ``"late"``: one :math:`E_m` and one user part :math:`\theta_u^m` per modality,
  :math:`\sum_m \theta_u^{m\top} (E_m f_i^m)` (with a shared :math:`\theta_u` this would equal
  early fusion with a block-diagonal :math:`E`, so the per-modality user parts are what makes
  it a different model).

BPR-Opt with the paper's separate regularization of the non-visual and visual parameters, as
per-triple averages (the mini-batch form of the paper's per-sample SGD updates):

.. math::
  \mathcal{L} = \underbrace{\frac{1}{|P|}\sum_{(u,i,j) \in P}
      \operatorname{softplus}(\hat x_{uj} - \hat x_{ui})}_{\texttt{bpr}}
   + \lambda_\Theta \underbrace{\frac{1}{|P|}\sum_{(u,i,j) \in P} \big(
      \lVert\gamma_u\rVert^2 + \lVert\theta_u\rVert^2 + \lVert\gamma_i\rVert^2 + \beta_i^2
      + \lVert\gamma_j\rVert^2 + \beta_j^2\big)}_{\texttt{reg\_theta}}
   + \lambda_E \underbrace{\big(\lVert E\rVert_F^2 + \lVert\beta'\rVert^2\big)}_{\texttt{reg\_e}},

``loss_weights: {reg_theta: λ_Θ, reg_e: λ_E}`` (the paper writes :math:`\lambda\lVert\cdot\rVert^2`
terms whose SGD step is :math:`-\lambda\Theta`; ours are :math:`\lambda\lVert\cdot\rVert^2`, so a
paper :math:`\lambda` is our :math:`\lambda/2`). ``encode`` folds the biases in as an extra
column: users :math:`[\gamma_u, \theta_u, 1]`, items :math:`[\gamma_i, E f_i, \beta_i + \beta'^\top f_i]`.

Cold-start items (no train interaction, :math:`t_i = 0`) are scored from features alone:
their :math:`\gamma_i` and :math:`\beta_i` are masked to zero, and they are never used as
training negatives (:func:`jaxrec.models._common.counted_pairs`).

``mmrec_compat=True`` is MMRec's ``src/models/vbpr.py`` instead, which differs from the paper:
no item bias :math:`\beta_i` and no visual bias :math:`\beta'`; the modalities (text, then
vision) are concatenated raw and projected by a ``Linear`` layer WITH a bias :math:`b`, so the
item vector is :math:`[\gamma_i, E f_i + b]` and the user vector :math:`[\gamma_u, \theta_u]`
(one ``(n_users, 2K)`` table); Xavier-uniform :math:`\gamma, \theta` tables, a Xavier-normal
:math:`E` and zero :math:`b`; and ONE regularizer, MMRec's ``EmbLoss`` on the batch's user,
positive and negative vectors (Frobenius norms, not squared, over the batch size, INCLUDING the
feature projections :math:`E f_i + b`), weighted by ``reg_weight``. Its terms are ``{bpr, reg}``.
Two consequences worth knowing: :math:`b` adds :math:`\theta_u^\top b` to a positive and a
negative alike, so its exact BPR gradient is 0 (it only picks up rounding noise, which Adam's
normalized steps turn into a random walk that EmbLoss pulls back): the variant has no bias of
any kind; and raw vggish rows (entries up to ~250, norm ~1500) make :math:`E f_i`
dominate the item vector at initialization. One deviation from MMRec's code in this variant too: an
item never seen in training has its :math:`\gamma_i` masked to zero and is never a training
negative, as in the paper variant above (MMRec scores it with its random initial :math:`\gamma_i`;
where every item has a training interaction nothing differs). (Its lfm2k results: the header of
``experiments/configs/lfm2k/vbpr.yaml``.)

References:
  He and McAuley, `VBPR: Visual Bayesian Personalized Ranking from Implicit Feedback
  <https://arxiv.org/abs/1510.01784>`_, AAAI 2016; MMRec ``src/models/vbpr.py``
  (github.com/enoche/MMRec).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jaxrec import losses
from jaxrec._matmul import constant_matmul
from jaxrec.errors import ConfigError
from jaxrec.models._common import (bpr_emb_loss, check_bool, check_choice, check_positive_int, counted_pairs,
                                   item_side_features, masked_rows, matmul, rows_or_all, trained_item_mask)
from jaxrec.models._init import xavier_normal, xavier_uniform
from jaxrec.models._registry import Built, register

FUSIONS = ("early", "late")
# The builder keeps f's transpose in the paper form's ctx when it takes at most this many bytes (the
# features then sit twice on the device; on lfm2k 2.9 MB): a step that projects every item's features
# computes E's gradient from it (VBPR._visual). A larger catalogue's batches rarely cover every item.
TRANSPOSE_LIMIT = 64 * 2**20


class VBPR(nn.Module):
    """VBPR, the paper's form (see the module docstring).

    ``ctx``: ``{"features": (n_items, D) float32 f, "trained": (n_items,) bool t}``, optionally
    with ``"features_t"``, f's transpose (D, n_items) as a constant: where a step projects
    every item's features, :math:`E`'s gradient is then the plain product with it
    (:func:`jaxrec._matmul.constant_matmul`; the builder adds it, :data:`TRANSPOSE_LIMIT`).

    Attributes:
      n_users, n_items: table sizes.
      feature_dims: widths of the modalities concatenated in ``features``.
      embedding_size: K, the width of :math:`\\gamma`.
      visual_size: K', the width of :math:`\\theta` and :math:`E f` (per modality when late).
      fusion: ``"early"`` or ``"late"``.
    """

    n_users: int
    n_items: int
    feature_dims: tuple[int, ...]
    embedding_size: int = 64
    visual_size: int = 64
    fusion: str = "early"

    def setup(self):
        k, kv = self.embedding_size, self.visual_size
        d = sum(self.feature_dims)
        blocks = len(self.feature_dims) if self.fusion == "late" else 1
        self.gamma_user = self.param("gamma_user", xavier_normal, (self.n_users, k))
        self.theta_user = self.param("theta_user", xavier_normal, (self.n_users, kv * blocks))
        self.gamma_item = self.param("gamma_item", xavier_normal, (self.n_items, k))
        self.beta_item = self.param("beta_item", nn.initializers.zeros, (self.n_items,))
        if self.fusion == "early":
            self.embeddings = [self.param("E", xavier_normal, (d, kv))]
        else:
            self.embeddings = [self.param(f"E_{m}", xavier_normal, (dm, kv)) for m, dm in enumerate(self.feature_dims)]
        self.beta_prime = self.param("beta_prime", nn.initializers.zeros, (d,))

    def _visual(self, features, features_t=None):
        """(..., D) features -> (..., blocks * K') visual item factors; ``features_t``, the
        transpose of a 2-D ``features`` (every item's), makes :math:`E`'s gradient a plain
        product with it (:func:`~jaxrec._matmul.constant_matmul`)."""
        def project(x, x_t, E):
            return matmul(x, E) if x_t is None else constant_matmul(x, x_t, E)

        if self.fusion == "early":
            return project(features, features_t, self.embeddings[0])
        parts, start = [], 0
        for E, dm in zip(self.embeddings, self.feature_dims):
            block_t = None if features_t is None else features_t[start:start + dm]  # contiguous rows of f^T
            parts.append(project(features[..., start:start + dm], block_t, E))
            start += dm
        return jnp.concatenate(parts, axis=-1)

    def _item_tables(self, ctx, items):
        """Per item, for every item (``items`` None) or for the rows ``items`` (R,):
        ``([γ, E f] (R, K + blocks K'), β + β'·f (R,), ||γ||² + β² (R,))``, γ and β zero
        for never-trained items."""
        features, trained = jnp.asarray(ctx["features"]), jnp.asarray(ctx["trained"])
        features_t = ctx.get("features_t")
        gamma, beta = self.gamma_item, self.beta_item
        if items is not None:
            features, trained, gamma, beta = features[items], trained[items], gamma[items], beta[items]
            features_t = None
        gamma = jnp.where(trained[:, None], gamma, 0.0)
        beta = jnp.where(trained, beta, 0.0)
        return (jnp.concatenate([gamma, self._visual(features, features_t)], axis=1), beta + features @ self.beta_prime,
                jnp.sum(jnp.square(gamma), axis=-1) + jnp.square(beta))

    def _item_rows(self, ctx, items):
        """:meth:`_item_tables` at ``items`` (any int shape), each gathered once for all of them:
        the tables of every item when ``items`` holds at least as many ids as there are items
        (:func:`~jaxrec.models._common.rows_or_all`'s rule), else the rows alone."""
        flat = items.reshape(-1)
        if flat.size >= self.n_items:
            parts = [part[flat] for part in self._item_tables(ctx, None)]
        else:
            parts = list(self._item_tables(ctx, flat))
        return [part.reshape(items.shape + part.shape[1:]) for part in parts]

    def encode(self, ctx, train: bool = False):
        """Users ``[γ_u, θ_u, 1]``, items ``[γ_i, E f_i, β_i + β'·f_i]``."""
        del train
        rows, bias, _ = self._item_tables(ctx, None)
        users = jnp.concatenate([self.gamma_user, self.theta_user, jnp.ones((self.n_users, 1))], axis=1)
        return users, jnp.concatenate([rows, bias[:, None]], axis=1)

    def loss_terms(self, ctx, batch, train: bool = False):
        """``{"bpr", "reg_theta", "reg_e"}`` for a contract batch (``jaxrec.models._registry``).

        The positives and the negatives are gathered together (one gather per item table,
        and one scatter-add per table in the gradient), and ``[γ_u, θ_u]`` from one user table.
        """
        del train
        users, positives, negatives = batch["users"], batch["pos_items"], batch["neg_items"]
        pairs = counted_pairs(batch, ctx["trained"])
        # Row b: its positive, then its negatives, all gathered together: (B, 1 + n, ...).
        item_rows, bias, norms = self._item_rows(ctx, jnp.concatenate([positives[:, None], negatives], axis=1))
        user_rows = rows_or_all(lambda r: jnp.concatenate([self.gamma_user[r], self.theta_user[r]], axis=1),
                                self.n_users, users)[0]
        scores = bias + jnp.einsum("bk,bnk->bn", user_rows, item_rows)  # [γ_u, θ_u] . [γ_i, E f_i]
        pos_scores, neg_scores = scores[:, 0], scores[:, 1:]
        pair_weight = pairs.astype(pos_scores.dtype)
        n_pairs = jnp.maximum(losses.batch_sum(pair_weight), 1.0)
        # Per triple: the user's and the positive's parameters count once for each of its pairs.
        row_norms = jnp.sum(jnp.square(user_rows), -1) + norms[:, 0]
        reg_theta = (losses.batch_sum(jnp.sum(pair_weight, axis=1) * row_norms)
                     + losses.batch_sum(pair_weight * norms[:, 1:])) / n_pairs
        reg_e = sum(jnp.sum(jnp.square(E)) for E in self.embeddings) + jnp.sum(jnp.square(self.beta_prime))
        return {"bpr": losses.bpr(pos_scores, neg_scores, where=pairs), "reg_theta": reg_theta, "reg_e": reg_e}


class MMRecVBPR(nn.Module):
    """MMRec's VBPR (``mmrec_compat``; see the module docstring): user ``[γ_u, θ_u]``, item
    ``[γ_i, E f_i + b]``, BPR + EmbLoss.

    ``ctx``: as :class:`VBPR`'s. Attributes: as :class:`VBPR`'s, without ``fusion`` (early).
    """

    n_users: int
    n_items: int
    feature_dims: tuple[int, ...]
    embedding_size: int = 64
    visual_size: int = 64

    def setup(self):
        k, kv = self.embedding_size, self.visual_size
        self.user_table = self.param("user_embedding", xavier_uniform, (self.n_users, k + kv))
        self.gamma_item = self.param("item_embedding", xavier_uniform, (self.n_items, k))
        # torch's Linear weight is (out, in); Xavier is symmetric in the fans, so drawing the
        # transposed (in, out) matrix gives the same distribution.
        self.projection = self.param("projection", xavier_normal, (sum(self.feature_dims), kv))
        self.projection_bias = self.param("projection_bias", nn.initializers.zeros, (kv,))

    def _item_vectors(self, ctx, *item_arrays):
        """``[γ_i, E f_i + b]`` of each index array (γ zero for never-trained items)."""
        features = ctx["features"]
        visual = rows_or_all(lambda rows: matmul(features[rows], self.projection) + self.projection_bias, self.n_items,
                             *item_arrays)
        return [jnp.concatenate([masked_rows(self.gamma_item, ctx["trained"], items), v], axis=-1)
                for items, v in zip(item_arrays, visual)]

    def encode(self, ctx, train: bool = False):
        """``([γ_u, θ_u], [γ_i, E f_i + b])``."""
        del train
        [items] = self._item_vectors(ctx, jnp.arange(self.n_items))
        return self.user_table, items

    def loss_terms(self, ctx, batch, train: bool = False):
        """``{"bpr", "reg"}`` for a contract batch (``jaxrec.models._registry``)."""
        del train
        # MMRec draws one negative per positive; with several, each (u, i, j) is a triple and the
        # EmbLoss sums the norms of the stacked triples' vectors (n = 1: exactly MMRec's).
        positives, negatives = self._item_vectors(ctx, batch["pos_items"], batch["neg_items"])
        return bpr_emb_loss(self.user_table[batch["users"]], positives, negatives,
                            counted_pairs(batch, ctx["trained"]), batch["weights"], per="pair")


@register("vbpr")
def build(dataset, *, embedding_size: int = 64, visual_size: int = 64, modalities: list[str] | None = None,
          fusion: str = "early", feature_scaling: str | None = None, mmrec_compat: bool = False) -> Built:
    """VBPR for ``dataset``.

    Args:
      dataset: a :class:`~jaxrec.data.MultimodalDataset` with item modalities.
      embedding_size: K, the width of :math:`\\gamma` (MMRec: ``embedding_size`` 64).
      visual_size: K', the width of :math:`\\theta` (MMRec: the same 64).
      modalities: the modalities fused into :math:`f` (default: all), in order; MMRec
        concatenates text, then vision.
      fusion: ``"early"`` (default) or ``"late"`` (not with ``mmrec_compat``).
      feature_scaling: ``"standardize"``, ``"l2"`` or ``"none"`` per modality; default
        ``"standardize"``, or ``"none"`` (raw, as MMRec) with ``mmrec_compat``.
      mmrec_compat: build MMRec's variant, :class:`MMRecVBPR` (module docstring).

    Returns:
      :class:`~jaxrec.models.Built`; default weights ``{bpr: 1, reg_theta: 1e-4, reg_e: 0}``
      (MMRec variant: ``{bpr: 1, reg: 2.0}``, MMRec's ``reg_weight`` chosen by validation on
      lfm2k in ``../shared/anchors``).
    """
    check_positive_int(embedding_size, "embedding_size", "vbpr")
    check_positive_int(visual_size, "visual_size", "vbpr")
    check_choice(fusion, "fusion", FUSIONS, "vbpr")
    check_bool(mmrec_compat, "mmrec_compat", "vbpr")
    if mmrec_compat and fusion != "early":
        raise ConfigError("model vbpr: mmrec_compat concatenates the modalities (early fusion); "
                          f"found fusion={fusion!r}")
    scaling = feature_scaling if feature_scaling is not None else ("none" if mmrec_compat else "standardize")
    features, dims, _ = item_side_features(dataset, modalities, scaling=scaling, model="vbpr")
    sizes = dict(n_users=dataset.n_users, n_items=dataset.n_items, feature_dims=dims, embedding_size=embedding_size,
                 visual_size=visual_size)
    module = MMRecVBPR(**sizes) if mmrec_compat else VBPR(**sizes, fusion=fusion)
    ctx = {"features": features, "trained": trained_item_mask(dataset)}
    if not mmrec_compat and np.asarray(features).nbytes <= TRANSPOSE_LIMIT:
        ctx["features_t"] = np.ascontiguousarray(np.asarray(features).T)
    weights = {"bpr": 1.0, "reg": 2.0} if mmrec_compat else {"bpr": 1.0, "reg_theta": 1e-4, "reg_e": 0.0}
    return Built(module=module, ctx=ctx, default_loss_weights=weights)
