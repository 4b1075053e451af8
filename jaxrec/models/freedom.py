r"""FREEDOM: a frozen item-item graph and a denoised user-item graph (MMRec's ``FREEDOM``).

**Frozen item graph.** Per modality :math:`m`, the k-nearest-neighbour graph of the RAW item
features by cosine similarity (each item its own first neighbour), unweighted and
symmetric-normalized with row degrees, so every kept entry is :math:`1/k`; the modality graphs
are mixed with fixed weights :math:`\alpha_m` (MMRec: ``mm_image_weight`` = 0.1 on the
"vision" graph, 0.9 on the text graph):

.. math::
  S = \sum_m \alpha_m D_m^{-1/2} A_m D_m^{-1/2}, \qquad
  (A_m)_{ij} = [\,j \in \mathrm{kNN}_k(x^m_i)\,].

It is built once on the host in tiles (never an n x n matrix) and cached on disk by content
hash (:mod:`jaxrec.data.graph`). Its union over the modalities is kept as a neighbour table, K
slots per row (K the largest row count; unused slots have weight 0 and point at the row
itself), flattened row by row into the edge list of a
:class:`~jaxrec.data.graph.FixedGraph` (:func:`frozen_item_graph`).

**Denoised user-item graph.** Each epoch keeps :math:`\lfloor E(1-p)\rfloor` of the E training
pairs, sampled without replacement with probability :math:`\propto 1/\sqrt{d_u d_i}`, and
re-normalizes the kept graph :math:`\hat A_S` with its own degrees (degree-sensitive edge
pruning, ``dropout`` = p); evaluation uses the full :math:`\hat A = D^{-1/2} A D^{-1/2}`.

**Embeddings.** With :math:`E^{(0)} = [P; Q]` the ID tables,

.. math::
  \bar E = \frac{1}{L+1}\sum_{l=0}^{L} \hat A_S^{\,l} E^{(0)} = [\bar P; \bar Q], \qquad
  h = S^{L_m} Q, \qquad e_u = \bar p_u, \qquad e_i = \bar q_i + h_i,

with :math:`L` = ``n_ui_layers`` (2) and :math:`L_m` = ``n_mm_layers`` (1).

**Only the rows the loss reads.** :math:`h` feeds the items' side alone (the user embeddings are
:math:`\bar P`), and the loss reads :math:`e_i` at the batch's positives and negatives only, so
training computes the last item-graph layer at those rows, :math:`h_i = \sum_{s=1}^{K} W_{is}
(S^{L_m-1}\tilde Q)_{N_{is}}` (a gather of their neighbour rows), instead of propagating all
n K entries, when the batch holds fewer than an eighth as many ids as there are items
(:func:`rows_or_all`, ``ROWS_ONLY_BELOW``; otherwise every row once over the sorted edge list,
then a gather). The same numbers up to the order of float sums.

**Items without a train interaction.** Their ID rows are masked to zero wherever :math:`Q`
enters, :math:`\tilde Q = \operatorname{diag}(t)\, Q` with :math:`t_i = [i` has a train
interaction] (as VBPR masks :math:`\gamma_i`): :math:`E^{(0)} = [P; \tilde Q]`,
:math:`h = S^{L_m} \tilde Q`. Such an item has no edge in the user-item graph, so it is scored
by its content neighbours alone, :math:`e_i = (S^{L_m} \tilde Q)_i`. Unmasked, its own row
is trained by no interaction of its own (only through its neighbours' scores, and pushed down
whenever it is drawn as a negative) and carries that into its score and its neighbours'. When
every item has a train interaction the mask is not applied at all.

**Loss terms** (unweighted, as the model contract asks), for a batch of triples (u, i, j):

.. math::
  \mathcal{L}_\text{bpr} = \operatorname{mean}\, \operatorname{softplus}(e_u^\top e_j - e_u^\top e_i),
  \qquad
  \mathcal{L}_\text{modality\_bpr} = \sum_m \operatorname{mean}\,
      \operatorname{softplus}\big(e_u^\top \phi_m(x^m_j) - e_u^\top \phi_m(x^m_i)\big),

:math:`\phi_m(x) = W_m x + b_m` a linear projection to ``feat_embed_dim``. MMRec minimizes
:math:`\mathcal{L}_\text{bpr} + \lambda (\mathcal{L}_{bpr}^{t} + \mathcal{L}_{bpr}^{v})`
with :math:`\lambda` = ``reg_weight``, so ``loss_weights: {modality_bpr: λ}`` here is
MMRec's ``reg_weight: λ``. FREEDOM has no L2 term.

As in MMRec, the raw feature tables are trainable (``nn.Embedding.from_pretrained(...,
freeze=False)``: they start at the features and receive the modality terms' gradient), unless
``train_features=False``; the frozen graph is built from the raw features once.
Initializations are torch's: Xavier-uniform ID tables, ``nn.Linear`` defaults for
:math:`\phi_m` (:math:`U(\pm 1/\sqrt{d_m})` weights and biases).

Deviations from MMRec: BPR is a softplus (MMRec's ``-logsigmoid``: the same function);
MMRec's ``torch.multinomial`` without replacement is drawn by the equivalent Gumbel top-k
(:func:`jaxrec.data.graph.prune_edges`); the item itself is forced first among its
neighbours (MMRec's ``topk`` keeps it because its similarity 1 is the row maximum, up to
rounding); an item lacking a modality (all-zero features) has no neighbours in that
modality's graph (MMRec would divide by a zero norm and produce NaN); the ID rows of items
without a train interaction are masked (above; MMRec keeps them); the 1e-7 MMRec adds to
every degree is left out (degrees are >= 1, so it changes nothing at float32 precision).

References:
  Zhou & Shen, `A Tale of Two Graphs: Freezing and Denoising Graph Structures for Multimodal
  Recommendation <https://arxiv.org/abs/2211.06924>`_, ACM MM 2023; MMRec
  ``src/models/freedom.py`` (github.com/enoche/MMRec).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jaxrec.data import graph as jgraph
from jaxrec.errors import ConfigError
from jaxrec.models._common import (
    FeatureTable,
    batch_triples,
    bpr_of,
    check_bool,
    check_knn_k,
    check_modality_weights,
    check_nonnegative_int,
    check_number,
    check_positive_int,
    counted_pairs,
    feature_blocks,
    graph_cache_of,
    item_side_features,
    key_seed,
    knn_search_settings,
    rows_or_all,
    trained_item_mask,
)
from jaxrec.models._init import torch_linear_bias, torch_linear_kernel, xavier_uniform
from jaxrec.models._registry import Built, register


# The batch's rows only when it holds fewer than ROWS_ONLY_BELOW * n_items ids: the rows' gradient
# is K scatter-adds of the batch's rows, which XLA:CPU runs far slower per entry than the CSR
# kernel propagates the whole table both ways (the measured crossover: docs/scaling.md, "How
# close an epoch runs"). A catalogue far larger than the batch (the 1M-item ladder) keeps the rows.
ROWS_ONLY_BELOW = 1 / 8


@jax.custom_vjp
def _table_rows(ids, entries, h):
    """:math:`\\sum_s W_{rs} h_{N_{rs}}` for (R, K) ids and entries: (R, d), differentiable in ``h``
    only (the frozen graph is a constant, as :func:`jaxrec.data.graph.propagate_fixed` treats it).

    One (R, d) sum over the K slots (no (R, K, d) block of gathered rows); the gradient
    :math:`\\partial h_j = \\sum_{(r, s): N_{rs} = j} W_{rs} G_r` is K scatter-adds into ONE
    (n, d) buffer (JAX's own transpose scattered each slot into a zeroed (n, d) buffer and added
    the K buffers: K full-table passes per step)."""
    return sum(entries[:, s, None] * h[ids[:, s]] for s in range(ids.shape[1]))


def _table_rows_fwd(ids, entries, h):
    return _table_rows(ids, entries, h), (ids, entries, h)


def _table_rows_bwd(residuals, cotangent):
    ids, entries, h = residuals
    grad = jnp.zeros_like(h)
    for s in range(ids.shape[1]):
        grad = grad.at[ids[:, s]].add(entries[:, s, None] * cotangent)
    return None, None, grad


_table_rows.defvjp(_table_rows_fwd, _table_rows_bwd)


class FREEDOM(nn.Module):
    """FREEDOM (see the module docstring).

    ``ctx``: ``{"graph": FixedGraph, "train_graph": FixedGraph, "item_graph": FixedGraph,
    "features": tuple of (n_items, d_m), "trained": (n_items,) bool}`` -- the full normalized
    user-item graph (ranking), the epoch's pruned graph (training), the frozen item graph
    :math:`S` (constants of the step: their gradient is propagated over their sorted transposes,
    :func:`jaxrec.data.graph.propagate_fixed`; the item graph's edges are a neighbour table
    flattened row by row, ``rows = repeat(arange(n_items), K)``: :func:`frozen_item_graph`), the
    raw features and which items have a train interaction.

    Attributes:
      n_users, n_items: table sizes.
      feature_dims: width of each modality, in ``ctx["features"]`` order.
      embedding_size: d.
      feat_embed_dim: width of the projections :math:`\\phi_m` (must equal d: their scores
        are dot products with user embeddings).
      n_ui_layers: L, user-item propagation layers.
      n_mm_layers: item-graph propagation layers.
      train_features: whether the raw feature tables are trainable (MMRec: yes).
      mask_untrained: zero the ID rows of items without a train interaction (set by the
        builder when some item has none).
    """

    n_users: int
    n_items: int
    feature_dims: tuple[int, ...]
    embedding_size: int = 64
    feat_embed_dim: int = 64
    n_ui_layers: int = 2
    n_mm_layers: int = 1
    train_features: bool = True
    mask_untrained: bool = False

    def setup(self):
        self.user_embedding = self.param("user_embedding", xavier_uniform, (self.n_users, self.embedding_size))
        self.item_embedding = self.param("item_embedding", xavier_uniform, (self.n_items, self.embedding_size))
        self.projections = [nn.Dense(self.feat_embed_dim, kernel_init=torch_linear_kernel,
                                     bias_init=torch_linear_bias(dim), name=f"projection_{m}")
                            for m, dim in enumerate(self.feature_dims)]
        if self.train_features:
            self.feature_tables = [FeatureTable(name=f"features_{m}") for m in range(len(self.feature_dims))]

    def item_ids(self, ctx):
        """:math:`\\tilde Q`: the item ID table, rows of items without a train interaction zeroed."""
        if not self.mask_untrained:
            return self.item_embedding
        return jnp.where(jnp.asarray(ctx["trained"])[:, None], self.item_embedding, 0.0)

    def item_graph_embeddings(self, ctx, items=None, rows=slice(None)):
        """:math:`h = S^{L_m} \\tilde Q` at ``rows``: ``slice(None)`` (all items, (n_items, d)) or
        an int array of item ids ((R, d)). ``items``: :math:`\\tilde Q` if already computed.

        Layers before the last run over every item; the last one only at ``rows``."""
        h = self.item_ids(ctx) if items is None else items
        graph = ctx["item_graph"]
        for layer in range(self.n_mm_layers):
            if layer < self.n_mm_layers - 1 or isinstance(rows, slice):
                h = jgraph.propagate_fixed(graph, h)
                continue
            # The last layer at `rows` only: the edges are the (n_items, K) table row by row.
            ids = graph.cols.reshape(self.n_items, -1)[rows]
            entries = graph.weights.reshape(self.n_items, -1)[rows]
            return _table_rows(ids, entries, h)
        return h[rows]

    def ui_propagated(self, ctx, graph, items):
        """``(users, items)``: the layer means :math:`(\\bar P, \\bar Q)` over ``graph``."""
        ego = jnp.concatenate([self.user_embedding, items], axis=0)
        mean, _ = jgraph.lightgcn_propagate(graph, ego, self.n_ui_layers, indices_are_sorted=True)
        return mean[:self.n_users], mean[self.n_users:]

    def propagated(self, ctx, graph):
        """``(users (n_users, d), items (n_items, d))``: the layer mean over ``graph`` plus
        the item-graph term."""
        items = self.item_ids(ctx)
        users, ui_items = self.ui_propagated(ctx, graph, items)
        return users, ui_items + self.item_graph_embeddings(ctx, items)

    def projected_features(self, ctx, m: int, *items):
        """:math:`\\phi_m(x^m_i)` of each of the item arrays ``items`` (any int shapes), a list of
        (..., feat_embed_dim).

        The projection is row-wise, so it is applied to whichever is smaller: the gathered
        rows (large catalogues) or all items, once for every array (then gathered): the
        positives and negatives share one projection of the table, and one transposed product
        per gradient (projecting the table once per array doubled both)."""
        features = ctx["features"][m]
        if self.train_features:
            features = self.feature_tables[m](features)
        return rows_or_all(lambda rows: self.projections[m](features[rows]), self.n_items, *items)

    def encode(self, ctx, train: bool = False):
        """``(user_emb, item_emb)`` over the FULL user-item graph (as MMRec ranks)."""
        del train
        return self.propagated(ctx, ctx["graph"])

    def loss_terms(self, ctx, batch, train: bool = False):
        """``{"bpr", "modality_bpr"}`` over the epoch's pruned graph ``ctx["train_graph"]``."""
        del train
        users, positives, negatives, _ = batch_triples(batch)
        pairs = counted_pairs(batch)
        items = self.item_ids(ctx)
        user_all, ui_items = self.ui_propagated(ctx, ctx["train_graph"], items)
        user_rows = user_all[users]
        # e_i only where the loss reads it (the module docstring): h's last layer at those rows.
        positive_rows, negative_rows = rows_or_all(
            lambda rows: ui_items[rows] + self.item_graph_embeddings(ctx, items, rows), self.n_items,
            positives, negatives, all_from=ROWS_ONLY_BELOW)
        terms = {"bpr": bpr_of(user_rows, positive_rows, negative_rows, pairs)}
        modality = [bpr_of(user_rows, *self.projected_features(ctx, m, positives, negatives), pairs)
                    for m in range(len(self.feature_dims))]
        terms["modality_bpr"] = sum(modality) if modality else jnp.zeros(())
        return terms


