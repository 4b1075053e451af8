"""Configs: defaults, unknown keys with suggestions, types, --set overrides, path resolution."""

import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from jaxrec.errors import ConfigError
from jaxrec.train import (
    ExperimentConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    dump_config,
    load_config,
    parse_override,
)

BASE = {"data": {"path": "/data/x"}, "model": {"name": "bprmf"}}


def _error(raw) -> str:
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw)
    return str(info.value)


def test_defaults_are_mmrecs():
    config = config_from_dict(BASE)
    t = config.train
    assert (t.epochs, t.batch_size, t.optimizer, t.learning_rate, t.patience, t.valid_metric, t.seed) == \
        (1000, 2048, "adam", 1e-3, 20, "recall@20", 999)
    assert (t.n_negatives, t.negative_sampling, t.parallel) == (1, "uniform", "none")
    assert config.eval.ks == [5, 10, 20, 50] and config.eval.protocol == "mmrec"
    assert config.model.name == "bprmf" and not config.has_search


@pytest.mark.parametrize("raw, key, suggestion", [
    ({"train": {"lerning_rate": 0.1}}, "train.lerning_rate", "train.learning_rate"),
    ({"trian": {}}, "trian", "train"),
    ({"model": {"nmae": "bpr"}}, "model.nmae", "model.name"),
    ({"eval": {"k": [10]}}, "eval.k", "eval.ks"),
    ({"train": {"paralel": "pmap"}}, "train.paralel", "train.parallel"),
])
def test_unknown_key_names_it_and_suggests_the_nearest(raw, key, suggestion):
    message = _error({**BASE, **raw})
    assert f"unknown config key {key!r}" in message
    assert f"did you mean {suggestion!r}" in message


def test_wrong_types_and_values_name_the_key():
    assert "'train.epochs' expects int; found 'ten'" in _error({**BASE, "train": {"epochs": "ten"}})
    assert "'train.batch_size' must be > 0" in _error({**BASE, "train": {"batch_size": 0}})
    message = _error({**BASE, "train": {"parallel": "pmapp"}})
    assert "'train.parallel' is 'pmapp'; did you mean 'pmap'?" in message
    assert "not in eval.ks" in _error({**BASE, "train": {"valid_metric": "recall@30"}})
    assert "NAME@K" in _error({**BASE, "train": {"valid_metric": "recall"}})
    # recall2, a metric eval.metrics allows, was refused as not NAME@K.
    recall2 = {**BASE, "train": {"valid_metric": "recall2@20"}, "eval": {"metrics": ["recall", "recall2"]}}
    assert config_from_dict(recall2).train.valid_metric == "recall2@20"
    assert "is not among eval.metrics" in _error({**BASE, "train": {"valid_metric": "recall2@20"},
                                                  "eval": {"metrics": ["recall"]}})
    assert "data.path" in _error({"model": {"name": "bprmf"}})
    assert "'loss_weights.reg' expects float; found 'big'" in _error({**BASE, "loss_weights": {"reg": "big"}})
    assert "'loss_weights.reg' must be a finite number" in _error({**BASE, "loss_weights": {"reg": float("inf")}})


def test_yaml_exponent_without_dot_is_a_number():
    # PyYAML (YAML 1.1) reads 1e-3 as the STRING "1e-3"; the config takes it as the number.
    raw = yaml.safe_load("model: {name: bprmf}\ndata: {path: /x}\ntrain: {learning_rate: 1e-3, weight_decay: 5e-4}")
    assert raw["train"]["learning_rate"] == "1e-3"
    config = config_from_dict(raw)
    assert config.train.learning_rate == 0.001 and config.train.weight_decay == 0.0005


@pytest.mark.parametrize("text, key, value", [
    ("train.epochs=5", "train.epochs", 5),
    ("train.learning_rate=0.01", "train.learning_rate", 0.01),
    ("data.modalities=[text, audio]", "data.modalities", ["text", "audio"]),
    ("data.path=../shared/data/lfm2k", "data.path", "../shared/data/lfm2k"),
    ("train.clip_norm=null", "train.clip_norm", None),
    ("model.args={embedding_size: 8}", "model.args", {"embedding_size": 8}),
    ("train.valid_metric=ndcg@10", "train.valid_metric", "ndcg@10"),
])
def test_parse_override_reads_values_as_yaml(text, key, value):
    assert parse_override(text) == (key, value)


def test_parse_override_errors():
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_override("train.epochs")
    with pytest.raises(ConfigError, match="non-empty key"):
        parse_override("=3")
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_override("data.modalities=[a, b")


