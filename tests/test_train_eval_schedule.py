"""Which epochs a run validates (every ``eval_every``-th and always the last), how patience counts
evaluations (not epochs), and which epoch's parameters it reports as the best: scripted
validation values, the expectations from a plain-Python replay of MMRec's rule written here."""

import json
import math

import pytest

from jaxrec.data import make_synthetic
from jaxrec.train import Checkpoints, config_from_dict, prepare_experiment, train_and_evaluate

from _scripted_validation import parameter_fingerprint, script_validation

DATA_ARGS = dict(n_users=40, n_items=30, n_interactions=500, seed=4)


@pytest.fixture(scope="module")
def dataset():
    return make_synthetic(**DATA_ARGS)


def _replay(values, epochs, eval_every, patience):
    """MMRec's early stopping by hand: ``(evaluated epochs, best epoch, last epoch run, stopped)``."""
    best, best_epoch, bad, evaluated = -math.inf, -1, 0, []
    script = iter(values)
    for epoch in range(1, epochs + 1):
        if epoch % eval_every and epoch != epochs:
            continue
        value = next(script)
        evaluated.append(epoch)
        if value > best:
            best, best_epoch, bad = value, epoch, 0
        else:
            bad += 1
            if bad > patience:
                return evaluated, best_epoch, epoch, True
    return evaluated, best_epoch, epochs, False


@pytest.mark.parametrize("epochs, eval_every, patience, values", [
    (7, 3, 10, [0.1, 0.2, 0.3]),  # the last epoch (7) is evaluated although 7 % 3 != 0, and is the best
    (20, 2, 1, [0.5, 0.4, 0.6, 0.6, 0.55, 0.9, 0.9]),  # patience counts evaluations: stops at epoch 10
    (4, 1, 10, [0.1, 0.2, 0.5, 0.4]),  # the best is the epoch before the last: test from epoch 3's parameters
])
def test_validated_epochs_patience_and_best_epoch(monkeypatch, dataset, tmp_path, epochs, eval_every, patience,
                                                   values):
    script_validation(monkeypatch, values)
    raw = {"data": {"synthetic": DATA_ARGS}, "model": {"name": "bprmf", "args": {"embedding_size": 4}},
           "train": {"epochs": epochs, "batch_size": 128, "learning_rate": 0.05, "patience": patience, "seed": 1,
                     "eval_every": eval_every, "checkpoint_every": 100},
           "eval": {"ks": [20], "metrics": ["recall"]}}
    config = config_from_dict(raw)
    metrics = train_and_evaluate(config, tmp_path / "run", dataset=dataset, quiet=True)

    evaluated, best_epoch, last_epoch, stopped = _replay(values, epochs, eval_every, patience)
    assert (metrics["best_epoch"], metrics["epochs_run"], metrics["stopped_early"]) == (best_epoch, last_epoch, stopped)
    assert metrics["valid"] == {"recall@20": values[evaluated.index(best_epoch)]}
    rows = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == list(range(1, last_epoch + 1))
    assert [row["epoch"] for row in rows if "valid" in row] == evaluated
    # The test figures come from the best epoch's parameters, as saved in its checkpoint.
    checkpoints = Checkpoints(tmp_path / "run" / "checkpoints", read_only=True)
    try:
        assert best_epoch in checkpoints.epochs() and last_epoch in checkpoints.epochs()
        state, meta = checkpoints.restore(prepare_experiment(config, dataset).target, best_epoch)
    finally:
        checkpoints.close()
    assert meta["epochs_done"] == best_epoch
    assert metrics["test"]["recall@20"] == parameter_fingerprint(state.params)
