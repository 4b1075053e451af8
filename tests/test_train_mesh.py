"""The (data, model) mesh on 4 fake CPU devices: row-sharded tables train and evaluate exactly
as one device does; per-device table bytes are 1/M; checkpoints restore onto other meshes."""

import json

import jax
import numpy as np
import pytest

from jaxrec import eval as jeval
from jaxrec import models
from jaxrec.data import make_synthetic
from jaxrec.errors import ConfigError
from jaxrec.train import (Checkpoints, EpochSampler, StepRunner, TrainConfig, config_from_dict, evaluate_run,
                          init_state, make_optimizer, make_runner, prepare_experiment, train_and_evaluate)
from jaxrec.train._mesh import MeshStepRunner, TableLayout, check_mesh, make_mesh, mesh_shape
from jaxrec.train._state import abstract_state

MESHES = [(2, 2), (1, 4), (4, 1)]


@pytest.fixture(scope="module", autouse=True)
def four_devices():
    if jax.device_count() < 4:
        pytest.skip("needs 4 devices (tests/conftest.py sets XLA_FLAGS for 4 fake CPU devices)")


# ---- config -------------------------------------------------------------------------------------


@pytest.mark.parametrize("mesh, message", [
    ({"data": 2, "model": 3}, r"data \* model = 6 devices; this run has 4"),
    ({"data": 2, "modle": 2}, "unknown axis 'modle'"),
    ({"model": 3}, "model=3 does not divide the 4 devices"),
])
def test_mesh_shape_errors(mesh, message):
    with pytest.raises(ConfigError, match=message):
        mesh_shape(mesh, 4)


def test_mesh_shape_defaults():
    assert mesh_shape(None, 4) == (4, 1)
    assert mesh_shape({"model": 2}, 4) == (2, 2)
    assert mesh_shape({"data": 1, "model": 4}, 4) == (1, 4)


def test_mesh_config_errors():
    base = {"model": {"name": "bprmf"}, "data": {"synthetic": {}}}
    with pytest.raises(ConfigError, match="train.mesh. needs train.parallel: sharded"):
        config_from_dict({**base, "train": {"mesh": {"data": 2, "model": 2}}})
    with pytest.raises(ConfigError, match="'train.mesh.model' must be > 0"):
        config_from_dict({**base, "train": {"parallel": "sharded", "mesh": {"data": 4, "model": 0}}})
    with pytest.raises(ConfigError, match="train.mesh.data' expects int"):
        config_from_dict({**base, "train": {"parallel": "sharded", "mesh": {"data": "two"}}})
    config = config_from_dict({**base, "train": {"parallel": "sharded", "mesh": {"data": 2, "model": 2},
                                                 "batch_size": 66}})
    assert check_mesh(config.train) == (2, 2)  # 66 divides over data = 2, not over 4 devices
    config.train.batch_size = 67
    with pytest.raises(ConfigError, match="batch_size 67 does not divide over the mesh's data axis of 2"):
        check_mesh(config.train)


# ---- the table rule and padding -----------------------------------------------------------------


def _setup(model, n_users=62, n_items=45, batch=32, init=True, **args):
    dataset = make_synthetic(n_users, n_items, n_interactions=700, seed=1)
    built = models.build(model, dataset, embedding_size=8, **args)
    sampler = EpochSampler(dataset, batch_size=batch, n_negatives=2, seed=0)
    tx = make_optimizer(TrainConfig(learning_rate=0.05), sampler.steps_per_epoch)
    target = abstract_state(built.module, built.ctx, sampler.example_batch(), tx, 0)
    if init:
        state = jax.device_get(init_state(built.module, built.ctx, sampler.example_batch(), tx, seed=0))
    else:  # random values of the state's shapes (the layout only reads shapes)
        rng = np.random.default_rng(0)
        state = jax.tree.map(lambda leaf: rng.normal(size=leaf.shape).astype(leaf.dtype), target)
    return dataset, built, sampler, tx, target, state


def test_table_layout_finds_tables_by_shape_and_pads():
    dataset, built, _, _, target, state = _setup("vbpr", init=False)
    layout = TableLayout(target, (dataset.n_users, dataset.n_items), 4)
    tables = layout.tables()
    # VBPR's user/item tables and item biases, and Adam's two moments of each; never step/rng.
    params = {k: v for k, v in tables.items() if k.startswith("params")}
    assert params == {"params['beta_item']": 45, "params['gamma_item']": 45, "params['gamma_user']": 62,
                      "params['theta_user']": 62}
    assert sum(k.startswith("opt_state") for k in tables) == 2 * len(params)
    assert not any(k in ("step", "rng") for k in tables)
    padded = layout.pad(state)
    assert padded.params["gamma_user"].shape == (64, 8) and padded.params["beta_item"].shape == (48,)
    assert not np.any(padded.params["gamma_user"][62:])  # zero rows
    for a, b in zip(jax.tree.leaves(layout.unpad(padded)), jax.tree.leaves(state)):
        np.testing.assert_array_equal(a, b)


