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


def _run(args):
    return {"config": {"model": {"name": "x", "args": args}}}


def test_item_side_reads_a_wrappers_base_modalities_and_a_training_only_term():
    # VBPR-style: the item side is scored from the modalities named under model.args.
    assert unseen_items.item_side(_run({"modalities": ["v", "a"]})) == ("content", ["v", "a"])
    # gan: the ranking is its base VBPR's, whose modalities sit under base_args (model.args.modality
    # names the refilled one only).
    gan = _run({"modality": "a", "sources": ["v"], "base": "vbpr", "base_args": {"modalities": ["v", "a"]}})
    assert unseen_items.item_side(gan) == ("content", ["v", "a"])
    # contrastive on LightGCN: features only in the InfoNCE term, ranking by the base's ID table.
    contrastive = _run({"base": "lightgcn", "base_args": {"n_layers": 1}, "modality": ["v", "a"]})
    assert unseen_items.item_side(contrastive) == ("id only, content in training", ["v", "a"])
    assert unseen_items.item_side(_run({"modality": "v"})) == ("id only, content in training", ["v"])
    assert unseen_items.item_side(_run({"embedding_size": 64})) == ("id only", [])
    assert unseen_items.item_side({"config": None}) == ("id only", [])
