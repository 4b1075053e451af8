"""A loss term of weight 0 that is NaN for ANY parameters stops nothing, in a sequential run and
in a batched search: weight 0 leaves it out of the sum (``jaxrec.losses.combine``), and the
divergence checks look at weighted terms only. (The model's ``side`` term is ``log`` of a negative
number, so it is NaN from the very first step; its ``fit`` term is an ordinary BPR loss.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from jaxrec import models
from jaxrec.data import make_synthetic
from jaxrec.models import _registry
from jaxrec.train import config_from_dict, run_search, train_and_evaluate

NAME = "test_nan_side_term"
DATA_ARGS = dict(n_users=40, n_items=30, n_interactions=500, seed=4)


class NanSideTerm(nn.Module):
    n_users: int
    n_items: int

    def setup(self):
        self.users = self.param("users", nn.initializers.normal(0.1), (self.n_users, 4))
        self.items = self.param("items", nn.initializers.normal(0.1), (self.n_items, 4))

    def encode(self, ctx, train=False):
        return self.users, self.items

    def loss_terms(self, ctx, batch, train=False):
        u = self.users[batch["users"]]
        margin = jnp.sum(u * self.items[batch["neg_items"][:, 0]], -1) - jnp.sum(u * self.items[batch["pos_items"]], -1)
        w = batch["weights"]
        fit = jnp.sum(w * jax.nn.softplus(margin)) / jnp.maximum(jnp.sum(w), 1.0)
        return {"fit": fit, "side": jnp.log(-1.0 - jnp.sum(u * u))}  # NaN whatever the parameters


@pytest.fixture(scope="module", autouse=True)
def registered():
    @models.register(NAME)
    def build(dataset):
        return models.Built(NanSideTerm(dataset.n_users, dataset.n_items), {}, {"fit": 1.0, "side": 0.0})

    yield
    _registry._BUILDERS.pop(NAME, None)  # no other test sees this model
    _registry._TRACED_ARGS.pop(NAME, None)


def _raw(**extra):
    return {"data": {"synthetic": DATA_ARGS}, "model": {"name": NAME},
            "train": {"epochs": 2, "batch_size": 128, "learning_rate": 0.05, "seed": 1, "patience": 10},
            "eval": {"ks": [20], "metrics": ["recall"]}, **extra}


def test_a_sequential_run_ignores_a_nan_term_of_weight_0(tmp_path):
    metrics = train_and_evaluate(config_from_dict(_raw()), tmp_path / "run", dataset=make_synthetic(**DATA_ARGS),
                                 quiet=True)
    assert metrics["epochs_run"] == 2 and metrics["loss_weights"] == {"fit": 1.0, "side": 0.0}
    assert np.isfinite(metrics["valid"]["recall@20"])
    assert _history_terms(tmp_path / "run") == [{"fit"}, {"fit"}]  # a weight-0 term is not computed


def _history_terms(run_dir):
    import json

    rows = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    return [set(row["terms"]) for row in rows]


def test_a_batched_search_ignores_a_nan_term_of_weight_0(tmp_path):
    result = run_search(config_from_dict(_raw(grid={"loss_weights.fit": [1.0, 0.5]})), tmp_path / "search",
                        quiet=True, batched="always", dataset=make_synthetic(**DATA_ARGS))
    assert len(result["trials"]) == 2
    for trial in result["trials"]:
        assert trial["best_epoch"] >= 1 and np.isfinite(trial["valid"]["recall@20"])
        assert _history_terms(tmp_path / "search" / f"trial_{trial['trial']:03d}") == [{"fit"}, {"fit"}]