def frozen_item_graph(dataset, modalities: Sequence[str], graph_weights: Sequence[float], *, knn_k: int,
                      cache: jgraph.GraphCache | None, knn_method: str = "exact",
                      ivf: jgraph.IvfSettings | None = None) -> jgraph.Edges:
    """FREEDOM's :math:`S = \\sum_m \\alpha_m D_m^{-1/2} A_m D_m^{-1/2}` on the union of the
    modality graphs' edges, on the host, as a neighbour table flattened row by row: every row has
    K entries (K the largest number of distinct neighbours of an item; the unused slots point at
    the row itself with weight 0), so ``rows = repeat(arange(n_items), K)`` and
    ``cols.reshape(n_items, K)`` lists each item's neighbours."""
    graphs = [jgraph.knn_edges(jgraph.item_knn_neighbours(dataset, name, k=knn_k, cache=cache, method=knn_method,
                                                          ivf=ivf),
                               weighted=False, normalization="sym") for name in modalities]
    stack = jgraph.stack_graphs(graphs, dataset.n_items)
    mixed = (np.asarray(graph_weights, np.float32) @ np.asarray(stack.weights)).astype(np.float32)
    rows, cols = np.asarray(stack.rows), np.asarray(stack.cols)  # row-sorted
    n = dataset.n_items
    counts = np.bincount(rows, minlength=n)
    width = max(int(counts.max(initial=0)), 1)
    slot = np.arange(rows.size) - np.repeat(np.cumsum(counts) - counts, counts)
    table = np.repeat(np.arange(n, dtype=np.int32)[:, None], width, axis=1)
    entries = np.zeros((n, width), np.float32)
    table[rows, slot], entries[rows, slot] = cols, mixed
    return jgraph.Edges(np.repeat(np.arange(n, dtype=np.int32), width), table.ravel(), entries.ravel())


