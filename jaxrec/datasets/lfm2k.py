"""A knowledge graph from item tags: ``item --tagged--> tag`` triples (Last.fm 2K's artist tags).

``lfm2k_text.tsv`` lists, per ORIGINAL artist id, the artist's tags as one comma-separated
text::

    artistID<TAB>text
    1<TAB>better than lady gaga,gothic,j-rock,japanese,jrock,visual kei,weeabo

Each dataset item (matched through ``dataset.item_ids``, the original ids the MMRec reader
keeps from ``lfm2k_og_ids.inter``) becomes the head of one triple per distinct tag it carries;
tags are the KG's entities and ``tagged`` its only relation. A tag carried by fewer than
``min_count`` of the DATASET's items links too few items to tell anything about them and is
dropped (counted over the dataset's items, not over the whole table: the table lists about
12.5k artists, lfm2k keeps 1,425). With the default ``min_count=5`` lfm2k's KG has 1,260
tags and 33,462 triples; 1,422 of the 1,425 items keep at least one tag.

The result is a dataset whose ``kg_triples`` hold ``(item, 0, tag)`` rows (sorted by item,
then tag), ``n_entities`` tags, ``n_relations = 1``, and ``metadata`` naming the source,
the filter and the entity and relation names (``entity_ids``, ``relation_ids``, as the
RecBole reader records them).
"""

from __future__ import annotations

import collections
import os

import numpy as np

from jaxrec.data import MultimodalDataset, align_item_text, read_item_text
from jaxrec.errors import DataError

TAGGED = "tagged"


def item_tags(texts, *, separator: str = ",") -> list[list[str]]:
    """Each text split into its distinct tags (stripped, empty ones dropped, first-seen order).

    Args:
      texts: a sequence of tag texts, None for an item without any.
      separator: the tag separator.

    Returns:
      One list of tags per text (empty for None).
    """
    tags = []
    for text in texts:
        seen = dict.fromkeys(tag.strip() for tag in (text or "").split(separator))
        seen.pop("", None)
        tags.append(list(seen))
    return tags


def tag_kg_triples(dataset: MultimodalDataset, texts, *, min_count: int = 5,
                   separator: str = ",") -> tuple[np.ndarray, np.ndarray, dict]:
    """``(item, tagged, tag)`` triples of the tags at least ``min_count`` items carry.

    Args:
      dataset: gives the items (and through ``item_ids`` their original ids).
      texts: ``{original id: tag text}`` (as :func:`~jaxrec.data.read_item_text` returns) or
        a sequence of ``n_items`` tag texts in dense-id order.
      min_count: the fewest dataset items a tag must be on to be kept (>= 1).
      separator: the tag separator within a text.

    Returns:
      ``(triples (n, 3) int32, tag names (n_tags,) str, stats)``: entity ``k`` is tag
      ``names[k]``; tags are ordered by decreasing item count, then by name; ``stats`` counts
      items, tags and triples before and after the filter.

    Raises:
      DataError: ``min_count`` below 1.
    """
    if isinstance(min_count, bool) or int(min_count) != min_count or min_count < 1:
        raise DataError("min_count must be a positive integer", field="min_count", found=min_count,
                        expected="an integer >= 1")
    per_item = item_tags(align_item_text(dataset, texts), separator=separator)
    counts = collections.Counter(tag for tags in per_item for tag in tags)
    kept = sorted((tag for tag, count in counts.items() if count >= min_count), key=lambda t: (-counts[t], t))
    entity_of = {tag: k for k, tag in enumerate(kept)}
    rows = [(item, entity_of[tag]) for item, tags in enumerate(per_item) for tag in tags if tag in entity_of]
    pairs = np.asarray(sorted(rows), dtype=np.int64).reshape(-1, 2)
    triples = np.stack([pairs[:, 0], np.zeros(len(pairs), np.int64), pairs[:, 1]], axis=1).astype(np.int32)
    tagged_items = np.unique(pairs[:, 0]).size
    stats = {
        "items_with_text": sum(1 for tags in per_item if tags),
        "tags_before_filter": len(counts),
        "triples_before_filter": sum(counts.values()),
        "tags": len(kept),
        "triples": int(len(triples)),
        "items_with_kept_tags": int(tagged_items),
        "items_without_kept_tags": int(dataset.n_items - tagged_items),
    }
    return triples, np.asarray(kept, dtype=str), stats


def add_tag_kg(dataset: MultimodalDataset, path, *, min_count: int = 5, separator: str = ",",
               id_field: str | None = None, text_field: str | None = None) -> MultimodalDataset:
    """``dataset`` with a tag knowledge graph built from an item-tag table (see the module doc).

    Args:
      dataset: a dataset without a KG; its ``item_ids`` are matched against the table's ids
        (dense ids when it has none).
      path: the tag table, e.g. ``lfm2k_text.tsv`` (``artistID<TAB>text``).
      min_count: the fewest dataset items a tag must be on to become an entity.
      separator: the tag separator within a text.
      id_field, text_field: the table's columns (default: its first two).

    Returns:
      A new dataset with ``kg_triples``, ``n_entities``, ``n_relations = 1`` and metadata
      ``kg_file``, ``kg_min_count``, ``kg_stats``, ``entity_ids`` (tag names) and
      ``relation_ids`` (``["tagged"]``).

    Raises:
      DataError: the dataset already has a KG, no item matches a tagged id, or the table is
        malformed (naming the file and line).
    """
    if dataset.kg_triples is not None:
        raise DataError("the dataset already has a knowledge graph", path=dataset.metadata.get("source"),
                        field="kg_triples", found=f"{len(dataset.kg_triples)} triples",
                        expected="a dataset without a KG (build the tag KG on the raw dataset)")
    texts = read_item_text(path, id_field=id_field, text_field=text_field)
    triples, tags, stats = tag_kg_triples(dataset, texts, min_count=min_count, separator=separator)
    if stats["items_with_text"] == 0:
        raise DataError("no dataset item has a row in the tag table", path=path, field=id_field or "first column",
                        found=f"{len(texts)} table ids, none among the dataset's item ids",
                        expected="the dataset's original item ids (item_ids) in the table's id column")
    metadata = dict(dataset.metadata, kg_file=os.fspath(path), kg_min_count=int(min_count), kg_stats=stats,
                    entity_ids=tags, relation_ids=np.asarray([TAGGED]))
    return dataset.replace(kg_triples=triples, n_entities=len(tags), n_relations=1, metadata=metadata)
