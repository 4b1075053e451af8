"""Extending a finished run (``--resume`` with a larger ``train.epochs``) keeps the best
checkpoint of the earlier session through the rotation, so the final test evaluates it."""

import json

from jaxrec.data import make_synthetic
from jaxrec.train import Checkpoints, config_from_dict, train_and_evaluate

DATA = dict(n_users=60, n_items=40, n_interactions=800, seed=2)


def _raw(epochs):
    # A learning rate far below float resolution: the parameters never change, so validation never
    # improves after epoch 1 and epoch 1 stays the best while later checkpoints rotate.
    return {"data": {"synthetic": DATA}, "model": {"name": "bprmf", "args": {"embedding_size": 4}},
            "train": {"epochs": epochs, "batch_size": 128, "learning_rate": 1e-12, "patience": 50, "seed": 5,
                      "checkpoint_every": 1, "checkpoints_to_keep": 2},
            "eval": {"ks": [20], "metrics": ["recall"]}}


def test_extending_a_run_keeps_its_best_checkpoint(tmp_path):
    workdir = tmp_path / "run"
    first = train_and_evaluate(config_from_dict(_raw(3)), workdir, dataset=make_synthetic(**DATA), quiet=True)
    assert first["best_epoch"] == 1
    extended = train_and_evaluate(config_from_dict(_raw(5)), workdir, dataset=make_synthetic(**DATA), quiet=True,
                                  resume=True)
    assert extended["best_epoch"] == 1 and extended["epochs_run"] == 5
    checkpoints = Checkpoints(workdir / "checkpoints", read_only=True)
    try:
        assert checkpoints.epochs() == [1, 4, 5]  # the 2 newest and the best, after a reopened manager rotated
    finally:
        checkpoints.close()
    # The test metrics are those of the best epoch's parameters, which never changed.
    assert extended["test"] == first["test"]
    assert json.loads((workdir / "metrics.json").read_text())["epochs_run"] == 5


def test_a_best_checkpoint_written_without_its_tag_is_retagged_on_resume(tmp_path):
    """A run folder from before the tags were stored on disk: the best checkpoint has no
    ``metrics`` item. Resuming rewrites it with the tag, so the rotation keeps it."""
    import shutil

    workdir = tmp_path / "run"
    first = train_and_evaluate(config_from_dict(_raw(3)), workdir, dataset=make_synthetic(**DATA), quiet=True)
    tag = workdir / "checkpoints" / "1" / "metrics"
    assert tag.is_dir() and not (workdir / "checkpoints" / "2" / "metrics").exists()
    shutil.rmtree(tag)  # as an older jaxrec left it
    extended = train_and_evaluate(config_from_dict(_raw(5)), workdir, dataset=make_synthetic(**DATA), quiet=True,
                                  resume=True)
    assert extended["best_epoch"] == 1 and extended["test"] == first["test"]
    assert "rewritten with its best tag" in (workdir / "log.txt").read_text()
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [1, 4, 5]
