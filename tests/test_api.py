"""The Python API (jaxrec.fit / load_run / Run) and what every run leaves in its workdir
(TensorBoard events, curves.png), plus evaluating a search folder's winner."""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import jax
import numpy as np
import pytest
import yaml

import jaxrec
from jaxrec.cli.main import main
from jaxrec.errors import ConfigError, DataError
from jaxrec.train import ExperimentConfig, config_from_dict, evaluate_run

from _tensorboard_events import read_scalars

CONFIG = {
    "model": {"name": "bprmf", "args": {"embedding_size": 8}},
    "data": {"synthetic": {"n_users": 90, "n_items": 60, "n_interactions": 1500, "seed": 4}},
    "train": {"epochs": 10, "batch_size": 256, "learning_rate": 0.02, "seed": 3},
    "eval": {"ks": [10, 20]},
    "loss_weights": {"reg": 0.01},
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One run through the API: a dict config, overrides as a dict, no workdir (its default
    temporary folder made under this module's temporary path instead of the system's)."""
    system_tmp = tmp_path_factory.mktemp("system_tmp")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tempfile, "tempdir", str(system_tmp))
        run = jaxrec.fit(CONFIG, overrides={"train.epochs": 3, "train.seed": 7})
    assert run.workdir.parent == system_tmp and run.workdir.name.startswith("jaxrec-run-")
    return run


def test_import_jaxrec_stays_light():
    heavy = "('jax', 'flax', 'optax', 'tensorflow_datasets', 'jaxrec.api')"
    code = (f"import sys, jaxrec; names = dir(jaxrec); "
            f"print(sorted(m for m in sys.modules if m in {heavy}), 'fit' in names)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout
    assert out.strip() == "[] True"


def test_fit_writes_a_run_and_returns_it(run):
    assert run.workdir.is_dir() and run.workdir.name.startswith("jaxrec-run-")  # a temporary folder
    assert run.metrics == json.loads((run.workdir / "metrics.json").read_text())
    assert run.metrics["epochs_run"] == 3 and run.metrics["seed"] == 7 and run.metrics["model"] == "bprmf"
    assert [row["epoch"] for row in run.history] == [1, 2, 3]
    assert run.history == [json.loads(line) for line in (run.workdir / "history.jsonl").read_text().splitlines()]
    assert isinstance(run.config, ExperimentConfig) and run.config.train.epochs == 3
    assert run.config.model.args == {"embedding_size": 8}
    assert "bprmf on" in repr(run) and "test recall@20" in repr(run)


def test_params_are_the_best_epochs_and_reproduce_the_test_metrics(run):
    leaves = [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(run.params)]
    assert sorted(leaf.shape for leaf in leaves) == [(60, 8), (90, 8)]  # item and user embeddings of bprmf
    assert all(np.isfinite(leaf).all() for leaf in leaves)
    # Recomputing test from the restored parameters gives metrics.json's figures.
    assert run.evaluate("test")["metrics"] == run.metrics["test"]
    assert run.evaluate("test")["epoch"] == run.metrics["best_epoch"]


def test_load_run_reads_the_same_run(run):
    again = jaxrec.load_run(run.workdir)
    assert again.metrics == run.metrics and again.history == run.history
    np.testing.assert_array_equal(
        np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(again.params)]),
        np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(run.params)]))
    with pytest.raises(ConfigError, match="not a jaxrec run"):
        jaxrec.load_run(run.workdir / "checkpoints")


def test_every_run_has_tensorboard_events_matching_its_history(run):
    scalars = read_scalars(run.workdir / "tensorboard")
    for row in run.history:
        assert scalars["train/loss"][row["epoch"]] == pytest.approx(row["loss"], rel=1e-6)
        for name, value in row["terms"].items():
            assert scalars[f"train/loss_terms/{name}"][row["epoch"]] == pytest.approx(value, rel=1e-6)
        assert scalars["train/learning_rate"][row["epoch"]] == pytest.approx(0.02)  # constant schedule
        assert scalars["valid/recall_20"][row["epoch"]] == pytest.approx(row["valid"]["recall@20"], rel=1e-6)
        assert scalars["time/train_seconds"][row["epoch"]] == pytest.approx(row["train_seconds"], rel=1e-6)
    assert (run.workdir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_configs_from_a_path_a_dict_or_a_config_agree(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    overrides = {"train.epochs": 5, "model.args.embedding_size": 4}
    from_path = jaxrec.make_config(path, overrides)
    assert from_path == jaxrec.make_config(CONFIG, overrides)
    assert from_path == jaxrec.make_config(config_from_dict(CONFIG), overrides)
    assert from_path == jaxrec.make_config(CONFIG, ["train.epochs=5", "model.args.embedding_size=4"])
    assert from_path.train.epochs == 5 and from_path.model.args == {"embedding_size": 4}
    assert CONFIG["train"]["epochs"] == 10  # the caller's dict is not changed
    with pytest.raises(ConfigError, match="did you mean 'train.learning_rate'"):
        jaxrec.make_config(CONFIG, {"train.lerning_rate": 0.1})
    with pytest.raises(ConfigError, match="overrides must be a dict"):
        jaxrec.make_config(CONFIG, "train.epochs=5")


def test_a_workdir_is_not_overwritten(run):
    with pytest.raises(ConfigError, match="already holds a run"):
        jaxrec.fit(CONFIG, run.workdir, overrides={"train.epochs": 3, "train.seed": 7})


def test_recommender_of_a_run(run):
    """The served lists are this run's best checkpoint: their valid recall@20, counted here in
    numpy, is the run's own validation figure."""
    recommender = run.recommender()
    from jaxrec.train import load_dataset

    dataset = run.dataset if run.dataset is not None else load_dataset(run.config.data)
    valid = dataset.split_pairs("valid")
    users = np.unique(valid[:, 0]).astype(np.int32)
    items, _ = recommender.recommend(users, k=20)  # train items excluded, as the validation protocol does
    truth = {}
    for user, item in valid.tolist():
        truth.setdefault(user, set()).add(item)
    recall = np.mean([len(truth[u] & set(row)) / len(truth[u]) for u, row in zip(users.tolist(), items.tolist())])
    assert recall == pytest.approx(run.evaluate("valid")["metrics"]["recall@20"], abs=1e-6)


def test_make_config_names_an_unknown_model_or_model_argument():
    with pytest.raises(ConfigError, match=r"unknown model 'bprm'\. Did you mean bprmf"):
        jaxrec.make_config(CONFIG, {"model.name": "bprm"})
    with pytest.raises(ConfigError, match=r"model 'bprmf' has no argument 'embeding_size'\. Did you mean "
                                          r"'embedding_size'"):
        jaxrec.make_config(CONFIG, {"model.args": {"embeding_size": 4}})
    assert jaxrec.make_config(CONFIG, {"model.args": {"embedding_size": 4}}).model.args == {"embedding_size": 4}
    # A required argument left out was a raw TypeError from the builder ("missing 1 required
    # keyword-only argument"), at build time only.
    with pytest.raises(ConfigError, match=r"^model 'gan' needs model.args.modality \(no default\); it takes "
                                          r"modality, base, "):
        jaxrec.make_config(CONFIG, {"model.name": "gan", "model.args": {}})
    from jaxrec import models

    with pytest.raises(ConfigError, match=r"^model 'gan' needs model.args.modality"):
        models.build("gan", jaxrec.data.make_synthetic(n_users=20, n_items=15, n_interactions=100))


def test_a_dataset_that_is_not_a_multimodal_dataset_is_named(run, tmp_path):
    from jaxrec.api import Run
    from jaxrec.train import load_dataset

    for bad in ({"a": 1}, "data/ml-100k", [1, 2]):
        # fit used to fail deep inside with AttributeError: 'dict' object has no attribute 'metadata'.
        with pytest.raises(DataError, match="'dataset'.*MultimodalDataset"):
            jaxrec.fit(CONFIG, tmp_path / "never", dataset=bad, overrides={"train.epochs": 1})
        with pytest.raises(DataError, match="'dataset'.*MultimodalDataset"):
            jaxrec.load_run(run.workdir, dataset=bad)
        with pytest.raises(DataError, match="'dataset'.*MultimodalDataset"):
            Run(run.workdir, dataset=bad)
    assert not (tmp_path / "never").exists()  # raised before any work
    # A MultimodalDataset (the run's own data) is taken: the same parameters and test metrics.
    dataset = load_dataset(run.config.data)
    again = jaxrec.load_run(run.workdir, dataset=dataset)
    assert again.evaluate("test")["metrics"] == run.metrics["test"]
    given = jaxrec.fit(CONFIG, tmp_path / "given", dataset=dataset, overrides={"train.epochs": 3, "train.seed": 7})
    assert given.metrics["test"] == run.metrics["test"]


# ---- a search folder stands for its winner -----------------------------------------------------


def test_a_search_through_fit_and_evaluate_on_its_folder(tmp_path, capsys):
    config = {**CONFIG, "train": {**CONFIG["train"], "epochs": 2}, "grid": {"loss_weights.reg": [0.0, 1.0]}}
    winner = jaxrec.fit(config, tmp_path / "grid")
    summary = json.loads((tmp_path / "grid" / "search.json").read_text())
    best = max(summary["trials"], key=lambda t: (t["valid"]["recall@20"], -t["trial"]))
    assert winner.workdir == tmp_path / "grid" / f"trial_{best['trial']:03d}"
    assert winner.search["best"]["trial"] == best["trial"]

    result = evaluate_run(tmp_path / "grid", "test")
    assert result["search_winner"] == winner.workdir.name and result["metrics"] == winner.metrics["test"]
    assert main(["evaluate", str(tmp_path / "grid")]) == 0
    out = capsys.readouterr().out
    assert f"(the search's winner, {winner.workdir.name})" in out
    assert f"| recall@20 | {winner.metrics['test']['recall@20']:.4f} |" in out
    assert jaxrec.load_run(tmp_path / "grid").workdir == winner.workdir


def test_a_runs_repr_shows_test_figures_at_its_selection_cutoff(tmp_path):
    # The repr showed "test recall@20 nan" for a run selected on recall@10 with ks [5, 10].
    from jaxrec.api import Run

    metrics = {"model": "bprmf", "dataset": "toy", "best_epoch": 2, "epochs_run": 3, "valid_metric": "recall@10",
               "valid": {"recall@10": 0.3}, "test": {"recall@10": 0.31234, "ndcg@10": 0.2, "recall@5": 0.1}}
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    assert repr(Run(tmp_path)) == (f"Run({str(tmp_path)!r}: bprmf on toy, best epoch 2 of 3, "
                                   "test recall@10 0.3123, ndcg@10 0.2000)")
