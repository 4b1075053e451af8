"""Batched search (trials as one compiled program) against the same trials run one by one."""

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxrec import eval as jeval
from jaxrec import models
from jaxrec.data import make_synthetic
from jaxrec.errors import ConfigError, DataError
from jaxrec.train import (config_from_dict, evaluate_run, init_state, make_train_step, prepare_experiment, run_search,
                          train_and_evaluate)
from jaxrec.train import _batched_search
from jaxrec.train._checkpoint import Checkpoints
from jaxrec.train._search import trial_config
from _model_testing import TwoTables
from _tensorboard_events import read_scalars

DATA_ARGS = dict(n_users=90, n_items=60, n_interactions=1800, seed=4)


def _raw(grid, epochs=8, patience=2):
    return {
        "data": {"synthetic": DATA_ARGS},
        "model": {"name": "bprmf", "args": {"embedding_size": 8}},
        "train": {"epochs": epochs, "batch_size": 256, "learning_rate": 0.02, "patience": patience, "seed": 3,
                  "checkpoint_every": 100},
        "eval": {"ks": [10, 20], "metrics": ["recall", "ndcg"]},
        "loss_weights": {"reg": 0.01},
        "grid": grid,
    }


@pytest.fixture(scope="module")
def dataset():
    return make_synthetic(**DATA_ARGS)


@pytest.fixture(scope="module")
def both_ways(tmp_path_factory, dataset):
    """One grid over loss weight x learning rate, batched and sequential."""
    config = config_from_dict(_raw({"loss_weights.reg": [0.001, 1.0], "train.learning_rate": [0.01, 0.1]}))
    root = tmp_path_factory.mktemp("search")
    batched = run_search(config, root / "batched", quiet=True, batched="always", dataset=dataset)
    sequential = run_search(config, root / "sequential", quiet=True, batched="never", dataset=dataset)
    return root, batched, sequential


def test_batched_trials_match_sequential_trials(both_ways):
    _, batched, sequential = both_ways
    assert [t["setting"] for t in batched["trials"]] == [t["setting"] for t in sequential["trials"]]
    for one, other in zip(batched["trials"], sequential["trials"]):
        assert one["best_epoch"] == other["best_epoch"], (one["setting"], one["best_epoch"], other["best_epoch"])
        for split in ("valid", "test"):
            for key in ("recall@20", "ndcg@20", "recall@10"):
                assert one[split][key] == pytest.approx(other[split][key], abs=2e-3), (one["setting"], split, key)
    assert batched["best"]["trial"] == sequential["best"]["trial"]


def _log_epochs(trial_dir):
    """log.txt's epoch lines without their clock readings (timestamp, seconds)."""
    lines = (trial_dir / "log.txt").read_text().splitlines()
    return [re.sub(r"[0-9.]+ s\b", "_ s", line.split("] ", 1)[1]) for line in lines if "] epoch " in line]


def test_batched_trial_folders_hold_the_log_and_events_of_a_run(both_ways):
    root, batched, _ = both_ways
    for trial in batched["trials"]:
        name = f"trial_{trial['trial']:03d}"
        one, other = root / "batched" / name, root / "sequential" / name
        history = [json.loads(line) for line in (one / "history.jsonl").read_text().splitlines()]
        # log.txt: the sequential run's epoch lines (figures from the history, early stopping replayed)
        epochs = _log_epochs(one)
        assert len(epochs) == len(history) and epochs[0].startswith("epoch 1: loss ")
        assert [line.split(" | ")[0].split(", _ s")[0] for line in epochs] == [
            f"epoch {row['epoch']}: loss {row['loss']:.4f} ("
            + ", ".join(f"{k} {v:.4f}" for k, v in row["terms"].items()) + ")" for row in history]
        for line, row in zip(epochs, history):  # every epoch is evaluated here
            best = max(r["valid"]["recall@20"] for r in history[:row["epoch"]])
            assert line.split(" | ")[1].startswith(f"valid recall@20 {row['valid']['recall@20']:.4f} "
                                                   f"(best {best:.4f} at epoch {row['best_epoch']}")
        stopped = json.loads((one / "metrics.json").read_text())["stopped_early"]
        assert epochs[-1].endswith(", stopping), eval _ s") == stopped and "stopping" not in " ".join(epochs[:-1])
        assert (one / "log.txt").read_text().splitlines()[-1].split("] ", 1)[1].startswith(
            f"done: best epoch {trial['best_epoch']} of {len(history)}; valid recall@20 ")
        # tensorboard/: every tag a sequential run writes, each value as its history holds it
        scalars, reference = read_scalars(one / "tensorboard"), read_scalars(other / "tensorboard")
        assert set(scalars) == set(reference)
        for row in history:
            assert scalars["train/loss"][row["epoch"]] == pytest.approx(row["loss"], rel=1e-6)
            assert scalars["valid/recall_20"][row["epoch"]] == pytest.approx(row["valid"]["recall@20"], rel=1e-6)
            assert scalars["valid/best_epoch"][row["epoch"]] == row["best_epoch"]


