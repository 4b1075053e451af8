"""The CPU custom call of propagate_fixed (csr_propagate.cc): bit for bit XLA's path, against
dense numpy products, under jit / scan / vmap / grad, its multi-threaded split, and the fallbacks."""

import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from _native_kernel import REASON, UNAVAILABLE
from jaxrec.data import graph as jgraph
from jaxrec.data.graph import _csr_native

# Skipped only where no compiler exists (or the kernel is switched off): where one exists, a kernel
# that fails to build fails these tests (test_the_kernel_builds_where_a_compiler_exists).
pytestmark = pytest.mark.skipif(UNAVAILABLE, reason=REASON)


def _random_edges(n, n_edges, seed, *, empty_rows=(), duplicates=True):
    """A row-sorted random matrix with some empty rows and repeated (row, col) entries."""
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, n, n_edges)
    rows = rows[~np.isin(rows, empty_rows)]
    cols = rng.integers(0, n, rows.size)
    if duplicates and rows.size > 4:
        rows[-2:], cols[-2:] = rows[:2], cols[:2]
    weights = rng.normal(size=rows.size).astype(np.float32)
    order = np.argsort(rows, kind="stable")
    return jgraph.Edges(rows[order].astype(np.int32), cols[order].astype(np.int32), weights[order])


def _xla(edges, x, chunk_size=None):
    return jax.jit(lambda x: jgraph.propagate(edges.to_device(), x, indices_are_sorted=True,
                                              chunk_size=chunk_size))(x)


def _call(edges, x):
    """The custom call over (device) ``edges`` with their row starts for x's rows."""
    return _csr_native.csr_propagate(jgraph.row_starts(edges.rows, x.shape[0]), edges.cols, edges.weights, x)


def _native(edges, x):
    device = edges.to_device()
    return jax.jit(lambda x: _call(device, x))(x)


def test_the_kernel_builds_where_a_compiler_exists():
    assert _csr_native.native_available()


@pytest.mark.parametrize("d", [1, 5, 16, 37, 64, 130, 200])
def test_equals_the_xla_path_bit_for_bit_and_a_dense_product(d):
    n = 50
    edges = _random_edges(n, 400, seed=d, empty_rows=(0, 7, 49))
    x = np.random.default_rng(1).normal(size=(n, d)).astype(np.float32)
    native = np.asarray(_native(edges, x))
    for chunk_size in (None, 64):  # the one-shot segment sum and the chunked scan: same order of sums
        np.testing.assert_array_equal(native, np.asarray(_xla(edges, x, chunk_size)))
    np.testing.assert_allclose(native, edges.to_dense(n) @ x, rtol=1e-5, atol=1e-5)
    assert not native[[0, 7, 49]].any()  # empty rows are zeros


def test_no_edges_and_no_columns():
    empty = jgraph.Edges(np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.float32))
    x = np.ones((6, 4), np.float32)
    np.testing.assert_array_equal(np.asarray(_native(empty, x)), np.zeros((6, 4)))
    edges = _random_edges(6, 20, seed=3)
    assert np.asarray(_native(edges, np.ones((6, 0), np.float32))).shape == (6, 0)


def test_bad_row_starts_are_an_error_not_a_read_out_of_bounds():
    edges = _random_edges(6, 20, seed=3).to_device()
    x = jnp.ones((6, 4))
    for starts in ([0, 5, 3, 8, 9, 10, 12], [0, 2, 4, 6, 8, 10, 10**6], [-1, 2, 4, 6, 8, 10, 12]):
        with pytest.raises(Exception, match="non-decreasing within"):
            jax.block_until_ready(_csr_native.csr_propagate(jnp.asarray(starts, jnp.int32), edges.cols,
                                                            edges.weights, x))


def test_stored_row_starts_of_another_row_count_are_padded_or_cut():
    """fixed_graph stores starts for max(row, col) + 1 rows; propagate_fixed adapts them to x's rows."""
    edges = jgraph.Edges(np.array([0, 1, 1, 3], np.int32), np.array([1, 0, 3, 1], np.int32),
                         np.array([1.0, 2.0, 3.0, 4.0], np.float32))
    graph = jgraph.fixed_graph(edges).to_device()
    assert graph.starts.tolist() == [0, 1, 3, 3, 4]
    for n in (4, 7):  # 7: padded with empty rows
        x = np.random.default_rng(n).normal(size=(n, 3)).astype(np.float32)
        np.testing.assert_array_equal(np.asarray(jgraph.propagate_fixed(graph, x)), np.asarray(_xla(edges, x)))
        np.testing.assert_allclose(np.asarray(jax.grad(lambda x: jnp.sum(jgraph.propagate_fixed(graph, x)))(x)),
                                   np.asarray(_xla(jgraph.fixed_graph(edges).transposed, np.ones((n, 3), np.float32))))


