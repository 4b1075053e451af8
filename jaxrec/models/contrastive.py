r"""A contrastive ID-vs-modality term added to any registered model (SLMRec-style, FAC task).

The wrapper builds the ``base`` model, keeps its ``encode`` (ranking is the base's, unchanged)
and its loss terms, and adds InfoNCE between two views of each positive item of the batch:
the base's ID view :math:`z_i = W_h q_i + b_h` (a linear head on the item embedding that
``encode`` returns, e.g. LightGCN's layer mean) and a modality view
:math:`t^m_i = g_m(f^m_i)`, a two-layer MLP
:math:`g_m(f) = W_2\,\operatorname{leaky\_relu}(W_1 f + b_1) + b_2` of the item's features in
modality :math:`m` (standardized on train items). With :math:`\tau` the temperature and
:math:`B` the batch's real rows,

.. math::
  \mathcal{L}_\text{info\_nce} = \sum_m \frac{1}{B}\sum_{b=1}^{B} -\log
      \frac{\exp(\cos(z_{i_b}, t^m_{i_b}) / \tau)}{\sum_{c=1}^{B} \exp(\cos(z_{i_b}, t^m_{i_c}) / \tau)}

(:func:`jaxrec.losses.info_nce`; the other positives of the batch are the negatives). With
``user_side=True`` a second term contrasts each user's ID view :math:`W_u p_u + b_u` with the
same MLP applied to the mean features of the user's TRAIN items,
:math:`g_m(\frac{1}{|N_u|}\sum_{i \in N_u} f^m_i)`:

.. math::
  \mathcal{L}_\text{info\_nce\_user} = \sum_m \frac{1}{B}\sum_b
      \ell_\text{InfoNCE}\big(W_u p_{u_b} + b_u,\; g_m(\bar f^m_{u_b})\big).

The modality term pulls items with similar content together in the ID space the base ranks
with, which helps items with few interactions. Use it from a config::

    model:
      name: contrastive
      args:
        base: lightgcn                 # any registered model
        base_args: {n_layers: 1}       # that model's own arguments
        modality: all-MiniLM-L6-v2     # a name or a list of names
        temperature: 0.2
        proj_dim: 64
    loss_weights:                      # the base's terms keep their names
      bpr: 1.0
      reg: 1.0e-2
      info_nce: 0.1                    # the weight of the contrastive term

Cost: each term is a (B x B) similarity matrix per modality, which for B = 2048 costs 20x
a LightGCN step on CPU; ``contrast_rows: R`` contrasts only the first R rows of each batch
(batches are shuffled every epoch, so these are a random subset), at :math:`(R/B)^2` of the
cost, with R - 1 negatives per row. A table (items, or users with ``user_side``) with no more
rows than the contrasted rows is contrasted over its distinct rows, each weighted by how many
rows hold it (:func:`jaxrec.losses.info_nce_by_id`: the same sum, an (n x n) matrix, the heads
and MLPs applied to each row once).

Notes. The SLMRec paper's FAC task contrasts graph-propagated modality embeddings through
linear heads; here the modality view is an MLP of the raw features, so the term applies to
any base model. Repeated positives within a batch count as each other's negatives, as in
SLMRec. Rows of weight 0 (padding) count for nothing: neither in the mean nor as negatives.
With ``train.parallel: pmap`` every device's rows are negatives, as on one device (with
``contrast_rows`` every device contrasts the batch's first R rows itself).

References:
  Tao et al., `Self-supervised Learning for Multimedia Recommendation
  <https://arxiv.org/abs/2107.05246>`_, IEEE TMM 2022; MMRec ``src/models/slmrec.py``
  (``fac``); van den Oord et al., `Representation Learning with Contrastive Predictive
  Coding <https://arxiv.org/abs/1807.03748>`_, 2018.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jaxrec import losses
from jaxrec.errors import ConfigError
from jaxrec.models._common import check_bool, check_positive_int, feature_blocks, item_side_features, modality_names
from jaxrec.models._registry import Built, build as build_model, register


class ModalityMLP(nn.Module):
    """:math:`g(f) = W_2\\,\\operatorname{leaky\\_relu}(W_1 f + b_1) + b_2`, both layers of width ``width``."""

    width: int

    @nn.compact
    def __call__(self, features):
        hidden = nn.leaky_relu(nn.Dense(self.width, name="hidden")(features))
        return nn.Dense(self.width, name="output")(hidden)


class Contrastive(nn.Module):
    """A base model plus the InfoNCE term(s) of the module docstring.

    ``ctx``: ``{"base": the base's ctx, "features": {name: (n_items, D_m)}}`` plus
    ``"user_profiles": {name: (n_users, D_m)}`` with ``user_side``.

    Attributes:
      base: the wrapped model (a submodule; its parameters live under ``"base"``).
      modalities: the contrasted modality names.
      proj_dim: width of the heads and of the MLPs.
      temperature: :math:`\\tau`.
      user_side: add the user term.
      contrast_rows: contrast only the first this many rows of a batch (0: all).
    """

    base: nn.Module
    modalities: tuple[str, ...]
    proj_dim: int = 64
    temperature: float = 0.2
    user_side: bool = False
    contrast_rows: int = 0

    def setup(self):
        self.item_head = nn.Dense(self.proj_dim, name="item_head")
        self.mlps = [ModalityMLP(self.proj_dim, name=f"mlp_{name}") for name in self.modalities]
        if self.user_side:
            self.user_head = nn.Dense(self.proj_dim, name="user_head")

    def encode(self, ctx, train: bool = False):
        """The base's ``(user_emb, item_emb)``, unchanged."""
        return self.base.encode(ctx["base"], train)

    def loss_terms(self, ctx, batch, train: bool = False):
        """The base's terms plus ``"info_nce"`` (and ``"info_nce_user"`` with ``user_side``)."""
        terms = dict(self.base.loss_terms(ctx["base"], batch, train))  # on the whole batch
        clash = {"info_nce", "info_nce_user"} & set(terms)
        if clash:
            raise ConfigError(f"model contrastive: the base model already has a term named {sorted(clash)[0]!r}")
        over_batch = not self.contrast_rows
        if self.contrast_rows:  # the batch's first rows, the same on every device
            batch = {name: losses.batch_gather(batch[name])[0][:self.contrast_rows]
                     for name in ("users", "pos_items", "weights")}
        weights = batch["weights"]
        user_emb, item_emb = self.base.encode(ctx["base"], train)

        def contrast(ids, table, head, features):
            """Sum over modalities of InfoNCE(head(table[ids]), mlp_m(features_m[ids])). A table no
            larger than the rows is contrasted over its distinct rows weighted by their counts
            (jaxrec.losses.info_nce_by_id's rule: the heads then map each row once)."""
            mlps = zip(self.mlps, (features[name] for name in self.modalities))
            if table.shape[0] <= ids.shape[0]:
                anchor = head(table)
                return sum(losses.info_nce_by_id(anchor, mlp(x), ids, self.temperature, weights=weights,
                                                 over_batch=over_batch, mask_negatives=True) for mlp, x in mlps)
            anchor = head(table[ids])
            return sum(losses.info_nce(anchor, mlp(x[ids]), self.temperature, weights=weights, over_batch=over_batch,
                                       mask_negatives=True) for mlp, x in mlps)

        terms["info_nce"] = contrast(batch["pos_items"], item_emb, self.item_head, ctx["features"])
        if self.user_side:
            terms["info_nce_user"] = contrast(batch["users"], user_emb, self.user_head, ctx["user_profiles"])
        return terms


def user_profiles(dataset, features: np.ndarray) -> np.ndarray:
    """(n_users, D) mean feature row of each user's distinct TRAIN items (zeros without any)."""
    pairs = np.unique(dataset.split_pairs("train"), axis=0)
    totals = np.zeros((dataset.n_users, features.shape[1]), np.float64)
    np.add.at(totals, pairs[:, 0], features[pairs[:, 1]])
    counts = np.bincount(pairs[:, 0], minlength=dataset.n_users)
    return (totals / np.maximum(counts, 1)[:, None]).astype(np.float32)


@register("contrastive", traced_args={"temperature": None})
def build(dataset, *, base: str = "bprmf", base_args: dict | None = None, modality: str | list[str] | None = None,
          temperature: float = 0.2, proj_dim: int = 64, user_side: bool = False, contrast_rows: int | None = None,
          feature_scaling: str = "standardize") -> Built:
    """``base`` with the contrastive ID-vs-modality term(s).

    Args:
      dataset: a :class:`~jaxrec.data.MultimodalDataset` with item modalities.
      base: the registered name of the wrapped model.
      base_args: that model's builder arguments.
      modality: the modality (a name) or modalities (a list) to contrast with; default all.
      temperature: :math:`\\tau > 0`.
      proj_dim: width of the heads and MLPs.
      user_side: also contrast users with the mean features of their train items.
      contrast_rows: contrast only the first this many rows of each batch (default: all).
      feature_scaling: ``"standardize"`` (default), ``"l2"`` or ``"none"`` per modality.

    Returns:
      :class:`~jaxrec.models.Built` whose weights are the base's defaults plus
      ``info_nce: 0.1`` (and ``info_nce_user: 0.1``); set ``loss_weights.info_nce``.
      A base ``epoch_update`` (e.g. FREEDOM's edge pruning) keeps running on the base's ctx
      and parameters.
    """
    if not isinstance(base, str) or base.lower() == "contrastive":
        raise ConfigError(f"model contrastive: model.args.base must name another registered model; found {base!r}")
    if base_args is not None and not isinstance(base_args, dict):
        raise ConfigError(f"model contrastive: model.args.base_args must be a mapping of the base's arguments; found {base_args!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not (
            math.isfinite(temperature) and temperature > 0):
        raise ConfigError(f"model contrastive: model.args.temperature must be a positive number; found {temperature!r}")
    check_positive_int(proj_dim, "proj_dim", "contrastive")
    if contrast_rows is not None:
        check_positive_int(contrast_rows, "contrast_rows", "contrastive")
    check_bool(user_side, "user_side", "contrastive")
    names = ([modality] if isinstance(modality, str)
             else None if modality is None else list(modality_names(dataset, modality, "contrastive", "modality")))
    if names is not None and not names:
        raise ConfigError("model contrastive: modality must name at least one modality")
    inner = build_model(base, dataset, **(base_args or {}))
    features, dims, names = item_side_features(dataset, names, scaling=feature_scaling, model="contrastive")
    blocks = dict(zip(names, feature_blocks(features, dims)))
    ctx = {"base": inner.ctx, "features": {n: jnp.asarray(b) for n, b in blocks.items()}}
    if user_side:
        ctx["user_profiles"] = {n: jnp.asarray(user_profiles(dataset, b)) for n, b in blocks.items()}
    module = Contrastive(base=inner.module, modalities=tuple(names), proj_dim=proj_dim,
                         temperature=float(temperature), user_side=user_side, contrast_rows=contrast_rows or 0)
    weights = dict(inner.default_loss_weights, info_nce=0.1)
    if user_side:
        weights["info_nce_user"] = 0.1
    epoch_update = None
    if inner.epoch_update is not None:
        def epoch_update(params, ctx, epoch, rng, _inner=inner.epoch_update):
            return {**ctx, "base": _inner(params["base"], ctx["base"], epoch, rng)}
    return Built(module=module, ctx=ctx, default_loss_weights=weights, epoch_update=epoch_update)
