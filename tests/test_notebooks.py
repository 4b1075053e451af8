"""The notebooks run clean, top to bottom, at test size (their cells assert their claims)."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from _xla_flags import FAST_COMPILE

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["paper_math.ipynb", "compose_losses.ipynb", "python_api.ipynb"])
def test_notebook_runs_clean(name, monkeypatch, tmp_path):
    monkeypatch.setenv("JAXREC_NOTEBOOK_SIZE", "small")
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the kernel's temporary folders (a run without workdir) land here
    # One CPU device in the kernel: the test process's fake-device flag is not wanted there.
    monkeypatch.setenv("XLA_FLAGS", FAST_COMPILE)
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    printed = "".join(output.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                      for output in cell.get("outputs", []) if output.get("output_type") == "stream")
    assert printed, f"{name} printed nothing"
    assert not any(output.get("output_type") == "error" for cell in notebook.cells
                   for output in cell.get("outputs", [])), f"{name} raised"
