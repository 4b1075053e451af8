r"""LATTICE: learned item-item structure from modality features, then LightGCN (MMRec's ``LATTICE``).

**Initial graphs** (frozen). Per modality :math:`m`, the kNN graph of the RAW features,
weighted by the cosine similarities and symmetric-normalized with row degrees:

.. math::
  \tilde S^m = D_m^{-1/2} A^m D_m^{-1/2}, \qquad
  A^m_{ij} = s^m_{ij}\,[\,j \in \mathrm{kNN}_k(i)\,], \quad
  s^m_{ij} = \frac{x^{m\top}_i x^m_j}{\lVert x^m_i\rVert \lVert x^m_j\rVert}.

**Learned graphs.** The same construction on the projected features
:math:`\phi_m(x) = W_m x + b_m` (``feat_embed_dim`` wide), recomputed from the current
parameters: the neighbours are the top-k of the learned cosine similarities (chosen without
gradient), the entries are the similarities themselves (with gradient, through which
:math:`W_m, b_m` learn). With :math:`\alpha = \operatorname{softmax}(\beta)` learned modality
weights,

.. math::
  \hat S = \operatorname{sym}\Big(\sum_m \alpha_m \hat A^m\Big), \qquad
  S = (1 - \lambda)\, \hat S + \lambda \sum_m \alpha_m \tilde S^m,

:math:`\operatorname{sym}(A) = D^{-1/2} A D^{-1/2}` (row degrees) and :math:`\lambda` =
``lambda_coeff`` (0.9). The top-k is computed on device in row blocks inside ``jit``
(``lax.top_k`` over (block x n) similarity tiles), so no n x n matrix exists.

**Embeddings.** :math:`h = S^{L_i} Q` over the item ID table :math:`Q` (:math:`L_i` =
``n_layers`` = 1); LightGCN on the user-item graph with self-loops and random-walk
normalization, :math:`\hat A = D^{-1}(A + I)` (LATTICE's ``get_adj_mat``),
:math:`\bar E = \frac{1}{L+1}\sum_{l=0}^{L} \hat A^l [P; Q]` (:math:`L` = ``n_ui_layers`` = 2,
MMRec's ``len(weight_size)``), and

.. math::
  e_u = \bar p_u, \qquad e_i = \bar q_i + \frac{h_i}{\max(\lVert h_i\rVert, 10^{-12})}.

**Loss terms** (unweighted), for a batch of B triples:

.. math::
  \mathcal{L}_\text{bpr} = \operatorname{mean}\,\operatorname{softplus}(e_u^\top e_j - e_u^\top e_i),
  \qquad
  \mathcal{L}_\text{reg} = \frac{1}{2B}\big(\lVert E_u\rVert_F^2 + \lVert E_{i}\rVert_F^2
      + \lVert E_{j}\rVert_F^2\big)

on the FINAL embeddings of the batch (:func:`jaxrec.losses.l2_sum_of_squares_per_example`,
B = the batch's real rows, the contract's padding rule; MMRec divides by the configured batch
size, so its smaller last batch is regularized less), so ``loss_weights: {reg: λ}`` is MMRec's
``reg_weight: λ``. MMRec decays the learning rate by 0.96 every 50 epochs
(``train.schedule: exponential``). As in MMRec the raw feature tables are trainable
(``train_features``); the initial graphs are built from them once.

**When the learned graph is recomputed** (``learned_graph``):

* ``"step"`` (default): in every training step and in ``encode`` -- with gradient through
  its entries at every step. Cheap for lfm2k (1,425 items); at n items it costs
  :math:`O(n^2 d)` per step.
* ``"epoch"``: the neighbour lists live in ``ctx["learned_neighbours"]`` and are recomputed
  by :func:`refresh_learned_graph` (from the current parameters) at the start of each epoch
  by the trainer (the model's ``epoch_update`` hook); every step recomputes their entries
  (with gradient) from the current projections in :math:`O(n k d)`. Evaluation after an
  epoch uses lists recomputed from that epoch's parameters. For the million-item scale (see
  ``benchmarks/bench_scale.py``).
* ``"mmrec"``: MMRec's schedule. The whole item graph :math:`S` (neighbours and entries) is
  recomputed once per epoch from the parameters at the epoch's start -- WITH gradient in the
  epoch's first step, and reused DETACHED (a constant: no gradient reaches :math:`W_m, b_m`,
  the feature tables or :math:`\beta`) in its other steps. The trainer's epoch hook
  (:func:`refresh_item_graph`) puts the detached table in ``ctx``; the first step (the
  trainer sets ``ctx["epoch_step"]``, :data:`jaxrec.models.EPOCH_STEP`, to 0) recomputes the
  same table's entries with gradient inside a ``lax.switch``, so only that step pays for them
  and their backward pass. Its learned neighbour lists are the hook's (``ctx["item_ids"]``):
  the hook chose them from the same parameters and the choice carries no gradient, so a
  second search would find the same lists. The builder puts -1 in ``ctx["epoch_step"]``:
  runners without epochs (online updates) keep it, and there every step
  searches the lists again (the ctx's lists are from older parameters). Evaluation after an epoch uses the table recomputed from that epoch's
  parameters, as MMRec's ``full_sort_predict`` does.

Deviations from MMRec: ``"step"`` recomputes the learned graph with gradient at every step
(the learned similarity is fresh at every step), ``"epoch"`` keeps the neighbour lists for the
epoch but refreshes their entries (and gradient) every step. (In ``"mmrec"`` mode the
parameters that only the item graph reaches have a gradient only in an epoch's first step; the
trainer's optimizer skips them in the other steps with their own optimizer state, as torch's
Adam skips a parameter without a gradient: :func:`item_graph_parameters`,
``jaxrec.train.epoch_gated``.) Only MMRec's default ``cf_model: lightgcn`` is
implemented (not ``ngcf`` or ``mf``). The item itself is forced first among its neighbours
(MMRec's ``topk`` keeps it because its similarity 1 is the row maximum); an all-zero feature
row has similarity 0 to every item (MMRec divides by its zero norm: NaN). BPR is a softplus
(MMRec's ``-logsigmoid``: the same function).

References:
  Zhang et al., `Mining Latent Structures for Multimedia Recommendation
  <https://arxiv.org/abs/2104.09036>`_, ACM MM 2021; MMRec ``src/models/lattice.py`` and
  ``src/utils/utils.py`` (github.com/enoche/MMRec).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax.ad_checkpoint import checkpoint_name

from jaxrec import losses
from jaxrec.data import graph as jgraph
from jaxrec.errors import ConfigError
from jaxrec.models._common import (FeatureTable, batch_triples, bpr_of, check_bool, check_choice, chunk_size_for,
                                   check_knn_k, check_nonnegative_int, check_number, check_positive_int, counted_pairs,
                                   feature_blocks, graph_cache_of, item_side_features, knn_search_settings,
                                   normalize_rows)
from jaxrec.models._init import torch_linear_bias, torch_linear_kernel, xavier_uniform
from jaxrec.models._registry import EPOCH_STEP, Built, register

LEARNED_GRAPH_MODES = ("step", "epoch", "mmrec")
# The name of the learned kNN lists for jax.checkpoint's policy (kept, not recomputed).
LEARNED_NEIGHBOURS = "lattice_learned_neighbours"


def unit_rows(x: jax.Array) -> jax.Array:
    """Rows scaled to unit norm; all-zero rows stay zero."""
    squared = jnp.sum(x * x, axis=1, keepdims=True)
    return x * jnp.where(squared > 0, jax.lax.rsqrt(jnp.where(squared > 0, squared, 1.0)), 0.0)


def knn_indices(features: jax.Array, k: int, *, block_size: int = 1024, column_block_size: int = 4096,
                group_size: int = 8) -> jax.Array:
    r"""Each row's k most cosine-similar rows, itself first, in tiles (jit-friendly).

    .. math::  N_k(i) = \{i\} \cup \operatorname{top}_{k-1,\, j \ne i}\; \hat x_i^\top \hat x_j

    The (n, n) similarity matrix is never formed: a ``lax.map`` over blocks of at most
    ``block_size`` rows (as many blocks as ``block_size`` needs, of equal size) scans blocks of ``column_block_size`` columns, computing one
    (rows x columns) similarity tile at a time, its exact group-max pruned top-k
    (:func:`jaxrec.data.graph.tile_top_k`), and merging that into the row block's running
    top-k. Memory is O(n k + block_size * column_block_size). No
    gradient flows through the choice (the input is ``stop_gradient``-ed, so nothing of the
    tiles is kept for the backward pass).

    Args:
      features: (n, d) rows.
      k: neighbours per row, 1 <= k <= n (static).
      block_size: rows per tile (static).
      column_block_size: columns per tile (static).
      group_size: columns per group of the pruned top-k (static; speed only).

    Returns:
      (n, k) int32 neighbour ids, most similar first; exact ties rank the lower id first.
    """
    units = unit_rows(jax.lax.stop_gradient(jnp.asarray(features, jnp.float32)))
    n = units.shape[0]
    if not 1 <= k <= n:
        raise ConfigError(f"k must be in [1, {n}] for {n} items, got {k}")
    n_row_tiles = -(-n // max(1, min(int(block_size), n)))
    rows_per_tile = -(-n // n_row_tiles)  # the same number of tiles, evened out: less padding
    cols_per_tile = max(k, min(int(column_block_size), n))
    n_col_tiles = -(-n // cols_per_tile)
    row_pad = jnp.pad(units, ((0, n_row_tiles * rows_per_tile - n), (0, 0)))
    col_pad = jnp.pad(units, ((0, n_col_tiles * cols_per_tile - n), (0, 0)))

    def row_tile(row_start):
        rows = jax.lax.dynamic_slice_in_dim(row_pad, row_start, rows_per_tile)
        row_ids = row_start + jnp.arange(rows_per_tile)

        def column_tile(best, col_start):
            columns = jax.lax.dynamic_slice_in_dim(col_pad, col_start, cols_per_tile)
            col_ids = col_start + jnp.arange(cols_per_tile)
            sims = jnp.matmul(rows, columns.T, precision=jax.lax.Precision.HIGHEST)
            sims = jnp.where(col_ids[None, :] < n, sims, -jnp.inf)
            sims = jnp.where(col_ids[None, :] == row_ids[:, None], jnp.inf, sims)
            values, local = jgraph.tile_top_k(sims, k, axis=1, group_size=group_size)
            # Running best first: on exact ties top_k keeps the earlier slot, i.e. the lower id.
            merged_values = jnp.concatenate([best[0], values], axis=1)
            merged_ids = jnp.concatenate([best[1], local.astype(jnp.int32) + col_start], axis=1)
            top_values, slots = jax.lax.top_k(merged_values, k)
            return (top_values, jnp.take_along_axis(merged_ids, slots, axis=1)), None

        start = (jnp.full((rows_per_tile, k), -jnp.inf, jnp.float32), jnp.zeros((rows_per_tile, k), jnp.int32))
        col_starts = jnp.arange(n_col_tiles, dtype=jnp.int32) * cols_per_tile
        (_, ids), _ = jax.lax.scan(column_tile, start, col_starts)
        return ids

    row_starts = jnp.arange(n_row_tiles, dtype=jnp.int32) * rows_per_tile
    return jax.lax.map(row_tile, row_starts).reshape(n_row_tiles * rows_per_tile, k)[:n]


class LATTICE(nn.Module):
    """LATTICE (see the module docstring).

    ``ctx``: ``{"graph": Edges, "original_neighbours": (n_items, M k) int32, "original_weights":
    tuple of M (n_items, k), "features": tuple of (n_items, d_m)}`` -- the user-item graph
    :math:`D^{-1}(A+I)`, the M normalized initial item graphs as one neighbour table (the raw
    features' kNN lists side by side, each modality's weights), the raw features -- plus ``"learned_neighbours"`` (n_items, M k)
    int32 in ``"epoch"`` mode; in ``"mmrec"`` mode ``"item_ids"``/``"item_weights"`` (n_items, 2 M k), the
    epoch's item graph :math:`S`, ``"item_graph"`` (the same :math:`S` as a :func:`table_graph`) and
    ``"epoch_step"`` (set by the trainer; -1 as built).

    Attributes:
      n_users, n_items: table sizes.
      feature_dims: width of each modality, in ``ctx["features"]`` order.
      embedding_size: d.
      feat_embed_dim: width of the projections that define the learned graphs.
      knn_k: neighbours per item.
      lambda_coeff: :math:`\\lambda`, the weight of the initial graphs.
      n_layers: item-graph propagation layers.
      n_ui_layers: LightGCN layers on the user-item graph.
      train_features: the raw feature tables are trainable (MMRec: yes).
      learned_graph: ``"step"``, ``"epoch"`` or ``"mmrec"`` (module docstring).
      knn_block_size, knn_column_block_size: rows and columns per tile of the learned kNN.
      knn_method: ``"exact"``, ``"ivf"``, ``"hnsw"``, ``"join"`` or ``"auto"``: how
        :func:`refresh_learned_graph` finds the ``"epoch"`` mode's neighbour lists (``"step"``
        and ``"mmrec"`` modes: always exact, on device).
      knn_n_clusters, knn_n_probe: the IVF settings (0 with ``"exact"``).
      propagation_chunk: neighbour-table entries per rematerialized chunk of the item-graph
        terms (:func:`jaxrec.data.graph.propagate_neighbours`); a memory/speed knob only.
    """

    n_users: int
    n_items: int
    feature_dims: tuple[int, ...]
    embedding_size: int = 64
    feat_embed_dim: int = 64
    knn_k: int = 10
    lambda_coeff: float = 0.9
    n_layers: int = 1
    n_ui_layers: int = 2
    train_features: bool = True
    learned_graph: str = "step"
    knn_block_size: int = 1024
    knn_column_block_size: int = 4096
    knn_method: str = "exact"
    knn_n_clusters: int = 0
    knn_n_probe: int = 0
    propagation_chunk: int = jgraph.DEFAULT_CHUNK_ENTRIES

    def setup(self):
        self.user_embedding = self.param("user_embedding", xavier_uniform, (self.n_users, self.embedding_size))
        self.item_embedding = self.param("item_embedding", xavier_uniform, (self.n_items, self.embedding_size))
        self.projections = [nn.Dense(self.feat_embed_dim, kernel_init=torch_linear_kernel,
                                     bias_init=torch_linear_bias(dim), name=f"projection_{m}")
                            for m, dim in enumerate(self.feature_dims)]
        # MMRec's nn.Parameter([0.5, 0.5]): equal logits, so equal softmax weights.
        n_modalities = len(self.feature_dims)
        self.modal_weight = self.param("modal_weight", nn.initializers.constant(1.0 / n_modalities), (n_modalities,))
        if self.train_features:
            self.feature_tables = [FeatureTable(name=f"features_{m}") for m in range(n_modalities)]

    # -- the item graph ----------------------------------------------------------------------

    def projected_features(self, ctx):
        """The M (n_items, feat_embed_dim) projections :math:`\\phi_m(x^m)`."""
        out = []
        for m, projection in enumerate(self.projections):
            features = ctx["features"][m]
            if self.train_features:
                features = self.feature_tables[m](features)
            out.append(projection(features))
        return out

    def learned_neighbours(self, ctx):
        """(n_items, M k) int32: each modality's learned top-k lists, side by side (no gradient)."""
        return self._neighbour_lists(self.projected_features(ctx))

    def _neighbour_lists(self, projected):
        return jnp.concatenate([knn_indices(p, self.knn_k, block_size=self.knn_block_size,
                                            column_block_size=self.knn_column_block_size)
                                for p in projected], axis=1)

    def _learned_table(self, ctx, projected, alpha, neighbours=None):
        """The learned graph :math:`\\hat S` as an (n_items, M k) neighbour table: ids and
        symmetric-normalized weights (modality m's k lists in columns m k ... (m+1) k - 1);
        ``neighbours``: the learned lists to use (else ``ctx``'s in ``"epoch"`` mode, else searched)."""
        if neighbours is None:
            neighbours = (ctx["learned_neighbours"] if self.learned_graph == "epoch"
                          else checkpoint_name(self._neighbour_lists(projected), LEARNED_NEIGHBOURS))
        k = self.knn_k
        entries = jnp.concatenate([alpha[m] * jgraph.neighbour_cosine(p, neighbours[:, m * k:(m + 1) * k])
                                   for m, p in enumerate(projected)], axis=1)
        return neighbours, jgraph.normalize_neighbour_weights(neighbours, entries, normalization="sym")

    def _original_weights(self, ctx, alpha):
        """(n_items, M k) weights of :math:`\\sum_m \\alpha_m \\tilde S^m` on ``ctx["original_neighbours"]``."""
        return jnp.concatenate([alpha[m] * w for m, w in enumerate(ctx["original_weights"])], axis=1)

    def item_graphs(self, ctx):
        """``(learned, original)`` edge lists: :math:`\\hat S` and :math:`\\sum_m \\alpha_m \\tilde S^m`
        (for inspection; :meth:`item_graph_embeddings` propagates the tables directly)."""
        alpha = jax.nn.softmax(self.modal_weight)
        learned = jgraph.neighbour_edges(*self._learned_table(ctx, self.projected_features(ctx), alpha))
        original = jgraph.neighbour_edges(ctx["original_neighbours"], self._original_weights(ctx, alpha))
        return learned, original

    def item_table(self, ctx):
        """:math:`S = (1-\\lambda) \\hat S + \\lambda \\sum_m \\alpha_m \\tilde S^m` as one (n_items, 2 M k)
        neighbour table ``(ids, weights)`` (both graphs' lists side by side, duplicates summed),
        computed from the current parameters (learned lists recomputed unless ``"epoch"`` mode)."""
        alpha = jax.nn.softmax(self.modal_weight)
        learned_ids, learned_weights = self._learned_table(ctx, self.projected_features(ctx), alpha)
        ids = jnp.concatenate([learned_ids, ctx["original_neighbours"]], axis=1)
        weights = jnp.concatenate([(1.0 - self.lambda_coeff) * learned_weights,
                                   self.lambda_coeff * self._original_weights(ctx, alpha)], axis=1)
        return ids, weights

    def _graph_arrays(self):
        """The parameters only the item graph reads, as plain arrays (for ``lax.cond``)."""
        return {"projections": [p.variables["params"] for p in self.projections],
                "tables": ([t.variables["params"]["table"] for t in self.feature_tables]
                           if self.train_features else None),
                "modal_weight": self.modal_weight}

    def _table_of(self, ctx, arrays, neighbours=None):
        """:meth:`item_table` as a pure function of :meth:`_graph_arrays` (``neighbours``: the
        learned lists to use, else searched)."""
        projected = []
        for m, layer in enumerate(arrays["projections"]):
            features = arrays["tables"][m] if self.train_features else ctx["features"][m]
            projected.append(jnp.matmul(features, layer["kernel"]) + layer["bias"])
        alpha = jax.nn.softmax(arrays["modal_weight"])
        learned_ids, learned_weights = self._learned_table(ctx, projected, alpha, neighbours)
        ids = jnp.concatenate([learned_ids, ctx["original_neighbours"]], axis=1)
        weights = jnp.concatenate([(1.0 - self.lambda_coeff) * learned_weights,
                                   self.lambda_coeff * self._original_weights(ctx, alpha)], axis=1)
        return ids, weights

    def _propagate_items(self, ids, weights, h):
        for _ in range(self.n_layers):
            h = jgraph.propagate_neighbours(ids, weights, h, chunk_entries=self.propagation_chunk)
        return h

    def _epoch_item_embeddings(self, ctx, train: bool):
        """``"mmrec"`` mode's :math:`h`: over the table recomputed with gradient in an epoch's
        first training step (``ctx["epoch_step"]`` 0: on the hook's learned lists; negative: on
        lists searched again), else over the detached one of ``ctx`` (:func:`refresh_item_graph`),
        propagated as a constant :class:`~jaxrec.data.graph.FixedGraph` (``ctx["item_graph"]``:
        the gradient :math:`S^\\top G` over its column-sorted transpose instead of JAX's
        scatter-add of the (n, 2 M k, d) gathered rows). The propagation is inside the
        ``lax.switch`` too, so that the other steps skip the gradient of the table's entries."""
        if self.is_initializing():  # creates the parameters
            return self._propagate_items(*self.item_table(ctx), self.item_embedding)

        def stored(operands):
            h = operands[1]
            for _ in range(self.n_layers):
                h = jgraph.propagate_fixed(ctx["item_graph"], h, chunk_size=chunk_size_for(h.shape[1]))
            return h

        if not train:
            return stored((None, self.item_embedding))

        # Rematerialized (keeping only the kNN lists): under autodiff a lax.switch carries the
        # residuals of every branch, so a saved fresh branch would make every other step
        # write zeros of its (n, 2 M k, d) gathered rows.
        @functools.partial(jax.checkpoint, policy=jax.checkpoint_policies.save_only_these_names(LEARNED_NEIGHBOURS))
        def fresh(operands):
            return self._propagate_items(*self._table_of(ctx, operands[0]), operands[1])

        @jax.checkpoint
        def fresh_on_hook_lists(operands):  # the hook chose them from these same parameters
            lists = ctx["item_ids"][:, :len(self.feature_dims) * self.knn_k]
            return self._propagate_items(*self._table_of(ctx, operands[0], lists), operands[1])

        step = ctx[EPOCH_STEP]
        branch = jnp.where(step == 0, 0, jnp.where(step < 0, 1, 2))
        return jax.lax.switch(branch, (fresh_on_hook_lists, fresh, stored), (self._graph_arrays(), self.item_embedding))

    def item_graph_embeddings(self, ctx, train: bool = False):
        """:math:`h = S^{L_i} Q`, (n_items, d).

        :math:`S` (:meth:`item_table`; in ``"mmrec"`` mode the epoch's table) is propagated in
        rematerialized row chunks (:func:`jaxrec.data.graph.propagate_neighbours`): no
        (edges x d) array is kept for the backward pass at a million items.
        """
        if self.learned_graph == "mmrec":
            return self._epoch_item_embeddings(ctx, train)
        return self._propagate_items(*self.item_table(ctx), self.item_embedding)

    # -- the contract ------------------------------------------------------------------------

    def encode(self, ctx, train: bool = False):
        """``(user_emb (n_users, d), item_emb (n_items, d))`` (see the module docstring)."""
        ego = jnp.concatenate([self.user_embedding, self.item_embedding], axis=0)
        mean, _ = jgraph.lightgcn_propagate(ctx["graph"], ego, self.n_ui_layers, indices_are_sorted=True,
                                            chunk_size=chunk_size_for(self.embedding_size))
        users, items = jnp.split(mean, [self.n_users])
        return users, items + normalize_rows(self.item_graph_embeddings(ctx, train))

    def loss_terms(self, ctx, batch, train: bool = False):
        """``{"bpr", "reg"}`` for a contract batch (``jaxrec.models._registry``)."""
        users, positives, negatives, weights = batch_triples(batch)
        pairs = counted_pairs(batch)
        user_all, item_all = self.encode(ctx, train)
        user_rows, pos_rows, neg_rows = user_all[users], item_all[positives], item_all[negatives]
        reg = losses.l2_sum_of_squares_per_example(
            user_rows * weights[:, None], pos_rows * weights[:, None], neg_rows * pairs[..., None],
            batch_size=jnp.maximum(losses.batch_sum(weights), 1.0), over_batch=True)
        return {"bpr": bpr_of(user_rows, pos_rows, neg_rows, pairs), "reg": reg}