def test_edges_outside_the_nodes_are_dropped():
    n = 8
    rows = np.array([-1, 0, 0, 2, 3, 8, 9], np.int32)    # -1, 8, 9: outside [0, 8)
    cols = np.array([1, 2, -3, 9, 4, 1, 1], np.int32)    # -3, 9: outside
    weights = np.arange(1, 8, dtype=np.float32)
    x = np.random.default_rng(0).normal(size=(n, 16)).astype(np.float32)
    expected = np.zeros((n, 16), np.float32)
    for r, c, w in zip(rows, cols, weights):
        if 0 <= r < n and 0 <= c < n:
            expected[r] += w * x[c]
    np.testing.assert_array_equal(np.asarray(_native(jgraph.Edges(rows, cols, weights), x)), expected)


def test_threaded_split_equals_one_thread():
    """A product big enough for the thread-pool split (edges x d >= 2^16), alone and batched."""
    n = 3000
    edges = _random_edges(n, 40_000, seed=5, empty_rows=np.arange(100, 400))
    x = np.random.default_rng(2).normal(size=(n, 64)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(_native(edges, x)), np.asarray(_xla(edges, x, 8192)))
    device = edges.to_device()
    stacked = np.random.default_rng(3).normal(size=(3, n, 64)).astype(np.float32)
    batched = jax.jit(jax.vmap(lambda x: _call(device, x)))
    out = np.asarray(batched(stacked))
    for t in range(3):
        np.testing.assert_array_equal(out[t], np.asarray(_xla(edges, stacked[t], 8192)))


@pytest.mark.parametrize("symmetric", [True, False])
def test_propagate_fixed_runs_the_call_and_its_gradient_is_the_transpose(symmetric):
    n = 40
    edges = _random_edges(n, 300, seed=11)
    if symmetric:  # distinct pairs r < c, each in both directions with one weight, row-sorted
        pairs = {(min(r, c), max(r, c)): w for r, c, w in zip(edges.rows, edges.cols, edges.weights) if r != c}
        upper = np.array(sorted(pairs), np.int32)
        weights = np.array([pairs[tuple(p)] for p in upper], np.float32)
        rows = np.concatenate([upper[:, 0], upper[:, 1]])
        cols = np.concatenate([upper[:, 1], upper[:, 0]])
        order = np.lexsort((cols, rows))
        edges = jgraph.Edges(rows[order], cols[order], np.concatenate([weights, weights])[order])
    graph = jgraph.fixed_graph(edges, symmetric=symmetric).to_device()
    dense = edges.to_dense(n)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(n, 24)), jnp.float32)
    target = jnp.asarray(np.random.default_rng(1).normal(size=(n, 24)), jnp.float32)

    def loss(x):
        return jnp.sum(target * jnp.tanh(jgraph.propagate_fixed(graph, x)))

    assert _csr_native.TARGET in str(jax.jit(jax.grad(loss)).lower(x).as_text())
    expected = dense.T @ ((1 - np.tanh(dense @ np.asarray(x, np.float64)) ** 2) * np.asarray(target))
    np.testing.assert_allclose(np.asarray(jax.jit(jax.grad(loss))(x)), expected, rtol=1e-4, atol=1e-5)


def test_inside_scan_and_vmap_over_graphs():
    """A scanned loop (the trainer's epoch) and a vmap over different graphs (one per trial)."""
    n = 30
    graphs = [_random_edges(n, 200, seed=s) for s in range(3)]
    size = max(g.rows.size for g in graphs)

    def padded(g):  # same edge count for stacking: extra edges on row n (outside: dropped)
        pad = size - g.rows.size
        return (np.concatenate([g.rows, np.full(pad, n, np.int32)]), np.concatenate([g.cols, np.zeros(pad, np.int32)]),
                np.concatenate([g.weights, np.zeros(pad, np.float32)]))

    rows, cols, weights = (np.stack(parts) for parts in zip(*(padded(g) for g in graphs)))
    x = np.random.default_rng(4).normal(size=(3, n, 8)).astype(np.float32)
    out = jax.jit(jax.vmap(lambda r, c, w, x: _call(jgraph.Edges(r, c, w), x)))(rows, cols, weights, x)
    for t, g in enumerate(graphs):
        np.testing.assert_array_equal(np.asarray(out[t]), np.asarray(_xla(g, x[t])))

    device = graphs[0].to_device()

    def body(h, _):
        return _call(device, h) * 0.5, None

    scanned, _ = jax.jit(lambda h: jax.lax.scan(body, h, None, length=3))(x[0])
    dense = graphs[0].to_dense(n)
    np.testing.assert_allclose(np.asarray(scanned), 0.125 * dense @ dense @ dense @ x[0], rtol=1e-4, atol=1e-4)


