r"""MGCN: a purified multi-view graph convolutional network (MMRec's ``MGCN``).

**Views.** With :math:`P, Q` the user and item ID tables and :math:`\hat A` the
symmetric-normalized user-item graph of the TRAIN pairs
(:math:`\hat R_{ui} = 1/\sqrt{d_u d_i}` its user-item block), the *user-item view* is
LightGCN's layer mean,

.. math::
  C = \frac{1}{L+1} \sum_{l=0}^{L} \hat A^{\,l} [P; Q], \qquad L = \texttt{n\_ui\_layers}.

Per modality :math:`m` with features :math:`x^m_i`, the *behaviour-guided purifier* gates the
item ID embedding by the projected features, and the *item-item view* convolves the result
over the modality's kNN graph; users aggregate their items' purified embeddings:

.. math::
  \tilde q^m_i = q_i \odot \sigma\big(W^g_m (W_m x^m_i + b_m) + b^g_m\big), \qquad
  H^m = S_m^{\,L_m} \tilde Q^m, \qquad E^m = [\hat R H^m; H^m],

with :math:`L_m` = ``n_mm_layers``, :math:`S_m = D^{-1/2} A_m D^{-1/2}` the kNN graph of the
RAW features weighted by cosine similarity,
:math:`(A_m)_{ij} = \cos(x^m_i, x^m_j)\,[j \in \mathrm{kNN}_k(x^m_i)]` (each item its own
first neighbour), :math:`D` its row sums. It is built once on the host in tiles (never an
n x n matrix) and cached by content hash (:mod:`jaxrec.data.graph`).

**Behaviour-aware fuser.** For every node (user or item), attention over the M modality views
gives their common part, and a gate driven by the user-item view keeps each view's specific
part:

.. math::
  \alpha_m = \operatorname{softmax}_m\big(w^\top \tanh(W_a e^m + b_a)\big), \qquad
  e^{c} = \sum_m \alpha_m e^m, \qquad
  s = \frac{1}{M+1}\Big(e^{c} + \sum_m \sigma(W^p_m c + b^p_m) \odot (e^m - e^{c})\Big),

and the final embeddings, whose dot products are the scores, are :math:`e = c + s`.

**Loss terms** (unweighted, as the model contract asks), for the batch's real rows
:math:`(u, i, j)` (B of them; padding rows of weight 0 are left out everywhere, also as
in-batch negatives):

.. math::
  \mathcal{L}_\text{bpr} = \operatorname{mean}\,\operatorname{softplus}(e_u^\top e_j - e_u^\top e_i),
  \qquad
  \mathcal{L}_\text{reg} = \frac{1}{2B} \sum_{b} \big(\lVert e_u\rVert^2 + \lVert e_i\rVert^2
      + \lVert e_j\rVert^2\big),

.. math::
  \mathcal{L}_\text{cl} = \operatorname{NCE}_\tau\big(s_{I}, c_{I}\big) +
      \operatorname{NCE}_\tau\big(s_{U}, c_{U}\big), \qquad
  \operatorname{NCE}_\tau(a, b) = \frac{1}{B}\sum_{b} -\log
      \frac{\exp(\hat a_b^\top \hat b_b / \tau)}{\sum_{b'} \exp(\hat a_b^\top \hat b_{b'} / \tau)},

over the batch's positive items :math:`I` and users :math:`U` (rows unit-normalized,
:math:`\tau` = ``temperature`` = 0.2). MMRec minimizes
:math:`\mathcal{L}_\text{bpr} + \lambda_r \mathcal{L}_\text{reg} + \lambda_c \mathcal{L}_\text{cl}`,
so ``loss_weights: {reg: λ_r, cl: λ_c}`` are MMRec's ``reg_weight`` and ``cl_loss``.

As in MMRec the raw feature tables are trainable (``nn.Embedding.from_pretrained(...,
freeze=False)``) unless ``train_features=False``; the kNN graphs are built from the raw
features once. Initializations are torch's: Xavier-uniform ID tables, ``nn.Linear`` defaults
for every dense layer. Under ``train.parallel: pmap`` the terms equal one device's: the sums go
through ``jaxrec.losses.batch_sum`` and every device's rows are in-batch negatives. Each
:math:`\operatorname{NCE}_\tau` runs as ``jaxrec.losses.info_nce_by_id``: a table (users or
items) no larger than the batch is contrasted over its distinct rows, each weighted by how many
batch rows hold it (the same sum: a repeated row is repeated in MMRec's denominator), so an
lfm2k step forms (1,425 x 1,425) and (1,858 x 1,858) logits instead of two (2,048 x 2,048).

Deviations from MMRec: M modalities instead of exactly image + text (for M = 2, in MMRec's
order, it is MMRec's fuser, whose divisor is 3); BPR is a softplus (``-logsigmoid``, the same
function); :math:`\mathcal{L}_\text{reg}` divides by the batch's real rows instead of the
configured ``train_batch_size`` (equal except on an epoch's last batch), and with n > 1
negatives per row it averages :math:`\lVert e_j\rVert^2` over them; an item lacking a
modality (all-zero features) has no kNN neighbours in it (MMRec would divide by a zero norm
and produce NaN); the item itself is forced first among its neighbours (MMRec's ``topk``
keeps it as the row maximum, up to rounding).

References:
  Yu et al., `Multi-View Graph Convolutional Network for Multimedia Recommendation
  <https://arxiv.org/abs/2308.03588>`_, ACM MM 2023; MMRec ``src/models/mgcn.py``
  (github.com/enoche/MMRec).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jaxrec import losses
from jaxrec.data import graph as jgraph
from jaxrec.errors import ConfigError, DataError
from jaxrec.models._common import (FeatureTable, check_knn_k, check_nonnegative_int, check_positive_int, graph_cache_of,
                                   modality_names)
from jaxrec.models._init import torch_linear_bias, torch_linear_kernel, xavier_uniform
from jaxrec.models._registry import Built, register


def _dense(features: int, fan_in: int, name: str, use_bias: bool = True) -> nn.Dense:
    """A Dense layer initialized as ``torch.nn.Linear(fan_in, features)``."""
    return nn.Dense(features, use_bias=use_bias, kernel_init=torch_linear_kernel,
                    bias_init=torch_linear_bias(fan_in), name=name)


class MGCN(nn.Module):
    """MGCN (see the module docstring).

    ``ctx``: ``{"graph": FixedGraph, "user_items": FixedGraph, "item_graphs": tuple of FixedGraph,
    "features": tuple of (n_items, d_m)}`` -- the normalized user-item graph :math:`\\hat A`,
    its user rows :math:`\\hat R` (same node numbering, users first), the per-modality kNN
    graphs :math:`S_m` and the raw features.

    Attributes:
      n_users, n_items: table sizes.
      feature_dims: width of each modality, in ``ctx["features"]`` order.
      embedding_size: d.
      n_ui_layers: L, user-item propagation layers.
      n_mm_layers: item-graph propagation layers.
      temperature: :math:`\\tau` of the contrastive term.
      train_features: whether the raw feature tables are trainable (MMRec: yes).
    """

    n_users: int
    n_items: int
    feature_dims: tuple[int, ...]
    embedding_size: int = 64
    n_ui_layers: int = 2
    n_mm_layers: int = 1
    temperature: float = 0.2
    train_features: bool = True

    def setup(self):
        d, modalities = self.embedding_size, range(len(self.feature_dims))
        self.user_embedding = self.param("user_embedding", xavier_uniform, (self.n_users, d))
        self.item_embedding = self.param("item_embedding", xavier_uniform, (self.n_items, d))
        self.projections = [_dense(d, dim, f"projection_{m}") for m, dim in enumerate(self.feature_dims)]
        self.purifiers = [_dense(d, d, f"purifier_{m}") for m in modalities]
        self.preferences = [_dense(d, d, f"preference_{m}") for m in modalities]
        self.query_hidden = _dense(d, d, "query_hidden")
        self.query_out = _dense(1, d, "query_out", use_bias=False)
        if self.train_features:
            self.feature_tables = [FeatureTable(name=f"features_{m}") for m in modalities]

    def modality_view(self, ctx, m: int):
        """:math:`E^m = [\\hat R H^m; H^m]`, (n_users + n_items, d)."""
        features = ctx["features"][m]
        if self.train_features:
            features = self.feature_tables[m](features)
        purified = self.item_embedding * nn.sigmoid(self.purifiers[m](self.projections[m](features)))
        for _ in range(self.n_mm_layers):
            purified = jgraph.propagate_fixed(ctx["item_graphs"][m], purified)
        stacked = jnp.concatenate([jnp.zeros((self.n_users, self.embedding_size), purified.dtype), purified])
        # The user rows of the user-item graph write only user rows: R H^m on top, H^m below.
        return stacked + jgraph.propagate_fixed(ctx["user_items"], stacked)

    def views(self, ctx):
        """``(content, side)``: the user-item view :math:`C` and the fused modality part
        :math:`S`, both (n_users + n_items, d)."""
        ego = jnp.concatenate([self.user_embedding, self.item_embedding], axis=0)
        content, _ = jgraph.lightgcn_propagate(ctx["graph"], ego, self.n_ui_layers, indices_are_sorted=True)
        modality = [self.modality_view(ctx, m) for m in range(len(self.feature_dims))]
        scores = jnp.concatenate([self.query_out(jnp.tanh(self.query_hidden(e))) for e in modality], axis=1)
        attention = jax.nn.softmax(scores, axis=1)
        common = sum(attention[:, m:m + 1] * e for m, e in enumerate(modality))
        specific = sum(nn.sigmoid(self.preferences[m](content)) * (e - common) for m, e in enumerate(modality))
        return content, (common + specific) / (len(modality) + 1)

    def encode(self, ctx, train: bool = False):
        """``(user_emb (n_users, d), item_emb (n_items, d))``: :math:`c + s`."""
        del train
        content, side = self.views(ctx)
        final = content + side
        return final[:self.n_users], final[self.n_users:]

    def loss_terms(self, ctx, batch, train: bool = False):
        """``{"bpr", "reg", "cl"}`` over the batch's real rows."""
        del train
        users, positives, negatives = batch["users"], batch["pos_items"], batch["neg_items"]
        weights = batch["weights"]
        content, side = self.views(ctx)
        final = content + side
        user_rows = final[users]
        pos_rows = final[self.n_users + positives]
        neg_rows = final[self.n_users + negatives]
        pos_scores = jnp.sum(user_rows * pos_rows, axis=-1)
        neg_scores = jnp.einsum("bd,bnd->bn", user_rows, neg_rows)
        squares = (jnp.sum(user_rows ** 2, axis=-1) + jnp.sum(pos_rows ** 2, axis=-1)
                   + jnp.mean(jnp.sum(neg_rows ** 2, axis=-1), axis=-1))
        n_real = losses.batch_sum(weights)
        reg = 0.5 * losses.batch_sum(weights * squares) / jnp.where(n_real > 0, n_real, 1.0)
        # Padding rows are neither anchors nor negatives; under data parallelism every device's
        # rows are negatives, so the term equals one device's. A table no larger than the batch
        # is contrasted over its distinct rows, weighted by their counts (info_nce_by_id).
        n = self.n_users
        cl = (losses.info_nce_by_id(side[n:], content[n:], positives, self.temperature, weights=weights,
                                    mask_negatives=True)
              + losses.info_nce_by_id(side[:n], content[:n], users, self.temperature, weights=weights,
                                      mask_negatives=True))
        return {"bpr": losses.bpr(pos_scores, neg_scores, weights=weights), "reg": reg, "cl": cl}


