"""Host cost of one epoch's batches per process: the shuffle sampler vs the keyed sampler.

Run:  python benchmarks/bench_keyed_sampler.py [--interactions 1000000] [--batch-size 2048] [--processes 1 2 4]

With ``train.sampler: shuffle`` every process of a multi-process run draws the WHOLE epoch
and keeps its rows; with ``train.sampler: keyed`` it builds only its ``1/P`` of every batch
(``jaxrec.data.KeyedTrainBatches``). Printed: CPU seconds per epoch for one process's share
at each process count (best of 3; CPU time, since wall time inflates on a loaded machine)
and the ratio to the shuffle sampler's whole epoch. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from jaxrec.data import KeyedTrainBatches, TrainBatches


def _pairs(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    n_users, n_items = max(n // 20, 10), max(n // 100, 10)
    keys = np.unique(rng.integers(0, n_users, n, dtype=np.int64) * n_items + rng.integers(0, n_items, n))
    return np.stack([keys // n_items, keys % n_items], 1), n_users, n_items


def _cpu_seconds(function, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        function()
        best = min(best, time.process_time() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--interactions", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    pairs, n_users, n_items = _pairs(args.interactions)
    common = {"n_users": n_users, "n_items": n_items, "batch_size": args.batch_size, "n_neg": 1, "seed": 0}
    shuffle = TrainBatches(pairs[:, 0], pairs[:, 1], **common)
    keyed = KeyedTrainBatches(pairs, **common)
    whole = _cpu_seconds(lambda: list(shuffle.epoch(1)))
    print(f"{len(pairs):,} training pairs, {n_users:,} users, {n_items:,} items, batch {args.batch_size}")
    print(f"shuffle, every process draws the whole epoch: {whole:.3f} CPU s per process per epoch")
    for processes in args.processes:
        share = args.batch_size // processes
        seconds = _cpu_seconds(lambda share=share: keyed.epoch_rows(1, slice(0, share)))
        print(f"keyed, {processes} process(es), {share} rows of each batch: {seconds:.3f} CPU s per process per "
              f"epoch ({seconds / whole:.2f}x shuffle)")


if __name__ == "__main__":
    main()