# ---- training steps: exact against one device ---------------------------------------------------


def _run_steps(setup, mesh, steps=3):
    dataset, built, sampler, tx, target, state = setup
    weights = {"bpr": 1.0, "reg": 0.5}
    batch = sampler.example_batch()["users"].shape[0]
    if mesh is None:
        runner = StepRunner(built.module, tx, weights, parallel="none", batch_size=batch)
    else:
        runner = MeshStepRunner(built.module, tx, weights, target=target, n_users=dataset.n_users,
                                n_items=dataset.n_items, data=mesh[0], model=mesh[1], batch_size=batch)
    placed, ctx = runner.put_state(state), runner.put_ctx(built.ctx)
    batches = {k: v[:steps] for k, v in sampler.batches(0).items()}
    for j in range(steps):  # one call per step, blocked on each
        placed, _ = runner.run(placed, ctx, runner.put_batches({k: v[j:j + 1] for k, v in batches.items()}))
    return runner, placed


def test_mesh_steps_match_one_device():
    setup = _setup("bprmf")  # 62 users, 45 items: padded to multiples of M
    _, single = _run_steps(setup, None)
    single = jax.device_get(single)
    assert not np.allclose(single.params["user_embedding"], setup[5].params["user_embedding"])  # it trained
    for mesh in MESHES:
        runner, placed = _run_steps(setup, mesh)
        table = placed.params["item_embedding"]
        # Row-sharded over model: each device holds ceil(45 / M) rows; the padding stays zero.
        rows = -(-45 // mesh[1])
        assert {s.data.shape for s in table.addressable_shards} == {(rows, 8)}
        assert not np.any(np.asarray(table)[45:])
        mu = placed.opt_state[0].mu["item_embedding"]
        assert {s.data.shape for s in mu.addressable_shards} == {(rows, 8)}
        state = jax.device_get(runner.get_state(placed))
        for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(single)):
            # Float tolerance: the sums are split differently, and Adam divides by small moments.
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=5e-5)
    # A fresh state built directly into the sharded layout holds the one-device initial values.
    dataset, built, sampler, tx, _, initial = setup
    fresh = runner.init_state(built.module, built.ctx, sampler.example_batch(), tx, 0)
    assert fresh.params["user_embedding"].sharding.spec == jax.sharding.PartitionSpec("model", None)
    assert runner.put_state(fresh) is fresh  # already placed
    for a, b in zip(jax.tree.leaves(jax.device_get(runner.get_state(fresh))), jax.tree.leaves(initial)):
        np.testing.assert_array_equal(a, b)


# ---- evaluation: the same ranking -----------------------------------------------------------------


def test_sharded_evaluation_matches_one_device():
    rng = np.random.default_rng(0)
    n_users, n_items, d = 37, 23, 4
    user_emb = rng.integers(-2, 3, (n_users, d)).astype(np.float32)  # small integers: many tied scores
    item_emb = rng.integers(-2, 3, (n_items, d)).astype(np.float32)
    train = np.stack([rng.integers(0, n_users, 200), rng.integers(0, n_items, 200)], 1)
    test = np.stack([rng.integers(0, n_users, 80), rng.integers(0, n_items, 80)], 1)
    kwargs = {"ks": (1, 5, 10, 30), "metrics": ("recall", "ndcg", "precision", "map", "mrr", "recall2")}
    for candidates in (np.arange(0, n_items, 2),):
        split = jeval.prepare_split(num_items=n_items, train_pairs=train, target_pairs=test, batch_size=5,
                                    candidate_items=candidates)
        expected = jeval.evaluate_prepared(split, user_emb, item_emb, **kwargs)
        for shape in MESHES:
            mesh = make_mesh(*shape)
            got = jeval.evaluate_prepared_sharded(split, user_emb, item_emb, mesh=mesh, **kwargs)
            assert got.keys() == expected.keys()
            for key in expected:
                assert got[key] == expected[key], (shape, key)  # bit-identical


# ---- whole runs -----------------------------------------------------------------------------------


