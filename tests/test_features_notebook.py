"""notebooks/video_features.ipynb runs clean, top to bottom (its cells assert their claims)."""

from pathlib import Path

import pytest

from _xla_flags import FAST_COMPILE

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "video_features.ipynb"


@pytest.mark.slow
def test_video_features_notebook_runs_clean(monkeypatch, tmp_path):
    pytest.importorskip("av", reason="PyAV (the 'video' extra, also in 'test') is not installed")
    nbformat = pytest.importorskip("nbformat", reason="nbformat (in the test extra) runs the notebook")
    from nbclient import NotebookClient

    # One CPU device in the kernel: the test process's fake-device flag is not wanted there.
    monkeypatch.setenv("XLA_FLAGS", FAST_COMPILE)
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the kernel's temporary folders (the notebook's clips) land here
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", [])]
    assert not any(output.get("output_type") == "error" for output in outputs)
    printed = "".join(output.get("text", "") for output in outputs if output.get("output_type") == "stream")
    assert "recommend items" in printed and "masked" in printed
