"""A naive per-user evaluation in plain Python (the reference for the jaxrec.eval tests), and
a hand-worked case whose numbers are derived in the comments and checked against both the
reference and jaxrec.eval.

The reference shares no code with jaxrec.eval: it sorts each user's rankable items with
Python's ``sorted`` by (descending score, ascending item id) and computes every metric with
explicit loops, straight from the formulas (MMRec definitions for recall / NDCG / precision /
MAP, RecBole's for hit and MRR).
"""

import math

import numpy as np
import pytest

import jaxrec.eval as jeval

METRICS = ("recall", "ndcg", "precision", "map", "hit", "mrr")


def naive_ranking(scores_row, excluded, candidates=None):
    """Items of one user, best first: not excluded, candidates only, score above -inf."""
    items = [
        i for i in range(len(scores_row))
        if i not in excluded and (candidates is None or i in candidates)
        and scores_row[i] != -math.inf
    ]
    # -0.0 == 0.0 in Python, so signed zeros tie and fall back to the item id.
    return sorted(items, key=lambda i: (-float(scores_row[i]), i))


def naive_user_metrics(hit_list, num_relevant, k):
    """Every metric for one user from its 0/1 hit list (rank 1 first)."""
    top = list(hit_list[:k]) + [0] * max(0, k - len(hit_list))
    num_hits = sum(top)
    first_hit = next((rank for rank, h in enumerate(top, start=1) if h), None)
    dcg = sum(1.0 / math.log2(rank + 1) for rank, h in enumerate(top, start=1) if h)
    idcg = sum(1.0 / math.log2(rank + 1) for rank in range(1, min(num_relevant, k) + 1))
    precision_sum, running_hits = 0.0, 0
    for rank, h in enumerate(top, start=1):
        if h:
            running_hits += 1
            precision_sum += running_hits / rank
    return {
        "recall": num_hits / num_relevant,
        "ndcg": dcg / idcg,
        "precision": num_hits / k,
        "map": precision_sum / min(num_relevant, k),
        "hit": 1.0 if num_hits > 0 else 0.0,
        "mrr": 1.0 / first_hit if first_hit is not None else 0.0,
        "hits": float(num_hits),
    }


def _group(pairs):
    grouped = {}
    for user, item in (np.asarray(pairs).reshape(-1, 2) if pairs is not None else []):
        grouped.setdefault(int(user), set()).add(int(item))
    return grouped


def naive_evaluate(scores, *, train_pairs, target_pairs, extra_exclude_pairs=None,
                   candidate_items=None, ks, metrics=METRICS, keep_targets=False):
    """Full-ranking evaluation, one user at a time.

    ``keep_targets=True`` never excludes a user's held-out items (the Cornac rule).
    """
    candidates = None if candidate_items is None else {int(i) for i in candidate_items}
    excluded = _group(train_pairs)
    for user, items in _group(extra_exclude_pairs).items():
        excluded.setdefault(user, set()).update(items)
    targets = {
        user: {i for i in items if candidates is None or i in candidates}
        for user, items in _group(target_pairs).items()
    }
    targets = {user: items for user, items in targets.items() if items}
    totals = {f"{m}@{k}": 0.0 for m in metrics for k in ks}
    hits_total = {k: 0.0 for k in ks}
    for user, relevant in sorted(targets.items()):
        user_excluded = excluded.get(user, set())
        if keep_targets:
            user_excluded = user_excluded - relevant
        ranked = naive_ranking(scores[user], user_excluded, candidates)
        hit_list = [1 if item in relevant else 0 for item in ranked]
        for k in ks:
            values = naive_user_metrics(hit_list, len(relevant), k)
            hits_total[k] += values["hits"]
            for m in metrics:
                if m != "recall2":
                    totals[f"{m}@{k}"] += values[m]
    num_users = len(targets)
    num_targets = sum(len(items) for items in targets.values())
    result = {}
    for key, total in totals.items():
        name, k = key.split("@")
        result[key] = hits_total[int(k)] / num_targets if name == "recall2" else total / num_users
    result["num_users"] = num_users
    result["num_targets"] = num_targets
    return result


