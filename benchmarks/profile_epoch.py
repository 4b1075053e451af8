"""Where one compiled training epoch spends its CPU time, op by op (XLA:CPU, jax.profiler).

Usage (from the project root):
    python benchmarks/profile_epoch.py --config experiments/configs/lfm2k/bm3.yaml
        [--data ../shared/data/lfm2k] [--epochs 5] [--top 30] [--hlo epoch.hlo.txt] [--set KEY=VALUE ...]

Builds the model, optimizer and runner from the config as ``jaxrec train`` does
(``make_runner``), compiles one epoch (the scanned call over ``steps_per_epoch`` batches),
runs it once to warm up, then traces ``--epochs`` more calls of it with ``jax.profiler`` and
reads the trace back (``jax.profiler.ProfileData``). Prints, per epoch:

- the summed duration of the XLA thunks (fusions, dots, scatters, ...) on the runtime's
  threads, next to the process CPU seconds of the same calls (the difference is the
  executor's own work and waiting);
- the ``--top`` thunks by time, with their calls per epoch and the JAX operation that
  produced them (the HLO ``op_name``);
- the same time grouped by producing operation (the op_name's last parts), which names the
  model code behind each share: e.g. ``transpose(jvp(BM3.loss_terms))/.../dot_general`` is a
  matrix product of the backward pass.

Durations under load (other processes on the cores) inflate; compare shares, or profile
before/after in the same minutes. ``--hlo`` writes the compiled epoch's HLO text, to look up a
thunk by name (``%name = ...``).
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import statistics
import tempfile
import time
from pathlib import Path

import jax
from jax.profiler import ProfileData

from _epoch_program import epoch_program  # benchmarks/, beside this script

ROOT = Path(__file__).resolve().parents[1]
# Trace events that are the executor's bookkeeping, not a thunk's work (a while loop's event
# spans its body's thunks, which are counted themselves).
_NOT_THUNKS = ("ThunkExecutor", "SlinkyThreadPool", "ThreadpoolListener", "end: ", "while.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "experiments" / "configs" / "lfm2k" / "bm3.yaml"))
    parser.add_argument("--data", default=str(ROOT / ".." / "shared" / "data" / "lfm2k"))
    parser.add_argument("--epochs", type=int, default=5, help="traced epochs (the figures are per epoch)")
    parser.add_argument("--top", type=int, default=30, help="thunks listed")
    parser.add_argument("--hlo", default=None, help="write the compiled epoch's HLO text here")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override as `jaxrec train --set` takes it (repeatable), e.g. "
                             "loss_weights.modality_bpr=1e-4 to profile a term a grid turns on")
    args = parser.parse_args()

    program = epoch_program(args.config, args.data, args.set)
    config, exp, runner = program.config, program.experiment, program.runner
    state, ctx, batches = program.state, program.ctx, program.batches
    hlo = program.compiled().as_text()
    if args.hlo:
        Path(args.hlo).write_text(hlo)
    op_names = {}
    for line in hlo.splitlines():
        found = re.match(r'\s*(?:ROOT )?%?([\w.\-]+) = .*?op_name="([^"]*)"', line)
        if found:
            op_names[found.group(1)] = found.group(2)

    state, _ = runner.run(state, ctx, batches)
    jax.block_until_ready(state)
    cpu = []
    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir)
        for _ in range(args.epochs):
            tick = time.process_time()
            state, _ = runner.run(state, ctx, batches)
            jax.block_until_ready(state)
            cpu.append(time.process_time() - tick)
        jax.profiler.stop_trace()
        profile = ProfileData.from_file(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)[0])

    seconds, calls = collections.Counter(), collections.Counter()
    for plane in profile.planes:
        for line in plane.lines:
            if "XLAEigen" not in line.name:  # the runtime's threads
                continue
            for event in line.events:
                if not event.name.startswith(_NOT_THUNKS):
                    seconds[event.name] += event.duration_ns / 1e9 / args.epochs
                    calls[event.name] += 1 / args.epochs
    total = sum(seconds.values())
    print(f"{config.model.name}: {exp.steps_per_epoch} steps of {config.train.batch_size} per epoch; "
          f"{args.epochs} traced epochs; load average {os.getloadavg()[0]:.1f}")
    print(f"  per epoch: thunks {total * 1e3:.1f} ms summed over the runtime's threads; process CPU "
          f"{statistics.median(cpu) * 1e3:.1f} ms (median)")
    print(f"  top {args.top} thunks (ms/epoch, calls/epoch, producing operation):")
    for name, value in seconds.most_common(args.top):
        print(f"  {value * 1e3:8.2f} {calls[name]:6.0f}x  {name:32s} {_short(op_names.get(name, ''))}")
    grouped = collections.Counter()
    for name, value in seconds.items():
        grouped[_short(op_names.get(name, "")) or "(no op_name)"] += value
    print("  by producing operation (ms/epoch, share):")
    for name, value in grouped.most_common(args.top):
        print(f"  {value * 1e3:8.2f} {100 * value / total:5.1f}%  {name}")


def _short(op_name: str) -> str:
    # jit(run_steps)/while/body/closed_call/<the step's own path>: keep the step's path.
    return re.sub(r"^jit\(run_steps\)/while/body/(closed_call/)?", "", op_name)


if __name__ == "__main__":
    main()
