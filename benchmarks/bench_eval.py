"""Seconds per full-ranking evaluation of one split with jaxrec.eval (after compilation).

Usage:
  python benchmarks/bench_eval.py                      # lfm2k, tiktok and the large synthetic size
  python benchmarks/bench_eval.py --sizes lfm2k --repeats 20
  python benchmarks/bench_eval.py --sizes large --large-users 20000 --large-items 10000

Sizes:
  lfm2k  the real Last.fm 2K split from ../shared/data/lfm2k (1,858 users x 1,425 items; valid
         4,799 pairs / 1,783 users, test 7,219 pairs / 1,858 users, 44,327 train pairs masked),
         random 64-d embeddings; synthetic pairs of the same sizes when the data is absent.
  tiktok the real TikTok split from ../shared/data/tiktok (9,308 users x 6,710 items; valid
         3,051 pairs, test 6,130 pairs, 59,541 train pairs masked), the same way.
  large  synthetic: 100,000 users x 50,000 items, 64-d, 20 train pairs and 2 held-out pairs
         per user (2M masked pairs, 200k targets).

Each row: host preparation (once per split), the first evaluation (compilation + run), and the
median of ``--repeats`` further evaluations with fresh embeddings (the per-epoch cost), all
with the default metrics (recall, ndcg, precision, map, hit, mrr) at k = 5, 10, 20, 50.

Measured on the project's CPU machine (2 cores, JAX 0.10.2 CPU backend, 2026-11-28), while other
jobs kept the load average at 4-9, so single figures swing by 2-3x between runs; ranges over
several runs (median of 10-30 repeats each, best single repeat in brackets):
  lfm2k valid   prepare 0.01-0.03 s, first call 0.7-5.8 s, per evaluation 0.03-0.10 s (0.03 s)
  lfm2k test    prepare 0.01-0.04 s, first call 0.7-2.3 s, per evaluation 0.05-0.14 s (0.04 s)
  large test    prepare 1.1 s, first call 93 s, per evaluation 70 s (66 s)  [one run, 2 repeats]
Of that lfm2k time, lax.top_k over 1,858 x 1,425 scores (k = 50) was the largest part (23-31 ms
CPU at load 4.5, 2026-12-03). Since then a split whose users have at most
jaxrec.eval._ranking.MAX_RANK_SLOTS (12) held-out items each (lfm2k: 5 valid, 6 test) is ranked
without it, by counting each held-out item's rank (~1.3 ms per slot): lfm2k test 38-48 -> 21 ms CPU
per evaluation (median of 30, load 4.5; score matmul ~4.5 ms, masking ~1 ms, ranks ~8 ms, metrics
~3 ms). MMRec takes about 0.16 s per split evaluation on lfm2k on the same kind of machine
(../shared/anchors: eval_s_valid_plus_test ~ 0.32 s).

2026-12-05, quiet machine (load < 1), median of 20-30 evaluations: the automatic user batch on
CPU went from ~2**24 to ~2**20 score entries per block (jaxrec.eval._evaluate.auto_batch_size),
so the (B, num_items) block stays in cache through the passes after the matmul:
  lfm2k  valid 0.0085 -> 0.0076 s, test 0.0090 -> 0.0081 s   (batch 1783/1858 -> 735)
  tiktok valid 0.106-0.114 -> 0.030-0.032 s, test 0.143-0.150 -> 0.060-0.061 s (batch 2500 -> 156)
  (--batch-size 2500 gives the old layout.) TikTok's valid+test is then 0.095 s against MMRec's
  1.226 s for BPR (../shared/anchors/mmrec_tiktok.json). Synthetic, the same minutes: 20k users x
  10k items 1.6x faster, 5k x 50k 1.3x; at large catalogues each block also reads the whole item
  table, so at least 32 users per block are kept there (5k x 50k and 1k x 1M items, both under
  load 4: B=8 7.7 / 31.8 s, B=16-20 5.5 / 24.6 s, B=32 4.9 / 20.9 s, B=64 4.6 / 20.0 s).

2026-12-05 (later, another VM: AVX-512), the counted ranks read the UNMASKED scores (the excluded
items ahead are gathered and subtracted; the first slot's count carries the NaN check), so no masked
copy and no NaN pass per block. The ranking program alone (split_metric_sums, random-init embeddings
of each config), old vs new alternated in one process, median of 20-30, load 0.6-1.2, same sums:
  tiktok bpr     valid 17.4 -> 12.1 ms, test 33.2 -> 22.4 ms (1.44x, 1.48x)
  tiktok vbpr    valid 24.3 -> 18.1 ms, test 48.6 -> 35.4 ms (1.34x, 1.37x; 129-wide scores)
  tiktok freedom valid 18.3 -> 12.1 ms, test 35.7 -> 23.1 ms (1.51x, 1.54x)
  lfm2k  bpr     valid 5.28 -> 4.89 ms, test 5.34 -> 5.18 ms; vbpr 1.01-1.02x (5-6 slots: the per-slot
  counts dominate there).

2026-12-06 (an Intel VM: family 6 model 167, AVX-512), the rank path reads the metrics off the held-out
items' places (O(S^2) per user instead of MAP's O(max k^2) over a (B, 50) hit matrix) and sums each
slot's count as a float32 product with a ones vector (exact below 2**24; XLA:CPU had materialized an
int32 (B, num_items) array and reduced it in reduce-window passes). This script, old vs new code
alternated twice, median of 30, load < 1.2, same recall@20:
  lfm2k  valid 0.0105 / 0.0102 -> 0.0079 / 0.0080 s, test 0.0116 / 0.0112 -> 0.0087 / 0.0089 s (1.3x)
  tiktok valid 0.0240 / 0.0242 -> 0.0206 / 0.0199 s, test 0.0499 / 0.0471 -> 0.0398 / 0.0398 s (1.2x)
  Metric values on both datasets' splits (scores with planted hits, 288 values): recall, precision, hit
  and MRR identical; 5 NDCG/MAP values differ, by 6.8e-8 relative at most (their float32 sums' order).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import jax
import numpy as np

import jaxrec.eval as jeval

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
# Same-size fakes when the data is absent: users, items, train / valid / test pairs.
REAL_SIZES = {"lfm2k": (1858, 1425, 44327, 4799, 7219), "tiktok": (9308, 6710, 59541, 3051, 6130)}


def real_splits(name: str, seed: int):
    """(num_users, num_items, train, valid, test) pairs of a real split (MMRec layout:
    ``<name>.inter`` with x_label 0/1/2), or same-size fakes when the data is absent."""
    inter = DATA / name / f"{name}.inter"
    if inter.exists():
        table = np.loadtxt(inter, skiprows=1, dtype=np.int64)
        users, items, label = table[:, 0], table[:, 1], table[:, 3]
        pairs = np.stack([users, items], 1)
        return (int(users.max()) + 1, int(items.max()) + 1, pairs[label == 0], pairs[label == 1],
                pairs[label == 2], "real")
    rng = np.random.default_rng(seed)
    num_users, num_items, *counts = REAL_SIZES[name]

    def fake(n):
        return np.stack([rng.integers(0, num_users, n), rng.integers(0, num_items, n)], 1)

    return (num_users, num_items, *(fake(n) for n in counts), "synthetic (data absent)")


def synthetic_splits(num_users: int, num_items: int, train_per_user: int, test_per_user: int,
                     seed: int):
    rng = np.random.default_rng(seed)
    train = np.stack([np.repeat(np.arange(num_users), train_per_user),
                      rng.integers(0, num_items, num_users * train_per_user)], 1)
    test = np.stack([np.repeat(np.arange(num_users), test_per_user),
                     rng.integers(0, num_items, num_users * test_per_user)], 1)
    return train, test


def time_split(label: str, num_users: int, num_items: int, train, target, *, repeats: int,
               dim: int, batch_size: int | None, seed: int) -> float:
    key = jax.random.key(seed)
    start = time.perf_counter()
    split = jeval.prepare_split(num_items=num_items, train_pairs=train, target_pairs=target,
                                batch_size=batch_size)
    prepare_s = time.perf_counter() - start

    def embeddings(step):
        user_key, item_key = jax.random.split(jax.random.fold_in(key, step))
        user_emb = jax.random.normal(user_key, (num_users, dim))
        item_emb = jax.random.normal(item_key, (num_items, dim))
        return jax.block_until_ready((user_emb, item_emb))

    start = time.perf_counter()
    result = jeval.evaluate_prepared(split, *embeddings(0))
    first_s = time.perf_counter() - start
    times = []
    for step in range(1, repeats + 1):
        user_emb, item_emb = embeddings(step)
        start = time.perf_counter()
        jeval.evaluate_prepared(split, user_emb, item_emb)  # returns host floats: synchronous
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    print(f"{label:<12} users {split.num_users:>7}  batch {split.batch_size:>5}  "
          f"prepare {prepare_s:7.3f} s  first call {first_s:7.2f} s  "
          f"per evaluation {median:8.4f} s (median of {repeats}; min {min(times):.4f})  "
          f"recall@20 {result['recall@20']:.4f}", flush=True)
    return median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["lfm2k", "tiktok", "large"],
                        choices=["lfm2k", "tiktok", "large"])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--large-repeats", type=int, default=2)
    parser.add_argument("--large-users", type=int, default=100_000)
    parser.add_argument("--large-items", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"jax {jax.__version__} on {jax.devices()[0].platform} "
          f"({len(jax.devices())} device(s)); dim {args.dim}")
    for name in [size for size in args.sizes if size in REAL_SIZES]:
        num_users, num_items, train, valid, test, source = real_splits(name, args.seed)
        print(f"{name}: {num_users} users x {num_items} items, {source}")
        for label, target in ((f"{name} valid", valid), (f"{name} test", test)):
            time_split(label, num_users, num_items, train, target, repeats=args.repeats,
                       dim=args.dim, batch_size=args.batch_size, seed=args.seed)
    if "large" in args.sizes:
        train, test = synthetic_splits(args.large_users, args.large_items, 20, 2, args.seed)
        print(f"large: {args.large_users} users x {args.large_items} items, "
              f"{len(train)} masked pairs, {len(test)} targets")
        time_split("large test", args.large_users, args.large_items, train, test,
                   repeats=args.large_repeats, dim=args.dim, batch_size=args.batch_size,
                   seed=args.seed)


if __name__ == "__main__":
    main()
