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
hash (:mod:`jaxrec.data.graph`).

**Denoised user-item graph.** Each epoch keeps :math:`\lfloor E(1-p)\rfloor` of the E training
pairs, sampled without replacement with probability :math:`\propto 1/\sqrt{d_u d_i}`, and
re-normalizes the kept graph :math:`\hat A_S` with its own degrees (degree-sensitive edge
pruning, ``dropout`` = p); evaluation uses the full :math:`\hat A = D^{-1/2} A D^{-1/2}`.

**Embeddings.** With :math:`E^{(0)} = [P; Q]` the ID tables,

.. math::
  \bar E = \frac{1}{L+1}\sum_{l=0}^{L} \hat A_S^{\,l} E^{(0)} = [\bar P; \bar Q], \qquad
  h = S^{L_m} Q, \qquad e_u = \bar p_u, \qquad e_i = \bar q_i + h_i,

with :math:`L` = ``n_ui_layers`` (2) and :math:`L_m` = ``n_mm_layers`` (1).

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
modality's graph (MMRec would divide by a zero norm and produce NaN); the 1e-7 MMRec adds to
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

from jaxrec import losses
from jaxrec.data import graph as jgraph
from jaxrec.errors import ConfigError
from jaxrec.models._init import torch_linear_bias, torch_linear_kernel, xavier_uniform
from jaxrec.models._registry import Built, register
from jaxrec.models.sidemf import check_positive_int, item_side_features




class FeatureTable(nn.Module):
    """A trainable copy of a feature matrix, initialized from the one passed at ``init``
    (MMRec's ``nn.Embedding.from_pretrained(features, freeze=False)``)."""

    @nn.compact
    def __call__(self, initial):
        return self.param("table", lambda _: jnp.asarray(initial, jnp.float32))


def batch_triples(batch):
    """``(users (B,), pos_items (B,), neg_items (B, n_neg), weights (B,) or None)`` of a batch."""
    negatives = batch["neg_items"]
    if negatives.ndim == 1:
        negatives = negatives[:, None]
    return batch["users"], batch["pos_items"], negatives, batch.get("weights")


def bpr_scores(users, positives, negatives, weights):
    """BPR of (B, d) users against (B, d) positives and (B, n_neg, d) negatives; rows of
    weight 0 (an epoch's padding) are left out."""
    pos_scores = jnp.sum(users * positives, axis=-1)
    neg_scores = jnp.einsum("bd,bnd->bn", users, negatives)
    return losses.bpr(pos_scores, neg_scores, weights=weights)


class FREEDOM(nn.Module):
    """FREEDOM (see the module docstring).

    ``ctx``: ``{"graph": Edges, "train_graph": Edges, "item_graph": Edges, "features":
    tuple of (n_items, d_m)}`` -- the full normalized user-item graph (ranking), the epoch's
    pruned graph (training), the frozen item graph :math:`S` and the raw features.

    Attributes:
      n_users, n_items: table sizes.
      feature_dims: width of each modality, in ``ctx["features"]`` order.
      embedding_size: d.
      feat_embed_dim: width of the projections :math:`\\phi_m` (must equal d: their scores
        are dot products with user embeddings).
      n_ui_layers: L, user-item propagation layers.
      n_mm_layers: item-graph propagation layers.
      train_features: whether the raw feature tables are trainable (MMRec: yes).
    """

    n_users: int
    n_items: int
    feature_dims: tuple[int, ...]
    embedding_size: int = 64
    feat_embed_dim: int = 64
    n_ui_layers: int = 2
    n_mm_layers: int = 1
    train_features: bool = True

    def setup(self):
        self.user_embedding = self.param("user_embedding", xavier_uniform, (self.n_users, self.embedding_size))
        self.item_embedding = self.param("item_embedding", xavier_uniform, (self.n_items, self.embedding_size))
        self.projections = [nn.Dense(self.feat_embed_dim, kernel_init=torch_linear_kernel,
                                     bias_init=torch_linear_bias(dim), name=f"projection_{m}")
                            for m, dim in enumerate(self.feature_dims)]
        if self.train_features:
            self.feature_tables = [FeatureTable(name=f"features_{m}") for m in range(len(self.feature_dims))]

    def item_graph_embeddings(self, ctx):
        """:math:`h = S^{L_m} Q`, (n_items, d)."""
        h = self.item_embedding
        for _ in range(self.n_mm_layers):
            h = jgraph.propagate(ctx["item_graph"], h, indices_are_sorted=True)
        return h

    def propagated(self, ctx, graph):
        """``(users (n_users, d), items (n_items, d))``: the layer mean over ``graph`` plus
        the item-graph term."""
        ego = jnp.concatenate([self.user_embedding, self.item_embedding], axis=0)
        mean, _ = jgraph.lightgcn_propagate(graph, ego, self.n_ui_layers, indices_are_sorted=True)
        return mean[:self.n_users], mean[self.n_users:] + self.item_graph_embeddings(ctx)

    def projected_features(self, ctx, m: int, items):
        """:math:`\\phi_m(x^m_i)` of the items ``items`` (any int shape), (..., feat_embed_dim).

        The projection is row-wise, so it is applied to whichever is smaller: the gathered
        rows (large catalogues) or all items (then gathered)."""
        features = ctx["features"][m]
        if self.train_features:
            features = self.feature_tables[m](features)
        if items.size < self.n_items:
            return self.projections[m](features[items])
        return self.projections[m](features)[items]

    def encode(self, ctx, train: bool = False):
        """``(user_emb, item_emb)`` over the FULL user-item graph (as MMRec ranks)."""
        del train
        return self.propagated(ctx, ctx["graph"])

    def loss_terms(self, ctx, batch, train: bool = False):
        """``{"bpr", "modality_bpr"}`` over the epoch's pruned graph ``ctx["train_graph"]``."""
        del train
        users, positives, negatives, weights = batch_triples(batch)
        user_all, item_all = self.propagated(ctx, ctx["train_graph"])
        user_rows = user_all[users]
        terms = {"bpr": bpr_scores(user_rows, item_all[positives], item_all[negatives], weights)}
        modality = [bpr_scores(user_rows, self.projected_features(ctx, m, positives),
                               self.projected_features(ctx, m, negatives), weights)
                    for m in range(len(self.feature_dims))]
        terms["modality_bpr"] = sum(modality) if modality else jnp.zeros(())
        return terms


