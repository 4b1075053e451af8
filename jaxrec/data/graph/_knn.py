r"""Item-item k-nearest-neighbour graphs by cosine similarity, built in tiles.

The n x n similarity matrix is never formed. Items (those with the modality) are cut into
blocks of ``block_size`` rows; for each pair of blocks (a, b) with a <= b, jitted XLA code
computes the (block x block) similarity tile :math:`S_{ab} = \hat X_a \hat X_b^\top` and uses
it twice — the top-k of its rows updates block a's running neighbours, the top-k of its
columns (the rows of :math:`S_{ba} = S_{ab}^\top`) updates block b's — so every similarity is
computed once, half the work of a row-by-row scan. Memory beyond the features is a float32
copy of the unit-normalized features plus O(n k + block^2). Each tile's top-k is exact but
group-max pruned (:func:`~jaxrec.data.graph.tile_top_k`), and the running top-k is merged by
a top-k of 2k entries rather than a sort: per (2048 x 2048) tile of 128-d rows the top-k
update took 17.9 ms instead of 27.9 ms (matmul 6.7 ms), and 100,000 items 39 instead of
54 CPU seconds, identical neighbours (``benchmarks/bench_knn.py --tiles``; a shared 2-core
machine, minimum of repeats).

``method="join"`` replaces the :math:`O(n^2)` scan by a cluster-blocked join (an inverted file
probed per item, computed list by list as BLAS matrix products; :mod:`._join`),
``method="hnsw"`` by an approximate HNSW index (hnswlib, the optional ``ann`` extra;
:mod:`._hnsw`), ``method="ivf"`` by our inverted-file search in JAX (:mod:`._ivf`), for
catalogues of a million items; ``method="auto"`` is exact below ``AUTO_APPROXIMATE_FROM``
items and join from there on (``benchmarks/bench_knn.py --ann`` measures them against the
libraries: the join reached recall@10 0.95 at 1M x 128 in a fraction of hnswlib's CPU time).

Order is deterministic: neighbours are ranked by similarity, then by smaller item id, so
exact ties resolve the same way whatever the block size. With ``include_self`` the item
itself is always the first neighbour (similarity 1): MMRec's LATTICE
(``build_knn_neighbourhood``) and FREEDOM (``get_knn_adj_mat``) take ``torch.topk`` over
the full similarity row, which keeps the item itself because its self-similarity 1 is the
row maximum; here that is exact rather than subject to rounding and ties with duplicates.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.data.graph._edges import Edges, check_normalization, normalize_edges_host
from jaxrec.data.graph._hnsw import HnswSettings, hnsw_top_k
from jaxrec.data.graph._ivf import IvfSettings, ivf_top_k
from jaxrec.data.graph._join import JoinSettings, join_top_k
from jaxrec.data.graph._top_k import merge_later_ids, tile_top_k
from jaxrec.errors import ConfigError, DataError

MISSING_POLICIES = ("isolated", "self_loop")
KNN_METHODS = ("exact", "ivf", "hnsw", "join", "auto")
# "auto": the exact tiles below this many items with the modality, the cluster-blocked join from
# it on (the exact scan grows as n^2: ~40 CPU s at 100,000 items, about an hour at 1,000,000).
AUTO_APPROXIMATE_FROM = 200_000


def resolve_knn_method(method: str, n_present: int) -> str:
    """The method ``method`` stands for at ``n_present`` items ("auto": exact or join)."""
    if method not in KNN_METHODS:
        raise ConfigError(f"kNN method must be one of {KNN_METHODS}; found {method!r}")
    if method == "auto":
        return "exact" if n_present < AUTO_APPROXIMATE_FROM else "join"
    return method


class KnnNeighbours(NamedTuple):
    """Each item's k most similar items (host arrays).

    Attributes:
      indices: (n_items, k) int32 neighbour ids, most similar first; an invalid slot holds the
        row's own id.
      similarities: (n_items, k) float32 cosine similarities (1 for the item itself); 0 in
        invalid slots.
      valid: (n_items, k) bool; False for every slot of an item without the modality, and for
        the trailing slots when fewer than k candidates exist.
    """

    indices: np.ndarray
    similarities: np.ndarray
    valid: np.ndarray


# The similarity tile and its top-k are separate jitted calls, so that only the tiles that
# touch the zero-padded last block pay for masking (one fused program per tile measured the
# same within the noise of a shared 2-core machine).
@functools.partial(jax.jit, static_argnames=("masked",))
def _similarity_tile(block_a, block_b, ok_a, ok_b, *, masked: bool):
    sims = jnp.matmul(block_a, block_b.T, precision=jax.lax.Precision.HIGHEST)
    if masked:  # only tiles touching the zero-padded last block pay for the mask
        sims = jnp.where(ok_a[:, None] & ok_b[None, :], sims, -jnp.inf)
    return sims


# Block a's running top-k receives tiles (a', a) for a' < a, then (a, a), then (a, b) for b > a:
# source ids only grow, which merge_later_ids relies on.
@functools.partial(jax.jit, static_argnames=("k", "group_size"))
def _update_both(sims, state_a, state_b, start_a, start_b, *, k: int, group_size: int):
    values_a, local_a = tile_top_k(sims, k, axis=1, group_size=group_size)
    values_b, local_b = tile_top_k(sims, k, axis=0, group_size=group_size)
    return (merge_later_ids(*state_a, values_a, local_a + start_b, k),
            merge_later_ids(*state_b, values_b, local_b + start_a, k))


@functools.partial(jax.jit, static_argnames=("k", "include_self", "group_size"))
def _update_diagonal(sims, state, start, *, k: int, include_self: bool, group_size: int):
    # +inf ranks the item itself first; it is replaced by similarity 1 at the end.
    eye = jnp.eye(sims.shape[0], dtype=bool)
    sims = jnp.where(eye, jnp.inf if include_self else -jnp.inf, sims)
    values, local = tile_top_k(sims, k, axis=1, group_size=group_size)
    return merge_later_ids(*state, values, local + start, k)


def unit_rows(features: np.ndarray) -> np.ndarray:
    """Host (n, d) rows scaled to unit L2 norm (float32); an all-zero row stays zero."""
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    # A zero row has no direction: similarity 0 to everything (MMRec would produce NaN).
    return features / np.where(norms > 0, norms, 1.0).astype(np.float32)


def _exact_top_k(features, present, k: int, *, include_self: bool, block_size: int, group_size: int, progress):
    """(values, local ids) of the present items among themselves by the symmetric tile scan."""
    block = max(k, min(int(block_size), -(-present.size // 8) * 8))
    n_blocks = -(-present.size // block)
    padded = np.zeros((n_blocks * block, features.shape[1]), np.float32)
    for start in range(0, present.size, 65536):  # unit rows written in place, in slices
        rows = present[start:start + 65536]
        padded[start:start + rows.size] = unit_rows(np.asarray(features[rows], np.float32))
    ok = np.arange(n_blocks * block) < present.size
    blocks = [jnp.asarray(padded[b * block:(b + 1) * block]) for b in range(n_blocks)]
    oks = [jnp.asarray(ok[b * block:(b + 1) * block]) for b in range(n_blocks)]
    del padded
    starts = [jnp.int32(b * block) for b in range(n_blocks)]
    empty = (jnp.full((block, k), -jnp.inf, jnp.float32), jnp.full((block, k), np.iinfo(np.int32).max, jnp.int32))
    states = [empty] * n_blocks
    last = n_blocks - 1
    padded_last = present.size < n_blocks * block
    for a in range(n_blocks):
        sims = _similarity_tile(blocks[a], blocks[a], oks[a], oks[a], masked=padded_last and a == last)
        states[a] = _update_diagonal(sims, states[a], starts[a], k=k, include_self=include_self,
                                     group_size=group_size)
        for b in range(a + 1, n_blocks):
            sims = _similarity_tile(blocks[a], blocks[b], oks[a], oks[b], masked=padded_last and b == last)
            states[a], states[b] = _update_both(sims, states[a], states[b], starts[a], starts[b], k=k,
                                                group_size=group_size)
            if (b - a) % 4 == 0:  # bound the queue of dispatched tiles (each holds a block^2 buffer)
                jax.block_until_ready(states[a])
        blocks[a] = None  # block a is never read again (only b > a are visited later)
        jax.block_until_ready(states[a])
        if progress is not None:
            progress(n_blocks * (a + 1) - a * (a + 1) // 2, n_blocks * (n_blocks + 1) // 2)
    values = np.concatenate([np.asarray(s[0]) for s in states])[:present.size]
    local = np.concatenate([np.asarray(s[1]) for s in states])[:present.size]
    return values, local


def knn_neighbours(features, k: int, *, mask=None, include_self: bool = True, block_size: int = 2048,
                   group_size: int = 8, method: str = "exact", ivf: IvfSettings | None = None,
                   hnsw: HnswSettings | None = None, join: JoinSettings | None = None,
                   progress: Callable[[int, int], None] | None = None) -> KnnNeighbours:
    r"""The k most cosine-similar items of every item, without an n x n matrix.

    .. math::

      s_{ij} = \frac{x_i^\top x_j}{\lVert x_i\rVert\, \lVert x_j\rVert}, \qquad
      N_k(i) = \operatorname{top\text{-}k}_{j \in M,\; (j \ne i \text{ unless include\_self})} s_{ij}

    over the items :math:`M` that have the modality (``mask``); items outside :math:`M` get
    no neighbours and are no one's neighbour.

    Args:
      features: (n_items, d) item features of one modality (any float dtype; computed in
        float32).
      k: neighbours per item (including the item itself when ``include_self``).
      mask: optional (n_items,) bool, True where the item has the modality.
      include_self: keep the item as its own first neighbour (LATTICE, FREEDOM) or exclude it.
      block_size: rows per tile; memory per step is about ``3 * block_size**2 * 4`` bytes.
      group_size: columns per group of the group-max pruned top-k of each tile
        (:func:`tile_top_k`); speed only, the result is the same.
      method: ``"exact"`` (the tiles above) or ``"ivf"``: the approximate inverted-file
        search of :mod:`jaxrec.data.graph._ivf` (spherical k-means, probed clusters) for
        catalogues where :math:`O(n^2)` is too slow; same ranking and tie rule among the
        candidates it compares.
        ``"hnsw"``: the HNSW index of :mod:`jaxrec.data.graph._hnsw` (optional hnswlib).
        ``"join"``: the cluster-blocked join of :mod:`jaxrec.data.graph._join` (the default
        approximate method: recall@10 0.95 at a fraction of hnswlib's CPU time); ``"auto"``:
        exact below ``AUTO_APPROXIMATE_FROM`` items with the modality, join from there on.
      ivf: :class:`IvfSettings` (n_clusters, n_probe, ...), required with ``method="ivf"``.
      hnsw: :class:`HnswSettings` for ``"hnsw"`` (default: ``HnswSettings()``).
      join: :class:`JoinSettings` for ``"join"`` (default: ``JoinSettings()``).
      progress: optional ``fn(done, total)`` called after each row of tiles (exact; a
        million items take about an hour on two CPU cores) or each cluster (ivf).

    Returns:
      :class:`KnnNeighbours` with (n_items, k) arrays.

    References:
      MMRec ``src/utils/utils.py: build_sim, build_knn_neighbourhood`` (LATTICE) and
      ``src/models/freedom.py: get_knn_adj_mat`` (FREEDOM).
    """
    features = np.asarray(features)
    if features.ndim != 2:
        raise DataError("kNN features must be a matrix", field="features", found=f"shape {features.shape}",
                        expected="(n_items, d)")
    n_items = features.shape[0]
    if int(k) != k or k < 1:
        raise ConfigError(f"k must be a positive integer, got {k!r}")
    k = int(k)
    if isinstance(group_size, bool) or int(group_size) != group_size or group_size < 1:
        raise ConfigError(f"group_size must be a positive integer, got {group_size!r}")
    group_size = int(group_size)
    if method not in KNN_METHODS:
        raise ConfigError(f"kNN method must be one of {KNN_METHODS}; found {method!r}")
    if hnsw is not None and not isinstance(hnsw, HnswSettings):
        raise ConfigError(f"kNN method 'hnsw' takes hnsw=HnswSettings(...); found {hnsw!r}")
    if join is not None and not isinstance(join, JoinSettings):
        raise ConfigError(f"kNN method 'join' takes join=JoinSettings(...); found {join!r}")
    if method == "ivf" and not isinstance(ivf, IvfSettings):
        raise ConfigError(f"kNN method 'ivf' needs ivf=IvfSettings(n_clusters=..., n_probe=...); found {ivf!r}")
    if mask is None:
        present = np.arange(n_items)
    else:
        mask = np.asarray(mask)
        if mask.shape != (n_items,) or mask.dtype != np.bool_:
            raise DataError("modality mask must be a boolean per item", field="mask",
                            found=f"{mask.dtype} {mask.shape}", expected=f"bool ({n_items},)")
        present = np.flatnonzero(mask)
    indices = np.repeat(np.arange(n_items, dtype=np.int32)[:, None], k, axis=1)
    similarities = np.zeros((n_items, k), np.float32)
    valid = np.zeros((n_items, k), bool)
    if present.size == 0:
        return KnnNeighbours(indices, similarities, valid)

    method = resolve_knn_method(method, present.size)
    if method in ("hnsw", "join"):
        units = np.empty((present.size, features.shape[1]), np.float32)
        for start in range(0, present.size, 65536):
            rows = present[start:start + 65536]
            units[start:start + rows.size] = unit_rows(np.asarray(features[rows], np.float32))
        if method == "hnsw":
            values, local = hnsw_top_k(units, k, (hnsw or HnswSettings()).checked(), include_self=include_self)
        else:
            values, local = join_top_k(units, k, (join or JoinSettings()).checked(), include_self=include_self)
        del units
    elif method == "ivf":
        settings = ivf.checked(present.size)
        units = np.empty((present.size, features.shape[1]), np.float32)
        for start in range(0, present.size, 65536):
            rows = present[start:start + 65536]
            units[start:start + rows.size] = unit_rows(np.asarray(features[rows], np.float32))
        values, local = ivf_top_k(units, k, settings, include_self=include_self, group_size=group_size,
                                  progress=progress)
        del units
    else:
        values, local = _exact_top_k(features, present, k, include_self=include_self, block_size=block_size,
                                     group_size=group_size, progress=progress)
    found = values > -np.inf
    local = np.where(found, local, 0)
    values = np.where(np.isposinf(values), 1.0, np.where(found, values, 0.0)).astype(np.float32)
    indices[present] = np.where(found, present[local], present[:, None]).astype(np.int32)
    similarities[present] = values
    valid[present] = found
    return KnnNeighbours(indices, similarities, valid)


def knn_edges(neighbours: KnnNeighbours, *, weighted: bool = False, normalization: str = "sym",
              missing: str = "isolated") -> Edges:
    r"""The normalized kNN graph as a row-sorted edge list of static size ``n_items * k``.

    .. math::

      A_{ij} = \begin{cases} s_{ij} \text{ (weighted) or } 1 & j \in N_k(i) \\ 0 & \text{else}
      \end{cases}, \qquad \hat A = D^{-1/2} A D^{-1/2} \text{ ("sym") or } D^{-1} A \text{ ("rw")}

    with :math:`D` the row sums of :math:`A` (a directed graph: row i lists i's neighbours).
    FREEDOM uses ``weighted=False, normalization="sym"`` (all degrees are k, so every weight is
    1/k); LATTICE uses ``weighted=True, normalization="sym"``.

    Args:
      neighbours: from :func:`knn_neighbours`.
      weighted: entries are the similarities (LATTICE) or ones (FREEDOM).
      normalization: ``"sym"``, ``"rw"`` or ``"none"``.
      missing: rows without any neighbour (items lacking the modality): ``"isolated"`` keeps
        them empty, so propagation gives them zeros; ``"self_loop"`` gives them a weight-1
        loop, so they keep their own embedding.

    Returns:
      ``Edges`` with ``rows = repeat(arange(n_items), k)``; invalid slots have weight 0.

    References:
      MMRec ``src/models/freedom.py: get_knn_adj_mat, compute_normalized_laplacian``;
      ``src/utils/utils.py: compute_normalized_laplacian`` (LATTICE).
    """
    check_normalization(normalization)
    if missing not in MISSING_POLICIES:
        raise ConfigError(f"unknown missing-modality policy {missing!r}; expected one of {MISSING_POLICIES}")
    n_items, k = neighbours.indices.shape
    valid = np.asarray(neighbours.valid)
    weights = np.where(valid, neighbours.similarities if weighted else 1.0, 0.0).astype(np.float32)
    if missing == "self_loop":
        lonely = ~valid.any(axis=1)
        weights[lonely, 0] = 1.0  # the invalid slots already point at the row itself
    rows = np.repeat(np.arange(n_items, dtype=np.int32), k)
    cols = np.asarray(neighbours.indices, np.int32).ravel()
    return Edges(rows, cols, normalize_edges_host(rows, cols, weights.ravel(), n_items, normalization=normalization))


def cosine_edge_weights(features: jax.Array, rows: jax.Array, cols: jax.Array) -> jax.Array:
    r"""Differentiable cosine similarity of the endpoints of each edge (on device).

    .. math::  w_e = \frac{x_{r_e}^\top x_{c_e}}{\lVert x_{r_e}\rVert\, \lVert x_{c_e}\rVert}

    LATTICE's learned graph weights each kNN edge (chosen on the learned features, without
    gradient) by this similarity, through which the feature projections are trained.

    Args:
      features: (n, d) node features.
      rows, cols: (E,) edge endpoints.

    Returns:
      (E,) similarities (0 where either endpoint is a zero vector).
    """
    features = jnp.asarray(features)
    squared = jnp.sum(features * features, axis=1)
    inv_norm = jnp.where(squared > 0, jax.lax.rsqrt(jnp.where(squared > 0, squared, 1.0)), 0.0)
    units = features * inv_norm[:, None]
    return jnp.sum(units[rows] * units[cols], axis=1)
