"""Parts the model files share: argument checks, item features, graphs, batch reading, the
BPR + EmbLoss terms. Model files import from here (and ``_init``, ``_registry``), never from
each other (``tests/test_model_independence.py``)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jaxrec import losses
from jaxrec._matmul import matmul
from jaxrec.data import TRAIN
from jaxrec.data import graph as jgraph
from jaxrec.errors import ConfigError, DataError
from jaxrec.features import fit_standardizer

FEATURE_SCALINGS = ("standardize", "l2", "none")

# ---- argument checks ---------------------------------------------------------------------


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_constant(value, constant: float) -> bool:
    """Whether the model argument ``value`` is the Python number ``constant`` -- False for a
    traced value. ``if is_constant(rate, 0.0): skip`` leaves an operation out for the number
    0; a batched search passes a traced argument (``register(traced_args=...)``) as a traced
    scalar per trial, and the operation then runs at every value, computing at 0 what leaving
    it out computes (the contract test checks each registered argument there)."""
    return not isinstance(value, jax.Array) and value == constant


def check_positive_int(value, name: str, model: str) -> int:
    """``value`` if it is an integer >= 1, else ``ConfigError`` naming the model and argument."""
    if not _is_int(value) or value < 1:
        raise ConfigError(f"model {model}: model.args.{name} must be a positive integer; found {value!r}")
    return value


def check_knn_k(value, n_items: int, model: str) -> int:
    """``value`` if it is an integer in [1, n_items] (neighbours per item of an item kNN graph),
    else ``ConfigError``: more neighbours than items would link every item to every item."""
    check_positive_int(value, "knn_k", model)
    if value > n_items:
        raise ConfigError(f"model {model}: model.args.knn_k must be at most the number of items ({n_items}); "
                          f"found {value!r}")
    return value


def check_nonnegative_int(value, name: str, model: str) -> int:
    """``value`` if it is an integer >= 0 (a layer count), else ``ConfigError``."""
    if not _is_int(value) or value < 0:
        raise ConfigError(f"model {model}: model.args.{name} must be a non-negative integer; found {value!r}")
    return value


def check_choice(value, name: str, choices, model: str) -> str:
    """``value`` if it is one of ``choices``, else ``ConfigError`` listing them."""
    if value not in choices:
        raise ConfigError(f"model {model}: model.args.{name} must be one of {', '.join(choices)}; found {value!r}")
    return value


def check_bool(value, name: str, model: str) -> bool:
    """``value`` if it is ``True`` or ``False``, else ``ConfigError``."""
    if not isinstance(value, bool):
        raise ConfigError(f"model {model}: model.args.{name} must be true or false; found {value!r}")
    return value


def check_number(value, name: str, model: str, low: float = -math.inf, high: float = math.inf, *,
                 low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a float if it is a finite number in the interval, else ``ConfigError``."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        bounds = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ConfigError(f"model {model}: model.args.{name} must be a number in {bounds}; found {value!r}")
    return float(value)


def check_modality_weights(weights, modalities, name: str, model: str) -> tuple[float, ...]:
    """One non-negative weight per modality (default: equal weights summing to 1)."""
    if weights is None:
        return tuple(1.0 / len(modalities) for _ in modalities)
    if (not isinstance(weights, (list, tuple)) or len(weights) != len(modalities)
            or not all(isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0 for w in weights)):
        raise ConfigError(f"model {model}: model.args.{name} must be {len(modalities)} non-negative numbers, one per "
                          f"modality {list(modalities)}; found {weights!r}")
    return tuple(float(w) for w in weights)


def modality_names(dataset, modalities, model: str, name: str = "modalities") -> tuple[str, ...]:
    """``modalities`` (a list of modality names; None: all of the dataset's, in its order) as a
    tuple, or ``ConfigError`` for anything else (a bare string would otherwise be read letter by
    letter)."""
    if modalities is None:
        return tuple(dataset.modalities)
    if (isinstance(modalities, (str, bytes)) or not isinstance(modalities, Sequence)
            or not all(isinstance(m, str) for m in modalities)):
        raise ConfigError(f"model {model}: model.args.{name} must be a list of modality names (the dataset has "
                          f"{', '.join(dataset.modalities) or 'none'}); found {modalities!r}")
    return tuple(modalities)


# ---- item features -----------------------------------------------------------------------


def item_side_features(dataset, modalities: Sequence[str] | None = None, *, scaling: str = "standardize",
                       model: str = "sidemf") -> tuple[np.ndarray, tuple[int, ...], tuple[str, ...]]:
    """The items' modalities, each scaled on its own, concatenated (early fusion).

    Args:
      dataset: a :class:`~jaxrec.data.MultimodalDataset`.
      modalities: names to use, in this order (default: all of the dataset's, in its order).
      scaling: ``"standardize"`` (per dimension, mean and std fitted on train items having
        the modality: :func:`jaxrec.features.fit_standardizer`), ``"l2"`` (unit rows) or
        ``"none"`` (raw features, as MMRec feeds them).
      model: the model's name, for error messages.

    Returns:
      ``(features (n_items, D) float32, per-modality widths, names)``; rows of items
      lacking a modality are zero in that modality's block.

    Raises:
      ConfigError: no modality, an unknown name or scaling, or a sequence modality.
    """
    if scaling not in FEATURE_SCALINGS:
        raise ConfigError(f"model {model}: model.args.feature_scaling must be one of {FEATURE_SCALINGS}; "
                          f"found {scaling!r}")
    names = modality_names(dataset, modalities, model)
    if not names:
        raise ConfigError(f"model {model} needs item modalities; the dataset has none "
                          "(check data.modalities)")
    unknown = [n for n in names if n not in dataset.modalities]
    if unknown:
        raise ConfigError(f"model {model}: no modality {unknown[0]!r} in the dataset "
                          f"(it has {', '.join(dataset.modalities) or 'none'})")
    blocks = []
    for name in names:
        modality = dataset.modalities[name]
        if modality.is_sequence:
            raise ConfigError(f"model {model}: modality {name!r} is a sequence {modality.features.shape}; "
                              "pool it to one row per item first")
        rows = modality.features.astype(np.float64)
        if scaling == "standardize":
            rows = fit_standardizer(dataset, name).apply(rows)
        elif scaling == "l2":
            rows = rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
        blocks.append(np.where(modality.mask[:, None], rows, 0.0).astype(np.float32))
    features = np.concatenate(blocks, axis=1)
    if not np.all(np.isfinite(features)):
        bad = int(np.argwhere(~np.isfinite(features))[0, 0])
        raise DataError("non-finite item features", path=dataset.metadata.get("source"), field="modalities",
                        found=f"a NaN/inf in item {bad}", expected="finite features")
    return features, tuple(b.shape[1] for b in blocks), names


def feature_blocks(features: np.ndarray, dims: Sequence[int]) -> list[np.ndarray]:
    """The per-modality column blocks of :func:`item_side_features`' concatenated features."""
    return np.split(features, np.cumsum(dims)[:-1], axis=1)


def trained_item_mask(dataset) -> np.ndarray:
    """(n_items,) bool: True for items with at least one train interaction."""
    inter = dataset.interactions
    mask = np.zeros(dataset.n_items, bool)
    mask[inter.items[inter.split == TRAIN]] = True
    return mask


class FeatureTable(nn.Module):
    """A trainable copy of a feature matrix, initialized from the one passed at ``init``
    (MMRec's ``nn.Embedding.from_pretrained(features, freeze=False)``)."""

    @nn.compact
    def __call__(self, initial):
        return self.param("table", lambda _: jnp.asarray(initial, jnp.float32))


def masked_rows(table: jax.Array, keep: jax.Array, rows: jax.Array) -> jax.Array:
    """``table[rows]`` with the rows whose ``keep`` is False set to zero (any int shape of rows)."""
    return jnp.where(jnp.asarray(keep)[rows][..., None], table[rows], 0.0)



def dense_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
    """``flax.linen.Dense(dot_general=...)``: :func:`matmul` for a 2-D input, else
    ``lax.dot_general`` unchanged."""
    if (lhs.ndim == 2 and rhs.ndim == 2 and precision is None and preferred_element_type is None
            and dimension_numbers == (((1,), (0,)), ((), ()))):
        return matmul(lhs, rhs)
    return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                               preferred_element_type=preferred_element_type)


def rows_or_all(compute, n_rows: int, *index_arrays: jax.Array, all_from: float = 1.0) -> list[jax.Array]:
    """``compute(rows)`` (a row-wise map of (R,) row ids to (R, ...)) at each index array.

    Maps every row once and gathers when the arrays hold at least ``all_from * n_rows`` ids
    (by default as many ids as there are rows: fewer flops on small catalogues), else only the
    ids asked for; both give the same numbers. A caller whose per-row path costs more per row
    than its whole-table path passes a smaller ``all_from``. Every row is mapped as
    ``compute(slice(None))``, so ``compute`` must only index with ``rows`` (``x[rows]``):
    indexing with ``arange(n)`` instead made XLA:CPU gather the whole table, and scatter-add its
    gradient back, every step.
    """
    if sum(a.size for a in index_arrays) >= all_from * n_rows:
        every = compute(slice(None))
        return [every[a] for a in index_arrays]
    out = []
    for a in index_arrays:
        flat = compute(a.reshape(-1))
        out.append(flat.reshape(a.shape + flat.shape[1:]))
    return out


def normalize_rows(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """``F.normalize``: x / max(||x||, eps) per row, with a finite gradient at zero rows."""
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(x), axis=-1, keepdims=True), eps * eps))


