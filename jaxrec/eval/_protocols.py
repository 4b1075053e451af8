"""Which items are masked when a split is evaluated: the MMRec and Cornac protocols.

=========  ==========================  ==========================================
protocol   validation ranking masks     test ranking masks
=========  ==========================  ==========================================
mmrec      training items               training items (validation items stay
                                        rankable, as in MMRec's EvalDataLoader)
cornac     training items               training and validation items; a user's
                                        held-out items are never masked
=========  ==========================  ==========================================

MMRec builds both evaluation loaders with only the training set as the mask source
(``src/utils/quick_start.py``: ``EvalDataLoader(config, test_dataset,
additional_dataset=train_dataset)``). Cornac's ``ranking_eval``
(``cornac/eval_methods/base_method.py``) drops train and validation positives from the
candidate list at test time, validates with ``val_set=None``, and always keeps the user's
test positives rankable. Deviation: Cornac's default ``exclude_unknowns=True`` also drops
held-out pairs whose user or item has no training interaction and ranks only items seen in
training; here such pairs are evaluated and such items ranked, under both protocols.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxrec.errors import ConfigError
from jaxrec.eval import _evaluate, _pairs

PROTOCOLS = ("mmrec", "cornac")
SPLITS = ("valid", "test")


def _without(pairs: np.ndarray, remove: np.ndarray) -> np.ndarray:
    """Rows of ``pairs`` that are not rows of ``remove`` (both ``(n, 2)`` int64)."""
    if pairs.size == 0 or remove.size == 0:
        return pairs
    width = int(max(pairs[:, 1].max(), remove[:, 1].max())) + 1
    keep = ~np.isin(pairs[:, 0] * width + pairs[:, 1], remove[:, 0] * width + remove[:, 1])
    return pairs[keep]


def _stack(pairs, field: str, num_items: int) -> np.ndarray:
    users, items = _pairs.as_pairs(pairs, field=field, num_items=num_items)
    return np.stack([users, items], axis=1)


def protocol_pairs(
    *,
    protocol: str,
    split: str,
    num_items: int,
    train_pairs,
    valid_pairs,
    test_pairs=None,
) -> dict[str, np.ndarray | None]:
    """The pair arguments of :func:`evaluate_split` for one split under one protocol.

    Args:
      protocol: ``"mmrec"`` or ``"cornac"`` (see the module table).
      split: ``"valid"`` or ``"test"``.
      num_items: number of items (bounds check of the ids).
      train_pairs: ``(n, 2)`` int training (user, item) pairs.
      valid_pairs: ``(m, 2)`` int validation pairs.
      test_pairs: ``(t, 2)`` int test pairs (needed for ``split="test"``).

    Returns:
      ``{"train_pairs", "target_pairs", "extra_exclude_pairs"}`` as ``(·, 2)`` int64 arrays
      (``extra_exclude_pairs`` None when nothing beyond training is masked).

    Raises:
      ConfigError: unknown protocol or split, or ``test_pairs`` missing for the test split.
    """
    if protocol not in PROTOCOLS:
        raise ConfigError(
            f"unknown evaluation protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    if split == "test" and test_pairs is None:
        raise ConfigError("test_pairs is required to evaluate the test split")
    train = _stack(train_pairs, "train_pairs", num_items)
    valid = _stack(valid_pairs, "valid_pairs", num_items)
    if split == "valid":
        target, extra = valid, None
    else:
        target = _stack(test_pairs, "test_pairs", num_items)
        extra = valid if protocol == "cornac" else None
    if protocol == "cornac":
        # Cornac ranks a user's held-out positives even when they also occur in train/valid.
        train = _without(train, target)
        extra = None if extra is None else _without(extra, target)
    return {"train_pairs": train, "target_pairs": target, "extra_exclude_pairs": extra}


def prepare_protocol(
    *,
    split: str,
    num_items: int,
    train_pairs,
    valid_pairs,
    test_pairs=None,
    protocol: str = "mmrec",
    candidate_items=None,
    batch_size: int | None = None,
) -> _evaluate.EvalSplit:
    """:func:`prepare_split` for the ``"valid"`` or ``"test"`` split of a protocol.

    Prepare each split once, then call :func:`evaluate_prepared` every epoch.

    Args:
      split: ``"valid"`` or ``"test"``.
      num_items: number of items.
      train_pairs, valid_pairs, test_pairs: ``(·, 2)`` int (user, item) pairs of the splits.
      protocol: ``"mmrec"`` (default) or ``"cornac"``.
      candidate_items: optional 1-D item ids to rank (cold-start).
      batch_size: users per batch (None: automatic).

    Returns:
      an :class:`EvalSplit`.
    """
    pairs = protocol_pairs(protocol=protocol, split=split, num_items=num_items,
                           train_pairs=train_pairs, valid_pairs=valid_pairs, test_pairs=test_pairs)
    return _evaluate.prepare_split(num_items=num_items, candidate_items=candidate_items,
                                   batch_size=batch_size, **pairs)


def evaluate_protocol(
    user_emb: Any,
    item_emb: Any,
    *,
    split: str,
    train_pairs,
    valid_pairs,
    test_pairs=None,
    protocol: str = "mmrec",
    candidate_items=None,
    batch_size: int | None = None,
    ks=_evaluate.DEFAULT_KS,
    metrics=_evaluate.DEFAULT_METRICS,
    score_fn=None,
) -> dict[str, float | int]:
    """:func:`evaluate_split` of the ``"valid"`` or ``"test"`` split under a protocol.

    ``protocol="mmrec"`` masks only training items for both splits; ``protocol="cornac"``
    also masks validation items at test time and never masks a user's held-out items.

    Args:
      user_emb, item_emb: embeddings (or pytrees read by ``score_fn``).
      split: ``"valid"`` or ``"test"``.
      train_pairs, valid_pairs, test_pairs: ``(·, 2)`` int (user, item) pairs of the splits.
      protocol: ``"mmrec"`` (default) or ``"cornac"``.
      candidate_items, batch_size, ks, metrics, score_fn: as in :func:`evaluate_split`.

    Returns:
      the metric dict of :func:`evaluate_split`.
    """
    _, num_items, _ = _evaluate.resolve_scorer(user_emb, item_emb, score_fn)
    split_layout = prepare_protocol(
        split=split, num_items=num_items, train_pairs=train_pairs, valid_pairs=valid_pairs,
        test_pairs=test_pairs, protocol=protocol, candidate_items=candidate_items,
        batch_size=batch_size)
    return _evaluate.evaluate_prepared(split_layout, user_emb, item_emb, ks=ks, metrics=metrics,
                                       score_fn=score_fn)
