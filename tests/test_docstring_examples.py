"""Every docstring example in jaxrec runs as a user would paste it: with no names but the ones it
imports itself (doctest's default hands each example its module's globals, which hid examples
that used ``jnp`` or the function itself without importing them)."""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "jaxrec"
MODULES = sorted(".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
                 for path in PACKAGE.rglob("*.py") if ">>> " in path.read_text(encoding="utf-8"))


def test_the_examples_are_found():
    assert {"jaxrec.losses._contrastive", "jaxrec.fusion._kernels", "jaxrec.eval._metrics"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_each_example_runs_with_only_its_own_imports(name):
    module = importlib.import_module(name)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report = []
    for test in doctest.DocTestFinder().find(module, globs={}):
        if test.examples:
            test.globs = {}
            runner.run(test, out=report.append)
    result = runner.summarize(verbose=False)
    assert result.attempted > 0, f"{name}: no example ran"
    assert result.failed == 0, "".join(report)