def frozen_item_graph(dataset, modalities: Sequence[str], graph_weights: Sequence[float], *, knn_k: int,
                      cache: jgraph.GraphCache | None, knn_method: str = "exact",
                      ivf: jgraph.IvfSettings | None = None) -> jgraph.Edges:
    """FREEDOM's :math:`S = \\sum_m \\alpha_m D_m^{-1/2} A_m D_m^{-1/2}` on the union of the
    modality graphs' edges, row-sorted, on the host."""
    graphs = [jgraph.knn_edges(jgraph.item_knn_neighbours(dataset, name, k=knn_k, cache=cache, method=knn_method,
                                                          ivf=ivf),
                               weighted=False, normalization="sym") for name in modalities]
    stack = jgraph.stack_graphs(graphs, dataset.n_items)
    mixed = np.asarray(graph_weights, np.float32) @ np.asarray(stack.weights)
    return jgraph.Edges(np.asarray(stack.rows), np.asarray(stack.cols), mixed.astype(np.float32))


def knn_search_settings(method, n_clusters, n_probe, model: str) -> jgraph.IvfSettings | None:
    """The :class:`~jaxrec.data.graph.IvfSettings` of ``knn_method: ivf`` (None for ``exact``),
    or ``ConfigError`` for a bad combination."""
    if method not in jgraph.KNN_METHODS:
        raise ConfigError(f"model {model}: knn_method must be one of {jgraph.KNN_METHODS}; found {method!r}")
    if method == "exact":
        if n_clusters is not None or n_probe is not None:
            raise ConfigError(f"model {model}: knn_n_clusters and knn_n_probe apply to knn_method 'ivf' only; "
                              f"found {n_clusters!r}, {n_probe!r} with 'exact'")
        return None
    if n_clusters is None or n_probe is None:
        raise ConfigError(f"model {model}: knn_method 'ivf' needs knn_n_clusters and knn_n_probe; "
                          f"found {n_clusters!r}, {n_probe!r}")
    check_positive_int(n_clusters, "knn_n_clusters", model)
    check_positive_int(n_probe, "knn_n_probe", model)
    if n_probe > n_clusters:
        raise ConfigError(f"model {model}: knn_n_probe ({n_probe}) must not exceed knn_n_clusters ({n_clusters})")
    return jgraph.IvfSettings(n_clusters=n_clusters, n_probe=n_probe)