def _raw(model, mesh, epochs=2):
    return {"data": {"synthetic": {}}, "model": {"name": model, "args": {"embedding_size": 8}},
            "train": {"epochs": epochs, "batch_size": 64, "learning_rate": 0.05, "checkpoint_every": 1,
                      "valid_metric": "recall@10", "parallel": "none" if mesh is None else "sharded",
                      "mesh": None if mesh is None else {"data": mesh[0], "model": mesh[1]}},
            "eval": {"ks": [10], "metrics": ["recall", "ndcg"]}}


def _train(tmp_path, model, mesh, dataset, epochs=2, **kwargs):
    return train_and_evaluate(config_from_dict(_raw(model, mesh, epochs)), tmp_path / f"{model}-{mesh}",
                              dataset=dataset, quiet=True, **kwargs)


def _valid_history(tmp_path, model, mesh):
    lines = (tmp_path / f"{model}-{mesh}" / "history.jsonl").read_text().splitlines()
    return [json.loads(line)["valid"]["recall@10"] for line in lines]


def _assert_close(run, reference, splits=("valid", "test")):
    for split in splits:
        assert run[split].keys() == reference[split].keys()
        for key, value in reference[split].items():
            assert run[split][key] == pytest.approx(value, abs=2e-3), (split, key)


def _table_bytes(tmp_path, model, mesh):
    sharding = json.loads((tmp_path / f"{model}-{mesh}" / "metrics.json").read_text())["sharding"]
    assert sharding["mesh"] == {"data": mesh[0], "model": mesh[1]} and sharding["processes"] == 1
    return sharding["table_bytes_per_device"], sharding["table_bytes_total"]


def test_lightgcn_on_meshes_matches_one_device(tmp_path):
    # A graph model: every step propagates over the whole graph, so with M > 1 the compiler
    # gathers the sharded tables for it; the results must not change.
    dataset = make_synthetic(64, 48, n_interactions=900, seed=1)  # rows divide by 4: no padding
    single = _train(tmp_path, "lightgcn", None, dataset)
    assert single["sharding"]["mesh"] == {"data": 1, "model": 1}
    total = {"user_embedding": 64 * 8 * 4, "item_embedding": 48 * 8 * 4}
    for mesh in MESHES:
        _assert_close(_train(tmp_path, "lightgcn", mesh, dataset), single)
        per_device, totals = _table_bytes(tmp_path, "lightgcn", mesh)
        assert totals == total
        assert per_device == {k: v // mesh[1] for k, v in total.items()}  # 1/M of each table


def test_test_every_epoch_on_a_mesh(tmp_path):
    # The mesh runner ranks each split where the table shards live; with eval.test_every_epoch every
    # row also holds test, and the best epoch's row has the test metrics the run reports.
    dataset = make_synthetic(64, 48, n_interactions=900, seed=1)
    raw = _raw("bprmf", (2, 2), epochs=3)
    raw["eval"]["test_every_epoch"] = True
    result = train_and_evaluate(config_from_dict(raw), tmp_path / "run", dataset=dataset, quiet=True)
    rows = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2, 3] and all(set(row["test"]) == set(result["test"]) for row in rows)
    assert rows[result["best_epoch"] - 1]["test"] == result["test"]


