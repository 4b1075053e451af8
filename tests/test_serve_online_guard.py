"""An online update whose step leaves a parameter non-finite is refused and changes nothing,
also when every loss term and gradient of the update was finite (hand-worked overflow)."""

import numpy as np
import pytest

from jaxrec.data import make_synthetic
from jaxrec.errors import TrainingDivergedError
from jaxrec.serve import OnlineConfig
from jaxrec.train import config_from_dict, prepare_experiment

from test_serve_online_optimizer import served  # a served model at its initial parameters, no training


def test_an_update_that_overflows_a_parameter_changes_nothing():
    # Hand-worked: SGD, the bpr term weighted 1e30 (its gradient per touched entry is ~1e27 at the
    # initial embeddings, finite, and the weighted loss ~7e29 is finite too) and an online rate of
    # 1e13: one step moves an entry by ~1e40, past float32's 3.4e38. Only the parameters after the
    # step show it (no later step computes a loss from them): the update must be refused.
    dataset = make_synthetic(n_users=30, n_items=20, n_interactions=300, seed=3)
    config = config_from_dict({"data": {"synthetic": {}}, "model": {"name": "bprmf", "args": {"embedding_size": 4}},
                               "train": {"batch_size": 64, "learning_rate": 0.02, "seed": 5, "optimizer": "sgd"},
                               "loss_weights": {"bpr": 1e30, "reg": 0.0}})
    rec = served(prepare_experiment(config, dataset),
                 OnlineConfig(batch_size=64, learning_rate=1e13, min_steps=1, max_steps=1))
    before = rec.recommend([0, 1], k=5)
    with pytest.raises(TrainingDivergedError, match="served model is unchanged"):
        rec.update(np.array([[0, 1], [1, 2]]))
    assert rec.version == 0 and rec.events_applied == 0
    after = rec.recommend([0, 1], k=5)
    np.testing.assert_array_equal(after[0], before[0])
    np.testing.assert_array_equal(after[1], before[1])