def test_each_trial_early_stops_on_its_own(both_ways):
    root, batched, _ = both_ways
    runs = [json.loads((root / "batched" / f"trial_{t:03d}" / "metrics.json").read_text()) for t in range(4)]
    histories = [[json.loads(line) for line in (root / "batched" / f"trial_{t:03d}" / "history.jsonl").read_text()
                  .splitlines()] for t in range(4)]
    for metrics, history in zip(runs, histories):
        assert metrics["epochs_run"] == len(history) == history[-1]["epoch"]
        assert metrics["batched_search"] == {"trials": 4}
        if metrics["stopped_early"]:
            # MMRec's rule: stop once more than `patience` (2) evaluations fail to improve.
            assert metrics["epochs_run"] - metrics["best_epoch"] == 3
    # The grid mixes a learning rate that peaks early with one still improving at the end.
    assert len({m["epochs_run"] for m in runs}) > 1


def test_a_batched_trial_is_a_normal_run_for_evaluate(both_ways, dataset):
    root, batched, _ = both_ways
    trial = batched["best"]
    recomputed = evaluate_run(root / "batched" / f"trial_{trial['trial']:03d}", split="test", dataset=dataset)
    assert recomputed["epoch"] == trial["best_epoch"]
    assert recomputed["metrics"]["recall@20"] == pytest.approx(trial["test"]["recall@20"], abs=1e-6)


def test_test_every_epoch_in_a_batched_search(both_ways, tmp_path, dataset):
    """With eval.test_every_epoch each batched trial's rows also hold test metrics; valid, the
    best epochs and the winner are those of the search without it, and the best epoch's row has
    the trial's reported test metrics (up to the batched encoder's float rounding)."""
    root, batched, _ = both_ways
    raw = _raw({"loss_weights.reg": [0.001, 1.0], "train.learning_rate": [0.01, 0.1]})
    raw["eval"] = {**raw["eval"], "test_every_epoch": True}
    again = run_search(config_from_dict(raw), tmp_path / "b", quiet=True, batched="always", dataset=dataset)
    assert again["best"]["trial"] == batched["best"]["trial"]
    for one, other in zip(again["trials"], batched["trials"]):
        assert one["best_epoch"] == other["best_epoch"] and one["valid"] == other["valid"]
        assert one["test"] == other["test"]
        rows = [json.loads(line) for line in
                (tmp_path / "b" / f"trial_{one['trial']:03d}" / "history.jsonl").read_text().splitlines()]
        plain = [json.loads(line) for line in
                 (root / "batched" / f"trial_{one['trial']:03d}" / "history.jsonl").read_text().splitlines()]
        assert [row["valid"] for row in rows] == [row["valid"] for row in plain]
        assert all(set(row["test"]) == set(one["test"]) for row in rows)
        best_row = rows[one["best_epoch"] - 1]
        for key, value in one["test"].items():
            assert best_row["test"][key] == pytest.approx(value, abs=1e-6), key


def test_trials_with_different_seeds_draw_their_own_batches(tmp_path, dataset):
    config = config_from_dict(_raw({"train.seed": [3, 11]}, epochs=4, patience=10))
    batched = run_search(config, tmp_path / "b", quiet=True, batched="always", dataset=dataset)
    sequential = run_search(config, tmp_path / "s", quiet=True, batched="never", dataset=dataset)
    for one, other in zip(batched["trials"], sequential["trials"]):
        assert one["valid"]["recall@20"] == pytest.approx(other["valid"]["recall@20"], abs=2e-3)
    assert batched["trials"][0]["valid"] != batched["trials"][1]["valid"]


