"""Interaction filters: k-core pruning and dense re-indexing of users and items.

Filters return a new :class:`MultimodalDataset` whose ids are dense again. Everything indexed
by user or item follows: item modalities (features, masks, lengths), user features, the
item column of knowledge-graph triples, social edges, and the ``user_ids`` / ``item_ids``
maps back to the original ids (composed with any maps the dataset already had).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxrec.data._dataset import Modality, MultimodalDataset
from jaxrec.data._splits import COLD_START_KEY
from jaxrec.errors import ConfigError, DataError


def k_core(
    dataset: MultimodalDataset, k: int = 5, *, user_k: int | None = None, item_k: int | None = None
) -> MultimodalDataset:
    """Iteratively drops users and items with fewer than ``k`` interactions.

    Each round counts interactions per user and per item (``np.bincount``) and drops every
    interaction of a user with fewer than ``user_k`` or an item with fewer than ``item_k``,
    until no such user or item is left (the k-core is the unique largest sub-dataset with that
    property, so the order of removals does not matter). Interactions are counted as rows,
    repeated (user, item) rows included, as in MMRec's ``0rating2inter.ipynb``. Split labels
    are kept; ids are then made dense with :func:`compact_ids`.

    Args:
      dataset: the dataset to filter.
      k: minimum interactions per user and per item.
      user_k, item_k: separate minimums (default ``k``).

    Returns:
      The filtered, re-indexed dataset; ``metadata["filters"]`` gains an entry
      ``{"name": "k_core", "user_k", "item_k", "rounds", "interactions_removed"}``.

    Raises:
      ConfigError: a minimum below 1.
      DataError: nothing survives the filter.

    References:
      Batagelj & Zaversnik, An O(m) Algorithm for Cores Decomposition of Networks, 2003.
    """
    user_k = k if user_k is None else user_k
    item_k = k if item_k is None else item_k
    for name, value in (("user_k", user_k), ("item_k", item_k)):
        if int(value) != value or value < 1:
            raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
    inter = dataset.interactions
    rows = np.arange(len(inter), dtype=np.int64)
    users, items = inter.users, inter.items
    rounds = 0
    while True:
        user_counts = np.bincount(users, minlength=dataset.n_users)
        item_counts = np.bincount(items, minlength=dataset.n_items)
        keep = (user_counts[users] >= user_k) & (item_counts[items] >= item_k)
        if keep.all():
            break
        rounds += 1
        rows, users, items = rows[keep], users[keep], items[keep]
    if rows.size == 0:
        raise DataError("no interaction survives the k-core filter", path=dataset.metadata.get("source"),
                        field="interactions", found=f"user_k={user_k}, item_k={item_k} removed all "
                        f"{len(inter)} interactions", expected="a smaller k")
    record = {"name": "k_core", "user_k": int(user_k), "item_k": int(item_k), "rounds": rounds,
              "interactions_removed": int(len(inter) - rows.size)}
    return _subset(dataset, rows, record)


def compact_ids(dataset: MultimodalDataset) -> MultimodalDataset:
    """Drops users and items without any interaction and renumbers the rest densely.

    New ids keep the old order (user ``u`` maps to the number of kept users below it).

    Returns:
      The re-indexed dataset, with ``user_ids`` / ``item_ids`` mapping new ids to the
      original ones and ``metadata["filters"]`` recording ``{"name": "compact_ids", ...}``;
      the per-item metadata arrays ``item_entity`` and ``item_titles`` are renumbered too.
    """
    rows = np.arange(len(dataset.interactions), dtype=np.int64)
    return _subset(dataset, rows, {"name": "compact_ids"})


def filter_interactions(dataset: MultimodalDataset, keep: np.ndarray, *, reason: str) -> MultimodalDataset:
    """Keeps the interactions where ``keep`` is True and re-indexes users and items densely.

    Args:
      dataset: the dataset to filter.
      keep: (n_interactions,) bool.
      reason: a short name recorded in ``metadata["filters"]``.
    """
    keep = np.asarray(keep)
    if keep.shape != (len(dataset.interactions),) or keep.dtype != np.bool_:
        raise DataError("the keep mask needs one bool per interaction", field="keep",
                        found=f"{keep.dtype} {keep.shape}", expected=f"bool ({len(dataset.interactions)},)")
    return _subset(dataset, np.flatnonzero(keep), {"name": reason})


def _subset(dataset: MultimodalDataset, rows: np.ndarray, record: dict) -> MultimodalDataset:
    """The dataset restricted to interaction ``rows``, users and items re-indexed densely."""
    inter = dataset.interactions.select(rows)
    kept_users = np.flatnonzero(np.bincount(inter.users, minlength=dataset.n_users))
    kept_items = np.flatnonzero(np.bincount(inter.items, minlength=dataset.n_items))
    user_map = _dense_map(kept_users, dataset.n_users)
    item_map = _dense_map(kept_items, dataset.n_items)
    inter = dataclasses.replace(inter, users=user_map[inter.users], items=item_map[inter.items])

    modalities = {
        name: Modality(name, mod.features[kept_items], mod.mask[kept_items],
                       None if mod.lengths is None else mod.lengths[kept_items], mod.provenance)
        for name, mod in dataset.modalities.items()
    }
    kg_triples = dataset.kg_triples
    if kg_triples is not None:
        # Entities are their own id space; only the item column refers to item ids.
        kg_triples = kg_triples[item_map[kg_triples[:, 0]] >= 0]
        kg_triples = np.column_stack([item_map[kg_triples[:, 0]], kg_triples[:, 1:]])
    social_edges = dataset.social_edges
    if social_edges is not None:
        social_edges = user_map[social_edges]
        social_edges = social_edges[(social_edges >= 0).all(axis=1)]

    record = dict(record, n_users_before=dataset.n_users, n_items_before=dataset.n_items,
                  n_users_after=int(kept_users.size), n_items_after=int(kept_items.size))
    metadata = dict(dataset.metadata)
    if COLD_START_KEY in metadata:  # held-out item ids must follow the renumbering
        metadata[COLD_START_KEY] = {
            part: [int(i) for i in item_map[np.asarray(ids, np.int64)] if i >= 0]
            for part, ids in metadata[COLD_START_KEY].items()}
    for key in ITEM_ALIGNED_METADATA:  # one entry per item: follow the renumbering
        if key in metadata and len(metadata[key]) == dataset.n_items:
            kept = np.asarray(metadata[key])[kept_items]
            kept.flags.writeable = False
            metadata[key] = kept
    metadata["filters"] = [*metadata.get("filters", []), record]
    return dataset.replace(
        n_users=kept_users.size, n_items=kept_items.size, interactions=inter, modalities=modalities,
        user_features=None if dataset.user_features is None else dataset.user_features[kept_users],
        kg_triples=kg_triples, social_edges=social_edges,
        user_ids=kept_users if dataset.user_ids is None else dataset.user_ids[kept_users],
        item_ids=kept_items if dataset.item_ids is None else dataset.item_ids[kept_items],
        metadata=metadata,
    )


# Metadata arrays the readers align with the item ids: RecBole's item -> entity links
# (``item_entity``, -1 when unlinked) and MovieLens' titles (``item_titles``).
ITEM_ALIGNED_METADATA = ("item_entity", "item_titles")


def _dense_map(kept: np.ndarray, size: int) -> np.ndarray:
    """old id -> new id for kept ids, -1 for dropped ones."""
    new_ids = np.full(size, -1, np.int64)
    new_ids[kept] = np.arange(kept.size)
    return new_ids
