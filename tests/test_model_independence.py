"""Model files are independent: none imports another (public) model file.

Shared parts live in the private ``jaxrec/models/_*.py`` modules; a model file that needs
something from a sibling moves it there instead.
"""

import ast
from pathlib import Path

import pytest

MODELS_DIR = Path(__file__).resolve().parents[1] / "jaxrec" / "models"
PUBLIC = sorted(p.stem for p in MODELS_DIR.glob("*.py") if not p.stem.startswith("_"))
PRIVATE = sorted(p.stem for p in MODELS_DIR.glob("_*.py") if p.stem != "__init__")


def sibling_imports(path: Path) -> list[str]:
    """The public model modules that ``path`` imports, in any import form."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # relative: "from . import bprmf", "from .bprmf import X"
                module = "jaxrec.models" + ("." + module if module else "")
            names = [module] + [f"{module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[:2] == ["jaxrec", "models"] and len(parts) > 2 and parts[2] in PUBLIC:
                found.append(parts[2])
    return sorted(set(found))


def test_the_check_sees_every_import_form(tmp_path):
    # The checker itself against a hand-written file with each form it must catch (and the
    # allowed private and package imports).
    sample = tmp_path / "sample.py"
    sample.write_text("import jaxrec.models.bprmf\n"
                      "from jaxrec.models.lightgcn import LightGCN\n"
                      "from jaxrec.models import freedom\n"
                      "from . import vbpr\n"
                      "from .sidemf import SideMF\n"
                      "from jaxrec.models._common import batch_triples\n"
                      "from jaxrec.models import _registry\n"
                      "from jaxrec import models\n")
    assert sibling_imports(sample) == ["bprmf", "freedom", "lightgcn", "sidemf", "vbpr"]


@pytest.mark.parametrize("name", PUBLIC)
def test_model_file_imports_no_sibling(name):
    assert not sibling_imports(MODELS_DIR / f"{name}.py"), (
        f"jaxrec/models/{name}.py imports model files {sibling_imports(MODELS_DIR / f'{name}.py')}; "
        "move the shared part to a private jaxrec/models/_*.py module")


@pytest.mark.parametrize("name", PRIVATE)
def test_shared_modules_import_no_model_file(name):
    assert not sibling_imports(MODELS_DIR / f"{name}.py")