def graph_cache_of(graph_cache: str | None) -> jgraph.GraphCache | None:
    """``"default"`` -> the default cache folder, a path -> that folder, ``"none"`` or None ->
    no cache."""
    if graph_cache is None or graph_cache == "none":
        return None
    if not isinstance(graph_cache, str):
        raise ConfigError(f"graph_cache must be 'default', a folder or 'none'; found {graph_cache!r}")
    return jgraph.GraphCache(None if graph_cache == "default" else graph_cache)


def check_modality_weights(weights, modalities, name: str, model: str) -> tuple[float, ...]:
    if weights is None:
        return tuple(1.0 / len(modalities) for _ in modalities)
    if (not isinstance(weights, (list, tuple)) or len(weights) != len(modalities)
            or not all(isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0 for w in weights)):
        raise ConfigError(f"model {model}: {name} must be {len(modalities)} non-negative numbers, one per "
                          f"modality {list(modalities)}; found {weights!r}")
    return tuple(float(w) for w in weights)


def key_seed(key) -> list[int]:
    """The words of a jax PRNG key (typed or raw uint32), to seed a numpy Generator."""
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.asarray(key).ravel().tolist()


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
      knn_method: ``"exact"`` (default) or ``"ivf"``: the frozen graph's kNN by an inverted
        file (:func:`jaxrec.data.graph.knn_neighbours`), for catalogues where the exact
        :math:`O(n^2)` search is too slow; then ``knn_n_clusters`` and ``knn_n_probe`` are
        required (``experiments/configs/scale/``: 1024 and 32 at a million items).

    Returns:
      :class:`~jaxrec.models.Built` with an ``epoch_update`` that redraws the pruned graph each
      epoch, and weights ``{bpr: 1, modality_bpr: 1e-5}`` (MMRec's ``reg_weight`` chosen by
      validation on lfm2k).
    """
    model = "freedom"
    for name, value in (("embedding_size", embedding_size), ("feat_embed_dim", feat_embed_dim), ("knn_k", knn_k)):
        check_positive_int(value, name, model)
    for name, value in (("n_ui_layers", n_ui_layers), ("n_mm_layers", n_mm_layers)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"model {model}: {name} must be a non-negative integer; found {value!r}")
    if feat_embed_dim != embedding_size:
        raise ConfigError(f"model {model}: feat_embed_dim ({feat_embed_dim}) must equal embedding_size "
                          f"({embedding_size}): projected features are scored against user embeddings")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ConfigError(f"model {model}: dropout must be a number in [0, 1); found {dropout!r}")
    if not isinstance(train_features, bool):
        raise ConfigError(f"model {model}: train_features must be true or false; found {train_features!r}")
    ivf = knn_search_settings(knn_method, knn_n_clusters, knn_n_probe, model)
    features, dims, names = item_side_features(dataset, modalities, scaling="none", model=model)
    weights = check_modality_weights(graph_weights, names, "graph_weights", model)
    blocks = tuple(jnp.asarray(block) for block in np.split(features, np.cumsum(dims)[:-1], axis=1))
    del features
    graph = jgraph.bipartite_graph(dataset, split="train")
    full = jgraph.normalized_adjacency(graph).to_device()
    item_graph = frozen_item_graph(dataset, names, weights, knn_k=knn_k, cache=graph_cache_of(graph_cache),
                                   knn_method=knn_method, ivf=ivf)
    ctx = {"graph": full, "item_graph": item_graph.to_device(), "features": blocks}
    module = FREEDOM(n_users=dataset.n_users, n_items=dataset.n_items, feature_dims=dims,
                     embedding_size=embedding_size, feat_embed_dim=feat_embed_dim, n_ui_layers=n_ui_layers,
                     n_mm_layers=n_mm_layers, train_features=train_features)
    defaults = {"bpr": 1.0, "modality_bpr": 1e-5}
    if dropout == 0.0:
        ctx["train_graph"] = full
        return Built(module=module, ctx=ctx, default_loss_weights=defaults)
    sampling_weights = jgraph.edge_sampling_weights(graph)

    def prune(params, ctx, epoch, rng):
        del params, epoch  # the pruning ignores the parameters; the key already depends on the epoch
        generator = np.random.default_rng(key_seed(rng))
        pruned = jgraph.prune_edges(graph, dropout=float(dropout), rng=generator, sampling_weights=sampling_weights)
        return {**ctx, "train_graph": pruned.to_device()}

    # The built context carries one pruned graph so that shapes are known before training;
    # the trainer replaces it at the start of every epoch.
    ctx = prune(None, ctx, 0, jax.random.PRNGKey(0))
    return Built(module=module, ctx=ctx, default_loss_weights=defaults, epoch_update=prune)
