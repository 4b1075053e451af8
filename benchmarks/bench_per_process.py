"""Loading a prepared dataset on 2 processes: each reading its shard of the train records
(``data.per_process_read: true``) vs each reading all of them (``false``).

Run:  python benchmarks/bench_per_process.py [--interactions 2000000] [--processes 2] [--train-epochs 0]

A synthetic dataset is prepared once (``jaxrec data prepare``'s writer, array_record files)
under ``--dir``; then, for each setting, ``--processes`` processes join one ``jax.distributed``
run on 127.0.0.1 (CPU) and load it as ``jaxrec train`` does (``jaxrec.train._per_process.load``).
Printed per process: CPU seconds of the load, peak RSS (``getrusage``), train records read,
and a digest of the loaded dataset (interactions and features): the digests must agree
between settings and processes (the same dataset, so the same training). With
``--train-epochs N`` each setting also runs ``jaxrec train`` (BPR, ``train.parallel:
sharded``) on the processes and prints its test recall@20. Nothing is asserted beyond the
digests; timings are CPU time (wall time inflates on a loaded machine).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _child(args) -> None:
    """One process: join the run, load, print a JSON line."""
    from jaxrec.train import _distributed, initialize_distributed
    from jaxrec.train._config import DataConfig
    from jaxrec.train._per_process import load

    initialize_distributed(args.coordinator, args.processes, args.process_id)
    config = DataConfig(path=str(args.path), per_process_read=args.setting == "true")
    _distributed.barrier("bench:start")
    start = time.process_time()
    dataset, report = load(config)
    seconds = time.process_time() - start
    digest = hashlib.blake2b(digest_size=8)
    inter = dataset.interactions
    for array in (inter.users, inter.items, inter.split, *(m.features for m in dataset.modalities.values())):
        digest.update(np.ascontiguousarray(array).tobytes())
    n_train = int((inter.split == 0).sum())
    print(json.dumps({"process": args.process_id, "cpu_s": seconds,
                      "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "read": report.records_read[args.process_id] if report else n_train, "of": n_train,
                      "digest": digest.hexdigest()}), flush=True)
    _distributed.barrier("bench:end")


def _launch(command_for, processes: int, env: dict, timeout: float) -> list[str]:
    children = [subprocess.Popen(command_for(i), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for i in range(processes)]
    try:
        outputs = [child.communicate(timeout=timeout) for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait(30)
    for child, (_, err) in zip(children, outputs):
        if child.returncode:
            sys.exit(f"a process failed ({child.returncode}):\n{err[-3000:]}")
    return [out for out, _ in outputs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--interactions", type=int, default=2_000_000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--dir", type=Path, default=ROOT / "experiments" / "runs" / "bench_per_process")
    parser.add_argument("--train-epochs", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--path", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--setting", help=argparse.SUPPRESS)
    parser.add_argument("--coordinator", help=argparse.SUPPRESS)
    parser.add_argument("--process-id", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return _child(args)

    from jaxrec.data import make_synthetic, prepare_tfds

    name = f"synthetic{args.interactions}"
    path = args.dir / "data" / name
    if not path.exists():
        tick = time.perf_counter()
        n = args.interactions
        dataset = make_synthetic(max(n // 40, 10), max(n // 200, 10), n_interactions=n, seed=0,
                                 dims={"visual": 32, "text": 16})
        prepare_tfds(dataset, args.dir / "data", name=name)
        print(f"prepared {path} in {time.perf_counter() - tick:.0f} s")
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    print(f"load average {os.getloadavg()[0]:.1f}; {args.processes} processes")
    digests = set()
    for setting in ("true", "false", "true", "false"):  # alternated: the load drifts
        port = _free_port()
        outputs = _launch(lambda i: [sys.executable, __file__, "--child", "--path", str(path), "--setting", setting,
                                     "--coordinator", f"127.0.0.1:{port}", "--processes", str(args.processes),
                                     "--process-id", str(i)], args.processes, env, args.timeout)
        for line in outputs:
            row = json.loads(line.strip().splitlines()[-1])
            digests.add(row["digest"])
            print(f"per_process_read={setting:5s} process {row['process']}: {row['cpu_s']:6.1f} CPU s, "
                  f"peak RSS {row['rss_mib']:6.0f} MiB, read {row['read']:,} of {row['of']:,} train records, "
                  f"dataset digest {row['digest']}")
    print("the same dataset on every process and setting" if len(digests) == 1 else f"DIGESTS DIFFER: {digests}")
    if args.train_epochs:
        for setting in ("true", "false"):
            config = args.dir / f"bpr_{setting}.yaml"
            config.write_text(yaml.safe_dump({
                "model": {"name": "bprmf", "args": {"embedding_size": 32}},
                "data": {"path": str(path), "per_process_read": setting == "true"},
                "train": {"epochs": args.train_epochs, "batch_size": 4096, "learning_rate": 0.005,
                          "parallel": "sharded", "sampler": "keyed", "seed": 1}}))
            workdir = args.dir / f"run_{setting}"
            shutil.rmtree(workdir, ignore_errors=True)
            port = _free_port()
            _launch(lambda i: [sys.executable, "-m", "jaxrec.cli.main", "train", str(config), "--workdir",
                               str(workdir), "--quiet", "--coordinator", f"127.0.0.1:{port}",
                               "--num-processes", str(args.processes), "--process-id", str(i)],
                    args.processes, env, args.timeout)
            metrics = json.loads((workdir / "metrics.json").read_text())
            print(f"per_process_read={setting}: test recall@20 {metrics['test']['recall@20']:.4f}; "
                  f"data_read {metrics.get('data_read')}")


if __name__ == "__main__":
    main()
