"""The non-finite guard checks the WHOLE train state, the optimizer's moments included.

Hand-worked case: BPR-MF with the ``bpr`` term weighted 1e30. Its unweighted term (~0.69) and the
weighted loss (~7e29) are finite, and so is the gradient (~1e26 per touched entry), but Adam's
second moment ``(1 - b2) g^2`` overflows float32 (max ~3.4e38) at the very first update. The
parameters stay finite there (Adam's step ``m / (sqrt(v) + eps)`` is 0 for an infinite ``v``),
so a guard that looked at the parameters only would let the run go on with a dead optimizer.
"""

import pytest

from jaxrec.data import make_synthetic
from jaxrec.errors import TrainingDivergedError
from jaxrec.train import config_from_dict, train_and_evaluate

DATA_ARGS = dict(n_users=40, n_items=30, n_interactions=500, seed=4)


def test_an_overflowed_adam_moment_is_divergence_at_its_step(tmp_path):
    raw = {"data": {"synthetic": DATA_ARGS}, "model": {"name": "bprmf", "args": {"embedding_size": 4}},
           "train": {"epochs": 3, "batch_size": 128, "learning_rate": 0.01, "seed": 1, "optimizer": "adam",
                     "checkpoint_every": 1},
           "eval": {"ks": [20], "metrics": ["recall"]}, "loss_weights": {"bpr": 1e30, "reg": 0.0}}
    workdir = tmp_path / "run"
    with pytest.raises(TrainingDivergedError, match=r"training diverged at epoch 1, step 1 ") as caught:
        train_and_evaluate(config_from_dict(raw), workdir, dataset=make_synthetic(**DATA_ARGS), quiet=True)
    error = caught.value
    assert (error.epoch, error.step) == (1, 1)
    assert error.term.startswith("opt_state") and ".nu[" in error.term  # Adam's second moment, not a parameter
    assert f"optimizer state {error.term} is not finite" in str(error)  # not called a "parameter"
    assert not list((workdir / "checkpoints").iterdir())  # nothing non-finite was saved
    assert not (workdir / "metrics.json").exists()