@functools.lru_cache(maxsize=8)
def _jitted_neighbours(module):
    return jax.jit(lambda params, ctx: module.apply({"params": params}, ctx, method="learned_neighbours"))


@functools.lru_cache(maxsize=8)
def _jitted_projections(module):
    return jax.jit(lambda params, ctx: module.apply({"params": params}, ctx, method="projected_features"))


def table_graph(ids: jax.Array, weights: jax.Array) -> jgraph.FixedGraph:
    r"""The (n, K) neighbour table ``(ids, weights)`` as a constant
    :class:`~jaxrec.data.graph.FixedGraph` (jittable): the edges row by row (row-sorted, in
    table order) and the transpose :math:`S^\top`, sorted by column with ties in table order.
    The same matrix as :func:`jaxrec.data.graph.neighbour_edges` (duplicates summed)."""
    n, k = ids.shape
    rows = jnp.repeat(jnp.arange(n, dtype=jnp.int32), k)
    cols, values = ids.reshape(-1).astype(jnp.int32), weights.reshape(-1)
    positions = jnp.arange(n * k, dtype=jnp.int32)
    if n * n * k < 2**31:  # one packed int32 key: sorting it is much faster on CPU than a stable argsort
        order = jax.lax.sort(cols * (n * k) + positions) % (n * k)
    else:
        order = jnp.argsort(cols, stable=True)
    transposed_rows = cols[order]
    return jgraph.FixedGraph(jgraph.Edges(rows, cols, values), jgraph.Edges(transposed_rows, rows[order], values[order]),
                             jnp.arange(n + 1, dtype=jnp.int32) * k, jgraph.row_starts(transposed_rows, n))


