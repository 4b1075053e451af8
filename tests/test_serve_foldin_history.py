"""A fold-in history is the SET of its items (``Recommender.fold_in`` docs: sorted distinct ids): an
item listed several times weighs in the ``bpr`` objective once, checked against the documented
objective's Adam steps in float64 numpy over the distinct items."""

import numpy as np

from jaxrec.data import make_synthetic
from jaxrec.train import config_from_dict, prepare_experiment

from _foldin_reference import numpy_bpr_fold_in  # the objective's Adam steps by hand
from test_serve_online_optimizer import served  # a served model at its initial parameters


def test_a_history_with_repeated_items_is_folded_in_as_its_distinct_items():
    dataset = make_synthetic(n_users=30, n_items=20, n_interactions=300, seed=3)
    config = config_from_dict({"data": {"synthetic": {}}, "model": {"name": "bprmf", "args": {"embedding_size": 4}},
                               "train": {"batch_size": 64, "learning_rate": 0.02, "seed": 5}})
    rec = served(prepare_experiment(config, dataset), None)
    assert not rec.snapshot.fixed_columns.any()  # BPR-MF: every column of the user vector is free
    _, item_emb = rec.embeddings()
    d = item_emb.shape[1]
    expected = numpy_bpr_fold_in(item_emb, np.zeros(d), np.ones(d), np.array([3, 5]), rec.n_items)
    got = rec.fold_in_vectors([[5, 3, 5, 5], [3, 5]])
    np.testing.assert_allclose(got[0], expected, rtol=0, atol=1e-4 * np.abs(expected).max())
    np.testing.assert_array_equal(got[0], got[1])
    items, _ = rec.fold_in([[5, 3, 5, 5]], k=rec.n_items)
    assert not {3, 5} & set(items[0].tolist()) and (items[0] >= 0).sum() == rec.n_items - 2
