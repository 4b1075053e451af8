"""``jaxrec serve``'s command line: bad --state and --port values are one clean error line,
checked before anything listens, loads or is created (no server is started here; the served
routes are in test_serve_http.py)."""

from pathlib import Path

import pytest

from jaxrec.cli._paths import check_output_folder
from jaxrec.cli.main import main


def files_under(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


@pytest.fixture
def run_folder(tmp_path):
    """A folder that looks like a run from outside (serve checks the state before loading it)."""
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "metrics.json").write_text("{}\n")
    (folder / "config.yaml").write_text("model: {name: bprmf}\n")
    return folder


def serve_error(argv, capsys) -> str:
    pytest.importorskip("fastapi", reason="jaxrec serve needs the serve extra (fastapi, uvicorn)")
    pytest.importorskip("uvicorn", reason="jaxrec serve needs the serve extra (fastapi, uvicorn)")
    capsys.readouterr()
    assert main(["serve", *argv, "--host", "127.0.0.1", "--port", "0"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and "Traceback" not in captured.err
    assert captured.err.startswith("jaxrec: error: ") and captured.err.count("\n") == 1
    return captured.err


def test_state_that_is_an_existing_file_is_a_clean_error(run_folder, capsys):
    before = files_under(run_folder)
    state = run_folder / "metrics.json"
    err = serve_error([str(run_folder), "--state", str(state)], capsys)
    assert f"--state {state}: exists and is not a folder" in err
    assert files_under(run_folder) == before  # no serving/ folder either


def test_state_under_a_file_is_a_clean_error(run_folder, capsys):
    before = files_under(run_folder)
    state = run_folder / "metrics.json" / "x"
    err = serve_error([str(run_folder), "--state", str(state)], capsys)
    assert f"--state {state}: cannot create a folder there, {run_folder / 'metrics.json'} is a file" in err
    assert files_under(run_folder) == before


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_state_that_cannot_be_created_is_a_clean_error(run_folder, capsys):
    before = files_under(run_folder)
    err = serve_error([str(run_folder), "--state", "/proc/jaxrec/vbpr"], capsys)
    assert "--state /proc/jaxrec/vbpr: cannot create a folder there (/proc/jaxrec: " in err
    assert files_under(run_folder) == before and not Path("/proc/jaxrec").exists()


def test_default_state_that_is_a_file_is_a_clean_error(run_folder, capsys):
    (run_folder / "serving").write_text("not a folder\n")
    err = serve_error([str(run_folder)], capsys)
    assert f"state folder (the default of --state) {run_folder / 'serving'}: exists and is not a folder" in err


@pytest.mark.parametrize("port", ["99999", "65536", "-1", "eighty"])
def test_port_out_of_range_is_refused_at_argument_parsing(port, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "/nonexistent/run", "--port", port])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "argument --port: expected" in err and "0-65535" in err and "Traceback" not in err


def test_ports_at_the_ends_of_the_range_parse():
    from jaxrec.cli.main import build_parser

    for port in (0, 65535):
        assert build_parser().parse_args(["serve", "run", "--port", str(port)]).port == port


def test_check_output_folder_creates_nothing(tmp_path):
    target = tmp_path / "a" / "b" / "c"
    assert check_output_folder("--state", target) == target
    assert list(tmp_path.iterdir()) == []  # the probe's folder is gone again
    assert check_output_folder("--state", tmp_path) == tmp_path
