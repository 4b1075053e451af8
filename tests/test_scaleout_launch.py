"""Starting a multi-process run that cannot start, or whose processes disagree: every process
stops with a one-line error naming the cause, in bounded time.

JAX's own start-up aborts each process (SIGABRT, a C++ stack trace) when a process never
joins, when two processes give the same id or another ``--num-processes``; and a process that
fails a check of its own before the run's first collective left the others waiting in that
collective until JAX's shutdown barrier gave up (five minutes) and aborted them all.

Processes driving different numbers of devices failed deep in a run with a raw reshape
error; and SIGTERM did not stop a process of a run (JAX's preemption service caught it).

The handshake on the coordinator's port is tested here with threads standing in for the
processes (plain sockets, no JAX); the whole path runs as ``jaxrec train`` children on
127.0.0.1, each reaped whatever happens.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from jaxrec.errors import ConfigError
from jaxrec.train._distributed import _handshake

ROOT = Path(__file__).resolve().parents[1]
CHILD_TIMEOUT = 180  # seconds for a child that should stop within a few seconds of its timeout


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _meet(port: int, ids: list[int], num_processes: list[int], timeout: float = 2.0) -> list:
    """Run ``_handshake`` for each ``(id, count)`` in its own thread (process 0 first);
    each thread's result: None, or the ConfigError it raised."""
    results: list = [None] * len(ids)

    def one(slot: int) -> None:
        try:
            _handshake("127.0.0.1", port, ids[slot], num_processes[slot], timeout)
        except ConfigError as error:
            results[slot] = error

    threads = [threading.Thread(target=one, args=(slot,), daemon=True) for slot in range(len(ids))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
        assert not thread.is_alive(), "a handshake did not return"
    return results


def test_processes_that_all_join_start():
    assert _meet(_free_port(), [0, 2, 1], [3, 3, 3]) == [None, None, None]


def test_a_process_that_never_joins_is_named_by_every_process():
    results = _meet(_free_port(), [0, 1], [3, 3])
    assert "processes [2] of --num-processes 3 did not join within 2 s (joined: [0, 1])" in str(results[0])
    assert isinstance(results[1], ConfigError)  # told by process 0, or its own wait ended first
    assert "--num-processes 3" in str(results[1])


def test_an_id_given_twice_is_refused():
    # Process 2 never comes, so process 0 listens for the whole timeout and both 1s reach it.
    results = _meet(_free_port(), [0, 1, 1], [3, 3, 3])
    taken = [r for r in results[1:] if "--process-id 1 is already taken by another process" in str(r)]
    assert len(taken) == 1
    assert "processes [2] of --num-processes 3 did not join" in str(results[0])


def test_another_process_count_stops_both():
    results = _meet(_free_port(), [0, 1], [2, 3])
    for result in results:
        assert "process 1 was started with --num-processes 3, process 0 with --num-processes 2" in str(result)


def test_a_port_that_is_not_a_jaxrec_coordinator_is_said_so():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        accepted = []

        def close_at_once():
            conn, _ = server.accept()
            accepted.append(conn)
            conn.close()

        thread = threading.Thread(target=close_at_once, daemon=True)
        thread.start()
        with pytest.raises(ConfigError, match="is not a jaxrec coordinator"):
            _handshake("127.0.0.1", port, 1, 2, 10)
        thread.join(10)


# ---- as `jaxrec train` processes ---------------------------------------------------------------


def _env(devices: int = 2) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "OMPI_", "PMI", "KUBERNETES_"))}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return env


def _launch(tmp_path: Path, config: Path, runs: list[tuple], timeout: int) -> list[tuple]:
    """Start ``jaxrec train`` once per ``(process_id, num_processes, extra args[, devices])`` on
    one free 127.0.0.1 port; ``(returncode, stderr)`` of each, every child reaped."""
    port = _free_port()
    children = []
    try:
        for process_id, count, extra, *devices in runs:
            command = [sys.executable, "-m", "jaxrec.cli.main", "train", str(config), "--workdir",
                       str(tmp_path / "run"), "--quiet", "--coordinator", f"127.0.0.1:{port}", "--num-processes",
                       str(count), "--process-id", str(process_id), "--distributed-timeout", str(timeout), *extra]
            # stderr to a file, not a pipe: a child blocked on a full pipe would stall the others
            with open(tmp_path / f"stderr.{len(children)}", "w") as err:  # noqa: PTH123
                children.append(subprocess.Popen(command, env=_env(*devices), cwd=tmp_path, stdout=subprocess.DEVNULL,
                                                 stderr=err, start_new_session=True))
        out = []
        for index, child in enumerate(children):
            try:
                child.wait(CHILD_TIMEOUT)
            except subprocess.TimeoutExpired:
                pytest.fail(f"a process did not stop within {CHILD_TIMEOUT} s")
            out.append((child.returncode, (tmp_path / f"stderr.{index}").read_text()))
        return out
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
            child.wait(30)


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("jaxrec: error:")]