def test_grids_over_other_keys_run_sequentially_or_refuse(tmp_path, dataset, capsys):
    config = config_from_dict(_raw({"model.args.embedding_size": [4, 8]}, epochs=2))
    with pytest.raises(ConfigError, match="model.args.embedding_size"):
        run_search(config, tmp_path / "always", quiet=True, batched="always", dataset=dataset)
    summary = run_search(config, tmp_path / "auto", batched="auto", dataset=dataset, quiet=False)
    assert "trials run one after another" in capsys.readouterr().out
    assert "batched_search" not in json.loads((tmp_path / "auto" / "trial_000" / "metrics.json").read_text())
    assert len(summary["trials"]) == 2


def test_evaluate_prepared_many_equals_one_by_one():
    rng = np.random.default_rng(0)
    n_users, n_items = 30, 25
    train = np.stack([rng.integers(0, n_users, 200), rng.integers(0, n_items, 200)], 1)
    test = np.stack([rng.integers(0, n_users, 80), rng.integers(0, n_items, 80)], 1)
    split = jeval.prepare_split(num_items=n_items, train_pairs=train, target_pairs=test)
    users, items = rng.normal(size=(3, n_users, 8)), rng.normal(size=(3, n_items, 8))
    many = jeval.evaluate_prepared_many(split, users.astype(np.float32), items.astype(np.float32), ks=(5, 20))
    for t in range(3):
        one = jeval.evaluate_prepared(split, users[t].astype(np.float32), items[t].astype(np.float32), ks=(5, 20))
        assert many[t] == pytest.approx(one, abs=1e-7)
    # An inactive model (an early-stopped trial) is skipped; the others are unchanged.
    some = jeval.evaluate_prepared_many(split, users.astype(np.float32), items.astype(np.float32), ks=(5, 20),
                                        active=[True, False, True])
    assert some[1] is None and some[0] == many[0] and some[2] == many[2]
    # Stacks on the device (what the search passes) rank the same; the checks read one model's shapes.
    on_device = jeval.evaluate_prepared_many(split, jax.device_put(users.astype(np.float32)),
                                             jax.device_put(items.astype(np.float32)), ks=(5, 20))
    assert on_device == many
    with pytest.raises(DataError, match="same width"):
        jeval.evaluate_prepared_many(split, users.astype(np.float32), items[:, :, :4].astype(np.float32), ks=(5, 20))


def test_a_grid_over_a_model_argument_runs_one_batched_program_per_value(tmp_path, dataset, capsys):
    config = config_from_dict(_raw({"model.args.embedding_size": [4, 8], "loss_weights.reg": [0.001, 1.0]},
                                   epochs=2, patience=10))
    grouped = run_search(config, tmp_path / "grouped", dataset=dataset, quiet=False)
    assert "4 trials ran batched, one program per value of model.args.embedding_size" in capsys.readouterr().out
    sequential = run_search(config, tmp_path / "sequential", quiet=True, batched="never", dataset=dataset)
    assert [t["trial"] for t in grouped["trials"]] == [0, 1, 2, 3]
    for one, other in zip(grouped["trials"], sequential["trials"]):
        assert one["setting"] == other["setting"]
        assert one["valid"]["recall@20"] == pytest.approx(other["valid"]["recall@20"], abs=2e-3)
        metrics = json.loads((tmp_path / "grouped" / f"trial_{one['trial']:03d}" / "metrics.json").read_text())
        assert metrics["batched_search"] == {"trials": 2}
        assert metrics["n_params"] == (90 + 60) * one["setting"]["model.args.embedding_size"]
    assert grouped["best"]["trial"] == sequential["best"]["trial"]


def _freedom_grid(*, dropout, epochs, grid, loss_weights=None):
    """``(raw config, synthetic data arguments)`` of a tiny FREEDOM search with ``grid``."""
    data = dict(n_users=60, n_items=40, n_interactions=900, dims={"text": 8}, seed=2)
    raw = {"data": {"synthetic": data},
           "model": {"name": "freedom", "args": {"embedding_size": 8, "feat_embed_dim": 8, "knn_k": 3,
                                                 "graph_cache": "none", "dropout": dropout}},
           "train": {"epochs": epochs, "batch_size": 256, "learning_rate": 0.02, "patience": 10, "seed": 3,
                     "checkpoint_every": 100},
           "eval": {"ks": [20], "metrics": ["recall", "ndcg"]},
           "grid": grid}
    if loss_weights is not None:
        raw["loss_weights"] = loss_weights
    return raw, data


