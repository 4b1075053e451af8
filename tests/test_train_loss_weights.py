"""Loss-weight combination: the model's defaults overridden name by name (hand-worked), and the
trainer's per-epoch loss equal to the weighted sum of its per-epoch term means (the mean is linear,
so ``mean(sum_t w_t L_t) = sum_t w_t mean(L_t)``) with the weights the run reports, also when an
epoch runs as several device calls of ``train.steps_per_call`` steps, the last one shorter."""

import json

import pytest

from jaxrec.data import make_synthetic
from jaxrec.errors import ConfigError
from jaxrec.train import config_from_dict, prepare_experiment, train_and_evaluate
from jaxrec.train._setup import resolve_loss_weights

DATA_ARGS = dict(n_users=40, n_items=30, n_interactions=500, seed=4)


def test_defaults_are_overridden_name_by_name():
    defaults = {"bpr": 1.0, "align": 2.0, "reg": 0.1}
    terms = ("bpr", "align", "reg", "extra")  # "extra" has no default: weight 1
    assert resolve_loss_weights(defaults, {"reg": 0.5}, terms, "m") == {"bpr": 1.0, "align": 2.0, "reg": 0.5,
                                                                        "extra": 1.0}
    assert resolve_loss_weights(defaults, {}, terms, "m") == {"bpr": 1.0, "align": 2.0, "reg": 0.1, "extra": 1.0}
    assert resolve_loss_weights(defaults, {"align": 0, "extra": 3}, terms, "m") == {
        "bpr": 1.0, "align": 0.0, "reg": 0.1, "extra": 3.0}
    with pytest.raises(ConfigError, match="no loss term 'regg'; did you mean 'reg'"):
        resolve_loss_weights(defaults, {"regg": 1.0}, terms, "m")


def test_an_epochs_loss_is_the_weighted_sum_of_its_term_means(tmp_path):
    raw = {"data": {"synthetic": DATA_ARGS}, "model": {"name": "bprmf", "args": {"embedding_size": 4}},
           "train": {"epochs": 2, "batch_size": 64, "learning_rate": 0.05, "seed": 1, "steps_per_call": 4},
           "eval": {"ks": [20], "metrics": ["recall"]}, "loss_weights": {"reg": 0.25}}
    config, dataset = config_from_dict(raw), make_synthetic(**DATA_ARGS)
    assert prepare_experiment(config, dataset).steps_per_epoch % 4 != 0  # the epoch's last call is shorter
    metrics = train_and_evaluate(config, tmp_path / "run", dataset=dataset, quiet=True)
    assert metrics["loss_weights"] == {"bpr": 1.0, "reg": 0.25}  # BPR-MF's default 1 for bpr, reg overridden
    rows = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    for row in rows:
        assert set(row["terms"]) == {"bpr", "reg"}
        assert row["loss"] == pytest.approx(row["terms"]["bpr"] + 0.25 * row["terms"]["reg"], rel=1e-5)
        assert 0.0 < row["terms"]["bpr"] < 1.0  # a per-step mean of BPR's softplus, not a sum over the steps