def test_apply_overrides_nests_keys_and_keeps_search_keys_whole():
    raw = apply_overrides({"train": {"epochs": 3}}, ["train.epochs=7", "model.args.embedding_size=8",
                                                    "loss_weights.reg=0.5", "grid.train.learning_rate=[0.1, 0.01]"])
    assert raw == {"train": {"epochs": 7}, "model": {"args": {"embedding_size": 8}}, "loss_weights": {"reg": 0.5},
                   "grid": {"train.learning_rate": [0.1, 0.01]}}


def test_issue_keys_are_all_settable(tmp_path, monkeypatch):
    path = tmp_path / "c.yaml"
    path.write_text("model: {name: bprmf}\ndata: {path: somewhere}\n")
    monkeypatch.chdir(tmp_path)
    config = load_config(path, [
        "data.path=data/lfm2k", "data.format=mmrec", "data.modalities=[vggish]", "train.epochs=4",
        "train.batch_size=64", "train.learning_rate=0.05", "train.seed=3", "train.patience=2",
        "train.parallel=sharded"])
    # Relative data paths resolve against the current directory, not the config's folder.
    assert config.data.path == os.fspath((tmp_path / "data" / "lfm2k").resolve())
    assert (config.data.format, config.data.modalities) == ("mmrec", ["vggish"])
    t = config.train
    assert (t.epochs, t.batch_size, t.learning_rate, t.seed, t.patience, t.parallel) == (4, 64, 0.05, 3, 2, "sharded")
    with pytest.raises(ConfigError, match="did you mean 'train.patience'"):
        load_config(path, ["train.patiense=3"])


def test_load_config_reports_file_problems(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+: not valid YAML"):
        load_config(bad)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("data: {path: /x}\ntrain: {epoch: 3}\n")
    with pytest.raises(ConfigError, match=r"unknown.yaml: unknown config key 'train.epoch'; did you mean 'train.epochs'"):
        load_config(unknown)


def test_dumped_config_reads_back_equal(tmp_path):
    config = config_from_dict({**BASE, "train": {"epochs": 3, "clip_norm": 1.5}, "loss_weights": {"reg": 0.1},
                               "grid": {"train.learning_rate": [0.1, 0.01]}})
    path = tmp_path / "config.yaml"
    path.write_text(dump_config(config))
    again = load_config(path)
    assert config_to_dict(again) == config_to_dict(config)
    assert isinstance(again, ExperimentConfig) and again.has_search


def test_search_sections_are_checked():
    assert "did you mean 'train.learning_rate'" in _error({**BASE, "grid": {"train.learning_rat": [0.1]}})
    assert "either grid: or search:" in _error({**BASE, "grid": {"train.seed": [1]},
                                                "search": {"space": {"train.seed": [1]}}})
    assert "search.budget" in _error({**BASE, "search": {"method": "random", "space": {"train.seed": [1, 2]}}})
    # Model arguments and loss weights are free-form: checked when the model is built.
    config = config_from_dict({**BASE, "grid": {"model.args.embedding_size": [8, 16], "loss_weights.reg": [0.1]}})
    assert config.grid == {"model.args.embedding_size": [8, 16], "loss_weights.reg": [0.1]}


def test_example_configs_load():
    root = Path(__file__).resolve().parents[1] / "experiments" / "configs"
    for path in sorted(root.rglob("*.yaml")):
        config = load_config(path)
        assert config.model.name


def test_data_selection_roles_and_cold_start_candidates():
    from jaxrec.data import make_synthetic
    from jaxrec.train import prepare_eval_splits, prepare_experiment, select_modalities

    dataset = make_synthetic(60, 40, n_interactions=900, seed=0)
    config = config_from_dict({"model": {"name": "bprmf"}, "data": {"synthetic": {}, "modalities": ["audio", "text"],
                                        "roles": {"vision": "audio"}}})
    picked = select_modalities(dataset, config.data)
    assert picked.modality_names == ("vision", "text")
    assert (picked.modalities["vision"].features == dataset.modalities["audio"].features).all()
    with pytest.raises(ConfigError, match="no modality 'video'"):
        select_modalities(dataset, config_from_dict({**BASE, "data": {"synthetic": {}, "roles": {"vision": "video"}}}).data)

    # A cold-start split ranks only each split's held-out items.
    config = config_from_dict({"data": {"synthetic": {"n_users": 60, "n_items": 40, "n_interactions": 900},
                                        "split": {"method": "cold_start_items", "holdout": 0.3, "seed": 1}},
                               "model": {"name": "bprmf", "args": {"embedding_size": 4}}, "train": {"batch_size": 64}})
    experiment = prepare_experiment(config)
    cold = experiment.dataset.metadata["cold_start_items"]
    splits = prepare_eval_splits(experiment)
    for name in ("valid", "test"):
        assert sorted(np.flatnonzero(np.asarray(splits[name].candidate_mask)).tolist()) == sorted(cold[name])
