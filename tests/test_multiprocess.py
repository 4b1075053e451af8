"""Multi-process runs: 2 processes x 2 CPU devices on 127.0.0.1 against one process.

Three launches of ``jaxrec train`` as two processes (two fake CPU devices each,
``jax.distributed`` on a free 127.0.0.1 port, gloo collectives), each compared with the same
config trained in this test process on 4 devices (``parallel: sharded``) and on 1 device: the
same history and metrics within 2e-3. The one-process reference runs are made once per
module (fixtures) and shared by the cases that read them.

- BPR on a 2-process ``{data: 2, model: 2}`` mesh is the kill-and-resume case: process 1 is
  killed once the checkpoint after epoch 1 is on disk, process 0 with it, and both are
  relaunched with ``--resume`` (two launches). Its checkpoints are the cross-process ones:
  each process wrote its own shards of the row-sharded tables; read back in this one process
  they hold the one-device run's state, onto a ``{data: 1, model: 4}`` mesh each device reads
  a quarter of the rows, and the run resumes on that mesh like the one-device run.
- LightGCN (a graph model: propagation over all rows) on a 2-process ``{data: 2, model: 2}``
  mesh: the metrics, the per-device table bytes in ``metrics.json``, the per-process logs, and
  the best state kept between checkpoints (a copy on the mesh, saved later by both processes).
- BPR on a prepared (TFDS) copy of the data: each of the two processes reads only its half of
  the train records (``data.per_process_read: auto``); the same metrics and history as one
  process reading them all, and the counts in ``metrics.json`` and both logs.

Every child is killed and reaped when a fixture ends, passed or not.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
import yaml

from jaxrec.train import load_config, train_and_evaluate
from jaxrec.train._checkpoint import Checkpoints
from jaxrec.train._mesh import make_runner
from jaxrec.train._setup import prepare_experiment

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_TIMEOUT = 240  # seconds for one multi-process run (start-up included) on a loaded 2-core machine
TOLERANCE = 2e-3

# One small synthetic dataset for both models; 61 users and 41 items are padded to a
# multiple of M on a mesh (62 and 42 rows for M = 2, 64 and 44 for M = 4).
DATA = {"synthetic": {"n_users": 61, "n_items": 41, "n_interactions": 1200, "seed": 1}}
MESH = {"data": 2, "model": 2}
BPR = {
    "model": {"name": "bprmf", "args": {"embedding_size": 16}},
    "data": DATA,
    "train": {"epochs": 3, "batch_size": 128, "learning_rate": 0.01, "parallel": "sharded", "sampler": "keyed",
              "checkpoint_every": 1, "checkpoints_to_keep": 8, "seed": 3},
    "eval": {"ks": [10, 20], "batch_size": 16},
}
LIGHTGCN = {
    "model": {"name": "lightgcn", "args": {"embedding_size": 16, "n_layers": 2}},
    "data": DATA,
    "train": {"epochs": 2, "batch_size": 128, "learning_rate": 0.01, "parallel": "sharded", "sampler": "keyed",
              "checkpoint_every": 2, "seed": 4},
    "eval": {"ks": [10, 20], "batch_size": 16},
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Launcher:
    """Starts ``jaxrec train`` processes and guarantees they are gone afterwards."""

    def __init__(self, tmp_path: Path, compilation_cache: Path):
        self.tmp_path = tmp_path
        self.compilation_cache = compilation_cache
        self.children: list[subprocess.Popen] = []

    def start(self, config: Path, workdir: Path, *, processes: int = 2, devices: int = 2, resume: bool = False):
        port = _free_port()
        # The children share JAX's persistent compilation cache: a relaunch (--resume) and the
        # second process load the programs the first compiled instead of compiling them again.
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu",
                   PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                   JAX_COMPILATION_CACHE_DIR=str(self.compilation_cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                   JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")
        started = []
        for index in range(processes):
            command = [sys.executable, "-m", "jaxrec.cli.main", "train", str(config), "--workdir", str(workdir),
                       "--quiet", "--coordinator", f"127.0.0.1:{port}", "--num-processes", str(processes),
                       "--process-id", str(index)] + (["--resume"] if resume else [])
            log = open(self.tmp_path / f"{workdir.name}.{len(self.children)}.out", "w")  # noqa: SIM115
            child = subprocess.Popen(command, cwd=self.tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
            child.log_path = log.name
            log.close()
            self.children.append(child)
            started.append(child)
        return started

    def wait(self, children, timeout: float = LAUNCH_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        for child in children:
            try:
                child.wait(max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.kill_all()
                pytest.fail(f"a multi-process run took over {timeout} s; outputs:\n{self.outputs(children)}")
        if any(child.returncode != 0 for child in children):
            pytest.fail(f"a process failed (return codes {[c.returncode for c in children]}):\n"
                        f"{self.outputs(children)}")

    @staticmethod
    def outputs(children) -> str:
        return "\n".join(f"--- {c.args[-1] if '--resume' not in c.args else 'resume'} pid {c.pid}:\n"
                         + Path(c.log_path).read_text()[-3000:] for c in children)

    def kill_all(self) -> None:
        for child in self.children:
            if child.poll() is None:
                try:
                    os.killpg(child.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for child in self.children:
            try:
                child.wait(30)
            except subprocess.TimeoutExpired:
                pass


def _write(directory: Path, name: str, config: dict) -> Path:
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _with_mesh(config: dict) -> dict:
    return {**config, "train": {**config["train"], "mesh": MESH}}


def _in_process(config_path: Path, workdir: Path, **overrides) -> dict:
    sets = [f"train.{k}={v}" for k, v in overrides.items()]
    return train_and_evaluate(load_config(config_path, sets), workdir, quiet=True)


def _history(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "history.jsonl").read_text().splitlines()]


def _assert_same_run(a: Path, b: Path) -> None:
    ma, mb = (json.loads((w / "metrics.json").read_text()) for w in (a, b))
    assert ma["best_epoch"] == mb["best_epoch"] and ma["epochs_run"] == mb["epochs_run"]
    for split in ("valid", "test"):
        assert ma[split].keys() == mb[split].keys()
        for key in ma[split]:
            assert abs(ma[split][key] - mb[split][key]) <= TOLERANCE, (split, key, ma[split][key], mb[split][key])
    for ra, rb in zip(_history(a), _history(b), strict=True):
        assert abs(ra["loss"] - rb["loss"]) <= TOLERANCE * max(1.0, abs(rb["loss"])), (ra, rb)


def _references(directory: Path, config: Path) -> dict[str, Path]:
    """The config trained here on 4 devices (a {data: 4} mesh) and on 1 device."""
    runs = {"four": directory / "four", "one": directory / "one"}
    _in_process(config, runs["four"])
    _in_process(config, runs["one"], parallel="none")
    return runs


@pytest.fixture(scope="module")
def bpr(tmp_path_factory):
    """BPR: two processes on a {data: 2, model: 2} mesh, killed after epoch 1 and resumed; and
    the one-process references."""
    directory = tmp_path_factory.mktemp("bpr")
    config, multi_config = _write(directory, "bpr", BPR), _write(directory, "bpr_mesh", _with_mesh(BPR))
    multi = directory / "multi"
    launch = Launcher(directory, tmp_path_factory.getbasetemp() / "jax-compilation-cache")
    try:
        # Process 1 dies once the checkpoint after epoch 1 is complete; process 0 (blocked on
        # the next step's collectives without it) goes with it.
        children = launch.start(multi_config, multi)
        deadline = time.monotonic() + LAUNCH_TIMEOUT
        while not (multi / "checkpoints" / "1" / "meta").exists():
            if time.monotonic() > deadline or any(c.poll() is not None for c in children):
                launch.kill_all()
                pytest.fail(f"no checkpoint after epoch 1 appeared:\n{launch.outputs(children)}")
            time.sleep(0.02)
        os.killpg(children[1].pid, signal.SIGKILL)
        children[1].wait(30)
        os.killpg(children[0].pid, signal.SIGKILL)
        children[0].wait(30)
        killed_early = not (multi / "metrics.json").exists()
        launch.wait(launch.start(multi_config, multi, resume=True))
    finally:
        launch.kill_all()
    return {"config": config, "multi": multi, "killed_early": killed_early, **_references(directory, config)}


def _run_two_processes(directory, tmp_path_factory, config, workdir):
    """One two-process run of ``config`` into ``workdir``, its processes reaped whatever happens."""
    launch = Launcher(directory, tmp_path_factory.getbasetemp() / "jax-compilation-cache")
    try:
        launch.wait(launch.start(config, workdir))
    finally:
        launch.kill_all()


@pytest.fixture(scope="module")
def lightgcn(tmp_path_factory):
    """LightGCN: two processes on a {data: 2, model: 2} mesh; and the one-process references."""
    directory = tmp_path_factory.mktemp("lightgcn")
    config, multi_config = _write(directory, "lightgcn", LIGHTGCN), _write(directory, "lgcn_mesh", _with_mesh(LIGHTGCN))
    multi = directory / "multi"
    _run_two_processes(directory, tmp_path_factory, multi_config, multi)
    return {"config": config, "multi": multi, **_references(directory, config)}


def test_bpr_killed_and_resumed_on_two_processes_matches_four_devices_and_one(bpr):
    multi = bpr["multi"]
    assert bpr["killed_early"], "the run finished before it could be killed"
    assert "resuming" in (multi / "log.txt").read_text()
    assert (multi / "log.process1.txt").exists()
    metrics = json.loads((multi / "metrics.json").read_text())
    assert metrics["devices"]["processes"] == 2 and metrics["devices"]["count"] == 4
    assert metrics["sharding"]["mesh"] == MESH
    _assert_same_run(multi, bpr["four"])
    _assert_same_run(multi, bpr["one"])


def test_bpr_checkpoints_of_two_processes_hold_their_shards_and_restore_into_one_process_and_another_mesh(bpr):
    multi, one = bpr["multi"], bpr["one"]
    # Each process wrote the shards its devices held (Orbax's per-process OCDBT files).
    for epoch in (1, 3):
        written = {p.name for p in (multi / "checkpoints" / str(epoch) / "state").iterdir()}
        assert {"ocdbt.process_0", "ocdbt.process_1"} <= written, written
    experiment = prepare_experiment(load_config(bpr["config"]))
    wide = prepare_experiment(load_config(bpr["config"], ["train.mesh={data: 1, model: 4}"]))
    runner = make_runner(wide)
    saved = [Checkpoints(w / "checkpoints", read_only=True) for w in (multi, one)]
    try:
        for epoch in (1, 3):
            # In this process on one device: the one-device run's state (padding rows dropped).
            (state_multi, _), (state_one, _) = (c.restore(experiment.target, epoch) for c in saved)
            for x, y in zip(jax.tree.leaves(state_multi), jax.tree.leaves(state_one), strict=True):
                assert x.shape == y.shape
                np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-4)
            # Onto {data: 1, model: 4}: every device reads a quarter of each table's rows.
            placed, _ = saved[0].restore(experiment.target, epoch, read_as=runner.restore_target(experiment.target))
            for name, rows in (("user_embedding", 64), ("item_embedding", 44)):
                leaf = placed.params[name]
                assert {s.data.shape for s in leaf.addressable_shards} == {(rows // 4, 16)}, name
                assert len(leaf.addressable_shards) == 4
            for x, y in zip(jax.tree.leaves(runner.layout.unpad(placed)), jax.tree.leaves(state_one), strict=True):
                np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-4)
    finally:
        for c in saved:
            c.close()

    # The two-process run, extended by an epoch in this process on the {data: 1, model: 4}
    # mesh, continues as the one-device run extended by an epoch.
    reference, extended = multi.parent / "one_extended", multi.parent / "multi_extended"
    shutil.copytree(one, reference)
    shutil.copytree(multi, extended)
    expected = train_and_evaluate(load_config(bpr["config"], ["train.epochs=4", "train.parallel=none"]), reference,
                                  resume=True, quiet=True)
    result = train_and_evaluate(load_config(bpr["config"], ["train.epochs=4", "train.mesh={data: 1, model: 4}"]),
                                extended, resume=True, quiet=True)
    assert result["epochs_run"] == 4 and result["sharding"]["mesh"] == {"data": 1, "model": 4}
    for key, value in expected["test"].items():
        assert abs(result["test"][key] - value) <= TOLERANCE, (key, result["test"][key], value)


def test_lightgcn_on_a_two_process_data_model_mesh_matches_four_devices_and_one(lightgcn):
    # Mesh {data: 2, model: 2} over 2 processes x 2 devices: each process holds half of each
    # table's rows (and feeds half of each batch); the graph model propagates over all rows.
    multi = lightgcn["multi"]
    _assert_same_run(multi, lightgcn["four"])
    _assert_same_run(multi, lightgcn["one"])
    sharding = json.loads((multi / "metrics.json").read_text())["sharding"]
    assert sharding["mesh"] == MESH and sharding["processes"] == 2
    assert set(sharding["table_bytes_total"]) == {"user_embedding", "item_embedding"}
    row_bytes = 16 * 4  # embedding_size float32: an odd row count pads one row
    for name, total in sharding["table_bytes_total"].items():
        assert total / 2 <= sharding["table_bytes_per_device"][name] <= total / 2 + row_bytes, name
    # Epoch 1 (the best so far, not a checkpoint epoch) was kept as a copy on the mesh and
    # written, by both processes, before the checkpoint of epoch 2: it holds the one-device state.
    experiment = prepare_experiment(load_config(lightgcn["config"]))
    saved = [Checkpoints(w / "checkpoints", read_only=True) for w in (multi, lightgcn["one"])]
    try:
        assert [c.epochs() for c in saved] == [[1, 2], [1, 2]]
        (state_multi, _), (state_one, _) = (c.restore(experiment.target, 1) for c in saved)
    finally:
        for c in saved:
            c.close()
    for x, y in zip(jax.tree.leaves(state_multi), jax.tree.leaves(state_one), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-4)
    # One run: process 0 wrote the run files, process 1 only its log.
    assert sorted(p.name for p in multi.iterdir() if p.name.startswith("log")) == ["log.process1.txt", "log.txt"]
    assert "process 1" in (multi / "log.process1.txt").read_text()


@pytest.fixture(scope="module")
def per_process(tmp_path_factory):
    """BPR on a prepared (TFDS) copy of DATA: two processes, each reading half of the train
    records (``data.per_process_read: auto``), against one process reading all of them."""
    from jaxrec.data import make_synthetic, prepare_tfds

    directory = tmp_path_factory.mktemp("per_process")
    dataset = make_synthetic(**DATA["synthetic"])
    prepare_tfds(dataset, directory / "data", name="synthetic")
    config = {**BPR, "data": {"path": str(directory / "data" / "synthetic")},
              "train": {**BPR["train"], "epochs": 2, "checkpoint_every": 2}}
    path, multi_path = _write(directory, "prepared", config), _write(directory, "prepared_mesh", _with_mesh(config))
    multi = directory / "multi"
    _run_two_processes(directory, tmp_path_factory, multi_path, multi)
    one = directory / "one"
    _in_process(path, one, parallel="none")
    return {"multi": multi, "one": one, "n_train": len(dataset.split_pairs("train"))}


def test_two_processes_reading_half_the_train_records_each_match_one_process_reading_all(per_process):
    multi, one, n_train = per_process["multi"], per_process["one"], per_process["n_train"]
    _assert_same_run(multi, one)
    read = json.loads((multi / "metrics.json").read_text())["data_read"]
    # Contiguous shards [n i // 2, n (i + 1) // 2): half each, every record read once.
    assert read == {"per_process_read": True, "train_records": n_train,
                    "train_records_read": [n_train // 2, n_train - n_train // 2]}
    # One process does not read per process under `auto`.
    assert "data_read" not in json.loads((one / "metrics.json").read_text())
    for log in ("log.txt", "log.process1.txt"):
        assert f"train records read per process: [{n_train // 2}, {n_train - n_train // 2}]" in (multi / log).read_text()
