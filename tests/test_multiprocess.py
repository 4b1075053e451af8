"""Multi-process runs: 2 processes x 2 CPU devices on 127.0.0.1 against one process.

Each case launches ``jaxrec train`` twice (process 0 and 1, two fake CPU devices each,
``jax.distributed`` on a free 127.0.0.1 port, gloo collectives) and compares the run with
the same config trained in this test process on 4 devices (``parallel: sharded``) and on 1
device: the same history and metrics within 2e-3. The BPR case is also the kill-and-resume
case (process 1 is killed once the checkpoint after epoch 2 is on disk, process 0 with it,
and both are relaunched with ``--resume``) and the checkpoint case (a checkpoint written
by two processes is read back in this one process, and the run extended here on one device
and on a {data: 1, model: 4} mesh). Every child is killed and reaped when a test ends, passed or not.
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
from jaxrec.train._setup import prepare_experiment

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_TIMEOUT = 240  # seconds for one multi-process run (start-up included) on a loaded 2-core machine
TOLERANCE = 2e-3

BPR = {
    "model": {"name": "bprmf", "args": {"embedding_size": 16}},
    "data": {"synthetic": {"n_users": 120, "n_items": 80, "n_interactions": 2400, "seed": 1}},
    "train": {"epochs": 4, "batch_size": 256, "learning_rate": 0.01, "parallel": "sharded", "sampler": "keyed",
              "checkpoint_every": 1, "checkpoints_to_keep": 8, "seed": 3},
    "eval": {"ks": [10, 20], "batch_size": 16},
}
LIGHTGCN = {
    "model": {"name": "lightgcn", "args": {"embedding_size": 16, "n_layers": 2}},
    "data": {"synthetic": {"n_users": 100, "n_items": 60, "n_interactions": 1800, "seed": 2}},
    "train": {"epochs": 3, "batch_size": 256, "learning_rate": 0.01, "parallel": "sharded", "sampler": "keyed",
              "checkpoint_every": 3, "seed": 4},
    "eval": {"ks": [10, 20], "batch_size": 16},
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Launcher:
    """Starts ``jaxrec train`` processes and guarantees they are gone afterwards."""

    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path
        self.children: list[subprocess.Popen] = []

    def start(self, config: Path, workdir: Path, *, processes: int = 2, devices: int = 2, resume: bool = False):
        port = _free_port()
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu",
                   PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
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


@pytest.fixture
def launcher(tmp_path):
    launch = Launcher(tmp_path)
    try:
        yield launch
    finally:
        launch.kill_all()


def _write(tmp_path: Path, name: str, config: dict) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


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


def test_bpr_two_processes_killed_resumed_match_one_process_and_their_checkpoints_restore_anywhere(
        tmp_path, launcher):
    config = _write(tmp_path, "bpr", BPR)
    multi = tmp_path / "multi"
    # Process 1 dies once the checkpoint after epoch 2 is complete; process 0 goes with it.
    children = launcher.start(config, multi)
    deadline = time.monotonic() + LAUNCH_TIMEOUT
    while not (multi / "checkpoints" / "2" / "meta").exists():
        if time.monotonic() > deadline or any(c.poll() is not None for c in children):
            launcher.kill_all()
            pytest.fail(f"no checkpoint after epoch 2 appeared:\n{launcher.outputs(children)}")
        time.sleep(0.05)
    os.killpg(children[1].pid, signal.SIGKILL)
    children[1].wait(30)
    os.killpg(children[0].pid, signal.SIGKILL)
    children[0].wait(30)
    assert not (multi / "metrics.json").exists(), "the run finished before it could be killed"
    launcher.wait(launcher.start(config, multi, resume=True))
    assert "resuming" in (multi / "log.txt").read_text()
    assert (multi / "log.process1.txt").exists()

    four = tmp_path / "four"
    one = tmp_path / "one"
    _in_process(config, four)
    _in_process(config, one, parallel="none")
    metrics = json.loads((multi / "metrics.json").read_text())
    assert metrics["devices"]["processes"] == 2 and metrics["devices"]["count"] == 4
    _assert_same_run(multi, four)
    _assert_same_run(multi, one)

    # The checkpoint two processes wrote, read in this process, holds the one-device state.
    experiment = prepare_experiment(load_config(config))
    for epoch in (2, 4):
        saved = [Checkpoints(w / "checkpoints", read_only=True) for w in (multi, one)]
        try:
            (state_multi, _), (state_one, _) = (c.restore(experiment.target, epoch) for c in saved)
        finally:
            for c in saved:
                c.close()
        for x, y in zip(jax.tree.leaves(state_multi.params), jax.tree.leaves(state_one.params), strict=True):
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-4)

    # ... and resumes on one device and on a one-process {data: 1, model: 4} mesh (tables split
    # four ways) like the one-device run.
    reference = tmp_path / "reference"
    shutil.copytree(one, reference)
    expected = train_and_evaluate(load_config(config, ["train.epochs=5", "train.parallel=none"]), reference,
                                  resume=True, quiet=True)
    for parallel, mesh in (("none", "null"), ("sharded", "{data: 1, model: 4}")):
        extended = tmp_path / f"extended_{parallel}"
        shutil.copytree(multi, extended)
        result = train_and_evaluate(load_config(config, ["train.epochs=5", f"train.parallel={parallel}",
                                                         f"train.mesh={mesh}"]), extended, resume=True, quiet=True)
        assert result["epochs_run"] == 5
        for key, value in expected["test"].items():
            assert abs(result["test"][key] - value) <= TOLERANCE, (parallel, key, result["test"][key], value)


def test_lightgcn_on_a_two_process_data_model_mesh_matches_four_devices_and_one(tmp_path, launcher):
    # Mesh {data: 2, model: 2} over 2 processes x 2 devices: each process holds half of each
    # table's rows (and feeds half of each batch); the graph model propagates over all rows.
    config = _write(tmp_path, "lightgcn", LIGHTGCN)
    multi_config = _write(tmp_path, "lightgcn_mesh", {**LIGHTGCN, "train": {**LIGHTGCN["train"],
                                                                           "mesh": {"data": 2, "model": 2}}})
    multi = tmp_path / "multi"
    launcher.wait(launcher.start(multi_config, multi))
    four, one = tmp_path / "four", tmp_path / "one"
    _in_process(config, four)
    _in_process(config, one, parallel="none")
    _assert_same_run(multi, four)
    _assert_same_run(multi, one)
    sharding = json.loads((multi / "metrics.json").read_text())["sharding"]
    assert sharding["mesh"] == {"data": 2, "model": 2} and sharding["processes"] == 2
    assert set(sharding["table_bytes_total"]) == {"user_embedding", "item_embedding"}
    row_bytes = 16 * 4  # embedding_size float32: an odd row count pads one row
    for name, total in sharding["table_bytes_total"].items():
        assert total / 2 <= sharding["table_bytes_per_device"][name] <= total / 2 + row_bytes, name
    # One run: process 0 wrote the run files, process 1 only its log.
    assert sorted(p.name for p in multi.iterdir() if p.name.startswith("log")) == ["log.process1.txt", "log.txt"]
    assert "process 1" in (multi / "log.process1.txt").read_text()