def test_a_model_with_an_epoch_hook_runs_batched_with_each_trials_own_context(tmp_path):
    """FREEDOM redraws its pruned graph every epoch (``epoch_update``): batched trials get the
    context a sequential run computes, so both ways give the same figures."""
    raw, data = _freedom_grid(dropout=0.5, epochs=4, grid={"loss_weights.modality_bpr": [0.0, 0.1]})
    dataset = make_synthetic(**data)
    config = config_from_dict(raw)
    batched = run_search(config, tmp_path / "b", quiet=True, batched="always", dataset=dataset)
    sequential = run_search(config, tmp_path / "s", quiet=True, batched="never", dataset=dataset)
    for one, other in zip(batched["trials"], sequential["trials"]):
        assert one["best_epoch"] == other["best_epoch"]
        for split in ("valid", "test"):
            assert one[split]["recall@20"] == pytest.approx(other[split]["recall@20"], abs=2e-3), (split, one)
            assert one[split]["ndcg@20"] == pytest.approx(other[split]["ndcg@20"], abs=2e-3), (split, one)
    metrics = json.loads((tmp_path / "b" / "trial_001" / "metrics.json").read_text())
    assert metrics["batched_search"] == {"trials": 2}
    # The pruned graph differs from epoch to epoch: a batched run that kept epoch 1's graph
    # (or the built one) would not match the sequential figures above.
    recomputed = evaluate_run(tmp_path / "b" / "trial_001", split="test", dataset=dataset)
    assert recomputed["metrics"]["recall@20"] == pytest.approx(batched["trials"][1]["test"]["recall@20"], abs=1e-6)


def _two_table_trials(n_trials, tx, moment_on_v=False):
    rng = np.random.default_rng(1)
    batches = models.normalize_batch({"users": rng.integers(0, 6, (3, 4)), "pos_items": rng.integers(0, 6, (3, 4)),
                                      "neg_items": rng.integers(0, 6, (3, 4, 1))})
    module = TwoTables()
    states = []
    for seed in range(n_trials):
        state = init_state(module, {}, {k: v[0] for k, v in batches.items()}, tx, seed)
        if moment_on_v:  # a (precondition-breaking) non-zero Adam moment on the unread table
            adam = state.opt_state[0]
            state = state.replace(opt_state=(adam._replace(mu={**adam.mu, "v": jnp.ones((6, 3))}),)
                                  + tuple(state.opt_state[1:]))
        states.append(state)
    return module, batches, _batched_search._stack(states)


def test_a_stopped_trial_is_skipped_bit_for_bit():
    """An early-stopped trial (active False) goes through the epoch program untouched: its
    parameters, optimizer state, step and key come back bit for bit, its metrics are zeros."""
    tx = optax.adam(0.05)
    module, batches, start = _two_table_trials(3, tx)
    contexts = _batched_search._TrialContexts(models.Built(module=module, ctx={}, default_loss_weights={}), [0, 1, 2])
    epoch = _batched_search._make_epoch_fn(module, tx, ("bpr", "side"), False, contexts)
    weights, lrs = np.ones((3, 2), np.float32), np.ones(3, np.float32)
    states = jax.device_put(jax.tree.map(np.copy, start))
    for _ in range(2):  # twice: the stopped trial stays where it stopped after further epochs
        states, (loss, terms, finite) = epoch(states, lrs, weights, np.zeros((3, 0), np.float32),
                                              np.array([True, False, True]), {}, (), batches)
    after = jax.device_get(states)
    for leaf_start, leaf_after in zip(jax.tree.leaves(start), jax.tree.leaves(after)):
        np.testing.assert_array_equal(np.asarray(leaf_after)[1], np.asarray(leaf_start)[1])
        if np.asarray(leaf_start).dtype.kind == "f" and np.asarray(leaf_start)[0].size > 1:
            assert not np.array_equal(np.asarray(leaf_after)[0], np.asarray(leaf_start)[0])
    assert not np.any(np.asarray(loss)[1]) and np.all(np.asarray(loss)[[0, 2]] != 0)


