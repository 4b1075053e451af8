"""jaxrec.data.graph: user-item and item-item graphs for graph-based recommenders.

* the user-item training graph, its normalizations and FREEDOM's degree-sensitive pruning;
* sparse propagation over edge lists (chunked ``segment_sum``, or BCOO) and LightGCN's mean;
  a constant graph (``FixedGraph``: the user-item adjacency, a frozen kNN graph) propagated with
  its sorted transpose as gradient (``propagate_fixed``), not JAX's scatter-add;
  kNN graphs as (n, K) neighbour tables, propagated in rematerialized row chunks;
* item-item kNN graphs per modality, built in tiles (never n x n) -- exactly, or
  approximately for a million items by a cluster-blocked join (an inverted file probed per
  item, list by list as BLAS products), an HNSW index (hnswlib, the ``ann`` extra) or our
  inverted file in JAX (spherical k-means, probed clusters) -- normalized, combined across modalities with fixed or learned weights, and cached
  on disk by content hash.

Typical use in a model builder (host side) and module (device side)::

  graph = bipartite_graph(dataset)                             # distinct training pairs
  adjacency = normalized_adjacency(graph).to_device()          # D^-1/2 A D^-1/2, row-sorted
  mean, layers = lightgcn_propagate(adjacency, ego, n_layers, indices_are_sorted=True)

  pruned = prune_edges(graph, dropout=0.8, rng=rng).to_device()  # FREEDOM, once per epoch;
  # static size 2 * kept_edge_count(E, 0.8), so the jitted step does not recompile

  cache = GraphCache(workdir / "graphs")
  image = item_knn_graph(dataset, "image", k=10, cache=cache)  # FREEDOM: 0/1 entries, "sym"
  # a million items: approximate (inverted file), its settings part of the cache key
  big = item_knn_graph(dataset, "text", k=10, cache=cache, method="ivf",
                       ivf=IvfSettings(n_clusters=1024, n_probe=8))
  text = item_knn_graph(dataset, "text", k=10, cache=cache)
  stack = stack_graphs([image, text], dataset.n_items)
  item_adj = mix_item_graphs(jnp.array([0.1, 0.9]), stack)     # FREEDOM's mm_image_weight
  item_adj = combine_item_graphs(logits, stack)                # LATTICE: softmax, learned
"""

from jaxrec.data.graph._bipartite import BipartiteGraph as BipartiteGraph
from jaxrec.data.graph._bipartite import bipartite_graph as bipartite_graph
from jaxrec.data.graph._bipartite import edge_sampling_weights as edge_sampling_weights
from jaxrec.data.graph._bipartite import normalized_adjacency as normalized_adjacency
from jaxrec.data.graph._cache import GraphCache as GraphCache
from jaxrec.data.graph._cache import array_digest as array_digest
from jaxrec.data.graph._cache import cache_key as cache_key
from jaxrec.data.graph._cache import default_cache_dir as default_cache_dir
from jaxrec.data.graph._combine import GraphStack as GraphStack
from jaxrec.data.graph._combine import combine_item_graphs as combine_item_graphs
from jaxrec.data.graph._combine import mix_item_graphs as mix_item_graphs
from jaxrec.data.graph._combine import stack_graphs as stack_graphs
from jaxrec.data.graph._edges import NORMALIZATIONS as NORMALIZATIONS
from jaxrec.data.graph._edges import Edges as Edges
from jaxrec.data.graph._edges import normalize_edges as normalize_edges
from jaxrec.data.graph._item_graph import KNN_VERSION as KNN_VERSION
from jaxrec.data.graph._item_graph import item_knn_graph as item_knn_graph
from jaxrec.data.graph._item_graph import item_knn_neighbours as item_knn_neighbours
from jaxrec.data.graph._item_graph import knn_cache_key as knn_cache_key
from jaxrec.data.graph._fixed import FixedGraph as FixedGraph
from jaxrec.data.graph._fixed import fixed_graph as fixed_graph
from jaxrec.data.graph._fixed import propagate_fixed as propagate_fixed
from jaxrec.data.graph._fixed import row_starts as row_starts
from jaxrec.data.graph._hnsw import HnswSettings as HnswSettings
from jaxrec.data.graph._ivf import IvfSettings as IvfSettings
from jaxrec.data.graph._join import JoinSettings as JoinSettings
from jaxrec.data.graph._ivf import spherical_kmeans as spherical_kmeans
from jaxrec.data.graph._knn import KNN_METHODS as KNN_METHODS
from jaxrec.data.graph._knn import AUTO_APPROXIMATE_FROM as AUTO_APPROXIMATE_FROM
from jaxrec.data.graph._knn import MISSING_POLICIES as MISSING_POLICIES
from jaxrec.data.graph._knn import resolve_knn_method as resolve_knn_method
from jaxrec.data.graph._knn import KnnNeighbours as KnnNeighbours
from jaxrec.data.graph._knn import cosine_edge_weights as cosine_edge_weights
from jaxrec.data.graph._knn import knn_edges as knn_edges
from jaxrec.data.graph._knn import knn_neighbours as knn_neighbours
from jaxrec.data.graph._knn import unit_rows as unit_rows
from jaxrec.data.graph._top_k import tile_top_k as tile_top_k
from jaxrec.data.graph._neighbours import DEFAULT_CHUNK_ENTRIES as DEFAULT_CHUNK_ENTRIES
from jaxrec.data.graph._neighbours import neighbour_cosine as neighbour_cosine
from jaxrec.data.graph._neighbours import neighbour_edges as neighbour_edges
from jaxrec.data.graph._neighbours import normalize_neighbour_weights as normalize_neighbour_weights
from jaxrec.data.graph._neighbours import propagate_neighbours as propagate_neighbours
from jaxrec.data.graph._lightgcn import lightgcn_propagate as lightgcn_propagate
from jaxrec.data.graph._propagate import propagate as propagate
from jaxrec.data.graph._propagate import propagate_bcoo as propagate_bcoo
from jaxrec.data.graph._propagate import to_bcoo as to_bcoo
from jaxrec.data.graph._prune import DevicePairs as DevicePairs
from jaxrec.data.graph._prune import kept_edge_count as kept_edge_count
from jaxrec.data.graph._prune import prune_edges as prune_edges
from jaxrec.data.graph._prune import prune_edges_jax as prune_edges_jax
