"""jaxrec._atomic: the one atomic writer behind every file jaxrec and experiments/ write."""

import json
import os
import stat

import numpy as np
import pytest

from jaxrec._atomic import file_in_the_way, write_atomic, write_json_atomic


@pytest.mark.parametrize("durable", [False, True])
def test_text_bytes_and_writer_function(tmp_path, durable):
    write_atomic(tmp_path / "a.txt", "héllo\n", durable=durable)
    write_atomic(tmp_path / "b.bin", b"\x00\x01", durable=durable)
    write_atomic(tmp_path / "sub" / "c.npz", lambda h: np.savez(h, x=np.arange(3)), durable=durable)
    assert (tmp_path / "a.txt").read_bytes() == "héllo\n".encode("utf-8")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    np.testing.assert_array_equal(np.load(tmp_path / "sub" / "c.npz")["x"], [0, 1, 2])
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.txt", "b.bin", "c.npz", "sub"]


def test_a_failed_write_leaves_the_old_file_whole_and_no_temporary(tmp_path):
    target = tmp_path / "metrics.json"
    write_json_atomic(target, {"epoch": 1})

    def half_then_fail(handle):
        handle.write(b'{"epoch": 2, "trunc')
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomic(target, half_then_fail)
    assert json.loads(target.read_text()) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_json_ends_with_a_newline_and_takes_dumps_options(tmp_path):
    target = write_json_atomic(tmp_path / "r.json", {"b": 1, "a": [1.5]}, indent=None, sort_keys=True)
    assert target.read_text() == '{"a": [1.5], "b": 1}\n'


def test_permissions_follow_the_umask_not_private(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_atomic(tmp_path / "x.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_file_in_the_way_is_the_nearest_existing_path_when_it_is_a_file(tmp_path):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    assert file_in_the_way(tmp_path / "new" / "deeper") is None  # the nearest existing one is a folder
    assert file_in_the_way(tmp_path) is None
    assert file_in_the_way(a_file) == a_file
    assert file_in_the_way(a_file / "sub" / "deeper") == a_file
