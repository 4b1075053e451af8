"""Our full-ranking metrics against ranx, an independent, well-kept ranking-evaluation library.

The whole pipeline is checked: ``evaluate_split`` scores every item on device, masks each
user's training items, takes the top k and averages the metrics; ranx gets the same users'
scores for every non-training item (from a float64 numpy product) and the held-out items as
its relevance judgments. Definitions agree except MAP, which MMRec normalises by
``min(|T_u|, k)`` and ranx by ``|T_u|``; the per-user conversion is applied to ranx's values.
"""

import os
import sys
import warnings

import numpy as np
import pytest

from jaxrec.eval import evaluate_split

# ranx's metrics are numba functions; compiling them in a fresh environment took ~45 s of the suite
# for 60 users. With numba's JIT off they run as the same Python code (0.5 s). Only this file uses
# numba, and the setting is read when numba is first imported.
if "numba" not in sys.modules:
    os.environ["NUMBA_DISABLE_JIT"] = "1"
ranx = pytest.importorskip("ranx", reason="ranx is in the test extra: pip install -e '.[test]'")

KS = (1, 5, 10, 20)
N_USERS, N_ITEMS, DIM = 60, 150, 8


@pytest.fixture(scope="module")
def case():
    rng = np.random.default_rng(11)
    user_emb = rng.normal(size=(N_USERS, DIM)).astype(np.float32)
    item_emb = rng.normal(size=(N_ITEMS, DIM)).astype(np.float32)
    train, test = [], []
    for user in range(N_USERS):
        items = rng.permutation(N_ITEMS)
        n_train = int(rng.integers(5, 30))
        n_test = 0 if user % 10 == 0 else int(rng.integers(1, 30))  # some users with none, some with > k
        train += [(user, int(i)) for i in items[:n_train]]
        test += [(user, int(i)) for i in items[n_train:n_train + n_test]]
    train, test = np.asarray(train), np.asarray(test)
    scores = user_emb.astype(np.float64) @ item_emb.astype(np.float64).T
    scores[train[:, 0], train[:, 1]] = -np.inf
    # No near-ties at the top: float32 on device and float64 here must rank alike.
    top = -np.sort(-scores, axis=1)[:, : max(KS) + 1]
    assert np.min(np.abs(np.diff(top, axis=1))) > 1e-5
    return user_emb, item_emb, train, test, scores


def test_ranking_metrics_match_ranx(case):
    user_emb, item_emb, train, test, scores = case
    ours = evaluate_split(user_emb, item_emb, train_pairs=train, target_pairs=test, ks=KS,
                          metrics=("recall", "ndcg", "precision", "map", "hit", "mrr"))
    users = np.unique(test[:, 0])
    qrels = ranx.Qrels({f"u{u}": {f"i{i}": 1 for i in test[test[:, 0] == u, 1]} for u in users})
    run = ranx.Run({f"u{u}": {f"i{i}": float(scores[u, i]) for i in range(N_ITEMS) if np.isfinite(scores[u, i])}
                    for u in users})
    names = [f"{m}@{k}" for m in ("recall", "ndcg", "precision", "map", "hit_rate", "mrr") for k in KS]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numba's type-safety notes inside ranx
        ranx.evaluate(qrels, run, names)
    theirs = {name: np.asarray([run.scores[name][f"u{u}"] for u in users]) for name in names}  # per user
    relevant = np.asarray([np.sum(test[:, 0] == u) for u in users])
    assert ours["num_users"] == len(users) and relevant.max() > max(KS)
    for k in KS:
        for metric, their_name in (("recall", "recall"), ("ndcg", "ndcg"), ("precision", "precision"),
                                   ("hit", "hit_rate"), ("mrr", "mrr")):
            assert ours[f"{metric}@{k}"] == pytest.approx(float(np.mean(theirs[f"{their_name}@{k}"])), abs=1e-6), \
                f"{metric}@{k}"
        mmrec_map = theirs[f"map@{k}"] * relevant / np.minimum(relevant, k)
        assert ours[f"map@{k}"] == pytest.approx(float(np.mean(mmrec_map)), abs=1e-6), f"map@{k}"