@functools.lru_cache(maxsize=8)
def _jitted_item_table(module):
    def table(params, ctx):
        ids, weights = module.apply({"params": params}, ctx, method="item_table")
        return ids, weights, table_graph(ids, weights)
    return jax.jit(table)


def refresh_item_graph(module: LATTICE, params, ctx):
    """``ctx`` with ``"item_ids"``/``"item_weights"``, the item graph :math:`S` recomputed from
    ``params``, and ``"item_graph"``, the same table as a :func:`table_graph` (the ``"mmrec"``
    mode's per-epoch step; exact kNN, jitted)."""
    ids, weights, graph = _jitted_item_table(module)(params, ctx)
    return {**ctx, "item_ids": ids, "item_weights": weights, "item_graph": graph}


def refresh_learned_graph(module: LATTICE, params, ctx):
    """``ctx`` with ``"learned_neighbours"`` recomputed from ``params`` (the ``"epoch"`` mode's
    per-epoch step).

    ``knn_method="exact"`` (and ``"auto"`` below ``jaxrec.data.graph.AUTO_APPROXIMATE_FROM``
    items): jitted, in tiles on device (:func:`knn_indices`). ``"ivf"``, ``"hnsw"`` and ``"join"``: the
    projected features are brought to the host and searched by
    :func:`jaxrec.data.graph.knn_neighbours` with that method (self first, ties to the smaller
    id, as exact); IVF with ``knn_n_probe == knn_n_clusters`` is the exact result again.
    """
    method = jgraph.resolve_knn_method(module.knn_method, module.n_items)
    if method == "exact":
        return {**ctx, "learned_neighbours": _jitted_neighbours(module)(params, ctx)}
    settings = (jgraph.IvfSettings(n_clusters=module.knn_n_clusters, n_probe=module.knn_n_probe)
                if method == "ivf" else None)
    lists = [jgraph.knn_neighbours(np.asarray(projected), module.knn_k, method=method, ivf=settings).indices
             for projected in _jitted_projections(module)(params, ctx)]
    return {**ctx, "learned_neighbours": jnp.asarray(np.concatenate(lists, axis=1), jnp.int32)}


