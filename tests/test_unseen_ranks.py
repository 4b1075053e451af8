"""experiments/unseen_items.py's rank percentiles on a hand-worked case."""

import importlib.util
import sys
from pathlib import Path

import numpy as np

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
sys.path.insert(0, str(EXPERIMENTS))
spec = importlib.util.spec_from_file_location("unseen_items", EXPERIMENTS / "unseen_items.py")
unseen_items = importlib.util.module_from_spec(spec)
spec.loader.exec_module(unseen_items)


def test_rank_percentiles_count_the_non_train_items_scored_above():
    users = np.array([[1.0], [-1.0]])
    items = np.array([[5.0], [4.0], [3.0], [2.0], [1.0]])  # user 0 scores 5 4 3 2 1, user 1 the reverse
    train = np.array([[0, 0], [0, 0], [1, 4]])  # user 0 has item 0 (twice), user 1 item 4
    target = np.array([[0, 2], [1, 0], [0, 1]])
    got = unseen_items.rank_percentiles(users, items, target, train)
    # user 0, item 2: of items 1..4 only item 1 is above -> 1/4; user 1, item 0: items 1, 2, 3 above -> 3/4;
    # user 0, item 1: first among 1..4 -> 0.
    shares = np.array([0.25, 0.75, 0.0])
    assert got == {"median": 0.25, "mean": float(shares.mean()), "top_tenth": 1 / 3}