def test_bpr_on_meshes_and_checkpoints_across_meshes(tmp_path):
    dataset = make_synthetic(62, 45, n_interactions=900, seed=1)  # tables padded to a multiple of M
    single = _train(tmp_path, "bprmf", None, dataset, epochs=3)
    assert all(single["sharding"]["table_bytes_per_device"][k] == v
               for k, v in single["sharding"]["table_bytes_total"].items())

    wide = _train(tmp_path, "bprmf", (1, 4), dataset, epochs=3)
    _assert_close(wide, single)
    per_device, totals = _table_bytes(tmp_path, "bprmf", (1, 4))
    assert totals == {"user_embedding": 62 * 8 * 4, "item_embedding": 45 * 8 * 4}
    assert per_device == {"user_embedding": 16 * 8 * 4, "item_embedding": 12 * 8 * 4}  # ceil(rows / 4) rows

    # Two epochs on 2 x 2 (checkpointed after each), then restored elsewhere.
    first = _train(tmp_path, "bprmf", (2, 2), dataset, epochs=2)
    np.testing.assert_allclose(_valid_history(tmp_path, "bprmf", (2, 2)),
                               _valid_history(tmp_path, "bprmf", None)[:2], atol=2e-3)
    # Onto one device (jaxrec evaluate's path): the checkpoint holds the unpadded state.
    reloaded = evaluate_run(tmp_path / "bprmf-(2, 2)", "test", dataset=dataset)
    assert reloaded["metrics"] == first["test"]  # the sharded evaluation is bit-identical
    # The checkpoint holds the padded 2 x 2 state as each device held it (45 item rows stored as
    # 46) with the logical shapes beside it. Orbax reads a 2 x 2 target's rows straight into
    # place, both tables split over M = 2, padding rows zero; and the 45-row table onto one device.
    experiment = prepare_experiment(config_from_dict(_raw("bprmf", (2, 2))), dataset)
    runner = make_runner(experiment)
    checkpoints = Checkpoints(tmp_path / "bprmf-(2, 2)" / "checkpoints", read_only=True)
    try:
        sharded, _ = checkpoints.restore(experiment.target, 2, read_as=runner.restore_target(experiment.target))
        host, _ = checkpoints.restore(experiment.target, 2)
    finally:
        checkpoints.close()
    users, items = sharded.params["user_embedding"], sharded.params["item_embedding"]
    assert users.sharding.spec == jax.sharding.PartitionSpec("model", None)
    assert {s.data.shape for s in users.addressable_shards} == {(31, 8)}
    assert {s.data.shape for s in items.addressable_shards} == {(23, 8)}
    assert host.params["item_embedding"].shape == (45, 8)
    np.testing.assert_array_equal(np.asarray(items)[45:], 0.0)
    for a, b in zip(jax.tree.leaves(runner.layout.unpad(sharded)), jax.tree.leaves(host)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert runner.put_state(sharded) is sharded  # already in place
    # Onto a 4 x 1 mesh, resumed for a third epoch: the three-epoch one-device run.
    config = config_from_dict(_raw("bprmf", (4, 1), epochs=3))
    resumed = train_and_evaluate(config, tmp_path / "bprmf-(2, 2)", dataset=dataset, quiet=True, resume=True)
    assert resumed["sharding"]["mesh"] == {"data": 4, "model": 1}
    _assert_close(resumed, single)


def test_mesh_runner_gives_a_model_each_steps_place_in_its_epoch():
    # LATTICE's learned_graph: mmrec reads ctx["epoch_step"] (0 at an epoch's first step): only
    # that step recomputes the item graph with gradient, and the epoch-gated optimizer leaves
    # the graph's parameters alone in the epoch's other steps. The mesh runner must tell the
    # step where it is in its epoch exactly as the one-device runner does (it once left the
    # builder's -1 there: every step an epoch's first, the gated parameters moved at every step).
    from jaxrec.train._setup import epoch_context

    dataset = make_synthetic(62, 45, n_interactions=700, seed=1)
    raw = {"data": {"synthetic": {}},
           "model": {"name": "lattice", "args": {"embedding_size": 8, "feat_embed_dim": 8, "knn_k": 3,
                                                 "learned_graph": "mmrec", "graph_cache": "none"}},
           "train": {"batch_size": 64, "learning_rate": 0.05}}
    steps = 3

    def run(mesh, steps=steps):
        train = {"parallel": "none"} if mesh is None else {"parallel": "sharded",
                                                           "mesh": {"data": mesh[0], "model": mesh[1]}}
        experiment = prepare_experiment(config_from_dict({**raw, "train": {**raw["train"], **train}}), dataset)
        assert experiment.steps_per_epoch > steps  # steps 1 and 2 are not an epoch's first
        runner = make_runner(experiment)
        state = runner.put_state(jax.device_get(init_state(
            experiment.module, experiment.built.ctx, experiment.sampler.example_batch(), experiment.tx, 0)))
        ctx = runner.put_ctx(epoch_context(experiment.built, jax.device_get(runner.get_state(state).params), 0, 0))
        batches = experiment.sampler.batches(0)
        for j in range(steps):  # one call per step, blocked on each
            state, _ = runner.run(state, ctx, runner.put_batches({k: v[j:j + 1] for k, v in batches.items()}))
        return experiment, jax.device_get(runner.get_state(state))

    experiment, single = run(None)
    _, first = run(None, steps=1)
    initial = jax.device_get(init_state(experiment.module, experiment.built.ctx,
                                        experiment.sampler.example_batch(), experiment.tx, 0))
    gated = jax.tree.leaves(experiment.built.epoch_start_params(single.params))
    assert any(gated)  # the item graph's parameters
    _, sharded = run((2, 2))
    for flag, new, one, old, mesh in zip(gated, *(jax.tree.leaves(t.params) for t in (single, first, initial, sharded)),
                                         strict=True):
        if flag:  # moved in the epoch's first step only, on one device and on the mesh
            assert not np.array_equal(one, old)
            np.testing.assert_array_equal(new, one)
            np.testing.assert_allclose(mesh, one, rtol=1e-4, atol=5e-5)
    for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(single), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=5e-5)