# --- The hand-worked case ------------------------------------------------------------------
# Six items, four users, ks = (1, 3); scores are given directly (score_fn reads a table).
#
# user 0: scores .9 .8 .7 .6 .5 .4, train {0}, targets {1, 4}.
#   ranked 1 2 3 4 5; top-3 hits [1, 0, 0].
#   recall@1 = 1/2, recall@3 = 1/2; precision@1 = 1, precision@3 = 1/3;
#   ndcg@1 = 1/1 = 1; ndcg@3 = 1 / (1 + 1/log2 3) = 0.613147;
#   map@1 = 1/min(2,1) = 1; map@3 = (1/1) / min(2,3) = 1/2; hit = 1, 1; mrr = 1, 1.
# user 1: scores .1 .5 .5 .5 .2 .3, no train, targets {3}. Ties 1, 2, 3 break by item id.
#   ranked 1 2 3 5 4 0; top-3 hits [0, 0, 1].
#   recall@1 = 0, recall@3 = 1; precision@1 = 0, precision@3 = 1/3;
#   ndcg@1 = 0; ndcg@3 = (1/log2 4) / 1 = 1/2; map@3 = (1/3) / min(1,3) = 1/3;
#   hit = 0, 1; mrr@1 = 0, mrr@3 = 1/3.
# user 2: no targets -> not evaluated.
# user 3: all scores 0, train {0, 1, 2, 3}, targets {5, 0}. Item 0 is masked (it is in train)
#   but still counts in |T_u| = 2 (MMRec). Rankable 4, 5 (tie -> 4 first); the third slot
#   has no rankable item left: top-3 hits [0, 1, 0].
#   recall@1 = 0, recall@3 = 1/2; precision@1 = 0, precision@3 = 1/3;
#   ndcg@3 = (1/log2 3) / (1 + 1/log2 3) = 0.386853; map@3 = (1/2) / min(2,3) = 1/4;
#   hit = 0, 1; mrr@1 = 0, mrr@3 = 1/2.
# Means over users {0, 1, 3}:
#   recall@1 = 1/6, recall@3 = (1/2 + 1 + 1/2)/3 = 2/3
#   precision@1 = 1/3, precision@3 = 1/3
#   ndcg@1 = 1/3, ndcg@3 = (0.613147 + 0.5 + 0.386853)/3 = 1.5/3 = 1/2
#     (users 0 and 3 add up to exactly 1: 1/(1+a) + a/(1+a) with a = 1/log2 3)
#   map@1 = 1/3, map@3 = (1/2 + 1/3 + 1/4)/3 = 13/36
#   hit@1 = 1/3, hit@3 = 1;  mrr@1 = 1/3, mrr@3 = (1 + 1/3 + 1/2)/3 = 11/18
#   recall2@1 = 1 hit / 5 targets = 1/5, recall2@3 = 3/5
HAND_SCORES = np.array([
    [0.9, 0.8, 0.7, 0.6, 0.5, 0.4],
    [0.1, 0.5, 0.5, 0.5, 0.2, 0.3],
    [0.3, 0.2, 0.1, 0.9, 0.9, 0.9],
    [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
], np.float32)
HAND_TRAIN = np.array([[0, 0], [2, 1], [3, 0], [3, 1], [3, 2], [3, 3]])
HAND_TARGETS = np.array([[0, 1], [0, 4], [1, 3], [3, 5], [3, 0]])
HAND_EXPECTED = {
    "recall@1": 1 / 6, "recall@3": 2 / 3,
    "precision@1": 1 / 3, "precision@3": 1 / 3,
    "ndcg@1": 1 / 3, "ndcg@3": 1 / 2,
    "map@1": 1 / 3, "map@3": 13 / 36,
    "hit@1": 1 / 3, "hit@3": 1.0,
    "mrr@1": 1 / 3, "mrr@3": 11 / 18,
    "recall2@1": 1 / 5, "recall2@3": 3 / 5,
    "num_users": 3, "num_targets": 5,
}
HAND_METRICS = METRICS + ("recall2",)


def table_scores(users, table, unused):
    """score_fn that reads scores from a (num_users, num_items) table."""
    del unused
    return table[users]


def test_reference_reproduces_the_hand_worked_case():
    got = naive_evaluate(HAND_SCORES, train_pairs=HAND_TRAIN, target_pairs=HAND_TARGETS,
                         ks=(1, 3), metrics=HAND_METRICS)
    assert got == pytest.approx(HAND_EXPECTED, abs=1e-12)


@pytest.mark.parametrize("batch_size", [None, 3])
def test_evaluate_split_reproduces_the_hand_worked_case(batch_size):
    got = jeval.evaluate_split(
        HAND_SCORES, None, train_pairs=HAND_TRAIN, target_pairs=HAND_TARGETS, ks=(1, 3),
        metrics=HAND_METRICS, score_fn=table_scores, batch_size=batch_size)
    assert got.pop("num_dropped_targets") == 0
    assert got == pytest.approx(HAND_EXPECTED, abs=1e-6)


# Cornac protocol on user 3 alone, with a validation pair (3, 4):
#   valid split (both protocols): train {0,1,2,3} masked, target {4}; ranked 4, 5 -> hit at 1:
#     recall@1 = 1, ndcg@1 = 1, mrr@3 = 1.
#   test split, mmrec: only train masked: ranked 4, 5; hits [0, 1, 0]:
#     recall@3 = 1/2, ndcg@3 = 0.386853, map@3 = 1/4, precision@3 = 1/3.
#   test split, cornac: train + valid masked, but held-out item 0 stays rankable: items 0, 5
#     (tie -> 0 first); hits [1, 1, 0]: recall@1 = 1/2, recall@3 = 1, precision@3 = 2/3,
#     ndcg@3 = (1 + 1/log2 3) / (1 + 1/log2 3) = 1, map@3 = (1/1 + 2/2) / 2 = 1, mrr@1 = 1.
@pytest.mark.parametrize("protocol, split, expected", [
    ("mmrec", "valid", {"recall@1": 1.0, "ndcg@1": 1.0, "mrr@3": 1.0}),
    ("cornac", "valid", {"recall@1": 1.0, "ndcg@1": 1.0, "mrr@3": 1.0}),
    ("mmrec", "test", {"recall@1": 0.0, "recall@3": 0.5, "ndcg@3": 0.6309298 / 1.6309298,
                       "map@3": 0.25, "precision@3": 1 / 3}),
    ("cornac", "test", {"recall@1": 0.5, "recall@3": 1.0, "ndcg@3": 1.0, "map@3": 1.0,
                        "precision@3": 2 / 3, "mrr@1": 1.0}),
])
def test_protocols_on_a_hand_worked_user(protocol, split, expected):
    got = jeval.evaluate_protocol(
        HAND_SCORES, None, split=split, protocol=protocol,
        train_pairs=HAND_TRAIN[HAND_TRAIN[:, 0] == 3], valid_pairs=np.array([[3, 4]]),
        test_pairs=HAND_TARGETS[HAND_TARGETS[:, 0] == 3], ks=(1, 3), score_fn=table_scores)
    assert got["num_users"] == 1
    assert {key: got[key] for key in expected} == pytest.approx(expected, abs=1e-6)