def initial_item_graphs(dataset, modalities, *, knn_k: int, cache, knn_method: str = "exact",
                        ivf: jgraph.IvfSettings | None = None) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """The M normalized similarity-weighted initial graphs as one neighbour table (host arrays):
    (n_items, M k) int32 ids of the raw features' kNN lists side by side, and per modality the
    (n_items, k) weights of :math:`\\tilde S^m` (0 in unused slots)."""
    neighbours = [jgraph.item_knn_neighbours(dataset, name, k=knn_k, cache=cache, method=knn_method, ivf=ivf)
                  for name in modalities]
    weights = tuple(np.asarray(jgraph.knn_edges(nb, weighted=True, normalization="sym").weights, np.float32)
                    .reshape(dataset.n_items, knn_k) for nb in neighbours)
    return np.concatenate([np.asarray(nb.indices, np.int32) for nb in neighbours], axis=1), weights


@register("lattice")
def build(dataset, *, embedding_size: int = 64, feat_embed_dim: int = 64, knn_k: int = 10,
          lambda_coeff: float = 0.9, n_layers: int = 1, n_ui_layers: int = 2, modalities: list[str] | None = None,
          train_features: bool = True, learned_graph: str = "step", knn_block_size: int = 1024,
          knn_column_block_size: int = 4096, graph_cache: str | None = "default", knn_method: str = "exact",
          knn_n_clusters: int | None = None, knn_n_probe: int | None = None) -> Built:
    """LATTICE for ``dataset``.

    Args:
      dataset: a :class:`~jaxrec.data.MultimodalDataset` with item modalities; its TRAIN
        pairs make the user-item graph.
      embedding_size: d (MMRec: 64). feat_embed_dim: projection width (MMRec: 64).
      knn_k: neighbours per item (MMRec: 10).
      lambda_coeff: weight of the initial graphs (MMRec: 0.9).
      n_layers: item-graph layers (MMRec: 1). n_ui_layers: user-item layers (MMRec: 2).
      modalities: the modalities used, in order (default: all of the dataset's).
      train_features: the raw features are trainable parameters, as in MMRec.
      learned_graph: ``"step"``, ``"epoch"`` or ``"mmrec"`` (module docstring).
      knn_block_size, knn_column_block_size: rows and columns per tile of the learned kNN.
      graph_cache: ``"default"``, a folder, or ``"none"``: where the initial kNN neighbours are cached.
      knn_method: ``"exact"`` (default), ``"join"`` (the cluster-blocked join),
        ``"hnsw"`` (hnswlib, the ``ann`` extra), ``"ivf"`` (our inverted file; then
        ``knn_n_clusters`` and ``knn_n_probe`` are required) or ``"auto"`` (exact below
        200,000 items, join from there on): the kNN of the initial
        graphs and (``learned_graph="epoch"``) of the learned graph's refresh, for catalogues
        where :math:`O(n^2)` is too slow.

    Returns:
      :class:`~jaxrec.models.Built`; weights ``{bpr: 1, reg: 1e-4}`` (MMRec's ``reg_weight``
      chosen by validation on lfm2k).
    """
    model = "lattice"
    for name, value in (("embedding_size", embedding_size), ("feat_embed_dim", feat_embed_dim), ("knn_k", knn_k),
                        ("knn_block_size", knn_block_size), ("knn_column_block_size", knn_column_block_size)):
        check_positive_int(value, name, model)
    for name, value in (("n_layers", n_layers), ("n_ui_layers", n_ui_layers)):
        check_nonnegative_int(value, name, model)
    lambda_coeff = check_number(lambda_coeff, "lambda_coeff", model, 0.0, 1.0)
    check_choice(learned_graph, "learned_graph", LEARNED_GRAPH_MODES, model)
    check_bool(train_features, "train_features", model)
    check_knn_k(knn_k, dataset.n_items, model)
    ivf = knn_search_settings(knn_method, knn_n_clusters, knn_n_probe, model)
    features, dims, names = item_side_features(dataset, modalities, scaling="none", model=model)
    blocks = tuple(jnp.asarray(block) for block in feature_blocks(features, dims))
    del features
    raw_neighbours, raw_weights = initial_item_graphs(dataset, names, knn_k=knn_k, cache=graph_cache_of(graph_cache),
                                                      knn_method=knn_method, ivf=ivf)
    user_item = jgraph.normalized_adjacency(jgraph.bipartite_graph(dataset, split="train"), normalization="rw",
                                            self_loops=True)
    ctx = {"graph": jgraph.fixed_graph(user_item).to_device(), "features": blocks, "original_neighbours": jnp.asarray(raw_neighbours),
           "original_weights": tuple(jnp.asarray(w) for w in raw_weights)}
    if learned_graph == "epoch":  # the shapes; the trainer's epoch_update replaces the lists
        ctx["learned_neighbours"] = jnp.asarray(raw_neighbours)
    if learned_graph == "mmrec":  # the shapes; the trainer's epoch_update computes the table
        ids = jnp.concatenate([jnp.asarray(raw_neighbours)] * 2, axis=1)
        zeros = jnp.zeros(ids.shape, jnp.float32)
        ctx.update({"item_ids": ids, "item_weights": zeros, "item_graph": table_graph(ids, zeros),
                    EPOCH_STEP: jnp.full((), -1, jnp.int32)})  # no epochs: every step searches again
    module = LATTICE(n_users=dataset.n_users, n_items=dataset.n_items, feature_dims=dims,
                     embedding_size=embedding_size, feat_embed_dim=feat_embed_dim, knn_k=knn_k,
                     lambda_coeff=float(lambda_coeff), n_layers=n_layers, n_ui_layers=n_ui_layers,
                     train_features=train_features, learned_graph=learned_graph, knn_block_size=knn_block_size,
                     knn_column_block_size=knn_column_block_size, knn_method=knn_method,
                     knn_n_clusters=0 if ivf is None else ivf.n_clusters, knn_n_probe=0 if ivf is None else ivf.n_probe)
    epoch_update = epoch_start_params = None
    if learned_graph == "epoch":
        def epoch_update(params, ctx, epoch, rng):
            del epoch, rng  # a function of the parameters only
            return refresh_learned_graph(module, params, ctx)
    elif learned_graph == "mmrec":
        def epoch_update(params, ctx, epoch, rng):
            del epoch, rng  # a function of the parameters only
            return refresh_item_graph(module, params, ctx)
        epoch_start_params = item_graph_parameters
    return Built(module=module, ctx=ctx, default_loss_weights={"bpr": 1.0, "reg": 1e-4}, epoch_update=epoch_update,
                 epoch_start_params=epoch_start_params)


def item_graph_parameters(params):
    """True for the parameters only the item graph reads (:meth:`LATTICE._graph_arrays`: the
    projections, the trainable feature tables and the modality weights): in ``"mmrec"`` mode they
    get a gradient only in an epoch's first step, and the trainer's optimizer skips them in the
    others, as MMRec's torch Adam skips a parameter without a gradient (``Built.epoch_start_params``)."""
    def graph_only(path, _):
        top = str(getattr(path[0], "key", path[0]))
        return top == "modal_weight" or top.startswith(("projection_", "features_"))

    return jax.tree_util.tree_map_with_path(graph_only, params)
