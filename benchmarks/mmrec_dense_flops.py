"""The dense matrix products of one MMRec training step, counted in MMRec's own program: the
reference our flop counts (``bench_roofline.count_dot_flops``) are compared with.

Runs in the MMRec peer environment of ``../shared/peer/README.md`` (``/tmp/peer``: MMRec's tree
and a torch virtual environment), not in jaxrec's:

    /tmp/peer/venv/bin/python benchmarks/mmrec_dense_flops.py MODEL 'JSON overrides' [MODEL 'JSON' ...]
    e.g. BM3 '{"seed": [999], "n_layers": [1], "dropout": [0.5]}'

Beyond the peer README's edits, MMGCN/MGCN/LGMRec's graph helpers need two more on CPU without
torch_scatter: ``src/utils/utils.py``'s ``from torch_scatter import scatter_add`` replaced by an
``index_add_`` of the same sums, and ``src/models/mgcn.py``'s ``.cuda()`` by ``.to(self.device)``.

For each model: MMRec's config for the dataset (``--dataset``, default lfm2k) with the
overrides, the first hyper-parameter setting, its train data loader, the model built as
``quick_start`` builds it, its ``pre_epoch_processing``, then one batch's ``calculate_loss`` and
``backward()`` under a torch dispatch mode that adds ``2 m n k`` for every dense ``mm``,
``addmm``, ``bmm`` and ``baddbmm`` (matmul and ``nn.Linear`` decompose to these). A product with
a sparse operand (``torch.sparse.mm`` over an adjacency) is counted apart, not by its shape:
its work is its stored entries, as our graph propagation's is. Prints one JSON line per model:
steps per epoch, dense GFLOP per step (forward and backward), the epoch hook's, and the
number of sparse products.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
PRODUCTS = (aten.mm, aten.addmm, aten.bmm, aten.baddbmm)
SPARSE_PRODUCTS = (aten._sparse_addmm, aten._sparse_mm)  # torch.sparse.mm's


class DenseProducts(TorchDispatchMode):
    """Adds ``2 m n k`` per dense matrix product dispatched while active; counts sparse ones."""

    def __init__(self):
        super().__init__()
        self.flops = 0
        self.sparse_products = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        packet = getattr(func, "overloadpacket", None)
        if packet in SPARSE_PRODUCTS:
            self.sparse_products += 1
        elif packet in PRODUCTS:
            a, b = (args[0], args[1]) if packet in (aten.mm, aten.bmm) else (args[1], args[2])
            if a.layout != torch.strided or b.layout != torch.strided:
                self.sparse_products += 1
            else:
                self.flops += 2 * out.numel() * a.shape[-1]
        return out


def count(model_name: str, overrides: dict, dataset: str) -> dict:
    from utils.configurator import Config
    from utils.dataloader import TrainDataLoader
    from utils.dataset import RecDataset
    from utils.logger import init_logger
    from utils.utils import get_model, init_seed

    config = Config(model_name, dataset, {"use_gpu": False, **overrides})
    init_logger(config)
    for key in config["hyper_parameters"]:  # the first setting of each listed hyper-parameter
        value = config[key]
        config[key] = value[0] if isinstance(value, list) else value
    init_seed(config["seed"])
    data = RecDataset(config)
    str(data)  # sets the counts the loaders read, as quick_start's logging does
    train, _, _ = data.split()
    str(train)
    loader = TrainDataLoader(config, train, batch_size=config["train_batch_size"], shuffle=True)
    loader.pretrain_setup()
    model = get_model(config["model"])(config, loader).to(config["device"])
    model.train()
    with DenseProducts() as hook:
        if hasattr(model, "pre_epoch_processing"):
            model.pre_epoch_processing()
    batch = next(iter(loader))
    with DenseProducts() as step:
        loss = model.calculate_loss(batch)
        loss = loss if isinstance(loss, torch.Tensor) else sum(loss)
        loss.backward()
    return {"model": model_name, "dataset": dataset, "overrides": overrides, "steps_per_epoch": len(loader),
            "dense_gflop_per_step": step.flops / 1e9, "epoch_hook_dense_gflop": hook.flops / 1e9,
            "sparse_products_per_step": step.sparse_products}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pairs", nargs="+", metavar="MODEL JSON", help="model names, each followed by its overrides")
    parser.add_argument("--dataset", default="lfm2k")
    parser.add_argument("--src", default="/tmp/peer/mmrec/src", help="MMRec's src folder")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if len(args.pairs) % 2:
        parser.error("give each model its JSON overrides ('{}' for none)")
    torch.set_num_threads(args.threads)
    os.chdir(args.src)
    sys.path.insert(0, args.src)
    for model_name, overrides in zip(args.pairs[::2], args.pairs[1::2]):
        print(json.dumps(count(model_name, json.loads(overrides), args.dataset)), flush=True)


if __name__ == "__main__":
    main()