@pytest.fixture
def config(tmp_path) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"name": "bprmf", "args": {"embedding_size": 8}},
        "data": {"synthetic": {"n_users": 40, "n_items": 60, "n_interactions": 400, "seed": 1}},
        "train": {"parallel": "sharded", "epochs": 1, "batch_size": 32, "mesh": {"data": 2, "model": 2}}}))
    return path


def test_two_of_three_processes_stop_with_one_line_naming_the_missing_one(tmp_path, config):
    results = _launch(tmp_path, config, [(0, 3, []), (1, 3, [])], timeout=5)
    for code, err in results:
        assert code == 1 and "Traceback" not in err and "Check failure" not in err, err[-3000:]
        assert len(_error_lines(err)) == 1, err[-3000:]
    assert "processes [2] of --num-processes 3 did not join" in _error_lines(results[0][1])[0]
    assert not (tmp_path / "run").exists()


def test_a_process_failing_its_own_check_stops_the_others(tmp_path, config):
    # Process 1's override breaks the batch rule; process 0's config is fine and goes on to the
    # run's first exchange, where it must learn that process 1 has stopped.
    results = _launch(tmp_path, config, [(0, 2, []), (1, 2, ["--set", "train.batch_size=31"])], timeout=60)
    (code0, err0), (code1, err1) = results
    assert code1 == 1 and "train.batch_size 31 does not divide" in err1, err1[-3000:]
    assert code0 == 1 and "Check failure" not in err0 and "Traceback" not in err0, err0[-3000:]
    assert _error_lines(err0) and "process 1 of the run stopped before" in _error_lines(err0)[0], err0[-3000:]
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_processes_with_different_device_counts_are_refused(tmp_path, config):
    # JAX's multi-process utilities (Orbax's checkpoints among their users) need the same number
    # of devices on every process; a run failed deep inside them with a raw reshape error.
    sets = ["--set", "train.mesh=null", "--set", "train.batch_size=30"]
    results = _launch(tmp_path, config, [(0, 2, sets, 2), (1, 2, sets, 3)], timeout=60)
    for code, err in results:
        assert code == 1 and "Traceback" not in err and "Check failure" not in err, err[-3000:]
        lines = _error_lines(err)
        assert len(lines) == 1 and "different numbers of devices (process 0: 2, process 1: 3" in lines[0], err[-3000:]
    assert not (tmp_path / "run").exists()


def test_sigterm_stops_a_process_of_a_running_run(tmp_path, config):
    # JAX's preemption service caught SIGTERM (waiting for the program to poll it, which jaxrec
    # never does), so `kill PID` left the process training to the end of its run.
    import signal
    import time

    port = _free_port()
    sets = ["--set", "train.epochs=100000", "--set", "train.patience=100000", "--set", "train.checkpoint_every=100000"]
    children = []
    try:
        for process_id in range(2):
            command = [sys.executable, "-m", "jaxrec.cli.main", "train", str(config), "--workdir",
                       str(tmp_path / "run"), "--quiet", "--coordinator", f"127.0.0.1:{port}", "--num-processes",
                       "2", "--process-id", str(process_id), "--distributed-timeout", "120", *sets]
            children.append(subprocess.Popen(command, env=_env(), cwd=tmp_path, stdout=subprocess.DEVNULL,
                                             stderr=subprocess.DEVNULL, start_new_session=True))
        log = tmp_path / "run" / "log.process1.txt"
        deadline = time.monotonic() + CHILD_TIMEOUT
        while not (log.exists() and "epoch 1:" in log.read_text()):
            assert all(child.poll() is None for child in children), "a process ended before training"
            assert time.monotonic() < deadline, "process 1 trained no epoch"
            time.sleep(0.1)
        children[1].send_signal(signal.SIGTERM)
        try:
            children[1].wait(CHILD_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail("process 1 went on training after SIGTERM")
        assert children[1].returncode == -signal.SIGTERM
    finally:
        for child in children:
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGKILL)
            child.wait(30)
