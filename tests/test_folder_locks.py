"""Inter-process locks of folders one writer at a time may replace: a served model's or an
export's folder (`jaxrec.serve._persist.replace_folder`) and a TFDS dataset version being prepared
(`jaxrec.data.prepare_tfds`). flock locks belong to open file handles, so a handle the test opens
itself stands for another process. Also the primitive under them and under the run folder's and
the serving state folder's locks (`jaxrec._atomic.lock_file`)."""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time

import pytest

from jaxrec._atomic import LockHeld, LockReplaced, exclusive_lock, lock_file
from jaxrec.data import load_prepared, make_synthetic, prepare_tfds
from jaxrec.errors import DataError
from jaxrec.serve._persist import replace_folder

MARKER, FORMAT = "served.json", "jaxrec-served/1"


def _finished_folder(parent, tag):
    folder = parent / f".tmp-{tag}"
    folder.mkdir()
    (folder / MARKER).write_text(json.dumps({"format": FORMAT}))
    (folder / "payload.txt").write_text(tag * 1000)
    return folder


def _held_by_another_handle(path):
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def test_writers_of_one_folder_swap_one_at_a_time_and_all_succeed(tmp_path):
    target = tmp_path / "model"
    folders = [_finished_folder(tmp_path, str(i)) for i in range(8)]
    start, errors = threading.Barrier(len(folders)), []

    def write(folder):
        start.wait()
        try:
            replace_folder(folder, target, MARKER, FORMAT, "saved served model")
        except Exception as error:  # collected: the assertion below names them
            errors.append(repr(error))

    threads = [threading.Thread(target=write, args=(folder,)) for folder in folders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    payload = (target / "payload.txt").read_text()
    assert payload in {str(i) * 1000 for i in range(8)}  # one writer's folder, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no old folder, lock or temporary left


def test_a_swap_waits_for_the_holder_of_the_folders_lock(tmp_path):
    target = tmp_path / "model"
    fd = _held_by_another_handle(tmp_path / ".model.lock")
    done = threading.Event()
    thread = threading.Thread(target=lambda: (replace_folder(_finished_folder(tmp_path, "a"), target, MARKER, FORMAT,
                                                             "saved served model"), done.set()))
    thread.start()
    try:
        assert not done.wait(1.0)  # held elsewhere: the swap waits
        assert not target.exists()
    finally:
        os.close(fd)  # releases the lock
    thread.join(timeout=30)
    assert done.is_set() and (target / "payload.txt").read_text() == "a" * 1000


def test_a_second_preparation_of_one_version_is_refused_while_the_first_runs(tmp_path):
    data = make_synthetic(20, 15, n_interactions=100, seed=5, dims={"a": 2})
    fd = _held_by_another_handle(tmp_path / ".locked-1.0.0.lock")
    try:
        with pytest.raises(DataError, match=r"\.locked-1\.0\.0\.lock: another process is preparing this dataset "
                                            r"version now; found locked 1\.0\.0"):
            prepare_tfds(data, tmp_path, name="locked")
        assert not (tmp_path / "locked").exists()
        prepare_tfds(data, tmp_path, name="locked", version="1.0.1")  # another version is free
    finally:
        os.close(fd)
    prepare_tfds(data, tmp_path, name="locked")
    assert len(load_prepared(tmp_path, "locked", version="1.0.0").interactions) == len(data.interactions)
    assert not list(tmp_path.glob("*.lock"))


def test_the_lock_file_is_removed_on_release_and_a_waiter_takes_the_new_one(tmp_path):
    path = tmp_path / "x.lock"
    order = []
    with exclusive_lock(path):
        waiter = threading.Thread(target=lambda: _hold(path, order))
        waiter.start()
        time.sleep(0.3)
        order.append("first released")
    waiter.join(timeout=30)
    assert order == ["first released", "second held"]
    assert not path.exists()
    with exclusive_lock(path, wait=False):
        with pytest.raises(BlockingIOError):
            with exclusive_lock(path, wait=False):
                pass


def _hold(path, order):
    with exclusive_lock(path):
        order.append("second held")


# ---- lock_file: the one flock holder under exclusive_lock, the run folder's and the state folder's locks

def test_a_refused_locker_reads_the_holders_record_and_a_dead_holders_record_is_handed_on(tmp_path):
    path = tmp_path / "run.lock"
    first = lock_file(path, wait=False, record=b"pid 1\n")
    assert first.previous == b""  # a new file
    with pytest.raises(LockHeld) as refused:
        lock_file(path, wait=False, record=b"pid 2\n")
    assert isinstance(refused.value, BlockingIOError) and refused.value.holder == b"pid 1\n"
    assert path.read_bytes() == b"pid 1\n"  # the refused one wrote nothing
    os.close(first._fd)  # the holder dies: the kernel drops its lock, its file and record stay
    second = lock_file(path, wait=False, record=b"pid 3\n")
    assert second.previous == b"pid 1\n" and path.read_bytes() == b"pid 3\n"
    second.release(remove=False)
    assert path.read_bytes() == b"pid 3\n"  # kept: the serving state folder's lock file stays
    third = lock_file(path, wait=False)  # no record: the file keeps what it holds
    assert third.previous == b"pid 3\n" and path.read_bytes() == b"pid 3\n"
    third.release()
    third.release()  # a second release does nothing
    assert not path.exists()


def test_a_lock_file_replaced_every_time_it_is_locked_gives_up_with_a_clear_error(tmp_path, monkeypatch):
    path, other = tmp_path / "churn.lock", tmp_path / "other"
    other.write_text("")
    real_stat = os.stat
    # every file locked has been removed and replaced by another by the time it is checked
    monkeypatch.setattr(os, "stat", lambda p, *a, **k: real_stat(other if str(p) == str(path) else p, *a, **k))
    with pytest.raises(LockReplaced, match="keeps being replaced"):
        lock_file(path, wait=False)
    monkeypatch.undo()
    lock_file(path, wait=False).release()  # nothing was left held