@register("freedom")
def build(dataset, *, embedding_size: int = 64, feat_embed_dim: int = 64, knn_k: int = 10, n_ui_layers: int = 2,
          n_mm_layers: int = 1, dropout: float = 0.8, modalities: list[str] | None = None,
          graph_weights: list[float] | None = None, train_features: bool = True,
          graph_cache: str | None = "default", knn_method: str = "exact", knn_n_clusters: int | None = None,
          knn_n_probe: int | None = None) -> Built:
    """FREEDOM for ``dataset``.

    Args:
      dataset: a :class:`~jaxrec.data.MultimodalDataset` with item modalities; its TRAIN
        pairs make the user-item graph.
      embedding_size: d (MMRec: 64).
      feat_embed_dim: projection width (MMRec: 64; must equal d).
      knn_k: neighbours per item in the frozen graph (MMRec: 10).
      n_ui_layers: user-item layers (MMRec: 2). n_mm_layers: item-graph layers (MMRec: 1).
      dropout: p, the share of training pairs pruned each epoch (MMRec's grid: 0.8, 0.9;
        0 trains on the full graph).
      modalities: the modalities used, in order (default: all of the dataset's).
      graph_weights: the mixing weights :math:`\\alpha_m` of the frozen graphs, one per
        modality (default: equal; MMRec's lfm2k setting is [0.1, 0.9] for [vggish, text]).
      train_features: the raw features are trainable parameters, as in MMRec.
      graph_cache: ``"default"`` (``~/.cache/jaxrec/graphs`` or ``$JAXREC_GRAPH_CACHE``), a
        folder, or ``"none"`` (no cache) for the kNN neighbours.
      knn_method: ``"exact"`` (default), ``"join"``, ``"hnsw"``, ``"ivf"`` or ``"auto"``
        (exact below 200,000 items, join from there on): the frozen graph's kNN
        (:func:`jaxrec.data.graph.knn_neighbours`); the approximate ones for catalogues where
        the exact :math:`O(n^2)` search is too slow; with ``"ivf"``, ``knn_n_clusters`` and
        ``knn_n_probe`` are required.

    Returns:
      :class:`~jaxrec.models.Built` with an ``epoch_update`` that redraws the pruned graph each
      epoch, and weights ``{bpr: 1, modality_bpr: 1e-5}`` (MMRec's ``reg_weight`` chosen by
      validation on lfm2k).
    """
    model = "freedom"
    for name, value in (("embedding_size", embedding_size), ("feat_embed_dim", feat_embed_dim)):
        check_positive_int(value, name, model)
    check_knn_k(knn_k, dataset.n_items, model)
    for name, value in (("n_ui_layers", n_ui_layers), ("n_mm_layers", n_mm_layers)):
        check_nonnegative_int(value, name, model)
    if feat_embed_dim != embedding_size:
        raise ConfigError(f"model {model}: feat_embed_dim ({feat_embed_dim}) must equal embedding_size "
                          f"({embedding_size}): projected features are scored against user embeddings")
    dropout = check_number(dropout, "dropout", model, 0.0, 1.0, high_open=True)
    check_bool(train_features, "train_features", model)
    ivf = knn_search_settings(knn_method, knn_n_clusters, knn_n_probe, model)
    features, dims, names = item_side_features(dataset, modalities, scaling="none", model=model)
    weights = check_modality_weights(graph_weights, names, "graph_weights", model)
    blocks = tuple(jnp.asarray(block) for block in feature_blocks(features, dims))
    del features
    graph = jgraph.bipartite_graph(dataset, split="train")
    full = jgraph.fixed_graph(jgraph.normalized_adjacency(graph), symmetric=True).to_device()
    item_graph = frozen_item_graph(dataset, names, weights, knn_k=knn_k, cache=graph_cache_of(graph_cache),
                                   knn_method=knn_method, ivf=ivf)
    trained = trained_item_mask(dataset)
    ctx = {"graph": full, "item_graph": jgraph.fixed_graph(item_graph).to_device(), "features": blocks,
           "trained": jnp.asarray(trained)}
    module = FREEDOM(n_users=dataset.n_users, n_items=dataset.n_items, feature_dims=dims,
                     embedding_size=embedding_size, feat_embed_dim=feat_embed_dim, n_ui_layers=n_ui_layers,
                     n_mm_layers=n_mm_layers, train_features=train_features, mask_untrained=not trained.all())
    defaults = {"bpr": 1.0, "modality_bpr": 1e-5}
    if dropout == 0.0:
        ctx["train_graph"] = full
        return Built(module=module, ctx=ctx, default_loss_weights=defaults)
    sampling_weights = jgraph.edge_sampling_weights(graph)

    def prune(params, ctx, epoch, rng):
        del params, epoch  # the pruning ignores the parameters; the key already depends on the epoch
        generator = np.random.default_rng(key_seed(rng))
        pruned = jgraph.prune_edges(graph, dropout=float(dropout), rng=generator, sampling_weights=sampling_weights)
        # Symmetric by construction (both directions of each kept pair, one weight): no transpose.
        starts = jgraph.row_starts(np.asarray(pruned.rows), dataset.n_users + dataset.n_items)
        return {**ctx, "train_graph": jgraph.FixedGraph(pruned.to_device(), None, jnp.asarray(starts))}

    # The built context carries one pruned graph so that shapes are known before training;
    # the trainer replaces it at the start of every epoch.
    ctx = prune(None, ctx, 0, jax.random.PRNGKey(0))
    return Built(module=module, ctx=ctx, default_loss_weights=defaults, epoch_update=prune)
