"""Milliseconds per weight gradient of ``x @ w`` on XLA's CPU backend, in three forms.

Usage (from the project root):
    python benchmarks/bench_matmul_grad.py [--repeats 50] [--rounds 3]

For ``x`` (n, D), ``w`` (D, K) and the output gradient ``g`` (n, K), the weight gradient
:math:`x^\\top g` (D, K) is timed as

- ``xla``: ``lax.dot_general(x, g)`` contracting both over their rows (what ``jax.grad`` of a
  plain ``x @ w`` lowers to);
- ``copy``: ``x.T`` materialized behind an optimization barrier, then ``x.T @ g`` (the form
  ``jaxrec._matmul.matmul`` used for every shape before round 2's session 16);
- ``matmul``: ``jaxrec._matmul.matmul``'s backward as it is now (the ``copy`` form for K >= D,
  the narrow ``g`` contracted over its rows and the (K, D) result transposed for K < D),
  taken from ``jax.vjp`` of ``matmul`` itself, so the figure is the code's.

The shapes are the models' own products on TikTok (9,308 users, 6,710 items, 16,018 graph
nodes, batch 2,048): MMGCN's combination layers (n, 320 / 192 / 128) -> 64 and its first
layer's (n, 256) -> 256 and (n, 129) -> 256, VBPR's and the kernel model's feature projections,
LGMRec's (2,048, 4) @ (4, 9,308) table logits. Each figure is the best of ``--rounds`` medians of
``--repeats`` calls (after compilation); the last column is ``copy`` / ``matmul``. Compare
figures taken in the same minutes only: this VM's speed drifts by 10-60% between runs.

Measured 2026-12-05 (2 cores, nothing else running): copy / matmul 1.26x, 1.51x, 1.09x for
MMGCN's three K < D products, 1.12x VBPR, 1.26x the kernel model, 1.00-1.01x where K >= D
(the same form). LGMRec's row is alike in all forms alone (1.56 / 1.75 / 1.75 ms): its gain in
the model (1.40 -> 1.32 s per TikTok epoch) comes from the barrier on the result, which stops XLA
from folding the caller's transpose (``keys.T``) back into a transposed product over the
(2,048, 9,308) softmax matrix; a product alone cannot show that.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxrec._matmul import matmul

SHAPES = [  # (label, n, D, K)
    ("MMGCN combine_1 (concat 256+64 -> 64)", 16018, 320, 64),
    ("MMGCN combine_2 (concat 128+64 -> 64)", 16018, 192, 64),
    ("MMGCN joint layer (128 -> 64)", 16018, 128, 64),
    ("MMGCN user preference (9,308 x 256 -> 256)", 9308, 256, 256),
    ("MMGCN folded first layer (9,308 x 129 -> 256)", 9308, 129, 256),
    ("VBPR item features (6,710 x 256 -> 64)", 6710, 256, 64),
    ("kernel model RFF rows (4,096 x 1,024 -> 64)", 4096, 1024, 64),
    ("LGMRec table logits ((2,048 x 4) @ (4 x 9,308))", 2048, 4, 9308),
]


def _xla(x, g):
    return lax.dot_general(x, g, (((0,), (0,)), ((), ())))


def _copy(x, g):
    return lax.optimization_barrier(x.T) @ g


def _ours(x, w, g):
    return jax.vjp(matmul, x, w)[1](g)[1]


def _time(fn, args, repeats: int, rounds: int) -> float:
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(rounds):
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times.append(time.perf_counter() - start)
        best = min(best, statistics.median(times))
    return best * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    xla, copy, ours = jax.jit(_xla), jax.jit(_copy), jax.jit(_ours)
    print(f"{'product':52s} {'n':>6s} {'D':>5s} {'K':>5s}   xla ms  copy ms  matmul ms  copy/matmul")
    for label, n, d, k in SHAPES:
        x = jnp.asarray(rng.standard_normal((n, d), dtype=np.float32))
        w = jnp.asarray(rng.standard_normal((d, k), dtype=np.float32))
        g = jnp.asarray(rng.standard_normal((n, k), dtype=np.float32))
        want = np.asarray(x, np.float64).T @ np.asarray(g, np.float64)
        got = np.asarray(ours(x, w, g), np.float64)
        if not np.allclose(got, want, rtol=1e-3, atol=1e-3 * np.abs(want).max()):
            raise SystemExit(f"{label}: matmul's weight gradient differs from x^T g")
        t_xla, t_copy, t_ours = (_time(xla, (x, g), args.repeats, args.rounds),
                                 _time(copy, (x, g), args.repeats, args.rounds),
                                 _time(ours, (x, w, g), args.repeats, args.rounds))
        print(f"{label:52s} {n:6d} {d:5d} {k:5d}   {t_xla:6.2f}  {t_copy:7.2f}  {t_ours:9.2f}  {t_copy / t_ours:10.2f}x")


if __name__ == "__main__":
    main()