def test_keep_unread_in_the_batched_epoch():
    """As the sequential step's ``keep_unread``: a table only a term of weight 0 in every trial
    reads (``off_terms``) comes back with its optimizer state as it went in; without it the
    full update moves that state."""
    tx = optax.adam(0.05)
    module, batches, start = _two_table_trials(2, tx, moment_on_v=True)
    contexts = _batched_search._TrialContexts(models.Built(module=module, ctx={}, default_loss_weights={}), [0, 1])
    weights, lrs = np.asarray([[1.0, 0.0], [0.5, 0.0]], np.float32), np.ones(2, np.float32)
    moved = {}
    for keep in (False, True):
        epoch = _batched_search._make_epoch_fn(module, tx, ("bpr", "side"), False, contexts,
                                               off_terms=(frozenset({"side"}),) * 2, keep_unread=keep)
        states, _ = epoch(jax.device_put(jax.tree.map(np.copy, start)), lrs, weights, np.zeros((2, 0), np.float32),
                          np.ones(2, bool), {}, (), batches)
        states = jax.device_get(states)
        moved[keep] = (not np.array_equal(states.params["v"], start.params["v"]),
                       not np.all(np.asarray(states.opt_state[0].mu["v"]) == 1.0),
                       not np.array_equal(states.params["w"], start.params["w"]))
    assert moved == {False: (True, True, True), True: (False, False, True)}


def test_a_term_off_in_some_trials_is_left_out_of_their_steps_only():
    """Trials 0 and 2 weigh ``side`` 0, trial 1 weighs it: each trial's epoch equals its own
    sequential steps (``make_train_step`` with its Python weights and ``keep_unread``), so in
    trials 0 and 2 the table only ``side`` reads and its (non-zero) Adam moment stay as they
    were, while trial 1 moves them. A ``where``-masked sum shared by all trials would move them
    in every trial (Adam's moment alone moves a table with a zero gradient)."""
    tx = optax.adam(0.05)
    module, batches, start = _two_table_trials(3, tx, moment_on_v=True)
    contexts = _batched_search._TrialContexts(models.Built(module=module, ctx={}, default_loss_weights={}), [0, 1, 2])
    weights = np.asarray([[1.0, 0.0], [1.0, 0.5], [0.5, 0.0]], np.float32)
    off = tuple(frozenset(name for name, w in zip(("bpr", "side"), row) if w == 0) for row in weights)
    epoch = _batched_search._make_epoch_fn(module, tx, ("bpr", "side"), False, contexts, off_terms=off,
                                           keep_unread=True)
    states, (loss, terms, _) = epoch(jax.device_put(jax.tree.map(np.copy, start)), np.ones(3, np.float32), weights,
                                     np.zeros((3, 0), np.float32), np.ones(3, bool), {}, (), batches)
    states = jax.device_get(states)
    for t, row in enumerate(weights):
        own = jax.tree.map(lambda x: np.array(np.asarray(x)[t]), start)
        step = jax.jit(make_train_step(module, tx, {"bpr": float(row[0]), "side": float(row[1])}, keep_unread=True))
        own_losses = []
        for b in range(3):
            own, metrics = step(own, {}, {k: v[b] for k, v in batches.items()})
            own_losses.append(float(metrics.loss))
        np.testing.assert_allclose(np.asarray(loss)[t], own_losses, rtol=1e-6)
        for got, want in zip(jax.tree.leaves(states), jax.tree.leaves(jax.device_get(own))):
            np.testing.assert_allclose(np.asarray(got)[t], np.asarray(want), rtol=1e-6, atol=1e-7)
        v_kept = np.array_equal(states.params["v"][t], np.asarray(start.params["v"])[t])
        mu_kept = np.all(np.asarray(states.opt_state[0].mu["v"])[t] == 1.0)
        assert (v_kept, mu_kept) == ((True, True) if row[1] == 0 else (False, False)), t
    # The side term is computed and reported only where it weighs: 0 in the other trials' output.
    side = np.asarray(terms["side"])
    assert np.all(side[1] > 0) and not np.any(side[[0, 2]])
    short = _batched_search._make_epoch_fn(module, tx, ("bpr", "side"), False, contexts, off_terms=off[:2])
    with pytest.raises(ValueError, match="off_terms has 2 entries for 3 trials"):
        short(jax.device_put(jax.tree.map(np.copy, start)), np.ones(3, np.float32), weights,
              np.zeros((3, 0), np.float32), np.ones(3, bool), {}, (), batches)


