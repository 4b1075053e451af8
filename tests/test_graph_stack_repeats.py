"""stack_graphs / mix_item_graphs on graphs whose edge lists repeat a (row, col) entry.

An :class:`Edges` list stands for the matrix whose entry (r, c) is the SUM of the weights of
its (r, c) edges (``Edges.to_dense`` adds them up). ``stack_graphs`` must keep that meaning
when it puts several graphs on one pattern: the reference here is a dense matrix filled by a
plain Python loop, independent of the code under test.
"""

import numpy as np
import jax.numpy as jnp

from jaxrec.data.graph import Edges, mix_item_graphs, stack_graphs

N = 5


def dense_by_loop(rows, cols, weights):
    dense = np.zeros((N, N))
    for r, c, w in zip(rows, cols, weights):
        dense[int(r), int(c)] += float(w)
    return dense


def test_repeated_entries_within_one_graph_are_summed_on_the_union_pattern():
    # Graph a repeats (0, 1) three times and (3, 3) twice, and has a zero-weight padding edge;
    # graph b shares (0, 1) once and adds (4, 2).
    a = Edges(np.array([0, 0, 0, 2, 3, 3, 4], np.int32), np.array([1, 1, 1, 0, 3, 3, 4], np.int32),
              np.array([0.5, 0.25, 1.0, 2.0, 0.125, 0.375, 0.0], np.float32))
    b = Edges(np.array([0, 4], np.int32), np.array([1, 2], np.int32), np.array([3.0, 1.5], np.float32))
    stack = stack_graphs([a, b], N)
    # Union of the non-zero entries, each once, sorted by (row, col): (0,1), (2,0), (3,3), (4,2).
    assert list(zip(np.asarray(stack.rows).tolist(), np.asarray(stack.cols).tolist())) == [
        (0, 1), (2, 0), (3, 3), (4, 2)]
    # Hand-summed: a(0,1) = 0.5 + 0.25 + 1.0 = 1.75, a(3,3) = 0.125 + 0.375 = 0.5.
    np.testing.assert_array_equal(np.asarray(stack.weights), [[1.75, 2.0, 0.5, 0.0], [3.0, 0.0, 0.0, 1.5]])
    for m, graph in enumerate((a, b)):
        np.testing.assert_allclose(Edges(stack.rows, stack.cols, stack.weights[m]).to_dense(N),
                                   dense_by_loop(*graph), rtol=0, atol=0)
    mixed = mix_item_graphs(jnp.array([0.25, 0.75]), stack)
    np.testing.assert_allclose(Edges(*mixed).to_dense(N),
                               0.25 * dense_by_loop(*a) + 0.75 * dense_by_loop(*b), rtol=1e-6)
