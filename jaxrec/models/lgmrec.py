r"""LGMRec: local (graph) and global (hypergraph) embeddings of users and items (MMRec's ``LGMRec``).

Notation: :math:`R` the binary (n_users, n_items) matrix of distinct TRAIN pairs,
:math:`\hat A = D^{-1/2} A D^{-1/2}` its symmetric-normalized bipartite adjacency (users first,
as in :mod:`jaxrec.models.lightgcn`), :math:`d_u` a user's number of train items, :math:`x^m_i`
the RAW (frozen) features of item :math:`i` in modality :math:`m`, and
:math:`\operatorname{nrm}(x) = x / \max(\lVert x \rVert, 10^{-12})` row-wise (``F.normalize``).

**Local graph embeddings.** The collaborative graph embedding (CGE) is LightGCN's layer mean
over the ID tables :math:`E^{(0)} = [P; Q]`; the modality graph embedding (MGE) projects the
item features (:math:`W_m`, no bias), gives each user the mean of its items' projections and
propagates both over the same graph, keeping the LAST layer:

.. math::
  E_c = \frac{1}{L+1}\sum_{l=0}^{L} \hat A^{l} E^{(0)}, \qquad
  F_m = \hat A^{L_m} \begin{bmatrix} \operatorname{diag}(d_u^{-1}) R\, X_m W_m \\ X_m W_m \end{bmatrix},
  \qquad E_\text{local} = E_c + \textstyle\sum_m \operatorname{nrm}(F_m),

with :math:`L` = ``n_ui_layers`` (2) and :math:`L_m` = ``n_mm_layers`` (2).

**Global hypergraph embeddings.** Each modality has ``hyper_num`` = H learnable hyperedges
:math:`V_m` (d_m, H). Items depend on them through their features, users through the sum over
their items; the dependencies are Gumbel-softmax samples at temperature :math:`\tau` (0.2),
dropped out with keep probability :math:`\kappa` (``keep_rate``, 0.5, train only):

.. math::
  H^m_I = \operatorname{drop}_\kappa\big(\operatorname{softmax}((X_m V_m + G_I)/\tau)\big), \qquad
  H^m_U = \operatorname{drop}_\kappa\big(\operatorname{softmax}((R X_m V_m + G_U)/\tau)\big),

:math:`G` i.i.d. standard Gumbel noise. With :math:`Z^{(0)} = Q_c` (the items' rows of
:math:`E_c`), ``n_hyper_layer`` = :math:`L_h` (1) rounds of hypergraph message passing give

.. math::
  \Lambda^{(k)} = {H^m_I}^\top Z^{(k)}, \quad Z^{(k+1)} = H^m_I \Lambda^{(k)}, \qquad
  \Gamma^m = \begin{bmatrix} H^m_U \Lambda^{(L_h - 1)} \\ Z^{(L_h)} \end{bmatrix}
  = \begin{bmatrix} \Gamma^m_U \\ \Gamma^m_I \end{bmatrix}.

**Fusion.** :math:`E = E_\text{local} + \alpha\, \operatorname{nrm}(\sum_m \Gamma^m) = [\bar P; \bar Q]`,
:math:`\alpha` = ``alpha`` (0.3); scores are :math:`\bar p_u^\top \bar q_i`.

**Loss terms** (unweighted) for a batch of triples :math:`(u, i, j)` with :math:`B` real rows:

.. math::
  \mathcal{L}_\text{bpr} = \frac1B \sum \operatorname{softplus}(\bar p_u^\top \bar q_j - \bar p_u^\top \bar q_i),
  \qquad
  \mathcal{L}_\text{reg} = \frac{\lVert \bar P_B \rVert_F + \lVert \bar Q_{B^+} \rVert_F +
      \lVert \bar Q_{B^-} \rVert_F}{B},

.. math::
  \mathcal{L}_\text{hcl} = \frac1B \sum_{(u,i)} \Big[\ell\big(\Gamma^{a}_{U,u}, \Gamma^{b}_{U}, u\big)
      + \ell\big(\Gamma^{a}_{I,i}, \Gamma^{b}_{I}, i\big)\Big], \quad
  \ell(z, T, k) = -\log \frac{\exp(\operatorname{nrm}(z)^\top \operatorname{nrm}(T_k)/\tau)}
      {\sum_{k'} \exp(\operatorname{nrm}(z)^\top \operatorname{nrm}(T_{k'})/\tau)},

the hypergraph contrastive InfoNCE between the modalities' global views (:math:`a` the first
modality, MMRec's "v", :math:`b` the second, its "t"; the denominator runs over ALL users or
items). MMRec minimizes :math:`\mathcal{L}_\text{bpr} + \lambda_{cl} \sum_{rows} \ell +
\lambda_{reg} \mathcal{L}_\text{reg}`: its contrastive term is a SUM over the batch rows, here
a MEAN (so that ``train.parallel: pmap`` updates equal single-device ones), hence
``loss_weights: {hcl: λ_cl × 2048}`` (MMRec's ``cl_weight`` times its ``train_batch_size``)
and ``{reg: λ_reg}``. MMRec's ``reg_loss`` is :func:`jaxrec.losses.l2_mean_norm` of the batch's
FINAL embeddings (not the ID tables).

Initialization as in MMRec: Xavier-uniform ID tables, projections :math:`W_m` and hyperedges
:math:`V_m`. The raw features are constants (``freeze=True`` in MMRec).

Deviations from MMRec:

* Evaluation. MMRec's ``forward`` draws fresh Gumbel noise at every call, ranking included
  (only dropout is off in eval mode), so its rankings are random. Here ``encode(train=False)``
  draws the noise from a FIXED key (``eval_dependencies="gumbel"``, the default: the same
  distribution, deterministic), or uses the noise-free :math:`\operatorname{softmax}(\cdot/\tau)`
  (``eval_dependencies="softmax"``).
* The contrastive term is a batch mean (see above); on the epoch's last, padded batch MMRec
  sums fewer rows. Rows of weight 0 (padding) are left out of every term.
* More than two modalities: the contrastive term sums over consecutive pairs
  (:math:`m, m+1`); one modality has no contrastive term (MMRec falls back to CGE alone with
  one modality and then fails on undefined hypergraph views).
* ``cf_model: mf`` is ``n_ui_layers: 0`` (LightGCN's mean of the one layer-0 is MF).
* BPR is a softplus (MMRec's ``-logsigmoid``: the same function); the 1e-7 MMRec adds to every
  degree is left out (a zero degree maps to 0, as does MMRec's :math:`10^7 \cdot 0`).

References:
  Guo et al., `LGMRec: Local and Global Graph Learning for Multimodal Recommendation
  <https://arxiv.org/abs/2312.16400>`_, AAAI 2024; MMRec ``src/models/lgmrec.py`` and
  ``src/configs/model/LGMRec.yaml`` (github.com/enoche/MMRec).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jaxrec import losses
from jaxrec.data import graph as jgraph
from jaxrec.errors import ConfigError
from jaxrec.models._common import (batch_triples, bpr_emb_loss, check_choice, check_nonnegative_int, check_number,
                                   check_positive_int, chunk_size_for, counted_pairs, feature_blocks, is_constant,
                                   item_side_features, matmul, normalize_rows)
from jaxrec.models._init import xavier_uniform
from jaxrec.models._registry import Built, register


EVAL_DEPENDENCIES = ("gumbel", "softmax")
# Seed of the Gumbel noise used when ranking (eval_dependencies="gumbel").
EVAL_NOISE_SEED = 0
# MMRec's train_batch_size: its contrastive SUM over a batch is this many times our MEAN.
MMREC_BATCH_SIZE = 2048


def table_info_nce(anchors: jax.Array, targets: jax.Array, ids: jax.Array, weights: jax.Array | None,
                   temperature: float, *, target_factors: tuple[jax.Array, jax.Array] | None = None) -> jax.Array:
    r"""Mean over the batch rows of InfoNCE whose negatives are the WHOLE target table.

    .. math::
      \frac{1}{\sum_b w_b}\sum_b w_b\, \ell_{k_b}, \qquad
      \ell_k = \log \sum_{k'} e^{\hat a_k^\top \hat t_{k'} / \tau} - \hat a_k^\top \hat t_k / \tau,
      \qquad \hat x = \operatorname{nrm}(x),

    for (n, d) ``anchors`` and ``targets`` tables and (B,) row ids :math:`k_b` (MMRec's
    ``ssl_triple_loss`` divided by B). A row's loss depends only on its id, so a table with no
    more rows than the batch is scored whole, each :math:`\ell_k` weighted by how often
    :math:`k` occurs (no (B, d) gathers, whose scatter-add gradients are slow on CPU); a larger
    table scores the batch's rows. With ``target_factors = (F (n, r), G (r, d))``,
    ``targets = F @ G`` of rank r < d (LGMRec's hypergraph views have rank ``hyper_num``), the
    logits are :math:`(\hat a G^\top)(F / \lVert t \rVert)^\top`: r multiply-adds per pair
    instead of d. Without factors and with n <= B this is :func:`jaxrec.losses.info_nce` of the
    two tables weighted by the id counts.

    Args:
      anchors, targets: (n, d) tables, row-paired.
      ids: (B,) int row ids of the batch.
      weights: (B,) row weights (0 = padding).
      temperature: :math:`\tau`.
      target_factors: optional low-rank factors of ``targets`` (keyword-only).

    Returns:
      A scalar.
    """
    n_rows, batch = anchors.shape[0], ids.shape[0]
    weights = jnp.asarray(weights, anchors.dtype)
    whole_table = n_rows <= batch
    if whole_table:
        counts = jax.ops.segment_sum(weights, ids, num_segments=n_rows)
        if target_factors is None:
            # Table rows (the same on every device) weighted by this device's id counts.
            per_row = losses.info_nce(anchors, targets, temperature, weights=counts, reduction="none",
                                      over_batch=False)
            return _weighted_sum_mean(per_row, counts)
    normalized = normalize_rows(anchors)
    inverse_norms = jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(targets), axis=-1), 1e-24))
    positives = jnp.sum(normalized * targets, axis=-1) * inverse_norms / temperature
    # 1/tau scales the (n, .) keys, not the (., n) logits: the logits are then the product
    # itself, and no pass over the (., n) array multiplies them (a full write and read of it).
    key_scale = (inverse_norms / temperature)[:, None]
    if target_factors is None:
        queries, keys = normalized, targets * key_scale
    else:
        # Scaling the (n, r) factors, not the (., n) logits: XLA on CPU fused the latter's
        # backward into a much slower loop (docs/models/lgmrec.md).
        factors, basis = target_factors
        queries, keys = normalized @ basis.T, factors * key_scale
    if whole_table:
        per_row = losses.cosine_logsumexp(matmul(queries, keys.T), temperature) - positives
        return _weighted_mean(per_row, counts)
    per_row = losses.cosine_logsumexp(matmul(queries[ids], keys.T), temperature) - positives[ids]
    return _weighted_mean(per_row, weights)


def _weighted_mean(values: jax.Array, weights: jax.Array) -> jax.Array:
    return losses.batch_mean(values, weights)


def _weighted_sum_mean(weighted: jax.Array, weights: jax.Array) -> jax.Array:
    # reduce_losses' mean of already weighted values, over the whole batch.
    total, count = losses.batch_sum(weighted), losses.batch_sum(weights)
    return jnp.where(count > 0, total / jnp.where(count > 0, count, 1.0), 0.0)


class LGMRec(nn.Module):
    """LGMRec (see the module docstring).

    ``ctx``: ``{"graph": FixedGraph, "features": tuple of (n_items, d_m), "user_feature_sums":
    tuple of (n_users, d_m), "user_inverse_degree": (n_users,)}`` -- :math:`\\hat A`
    (row-sorted, users first; a constant :class:`~jaxrec.data.graph.FixedGraph`, symmetric, so
    its gradient is propagated over the graph itself), the raw features :math:`X_m`, :math:`R X_m` and :math:`1/d_u`
    (0 without train items).

    Attributes:
      n_users, n_items: table sizes.
      feature_dims: width of each modality, in ``ctx["features"]`` order.
      embedding_size: d (also the projections' width, MMRec's ``feat_embed_dim``).
      n_ui_layers, n_mm_layers, n_hyper_layer: L, L_m, L_h.
      hyper_num: H, hyperedges per modality.
      keep_rate: :math:`\\kappa`, dropout keep probability of the dependencies (training).
      alpha: weight of the global embeddings.
      tau: temperature of the Gumbel-softmax and of the contrastive term.
      eval_dependencies: ``"gumbel"`` (fixed-key noise) or ``"softmax"`` (no noise) when ranking.
    """

    n_users: int
    n_items: int
    feature_dims: tuple[int, ...]
    embedding_size: int = 64
    n_ui_layers: int = 2
    n_mm_layers: int = 2
    n_hyper_layer: int = 1
    hyper_num: int = 4
    keep_rate: float = 0.5
    alpha: float = 0.3
    tau: float = 0.2
    eval_dependencies: str = "gumbel"

    def setup(self):
        d = self.embedding_size
        self.user_embedding = self.param("user_embedding", xavier_uniform, (self.n_users, d))
        self.item_embedding = self.param("item_embedding", xavier_uniform, (self.n_items, d))
        self.projections = [self.param(f"projection_{m}", xavier_uniform, (dim, d))
                            for m, dim in enumerate(self.feature_dims)]
        self.hyperedges = [self.param(f"hyperedges_{m}", xavier_uniform, (dim, self.hyper_num))
                           for m, dim in enumerate(self.feature_dims)]

    def draw_noise(self, train: bool) -> list[dict]:
        """Per modality ``{"item_gumbel" (n_items, H), "user_gumbel" (n_users, H), "item_keep",
        "user_keep"}``: Gumbel noise (None: none) and dropout multipliers, 0 or
        :math:`1/\\kappa` (None: no dropout). Training draws from the ``"dropout"`` stream."""
        shapes = {"item": (self.n_items, self.hyper_num), "user": (self.n_users, self.hyper_num)}
        noise = []
        for m in range(len(self.feature_dims)):
            if train:
                key = self.make_rng("dropout")
            elif self.eval_dependencies == "gumbel":
                key = jax.random.fold_in(jax.random.PRNGKey(EVAL_NOISE_SEED), m)
            else:
                key = None
            draws = {}
            for index, (side, shape) in enumerate(shapes.items()):
                gumbel = keep = None
                if key is not None:
                    gumbel_key, keep_key = jax.random.split(jax.random.fold_in(key, index))
                    gumbel = jax.random.gumbel(gumbel_key, shape)
                    if train and not is_constant(self.keep_rate, 1.0):
                        keep = jax.random.bernoulli(keep_key, self.keep_rate, shape).astype(jnp.float32) / self.keep_rate
                draws[f"{side}_gumbel"], draws[f"{side}_keep"] = gumbel, keep
            noise.append(draws)
        return noise

    def embeddings(self, ctx, noise: Sequence[dict]):
        r"""``(users (n_users, d), items (n_items, d), views)`` for given noise (see
        :meth:`draw_noise`); ``views[m] = (H^m_U (n_users, H), H^m_I (n_items, H), Λ^m (H, d))``,
        the global views being :math:`\Gamma^m_U = H^m_U \Lambda^m`, :math:`\Gamma^m_I = H^m_I \Lambda^m`."""
        n_modalities = len(self.feature_dims)
        ego = jnp.concatenate([self.user_embedding, self.item_embedding], axis=0)
        modal = []
        for m, features in enumerate(ctx["features"]):
            # R X W = (R X) W: the users' feature sums are constants, so no graph product here.
            user_feats = matmul(ctx["user_feature_sums"][m], self.projections[m]) * ctx["user_inverse_degree"][:, None]
            modal.append(jnp.concatenate([user_feats, matmul(features, self.projections[m])], axis=0))
        collaborative, modal = self._propagate(ctx["graph"], ego, modal)
        items_c = collaborative[self.n_users:]
        local, global_sum, views = collaborative, 0.0, []
        for m, features in enumerate(ctx["features"]):
            local = local + normalize_rows(modal[m])
            item_logits = matmul(features, self.hyperedges[m])
            user_logits = matmul(ctx["user_feature_sums"][m], self.hyperedges[m])  # R X V
            item_dep = self._dependencies(item_logits, noise[m]["item_gumbel"], noise[m]["item_keep"])
            user_dep = self._dependencies(user_logits, noise[m]["user_gumbel"], noise[m]["user_keep"])
            hyper_items = items_c
            for _ in range(self.n_hyper_layer):
                latent = item_dep.T @ hyper_items
                hyper_items = item_dep @ latent
            views.append((user_dep, item_dep, latent))
            global_sum = global_sum + jnp.concatenate([user_dep @ latent, hyper_items], axis=0)
        fused = local + self.alpha * normalize_rows(global_sum) if n_modalities else local
        return fused[:self.n_users], fused[self.n_users:], views

    def _propagate(self, graph, ego, modal):
        """CGE's layer mean of ``ego`` over ``n_ui_layers`` and each MGE input after
        ``n_mm_layers``, propagated side by side as one wide (n, d (1 + M)) array per layer
        (faster on CPU than one (n, d) propagation each: ``docs/models/lgmrec.md``)."""
        collaborative_layers, current = [ego], list(modal)
        stacked, stacked_parts = None, None
        for layer in range(1, max(self.n_ui_layers, self.n_mm_layers) + 1):
            parts = ([collaborative_layers[-1]] if layer <= self.n_ui_layers else []) + (
                current if layer <= self.n_mm_layers else [])
            if stacked_parts != len(parts):  # else the previous layer's output is this layer's input as it is
                stacked = jnp.concatenate(parts, axis=1)
            stacked = jgraph.propagate_fixed(graph, stacked, chunk_size=chunk_size_for(stacked.shape[1]))
            stacked_parts = len(parts)
            pieces = jnp.split(stacked, len(parts), axis=1)
            if layer <= self.n_ui_layers:
                collaborative_layers.append(pieces.pop(0))
            if layer <= self.n_mm_layers:
                current = pieces
        collaborative = collaborative_layers[0] if len(collaborative_layers) == 1 else jnp.mean(
            jnp.stack(collaborative_layers), axis=0)
        return collaborative, current

    def _dependencies(self, logits, gumbel, keep):
        if gumbel is not None:
            logits = logits + gumbel
        dependencies = jax.nn.softmax(logits / self.tau, axis=-1)
        return dependencies if keep is None else dependencies * keep

    def encode(self, ctx, train: bool = False):
        """``(user_emb (n_users, d), item_emb (n_items, d))``, the fused embeddings."""
        users, items, _ = self.embeddings(ctx, self.draw_noise(train))
        return users, items

    def loss_terms(self, ctx, batch, train: bool = False):
        """``{"bpr", "reg", "hcl"}`` for ``users`` (B,), ``pos_items`` (B,), ``neg_items``
        (B, n_neg) or (B,) and optional ``weights`` (B,)."""
        users, positives, negatives, weights = batch_triples(batch)
        user_all, item_all, views = self.embeddings(ctx, self.draw_noise(train))
        terms = bpr_emb_loss(user_all[users], item_all[positives], item_all[negatives], counted_pairs(batch), weights)
        hcl = jnp.zeros((), user_all.dtype)
        low_rank = self.hyper_num < self.embedding_size
        for view_a, view_b in zip(views[:-1], views[1:]):
            latent_a, latent_b = view_a[2], view_b[2]
            for side, ids in ((0, users), (1, positives)):
                factors = (view_b[side], latent_b) if low_rank else None
                hcl = hcl + table_info_nce(view_a[side] @ latent_a, view_b[side] @ latent_b, ids, weights, self.tau,
                                           target_factors=factors)
        terms["hcl"] = hcl
        return terms


def lgmrec_context(dataset, blocks: Sequence[np.ndarray]) -> dict:
    r"""The model's ``ctx`` from ``dataset``'s TRAIN pairs and the (n_items, d_m) feature
    ``blocks``: :math:`\hat A`, :math:`R X_m` per modality (host float64 sums) and :math:`1/d_u`."""
    graph = jgraph.bipartite_graph(dataset, split="train")
    degrees = graph.user_degrees().astype(np.float64)
    inverse = np.where(degrees > 0, 1.0 / np.maximum(degrees, 1.0), 0.0).astype(np.float32)
    sums = []
    for block in blocks:
        total = np.zeros((dataset.n_users, block.shape[1]))
        np.add.at(total, graph.users, block[graph.items].astype(np.float64))
        sums.append(jnp.asarray(total, jnp.float32))
    adjacency = jgraph.fixed_graph(jgraph.normalized_adjacency(graph), symmetric=True)
    return {"graph": adjacency.to_device(), "features": tuple(jnp.asarray(b) for b in blocks),
            "user_feature_sums": tuple(sums), "user_inverse_degree": jnp.asarray(inverse)}


@register("lgmrec", traced_args={"keep_rate": 1.0, "alpha": None})
def build(dataset, *, embedding_size: int = 64, feat_embed_dim: int = 64, n_ui_layers: int = 2,
          n_mm_layers: int = 2, n_hyper_layer: int = 1, hyper_num: int = 4, keep_rate: float = 0.5,
          alpha: float = 0.3, tau: float = 0.2, modalities: list[str] | None = None,
          eval_dependencies: str = "gumbel") -> Built:
    """LGMRec for ``dataset``.

    Args:
      dataset: a :class:`~jaxrec.data.MultimodalDataset` with item modalities; its TRAIN
        pairs make the graphs.
      embedding_size: d (MMRec: 64). feat_embed_dim: projection width (MMRec: 64; must equal d).
      n_ui_layers: LightGCN layers of the CGE (MMRec: 2; 0 is its ``cf_model: mf``).
      n_mm_layers: propagation layers of the MGE (MMRec: 2).
      n_hyper_layer: hypergraph layers, >= 1 (MMRec's grid starts at 1).
      hyper_num: hyperedges per modality (MMRec: 4).
      keep_rate: dropout keep probability of the dependencies, in (0, 1] (MMRec: 0.5).
      alpha: weight of the global embeddings, >= 0 (MMRec: 0.3).
      tau: temperature, > 0 (MMRec: 0.2, fixed in its code).
      modalities: the modalities, in order; the first two play MMRec's "v" and "t"
        (default: all of the dataset's).
      eval_dependencies: ``"gumbel"`` or ``"softmax"`` (see the module docstring).

    Returns:
      :class:`~jaxrec.models.Built` with weights ``{bpr: 1, hcl: 1e-4 * 2048, reg: 1e-6}``
      (MMRec's ``cl_weight`` 1e-4 times its batch size 2048, and ``reg_weight`` 1e-6).
    """
    model = "lgmrec"
    for name, value in (("embedding_size", embedding_size), ("feat_embed_dim", feat_embed_dim),
                        ("n_hyper_layer", n_hyper_layer), ("hyper_num", hyper_num)):
        check_positive_int(value, name, model)
    for name, value in (("n_ui_layers", n_ui_layers), ("n_mm_layers", n_mm_layers)):
        check_nonnegative_int(value, name, model)
    if feat_embed_dim != embedding_size:
        raise ConfigError(f"model {model}: feat_embed_dim ({feat_embed_dim}) must equal embedding_size "
                          f"({embedding_size}): modality embeddings are added to the ID embeddings")
    keep_rate = check_number(keep_rate, "keep_rate", model, 0.0, 1.0, low_open=True)
    alpha = check_number(alpha, "alpha", model, 0.0)
    tau = check_number(tau, "tau", model, 0.0, low_open=True)
    check_choice(eval_dependencies, "eval_dependencies", EVAL_DEPENDENCIES, model)
    features, dims, _ = item_side_features(dataset, modalities, scaling="none", model=model)
    ctx = lgmrec_context(dataset, feature_blocks(features, dims))
    module = LGMRec(n_users=dataset.n_users, n_items=dataset.n_items, feature_dims=dims,
                    embedding_size=embedding_size, n_ui_layers=n_ui_layers, n_mm_layers=n_mm_layers,
                    n_hyper_layer=n_hyper_layer, hyper_num=hyper_num, keep_rate=keep_rate, alpha=alpha, tau=tau,
                    eval_dependencies=eval_dependencies)
    weights = {"bpr": 1.0, "hcl": 1e-4 * MMREC_BATCH_SIZE, "reg": 1e-6}
    return Built(module=module, ctx=ctx, default_loss_weights=weights)