# ---- graphs ------------------------------------------------------------------------------

# Edges per propagation chunk: about 2 MiB of (chunk, d) float32 messages, and at least 8192 edges
# (fewer, larger scatter-adds ran faster on CPU at the widths the models use; measured with
# benchmarks/bench_graph_models.py --chunks).
CHUNK_BYTES = 2**21
MIN_CHUNK_EDGES = 8192


def chunk_size_for(width: int) -> int:
    """Edges per propagation chunk for (n, ``width``) float32 embeddings (a power of two >= MIN_CHUNK_EDGES)."""
    edges = max(MIN_CHUNK_EDGES, CHUNK_BYTES // (4 * max(int(width), 1)))
    return 1 << (edges.bit_length() - 1)


GRAPH_FORMS = ("edges", "fixed")


def train_graph(dataset, *, normalization: str = "sym", self_loops: bool = False,
                form: str = "edges") -> jgraph.Edges | jgraph.FixedGraph:
    """The normalized adjacency of ``dataset``'s TRAIN pairs on the device (users first).

    ``form="edges"``: a row-sorted :class:`~jaxrec.data.graph.Edges` list (differentiable in
    its weights); ``form="fixed"``: a constant :class:`~jaxrec.data.graph.FixedGraph` whose
    gradient is propagated over its sorted transpose (the graph itself for ``"sym"``).
    """
    if form not in GRAPH_FORMS:
        raise ConfigError(f"graph form must be one of {GRAPH_FORMS}; found {form!r}")
    graph = jgraph.bipartite_graph(dataset, split="train")
    edges = jgraph.normalized_adjacency(graph, normalization=normalization, self_loops=self_loops)
    if form == "fixed":
        return jgraph.fixed_graph(edges, symmetric=normalization in ("sym", "none")).to_device()
    return edges.to_device()


def knn_search_settings(method, n_clusters, n_probe, model: str) -> jgraph.IvfSettings | None:
    """The :class:`~jaxrec.data.graph.IvfSettings` of ``knn_method: ivf`` (None for ``exact``),
    or ``ConfigError`` for a bad combination."""
    if method not in jgraph.KNN_METHODS:
        raise ConfigError(f"model {model}: model.args.knn_method must be one of {jgraph.KNN_METHODS}; found {method!r}")
    if method != "ivf":  # exact, hnsw (hnswlib), join (default settings) or auto
        if n_clusters is not None or n_probe is not None:
            raise ConfigError(f"model {model}: knn_n_clusters and knn_n_probe apply to knn_method 'ivf' only; "
                              f"found {n_clusters!r}, {n_probe!r} with {method!r}")
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


def key_seed(key) -> list[int]:
    """The words of a jax PRNG key (typed or raw uint32), to seed a numpy Generator."""
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.asarray(key).ravel().tolist()


# ---- batches and the BPR + EmbLoss terms --------------------------------------------------


def batch_triples(batch):
    """``(users (B,), pos_items (B,), neg_items (B, n), weights (B,))`` of a contract batch."""
    return batch["users"], batch["pos_items"], batch["neg_items"], batch["weights"]


def counted_pairs(batch, trained: jax.Array | None = None) -> jax.Array:
    """(B, n) bool: the (row, negative) pairs that count -- real rows' negatives, and with
    ``trained`` only negatives having a train interaction (held-out cold-start items did not
    exist at training time, so they are never pushed down)."""
    negatives = batch["neg_items"]
    real = jnp.broadcast_to(batch["weights"][:, None] > 0, negatives.shape)
    return real if trained is None else real & jnp.asarray(trained)[negatives]


def bpr_of(user_rows, pos_rows, neg_rows, pairs) -> jax.Array:
    """BPR of (B, d) users against (B, d) positives and (B, n, d) negatives over ``pairs`` (B, n)."""
    pos_scores = jnp.sum(user_rows * pos_rows, axis=-1)
    neg_scores = jnp.einsum("bd,bnd->bn", user_rows, neg_rows)
    return losses.bpr(pos_scores, neg_scores, where=pairs)


def bpr_emb_loss(user_rows, pos_rows, neg_rows, pairs, weights, *, reg_rows=None, per: str = "row",
                 scores=None) -> dict:
    r"""``{"bpr", "reg"}``: BPR over the counted ``pairs`` (B, n) and MMRec's ``EmbLoss``.

    .. math::
      \mathcal{L}_\text{reg} = \big(\lVert U\rVert_F + \lVert P\rVert_F + \lVert N\rVert_F\big) / B

    (:func:`jaxrec.losses.l2_mean_norm`: norms, not squared) of the regularized rows
    ``reg_rows = (users (B, d'), positives (B, d'), negatives (B, n, d'))`` (default: the
    scoring rows) and ``scores = (pos (B,), neg (B, n))`` (default: the rows' dot products),
    with ``per``:

    - ``"row"``: U, P the real rows' (``weights`` (B,) > 0) users and positives, N their
      counted negatives, B the number of real rows (MMRec's BPR, LightGCN);
    - ``"pair"``: U, P, N the stacked vectors of every counted (user, positive, negative)
      triple, B the number of counted pairs (the models that regularize full item vectors).

    With one negative per row and every negative counted the two agree. Every sum spans the
    whole batch under data parallelism.
    """
    reg_users, reg_pos, reg_neg = (user_rows, pos_rows, neg_rows) if reg_rows is None else reg_rows
    pair_weight = pairs.astype(reg_users.dtype)
    if per == "row":
        rows = (reg_users * weights[:, None], reg_pos * weights[:, None], reg_neg * pair_weight[..., None])
        count = losses.batch_sum(weights)
    else:
        weight = pair_weight[..., None]
        rows = (reg_users[:, None, :] * weight, reg_pos[:, None, :] * weight, reg_neg * weight)
        count = losses.batch_sum(pair_weight)
    reg = losses.l2_mean_norm(*rows, batch_size=jnp.maximum(count, 1.0), over_batch=True)
    if scores is None:
        return {"bpr": bpr_of(user_rows, pos_rows, neg_rows, pairs), "reg": reg}
    return {"bpr": losses.bpr(*scores, where=pairs), "reg": reg}
