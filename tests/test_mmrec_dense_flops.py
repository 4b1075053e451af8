"""``benchmarks/mmrec_dense_flops.py``'s product counter (the torch side of the flop comparison
with MMRec), against hand-counted products."""

import importlib.util
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="the counter runs in MMRec's torch environment (the image extra's torch)")

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "mmrec_dense_flops.py"
_spec = importlib.util.spec_from_file_location("mmrec_dense_flops", _PATH)
mmrec_dense_flops = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mmrec_dense_flops)


def test_a_linear_layer_forward_and_backward_counts_its_three_products():
    n, d_in, d_out = 7, 5, 3
    layer = torch.nn.Linear(d_in, d_out)
    x = torch.randn(n, d_in, requires_grad=True)
    with mmrec_dense_flops.DenseProducts() as counter:
        layer(x).square().sum().backward()
    # y = x W^T + b (addmm), dL/dx = g W (mm), dL/dW = g^T x (mm): n * d_in * d_out multiply-adds each
    assert counter.flops == 3 * 2 * n * d_in * d_out
    assert counter.sparse_products == 0


def test_batched_products_count_every_batch_entry_and_sparse_ones_are_apart():
    a, b = torch.randn(4, 2, 6), torch.randn(4, 6, 3)
    adjacency = torch.eye(5).to_sparse()
    with mmrec_dense_flops.DenseProducts() as counter:
        torch.bmm(a, b)
        torch.sparse.mm(adjacency, torch.randn(5, 2))
        torch.mm(adjacency, torch.randn(5, 2))
    assert counter.flops == 2 * 4 * 2 * 3 * 6
    assert counter.sparse_products == 2