def _raw_features(dataset, modalities: Sequence[str] | None) -> tuple[list[np.ndarray], tuple[str, ...]]:
    """The raw (n_items, d_m) float32 features of the modalities, absent rows zero."""
    names = modality_names(dataset, modalities, "mgcn")
    if not names:
        raise ConfigError("model mgcn needs item modalities; the dataset has none (check data.modalities)")
    blocks = []
    for name in names:
        if name not in dataset.modalities:
            raise ConfigError(f"model mgcn: no modality {name!r} in the dataset "
                              f"(it has {', '.join(dataset.modalities) or 'none'})")
        modality = dataset.modalities[name]
        if modality.is_sequence:
            raise ConfigError(f"model mgcn: modality {name!r} is a sequence {modality.features.shape}; "
                              "pool it to one row per item first")
        block = np.where(modality.mask[:, None], modality.features, 0.0).astype(np.float32)
        if not np.all(np.isfinite(block)):
            bad = int(np.argwhere(~np.isfinite(block))[0, 0])
            raise DataError("non-finite item features", path=dataset.metadata.get("source"),
                            field=f"modalities[{name!r}]", found=f"a NaN/inf in item {bad}", expected="finite features")
        blocks.append(block)
    return blocks, names


@register("mgcn")
def build(dataset, *, embedding_size: int = 64, knn_k: int = 10, n_ui_layers: int = 2, n_mm_layers: int = 1,
          temperature: float = 0.2, modalities: list[str] | None = None, train_features: bool = True,
          graph_cache: str | None = "default") -> Built:
    """MGCN for ``dataset``.

    Args:
      dataset: a :class:`~jaxrec.data.MultimodalDataset` with item modalities; its TRAIN
        pairs make the user-item graph.
      embedding_size: d (MMRec: 64).
      knn_k: neighbours per item in each modality's kNN graph (MMRec: 10).
      n_ui_layers: user-item layers (MMRec: 2). n_mm_layers: item-graph layers (MMRec's
        ``n_layers``: 1).
      temperature: :math:`\\tau` of the contrastive term (MMRec: 0.2, fixed in its code).
      modalities: the modalities used, in order (default: all of the dataset's; MMRec's
        order is image then text).
      train_features: the raw features are trainable parameters, as in MMRec.
      graph_cache: ``"default"`` (``~/.cache/jaxrec/graphs`` or ``$JAXREC_GRAPH_CACHE``), a
        folder, or ``"none"`` for the kNN neighbours.

    Returns:
      :class:`~jaxrec.models.Built` with weights ``{bpr: 1, reg: 1e-4, cl: 0.01}`` (MMRec's
      ``reg_weight``; ``cl_loss`` 0.01 from its grid, chosen by validation on lfm2k).
    """
    check_positive_int(embedding_size, "embedding_size", "mgcn")
    check_knn_k(knn_k, dataset.n_items, "mgcn")
    for name, value in (("n_ui_layers", n_ui_layers), ("n_mm_layers", n_mm_layers)):
        check_nonnegative_int(value, name, "mgcn")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ConfigError(f"model mgcn: model.args.temperature must be a positive number; found {temperature!r}")
    if not isinstance(train_features, bool):
        raise ConfigError(f"model mgcn: model.args.train_features must be true or false; found {train_features!r}")
    cache = graph_cache_of(graph_cache)
    blocks, names = _raw_features(dataset, modalities)
    full = jgraph.normalized_adjacency(jgraph.bipartite_graph(dataset, split="train"))
    user_rows = np.asarray(full.rows) < dataset.n_users
    user_items = jgraph.Edges(*(np.asarray(a)[user_rows] for a in full))
    # Constant graphs: gradients over their sorted transposes (propagate_fixed; on CPU its kernel).
    knn_graphs = (jgraph.knn_edges(jgraph.item_knn_neighbours(dataset, name, k=knn_k, cache=cache), weighted=True,
                                   normalization="sym") for name in names)
    item_graphs = tuple(jgraph.fixed_graph(edges).to_device() for edges in knn_graphs)
    ctx = {"graph": jgraph.fixed_graph(full, symmetric=True).to_device(),
           "user_items": jgraph.fixed_graph(user_items).to_device(), "item_graphs": item_graphs,
           "features": tuple(jnp.asarray(block) for block in blocks)}
    module = MGCN(n_users=dataset.n_users, n_items=dataset.n_items, feature_dims=tuple(b.shape[1] for b in blocks),
                  embedding_size=embedding_size, n_ui_layers=n_ui_layers, n_mm_layers=n_mm_layers,
                  temperature=float(temperature), train_features=train_features)
    return Built(module=module, ctx=ctx, default_loss_weights={"bpr": 1.0, "reg": 1e-4, "cl": 0.01})
