"""Load times of jaxrec's readers: the real lfm2k folder and synthetic files of 1M / 10M rows.

Run:  python benchmarks/bench_readers.py [--lfm2k ../shared/data/lfm2k] [--rows 1000000]

lfm2k: ``read_mmrec`` with its og-ids and social files, first call in a fresh interpreter
(after imports) and best of 5 warm calls. Synthetic: an MMRec ``.inter`` (4 integer columns),
a MovieLens-1M style ``ratings.dat`` (``::``) and a RecBole ``.inter`` (string tokens) of
``--rows`` rows written to a temporary folder. Wall-clock seconds on whatever machine runs
this; nothing here is asserted.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

_COLD = """
import time, sys
t0 = time.perf_counter()
from jaxrec.data import read_mmrec
t1 = time.perf_counter()
read_mmrec(sys.argv[1])
t2 = time.perf_counter()
print(f"{t1 - t0:.3f} {t2 - t1:.3f}")
"""


def best_of(function, repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def synthetic_files(folder: Path, rows: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    users = rng.integers(0, max(rows // 50, 1), rows)
    items = rng.integers(0, max(rows // 200, 1), rows)
    ratings = rng.integers(1, 6, rows)
    times = rng.integers(900_000_000, 1_000_000_000, rows)
    mmrec = folder / "syn"
    mmrec.mkdir()
    np.savetxt(mmrec / "syn.inter", np.stack([users, items, ratings, rng.integers(0, 3, rows)], 1), fmt="%d",
               delimiter="\t", header="userID\titemID\trating\tx_label", comments="")
    movielens = folder / "ml"
    movielens.mkdir()
    np.savetxt(movielens / "ratings.dat", np.stack([users + 1, items + 1, ratings, times], 1), fmt="%d",
               delimiter="::")
    recbole = folder / "rb"
    recbole.mkdir()
    lines = "\n".join(f"u{u}\ti{i}\t{r}\t{t}" for u, i, r, t in zip(users.tolist(), items.tolist(),
                                                                    ratings.tolist(), times.tolist()))
    (recbole / "rb.inter").write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + lines + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lfm2k", type=Path, default=Path(__file__).resolve().parents[1] / "../shared/data/lfm2k")
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000])
    args = parser.parse_args()

    import warnings

    from jaxrec.data import read_mmrec, read_movielens, read_recbole

    if (args.lfm2k / "lfm2k.inter").exists():
        cold = subprocess.run([sys.executable, "-c", _COLD, str(args.lfm2k)], capture_output=True, text=True,
                              check=True).stdout.split()
        warm = best_of(lambda: read_mmrec(args.lfm2k))
        print(f"lfm2k read_mmrec: first call {float(cold[1]):.3f} s (after {float(cold[0]):.2f} s of imports), "
              f"warm best of 5 {warm:.3f} s")
    else:
        print(f"lfm2k not found at {args.lfm2k}: skipped")

    for rows in args.rows:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            synthetic_files(folder, rows)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # random pairs repeat: the duplicate warning is expected
                for label, call in (("mmrec .inter", lambda: read_mmrec(folder / "syn")),
                                    ("movielens ratings.dat", lambda: read_movielens(folder / "ml")),
                                    ("recbole .inter (tokens)", lambda: read_recbole(folder / "rb"))):
                    seconds = best_of(call, repeat=2)
                    print(f"{rows:,} rows {label:<24} {seconds:6.2f} s = {rows / seconds / 1e6:5.2f} M rows/s")


if __name__ == "__main__":
    main()
