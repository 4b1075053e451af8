"""The report of valid/test users and items that train never shows, counted by hand on a tiny
dataset: users, items, and the held-out rows touching either (a union, not an intersection)."""

import numpy as np

from jaxrec.data import Interactions, MultimodalDataset
from jaxrec.data._split_coverage import unseen_in_train, unseen_messages


def test_unseen_counts_by_hand():
    # train: users 0, 1 with items 0, 1. valid rows: (0, 1) seen/seen, (2, 0) new user,
    # (1, 2) new item, (3, 3) new user and new item. test rows: (0, 0) seen, (2, 2) new both.
    users = [0, 0, 1, 1, 0, 2, 1, 3, 0, 2]
    items = [0, 1, 0, 1, 1, 0, 2, 3, 0, 2]
    split = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]
    dataset = MultimodalDataset("cov", 4, 4, Interactions(users, items, np.array(split, np.int8)),
                                user_ids=np.array(["a", "b", "c", "d"]), item_ids=np.array(["w", "x", "y", "z"]))
    report = unseen_in_train(dataset)
    assert report["valid"]["users"] == 2 and report["valid"]["items"] == 2
    assert report["valid"]["interactions"] == 3  # rows (2, 0), (1, 2), (3, 3)
    assert report["valid"]["user_examples"] == ["c", "d"] and report["valid"]["item_examples"] == ["y", "z"]
    assert report["test"]["users"] == 1 and report["test"]["items"] == 1 and report["test"]["interactions"] == 1
    assert report["valid"]["items_expected"] is False
    messages = unseen_messages(dataset, report)
    assert any("3 valid interaction(s)" in m for m in messages), messages