def test_a_grid_with_a_term_off_in_every_trial_keeps_its_parameters_unread(tmp_path, monkeypatch):
    """FREEDOM with ``modality_bpr`` 0 (every trial): the search leaves the term out of the trace
    and keeps the parameters only it reads (no weight decay), as a sequential run does, with the
    same figures; those parameters end bit for bit where they started."""
    raw, data = _freedom_grid(dropout=0.0, epochs=3, grid={"train.learning_rate": [0.01, 0.03]},
                              loss_weights={"modality_bpr": 0.0})
    seen = []
    make = _batched_search._make_epoch_fn

    def recording(*args, **kwargs):
        seen.append(kwargs)
        return make(*args, **kwargs)

    monkeypatch.setattr(_batched_search, "_make_epoch_fn", recording)
    dataset = make_synthetic(**data)
    config = config_from_dict(raw)
    batched = run_search(config, tmp_path / "b", quiet=True, batched="always", dataset=dataset)
    assert seen == [{"off_terms": (frozenset({"modality_bpr"}),) * 2, "keep_unread": True, "steps_per_epoch": 3,
                     "arg_names": ()}]
    sequential = run_search(config, tmp_path / "s", quiet=True, batched="never", dataset=dataset)
    for one, other in zip(batched["trials"], sequential["trials"]):
        assert one["best_epoch"] == other["best_epoch"]
        for split in ("valid", "test"):
            assert one[split]["recall@20"] == pytest.approx(other[split]["recall@20"], abs=2e-3), (split, one)
    exp = prepare_experiment(trial_config(config, batched["trials"][1]["setting"]), dataset)
    checkpoints = Checkpoints(tmp_path / "b" / "trial_001" / "checkpoints")
    try:
        last, _ = checkpoints.restore(exp.target)
    finally:
        checkpoints.close()
    initial = init_state(exp.module, exp.built.ctx, exp.sampler.example_batch(), exp.tx, 3)
    flat_last = dict(jax.tree_util.tree_flatten_with_path(last.params)[0])
    unchanged = sorted(jax.tree_util.keystr(path) for path, leaf in jax.tree_util.tree_flatten_with_path(
        initial.params)[0] if np.array_equal(np.asarray(leaf), np.asarray(flat_last[path])))
    # Only the feature table and projection (read by modality_bpr alone) are where they started.
    assert unchanged == ["['features_0']['table']", "['projection_0']['bias']", "['projection_0']['kernel']"]


def _last_params(workdir, config, dataset):
    exp = prepare_experiment(config, dataset)
    checkpoints = Checkpoints(workdir / "checkpoints")
    try:
        last, _ = checkpoints.restore(exp.target)
    finally:
        checkpoints.close()
    return jax.device_get(last.params)


def test_lattice_mmrec_schedule_is_the_same_batched_and_sequential(tmp_path):
    """LATTICE's ``learned_graph: mmrec`` recomputes its item graph with gradient in an epoch's
    FIRST step only (the step reads ``ctx["epoch_step"]``, which every trainer's step sets). The
    batched epoch sets it as the sequential step does, so both ways end at the same parameters up
    to float rounding; a batched step that left it at the built -1 would search and differentiate
    the graph at every step, and its feature projections would end elsewhere."""
    data = dict(n_users=60, n_items=40, n_interactions=900, dims={"text": 8, "audio": 6}, seed=2)
    raw = {"data": {"synthetic": data},
           "model": {"name": "lattice", "args": {"embedding_size": 8, "feat_embed_dim": 8, "knn_k": 3,
                                                 "graph_cache": "none", "learned_graph": "mmrec"}},
           "train": {"epochs": 3, "batch_size": 128, "learning_rate": 0.05, "patience": 10, "seed": 3,
                     "checkpoint_every": 100},
           "eval": {"ks": [20], "metrics": ["recall", "ndcg"]},
           "grid": {"loss_weights.reg": [1e-4, 1e-3]}}
    dataset = make_synthetic(**data)
    config = config_from_dict(raw)
    batched = run_search(config, tmp_path / "b", quiet=True, batched="always", dataset=dataset)
    sequential = run_search(config, tmp_path / "s", quiet=True, batched="never", dataset=dataset)
    for trial, (one, other) in enumerate(zip(batched["trials"], sequential["trials"])):
        trial_cfg = trial_config(config, one["setting"])
        mine = _last_params(tmp_path / "b" / f"trial_{trial:03d}", trial_cfg, dataset)
        theirs = _last_params(tmp_path / "s" / f"trial_{trial:03d}", trial_cfg, dataset)
        flat_theirs = dict(jax.tree_util.tree_flatten_with_path(theirs)[0])
        for path, leaf in jax.tree_util.tree_flatten_with_path(mine)[0]:
            np.testing.assert_allclose(np.asarray(leaf), np.asarray(flat_theirs[path]), rtol=1e-4, atol=1e-5,
                                       err_msg=jax.tree_util.keystr(path))
        assert one["test"]["recall@20"] == pytest.approx(other["test"]["recall@20"], abs=1e-6)


