"""The premises of ``benchmarks/bench_roofline.py``'s flop count, against hand-counted products.

The benchmark multiplies XLA's count of a compiled epoch (a scanned loop of steps) by the number
of steps and marks programs with a ``conditional`` as upper bounds; both rest on how XLA's cost
analysis counts a ``while`` body (once) and a ``conditional`` (its costliest branch). A jax
upgrade that changes either would make the benchmark's figures wrong without failing it.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_roofline.py"
_spec = importlib.util.spec_from_file_location("bench_roofline", _PATH)
bench_roofline = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_roofline)

N = 64
PRODUCT = 2 * N ** 3  # flops of one (N, N) @ (N, N): N^2 outputs, N multiply-adds each


def _scanned(steps: int):
    def epoch(w, xs):
        def step(w, x):
            return w - 1e-3 * (x @ w), None
        return jax.lax.scan(step, w, xs)[0]
    w = jnp.ones((N, N), jnp.float32)
    xs = jnp.ones((steps, N, N), jnp.float32)
    return jax.jit(epoch).lower(w, xs).compile()


@pytest.mark.parametrize("steps", [2, 7])
def test_a_scanned_loop_counts_its_body_once(steps):
    flops, conditionals = bench_roofline.count_flops(_scanned(steps))
    # one product and the update's N^2 multiplies and subtractions, whatever the trip count
    assert PRODUCT <= flops <= PRODUCT + 4 * N * N
    assert conditionals == 0


def test_a_conditional_counts_as_its_costliest_branch_and_is_found():
    x = jnp.ones((N, N), jnp.float32)
    cheap, costly = (lambda x: x @ x), (lambda x: x @ x @ x @ x)  # one product, three products
    compiled = jax.jit(lambda p, x: jax.lax.cond(p, cheap, costly, x)).lower(True, x).compile()
    flops, conditionals = bench_roofline.count_flops(compiled)
    assert flops == pytest.approx(3 * PRODUCT)
    assert conditionals == 1


def test_matmul_peak_is_a_finite_rate():
    rate = bench_roofline.matmul_peak(n=128, rounds=1, repeats=3)
    assert math.isfinite(rate) and rate > 0


@pytest.mark.parametrize("steps", [2, 7])
def test_the_dot_count_reads_each_product_of_a_scanned_loop_once(steps):
    assert bench_roofline.count_dot_flops(_scanned(steps).as_text()) == PRODUCT


def test_the_dot_count_multiplies_batch_and_contracted_dimensions():
    a = jnp.ones((3, 4, 5, 6), jnp.float32)
    b = jnp.ones((3, 5, 6, 7), jnp.float32)
    # per batch entry: a (4, 7) output, 5 * 6 multiply-adds each
    compiled = jax.jit(lambda a, b: jnp.einsum("bijk,bjkl->bil", a, b)).lower(a, b).compile()
    assert bench_roofline.count_dot_flops(compiled.as_text()) == 2 * 3 * 4 * 7 * 5 * 6


def test_the_dot_count_reads_every_branch_and_nothing_else():
    x = jnp.ones((N, N), jnp.float32)
    compiled = jax.jit(lambda p, x: jax.lax.cond(p, lambda x: x @ x, lambda x: x @ x @ x @ x, x)).lower(True, x).compile()
    assert bench_roofline.count_dot_flops(compiled.as_text()) == 4 * PRODUCT
    elementwise = jax.jit(lambda x: jnp.exp(x) * x + 1.0).lower(x).compile()
    assert bench_roofline.count_dot_flops(elementwise.as_text()) == 0
