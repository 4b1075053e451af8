"""losses.combine, the public API surface of jaxrec.losses, its docstrings and doctests, and its imports."""

import ast
import doctest
import importlib
import math
import pkgutil
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrec.losses
from jaxrec import losses
from jaxrec.errors import ConfigError, DataError

LOSSES_DIR = Path(jaxrec.losses.__file__).parent


def test_combine_is_the_weighted_sum_and_returns_the_unweighted_terms():
    terms = {"bpr": jnp.asarray(0.7), "reg": jnp.asarray(2.0), "cl": jnp.asarray(-0.5)}
    total, returned = losses.combine(terms, {"bpr": 1.0, "reg": 1e-2, "cl": 0.3})
    np.testing.assert_allclose(total, 0.7 + 0.02 - 0.15, rtol=1e-6)
    assert set(returned) == set(terms)
    for name in terms:
        np.testing.assert_array_equal(returned[name], terms[name])


def test_combine_gradient_is_the_weighted_sum_of_gradients():
    def objective(x):
        return losses.combine(
            {"sq": losses.l2_sum_of_squares(x), "norm": losses.l2_mean_norm(x[None])}, {"sq": 0.5, "norm": 2.0}
        )

    x = jnp.array([3.0, 4.0])
    (total, terms), grad = jax.jit(jax.value_and_grad(objective, has_aux=True))(x)
    np.testing.assert_allclose(total, 0.5 * 25 + 2.0 * 5.0, rtol=1e-6)
    np.testing.assert_allclose(terms["sq"], 25.0, rtol=1e-6)
    # d/dx (0.5 |x|^2 + 2 |x|) = x + 2 x / |x|
    np.testing.assert_allclose(grad, np.array([3.0, 4.0]) + 2 * np.array([3.0, 4.0]) / 5, rtol=1e-6)


def test_combine_names_the_term_without_a_weight():
    with pytest.raises(ConfigError) as error:
        losses.combine({"bpr": 1.0, "reg": 2.0}, {"bpr": 1.0})
    message = str(error.value)
    assert "'reg' has no weight" in message and "weights: 'bpr'" in message


def test_combine_names_a_weight_without_a_term_and_suggests_the_closest():
    with pytest.raises(ConfigError) as error:
        losses.combine({"bpr": 1.0, "reg": 2.0}, {"bpr": 1.0, "reg": 0.1, "contrastive": 0.2})
    assert "weight 'contrastive' names no loss term" in str(error.value)
    assert "loss terms: 'bpr', 'reg'" in str(error.value)
    with pytest.raises(ConfigError, match="did you mean 'reg_loss'"):
        losses.combine({"bpr": 1.0, "reg_loss": 2.0}, {"bpr": 1.0, "reg_los": 0.1})


def test_combine_weight_zero_switches_a_term_off_even_if_nan():
    total, terms = losses.combine({"bpr": jnp.asarray(0.5), "broken": jnp.asarray(jnp.nan)}, {"bpr": 2.0, "broken": 0})
    np.testing.assert_allclose(total, 1.0)
    assert np.isnan(terms["broken"])
    grad = jax.jit(jax.grad(lambda x: losses.combine({"a": x**2, "b": jnp.sqrt(-x)}, {"a": 1.0, "b": 0.0})[0]))(3.0)
    np.testing.assert_allclose(grad, 6.0)


def test_combine_bad_input():
    with pytest.raises(DataError, match="scalar"):
        losses.combine({"bpr": jnp.ones(3)}, {"bpr": 1.0})
    with pytest.raises(ConfigError, match="finite"):
        losses.combine({"bpr": 1.0}, {"bpr": math.inf})
    with pytest.raises(ConfigError, match="real number"):
        losses.combine({"bpr": 1.0}, {"bpr": "1.0"})
    total, terms = losses.combine({}, {})
    assert float(total) == 0.0 and terms == {}


def test_combine_under_jit_with_traced_weights():
    @jax.jit
    def step(x, weights):
        return losses.combine({"a": x, "b": 2 * x}, weights)[0]

    np.testing.assert_allclose(step(1.5, {"a": jnp.asarray(1.0), "b": jnp.asarray(0.25)}), 1.5 + 0.75, rtol=1e-6)


PUBLIC = [name for name in dir(losses) if not name.startswith("_")]


def test_public_api_is_explicit_one_name_reexports():
    tree = ast.parse((LOSSES_DIR / "__init__.py").read_text())
    exported = []
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            assert node.module.startswith("jaxrec.losses._"), node.module
            for alias in node.names:
                assert alias.asname == alias.name, f"{alias.name} must be re-exported as itself"
                exported.append(alias.name)
    assert sorted(exported) == sorted(PUBLIC)
    assert set(exported) == {
        "bpr", "softmax_cross_entropy", "sampled_softmax", "mse", "rmse", "binary_cross_entropy",
        "info_nce", "info_nce_by_id", "cosine_logsumexp", "cosine_alignment", "l2_sum_of_squares", "l2_mean_norm", "l2_sum_of_squares_per_example",
        "l2_mean_of_squares", "kernel_alignment", "centered_kernel_alignment", "side_mf_objective",
        "side_mf_bpr", "subspace_objective", "combine", "batch_sum", "batch_mean", "batch_gather", "data_parallel",
    }


@pytest.mark.parametrize("name", PUBLIC)
def test_docstrings_follow_the_template(name):
    doc = getattr(losses, name).__doc__
    for section in (".. math::", "Args:", "Returns:", "Example:", ">>>"):
        assert section in doc, f"{name} docstring lacks {section!r}"
    if name != "combine":  # the one non-paper function
        assert "References:" in doc, f"{name} docstring lacks References"


@pytest.mark.parametrize(
    "module", sorted(info.name for info in pkgutil.iter_modules([str(LOSSES_DIR)]) if info.name != "_reduction")  # the one helper module without examples
)
def test_doctests(module):
    result = doctest.testmod(
        importlib.import_module(f"jaxrec.losses.{module}"), optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    )
    assert result.attempted > 0 and result.failed == 0


def test_losses_import_only_jax_numpy_chex_and_errors():
    allowed = {"jax", "numpy", "chex"}
    for path in LOSSES_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if module.startswith("jaxrec."):
                    assert module in ("jaxrec.errors", "jaxrec._checks") or module.startswith("jaxrec.losses"), \
                        f"{path.name}: {module}"
                else:
                    assert top in allowed or top in sys.stdlib_module_names, f"{path.name} imports {module}"
