"""Users and items of the validation and test splits that the training split never shows.

A model learns nothing about a user or an item without training interactions: its embedding
stays at its initial value, and its held-out interactions are ranked by chance (MMRec's
protocol still counts them). That is intended in a cold-start item split and a data problem
anywhere else, so ``jaxrec data info`` and ``jaxrec train`` report it.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import numpy as np

from jaxrec.data._dataset import MultimodalDataset
from jaxrec.data._io import DataWarning

_SHOWN_IDS = 3


def unseen_in_train(dataset: MultimodalDataset) -> dict[str, dict[str, Any]]:
    """For ``valid`` and ``test``: the users and items there that have no train interaction.

    Returns:
      ``{split: {"users": n, "items": n, "interactions": rows touching either,
      "user_examples": [...], "item_examples": [...], "items_expected": bool}}`` for each split
      with at least one such user or item. Examples are original ids where the dataset keeps
      them (at most three). ``items_expected`` is True after a cold-start item split, whose
      held-out items are unseen by design.
    """
    inter = dataset.interactions
    train = inter.split == 0
    seen_users = np.zeros(dataset.n_users, dtype=bool)
    seen_items = np.zeros(dataset.n_items, dtype=bool)
    seen_users[inter.users[train]] = True
    seen_items[inter.items[train]] = True
    cold_items = dataset.metadata.get("split_method") == "cold_start_items"
    report = {}
    for code, split in ((1, "valid"), (2, "test")):
        rows = inter.split == code
        users, items = inter.users[rows], inter.items[rows]
        unseen_users = np.unique(users[~seen_users[users]])
        unseen_items = np.unique(items[~seen_items[items]])
        if unseen_users.size == 0 and unseen_items.size == 0:
            continue
        report[split] = {
            "users": int(unseen_users.size),
            "items": int(unseen_items.size),
            "interactions": int(np.sum(~seen_users[users] | ~seen_items[items])),
            "user_examples": _originals(dataset.user_ids, unseen_users),
            "item_examples": _originals(dataset.item_ids, unseen_items),
            "items_expected": cold_items,
        }
    return report


def unseen_messages(dataset: MultimodalDataset, report: dict | None = None) -> list[str]:
    """One sentence per split with users (or, outside a cold-start split, items) unseen in train."""
    report = unseen_in_train(dataset) if report is None else report
    messages = []
    for split, found in report.items():
        parts = []
        if found["users"]:
            parts.append(f"{found['users']:,} user(s) (e.g. {', '.join(found['user_examples'])})")
        if found["items"] and not found["items_expected"]:
            parts.append(f"{found['items']:,} item(s) (e.g. {', '.join(found['item_examples'])})")
        if parts:
            messages.append(
                f"{' and '.join(parts)} of the {split} split have no train interaction, so the model learns "
                f"nothing about them and ranks their {found['interactions']:,} {split} interaction(s) by chance "
                "(re-split with data.split, or filter them out, if that is not intended)")
    return messages


def warn_unseen_in_train(dataset: MultimodalDataset) -> None:
    """Issue a :class:`DataWarning` for each message of :func:`unseen_messages`."""
    source = dataset.metadata.get("source")
    prefix = f"{os.fspath(source)}: " if isinstance(source, str) else f"dataset {dataset.name!r}: "
    for message in unseen_messages(dataset):
        warnings.warn(prefix + message, DataWarning, stacklevel=2)


def _originals(originals: np.ndarray | None, dense: np.ndarray) -> list[str]:
    shown = dense[:_SHOWN_IDS]
    values = shown if originals is None else originals[shown]
    return [str(value) for value in values.tolist()]
