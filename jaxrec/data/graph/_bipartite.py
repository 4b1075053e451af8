"""The user-item interaction graph of the training split.

Nodes are the users ``[0, n_users)`` followed by the items ``[n_users, n_users + n_items)``;
each distinct training pair (u, i) is an undirected edge, stored in both directions. Repeated
training pairs count once, as in MMRec's ``dok_matrix`` adjacency.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from jaxrec.data._dataset import MultimodalDataset
from jaxrec.data.graph._edges import Edges, check_normalization, normalize_edges_host
from jaxrec.errors import DataError


@dataclasses.dataclass(frozen=True)
class BipartiteGraph:
    """Distinct (user, item) training pairs, sorted by user then item (host arrays).

    Attributes:
      users: (E,) int32 user ids.
      items: (E,) int32 item ids (not offset by ``n_users``).
      n_users, n_items: sizes of the two id spaces.
    """

    users: np.ndarray
    items: np.ndarray
    n_users: int
    n_items: int

    @classmethod
    def from_pairs(cls, users, items, *, n_users: int, n_items: int) -> "BipartiteGraph":
        """The graph of (n,) user and item id arrays; repeated pairs are kept once."""
        users, items = np.asarray(users), np.asarray(items)
        if users.ndim != 1 or users.shape != items.shape:
            raise DataError("users and items must be 1-D arrays of equal length", field="pairs",
                            found=f"shapes {users.shape} and {items.shape}", expected="(n,) and (n,)")
        for field, ids, upper in (("users", users, n_users), ("items", items, n_items)):
            if ids.dtype.kind not in "iu":
                raise DataError("ids must be integers", field=field, found=f"dtype {ids.dtype}",
                                expected="an integer array")
            if ids.size and (ids.min() < 0 or ids.max() >= upper):
                raise DataError("id out of range", field=field, found=f"range [{ids.min()}, {ids.max()}]",
                                expected=f"ids in [0, {upper})")
        keys = np.sort(users.astype(np.int64) * n_items + items.astype(np.int64))
        # Sort-and-compare: numpy 2's np.unique hashes and was ~50x slower on 10M keys.
        keys = keys[np.r_[True, keys[1:] != keys[:-1]]] if keys.size else keys
        graph = cls((keys // max(n_items, 1)).astype(np.int32), (keys % max(n_items, 1)).astype(np.int32),
                    int(n_users), int(n_items))
        graph.users.flags.writeable = False
        graph.items.flags.writeable = False
        return graph

    @property
    def n_nodes(self) -> int:
        return self.n_users + self.n_items

    @property
    def n_edges(self) -> int:
        """Distinct user-item pairs (each stored twice in the adjacency)."""
        return int(self.users.shape[0])

    @functools.cached_property
    def item_order(self) -> np.ndarray:
        """(E,) permutation visiting the pairs by item, then user (computed once)."""
        order = np.argsort(self.items, kind="stable")
        order.flags.writeable = False
        return order

    def user_degrees(self) -> np.ndarray:
        return np.bincount(self.users, minlength=self.n_users)

    def item_degrees(self) -> np.ndarray:
        return np.bincount(self.items, minlength=self.n_items)


def bipartite_graph(dataset: MultimodalDataset, *, split: str = "train") -> BipartiteGraph:
    """The user-item graph of one split of ``dataset`` (the training split by default)."""
    pairs = dataset.split_pairs(split)
    return BipartiteGraph.from_pairs(pairs[:, 0], pairs[:, 1], n_users=dataset.n_users, n_items=dataset.n_items)


def symmetric_pair_edges(users: np.ndarray, items: np.ndarray, pair_weights: np.ndarray, n_users: int,
                         item_order: np.ndarray | None = None) -> Edges:
    """Both directions of user-item pairs: user rows first, then item rows (offset by n_users).

    With ``users`` sorted and ``items`` visited in item order, the result is sorted by row.
    """
    item_order = np.argsort(items, kind="stable") if item_order is None else item_order
    rows = np.concatenate([users, items[item_order] + n_users]).astype(np.int32)
    cols = np.concatenate([items + n_users, users[item_order]]).astype(np.int32)
    weights = np.concatenate([pair_weights, pair_weights[item_order]]).astype(np.float32)
    return Edges(rows, cols, weights)


def normalized_adjacency(graph: BipartiteGraph, *, normalization: str = "sym", self_loops: bool = False) -> Edges:
    r"""The normalized user-item adjacency as a row-sorted edge list.

    .. math::

      A = \begin{pmatrix} 0 & R \\ R^\top & 0 \end{pmatrix} (+ I), \qquad
      \hat A = D^{-1/2} A D^{-1/2} \;(\text{"sym"}) \quad\text{or}\quad D^{-1} A \;(\text{"rw"})

    where :math:`R` is the binary (n_users, n_items) training matrix and :math:`D` the row sums
    of :math:`A`. For "sym" without self-loops, the weight of (u, i) is
    :math:`1/\sqrt{d_u d_i}` (LightGCN, FREEDOM's ``get_norm_adj_mat``); LATTICE's user-item
    graph is ``normalization="rw", self_loops=True``.

    Args:
      graph: the training pairs.
      normalization: ``"sym"``, ``"rw"`` or ``"none"``.
      self_loops: add :math:`I` before normalizing (one loop per node, users and items).

    Returns:
      ``Edges`` of size ``2 * graph.n_edges (+ graph.n_nodes)``, sorted by row, numpy arrays
      (call ``.to_device()`` for the model's ``ctx``).

    References:
      He et al., *LightGCN*, SIGIR 2020, eq. (3); MMRec ``src/models/freedom.py:
      get_norm_adj_mat`` and ``src/models/lattice.py: get_adj_mat``.
    """
    check_normalization(normalization)
    edges = symmetric_pair_edges(graph.users, graph.items, np.ones(graph.n_edges, np.float32), graph.n_users,
                                 graph.item_order)
    rows, cols, weights = edges
    if self_loops:
        loops = np.arange(graph.n_nodes, dtype=np.int32)
        rows, cols = np.concatenate([rows, loops]), np.concatenate([cols, loops])
        weights = np.concatenate([weights, np.ones(graph.n_nodes, np.float32)])
        order = np.argsort(rows, kind="stable")
        rows, cols, weights = rows[order], cols[order], weights[order]
    return Edges(rows, cols, normalize_edges_host(rows, cols, weights, graph.n_nodes, normalization=normalization))


def edge_sampling_weights(graph: BipartiteGraph) -> np.ndarray:
    r"""FREEDOM's degree-sensitive pruning weight of each pair, :math:`1/\sqrt{d_u d_i}`.

    Args:
      graph: the training pairs.

    Returns:
      (E,) float32 weights, aligned with ``graph.users`` / ``graph.items``.

    References:
      MMRec ``src/models/freedom.py: get_edge_info, _normalize_adj_m`` (which adds 1e-7 to
      each degree; degrees here are >= 1, so that changes nothing at float32 precision).
    """
    user_scale = 1.0 / np.sqrt(np.maximum(graph.user_degrees(), 1).astype(np.float64))
    item_scale = 1.0 / np.sqrt(np.maximum(graph.item_degrees(), 1).astype(np.float64))
    return (user_scale[graph.users] * item_scale[graph.items]).astype(np.float32)