def test_disabled_by_the_environment(monkeypatch):
    edges = _random_edges(20, 100, seed=1)
    graph = jgraph.fixed_graph(edges).to_device()
    x = jnp.ones((20, 4))
    monkeypatch.setenv("JAXREC_NATIVE_KERNELS", "0")
    assert not _csr_native.native_available()
    assert _csr_native.TARGET not in jax.jit(lambda x: jgraph.propagate_fixed(graph, x)).lower(x).as_text()
    monkeypatch.setenv("JAXREC_NATIVE_KERNELS", "1")
    assert _csr_native.TARGET in jax.jit(lambda x: jgraph.propagate_fixed(graph, x)).lower(x).as_text()


def test_float64_embeddings_take_the_xla_path():
    edges = _random_edges(10, 40, seed=2)
    graph = jgraph.fixed_graph(edges).to_device()
    with jax.enable_x64(True):
        x = jnp.asarray(np.random.default_rng(0).normal(size=(10, 3)))
        lowered = jax.jit(lambda x: jgraph.propagate_fixed(graph, x)).lower(x).as_text()
        assert _csr_native.TARGET not in lowered
        np.testing.assert_allclose(np.asarray(jgraph.propagate_fixed(graph, x)), edges.to_dense(10) @ np.asarray(x),
                                   rtol=1e-12)


def test_compile_is_atomic_and_reports_compiler_errors(tmp_path):
    compiler = _csr_native._compiler()
    flags = _csr_native._BASE_FLAGS
    target = tmp_path / "nested" / "kernel.so"
    assert _csr_native._compile(compiler, flags, target) is None
    assert target.is_file() and os.listdir(target.parent) == ["kernel.so"]  # no temporary left
    broken = tmp_path / "broken.so"
    error = _csr_native._compile(compiler, flags + ("-DJAXREC_UNDEFINED=", "-include", "/nonexistent.h"), broken)
    assert error and "nonexistent" in error
    assert not broken.exists() and [p.name for p in tmp_path.iterdir()] == ["nested"]


def test_unwritable_cache_folder_is_a_failed_build_not_an_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    error = _csr_native._compile(_csr_native._compiler(), _csr_native._BASE_FLAGS, blocker / "sub" / "kernel.so")
    assert error and ("Not a directory" in error or "File exists" in error)


def test_no_compiler_warns_once_and_falls_back(monkeypatch, tmp_path):
    monkeypatch.setattr(_csr_native, "_compiler", lambda: None)
    _csr_native._registered.cache_clear()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert not _csr_native.native_available()
            assert not _csr_native.native_available()
        assert len([w for w in caught if "no C++ compiler" in str(w.message)]) == 1
        edges = _random_edges(12, 50, seed=3)
        graph = jgraph.fixed_graph(edges).to_device()
        x = np.random.default_rng(0).normal(size=(12, 5)).astype(np.float32)
        np.testing.assert_allclose(np.asarray(jgraph.propagate_fixed(graph, x)), edges.to_dense(12) @ x,
                                   rtol=1e-5, atol=1e-5)
    finally:
        monkeypatch.undo()
        _csr_native._registered.cache_clear()
    assert _csr_native.native_available()  # registered again (the same library, from the cache)


def test_library_name_depends_on_source_flags_and_cpu(monkeypatch):
    compiler = _csr_native._compiler()
    a = _csr_native._library_path(compiler, ("-O3",))
    assert a != _csr_native._library_path(compiler, ("-O2",))
    monkeypatch.setattr(_csr_native, "_cpu_fingerprint", lambda: "another cpu")
    assert a != _csr_native._library_path(compiler, ("-O3",))
    monkeypatch.setenv("JAXREC_NATIVE_CACHE", "/tmp/elsewhere")
    assert str(_csr_native._library_path(compiler, ("-O3",))).startswith("/tmp/elsewhere/")