def _traced_grid(model, args, grid, *, epochs=6):
    data = dict(n_users=70, n_items=50, n_interactions=1400, dims={"text": 8, "image": 6}, seed=5)
    raw = {"data": {"synthetic": data}, "model": {"name": model, "args": args},
           "train": {"epochs": epochs, "batch_size": 256, "learning_rate": 0.02, "patience": 10, "seed": 3,
                     "checkpoint_every": 100},
           "eval": {"ks": [10, 20], "metrics": ["recall", "ndcg"]}, "grid": grid}
    return config_from_dict(raw), make_synthetic(**data)


def _same_trials(one, other, tolerance):
    assert [t["setting"] for t in one["trials"]] == [t["setting"] for t in other["trials"]]
    for a, b in zip(one["trials"], other["trials"]):
        assert a["best_epoch"] == b["best_epoch"], a["setting"]
        for split in ("valid", "test"):
            for key in ("recall@20", "ndcg@20", "recall@10"):
                assert a[split][key] == pytest.approx(b[split][key], abs=tolerance), (a["setting"], split, key)
    assert one["best"]["trial"] == other["best"]["trial"]


def test_traced_model_arguments_train_in_one_program_as_their_own_runs(tmp_path):
    """LGMRec's alpha (it weighs the global embeddings, so the ranking depends on it) and keep_rate
    (a dropout) are traced arguments: the 2 x 2 grid is ONE program whose trials give their
    sequential runs' figures -- each trial's module is cloned with its traced values inside the
    program, in the validation ranking, and with its numbers for the test evaluation."""
    config, data = _traced_grid("lgmrec", {"embedding_size": 8, "feat_embed_dim": 8, "hyper_num": 2},
                                {"model.args.alpha": [0.3, 0.9], "model.args.keep_rate": [0.5, 1.0 - 1e-3]})
    pair = [{"model.args.alpha": a, "model.args.keep_rate": k} for a, k in [(0.3, 0.5), (0.9, 0.999)]]
    assert _batched_search.batching_obstacle(pair, [trial_config(config, s) for s in pair]) is None
    batched = run_search(config, tmp_path / "batched", quiet=True, batched="always", dataset=data)
    for t in range(4):
        metrics = json.loads((tmp_path / "batched" / f"trial_{t:03d}" / "metrics.json").read_text())
        assert metrics["batched_search"] == {"trials": 4}
    # The diagonal trials (both values of each argument) against their own runs, each trained
    # alone with its values as plain numbers (the other two trials mix the same values).
    for trial in (batched["trials"][0], batched["trials"][3]):
        assert trial["setting"] in pair
        alone = train_and_evaluate(trial_config(config, trial["setting"]), tmp_path / f"alone_{trial['trial']}",
                                   quiet=True, dataset=data)
        assert trial["best_epoch"] == alone["best_epoch"], trial["setting"]
        for split in ("valid", "test"):
            for key in ("recall@20", "ndcg@20", "recall@10"):
                assert trial[split][key] == pytest.approx(alone[split][key], abs=1e-4), (trial["setting"], split, key)
    # alpha changes the ranking: the trials at 0.3 and 0.9 (same keep rate) do not rank alike.
    assert batched["trials"][0]["valid"] != batched["trials"][2]["valid"]


def test_a_dropout_rate_of_zero_trains_in_the_same_program_as_its_own_run(tmp_path):
    """id_dropout 0, which a Python number leaves out, runs in the program as an all-kept mask:
    the three trials are one program, each with its sequential run's figures (to 1e-6, best epochs
    exactly); a model argument that is not traced still splits the grid into programs."""
    config, data = _traced_grid("fusion_mf", {"embedding_size": 8, "modalities": ["text", "image"]},
                                {"model.args.id_dropout": [0.0, 0.5, 0.9]})
    traced = models.traced_args("fusion_mf")
    assert _batched_search.batch_groups([{"model.args.id_dropout": v} for v in (0.0, 0.5, 0.9)], traced) == [[0, 1, 2]]
    batched = run_search(config, tmp_path / "auto", quiet=True, dataset=data)
    runs = [json.loads((tmp_path / "auto" / f"trial_{t:03d}" / "metrics.json").read_text()) for t in range(3)]
    assert [r.get("batched_search") for r in runs] == [{"trials": 3}] * 3
    sequential = run_search(config, tmp_path / "sequential", quiet=True, batched="never", dataset=data)
    _same_trials(batched, sequential, 1e-6)
    settings = [{"model.args.id_dropout": d, "model.args.embedding_size": e} for d in (0.0, 0.5) for e in (4, 8)]
    assert _batched_search.batch_groups(settings, traced) == [[0, 2], [1, 3]]
    assert _batched_search.program_keys(settings, traced) == ["model.args.embedding_size"]
    assert "model.args.embedding_size" in _batched_search.batching_obstacle(
        settings, [trial_config(config, setting) for setting in settings])


def test_every_trials_traced_values_are_checked_by_its_builder_before_training(tmp_path):
    """The program builds trial 0's model only; a value another trial's builder refuses (a dropout
    rate of 1.5) raises the builder's error before anything trains or is written."""
    config, data = _traced_grid("fusion_mf", {"embedding_size": 8, "modalities": ["text", "image"]},
                                {"model.args.id_dropout": [0.5, 1.5]})
    with pytest.raises(ConfigError, match="id_dropout"):
        run_search(config, tmp_path / "search", quiet=True, batched="always", dataset=data)
    assert not list((tmp_path / "search").glob("trial_*"))


def test_a_finished_batched_search_is_refused_without_resume_and_reused_with_it(tmp_path, dataset, monkeypatch):
    """Running a finished (batched) search again without --resume is refused, as a sequential
    search and `jaxrec train` refuse a folder holding a run, and changes no file; with --resume its
    finished trials are reused as the sequential path reuses them: nothing trains again."""
    from jaxrec.train import _loop

    config = config_from_dict(_raw({"loss_weights.reg": [0.001, 1.0]}, epochs=2, patience=5))
    workdir = tmp_path / "search"
    first = run_search(config, workdir, quiet=True, dataset=dataset)
    for trial in (0, 1):
        metrics = json.loads((workdir / f"trial_{trial:03d}" / "metrics.json").read_text())
        assert metrics["batched_search"] == {"trials": 2}

    def files():
        return {str(p.relative_to(workdir)): (p.read_bytes(), p.stat().st_mtime_ns)
                for p in sorted(workdir.rglob("*")) if p.is_file()}

    before = files()
    for batched in ("auto", "always", "never"):
        with pytest.raises(ConfigError, match=r"^trial 0 \(loss_weights.reg=0.001\): \S+/trial_000 already holds a run "
                                              r"\(checkpoint after epoch 2\); pass --resume to continue it"):
            run_search(config, workdir, quiet=True, batched=batched, dataset=dataset)
    assert files() == before

    def trained(*args, **kwargs):
        raise AssertionError("a finished trial was trained again")

    monkeypatch.setattr(_loop, "train_and_evaluate", trained)
    monkeypatch.setattr(_batched_search, "run_batched_search", trained)
    again = run_search(config, workdir, resume=True, quiet=True, dataset=dataset)
    assert again["trials"] == first["trials"] and again["best"] == first["best"]
    after = files()
    assert {k: v for k, v in after.items() if k.startswith("trial_")} == {
        k: v for k, v in before.items() if k.startswith("trial_")}
    assert json.loads((workdir / "search.json").read_text())["best"] == first["best"]


def test_a_diverged_batched_search_leaves_no_folder(tmp_path, dataset):
    """A batched program that fails (here a diverging trial) before any trial is written leaves
    no search folder behind."""
    from jaxrec.errors import TrainingDivergedError

    config = config_from_dict(_raw({"train.learning_rate": [0.01, 1e30]}, epochs=3, patience=5))
    with pytest.raises(TrainingDivergedError):
        run_search(config, tmp_path / "search", quiet=True, batched="always", dataset=dataset)
    assert not (tmp_path / "search").exists()
