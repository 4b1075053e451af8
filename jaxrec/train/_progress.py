"""Progress bars (epochs and batches, with loss and items/s) and a log a user can follow.

Log lines go to the terminal (above the bars) unless quiet, and always to ``log.txt``.
"""

from __future__ import annotations

import math
import os
import sys
import time

from tqdm.auto import tqdm


class Progress:
    """Epoch and batch bars plus timestamped log lines (to ``log_path`` and, unless quiet,
    to stderr)."""

    def __init__(self, log_path: str | os.PathLike | None, *, quiet: bool = False):
        self.quiet = quiet
        self._log_file = open(log_path, "a") if log_path is not None else None  # noqa: SIM115
        self._epochs = None
        self._batches = None
        self._batch_start = 0.0
        self._items = 0

    def log(self, message: str) -> None:
        stamped = f"[{time.strftime('%H:%M:%S')}] {message}"
        if self._log_file is not None:
            self._log_file.write(stamped + "\n")
            self._log_file.flush()
        if not self.quiet:
            tqdm.write(stamped, file=sys.stderr)

    def start_epochs(self, total: int, done: int, steps_per_epoch: int) -> None:
        if self.quiet:
            return
        self._epochs = tqdm(total=total, initial=done, desc="epochs", unit="epoch", position=0, file=sys.stderr, disable=None,
                            dynamic_ncols=True)
        self._batches = tqdm(total=steps_per_epoch, desc="batches", unit="batch", position=1, leave=False, disable=None,
                             file=sys.stderr, dynamic_ncols=True)

    def start_batches(self) -> None:
        self._batch_start = time.perf_counter()
        self._items = 0
        if self._batches is not None:
            self._batches.reset()

    def batches_done(self, n: int, items: int, loss: float) -> None:
        self._items += items
        if self._batches is not None:
            seconds = max(time.perf_counter() - self._batch_start, 1e-9)
            self._batches.set_postfix(loss=f"{loss:.4f}", items_per_s=f"{self._items / seconds:,.0f}", refresh=False)
            self._batches.update(n)

    def epoch_done(self, row: dict, valid_metric: str, early_stopping) -> None:
        valid = row.get("valid", {}).get(valid_metric)
        terms = ", ".join(f"{k} {v:.4f}" for k, v in row["terms"].items())
        text = f"epoch {row['epoch']}: loss {row['loss']:.4f} ({terms}), {row['train_seconds']:.2f} s"
        if valid is not None:
            best = early_stopping.best_value
            text += (f" | valid {valid_metric} {valid:.4f} (best {best:.4f} at epoch {early_stopping.best_epoch}"
                     f"{', stopping' if early_stopping.stop else ''}), eval {row['eval_seconds']:.2f} s")
        self.log(text)
        if self._epochs is not None:
            postfix = {"loss": f"{row['loss']:.4f}"}
            if valid is not None and math.isfinite(early_stopping.best_value):
                postfix[valid_metric] = f"{valid:.4f}"
                postfix["best"] = f"{early_stopping.best_value:.4f}@{early_stopping.best_epoch}"
            self._epochs.set_postfix(postfix, refresh=False)
            self._epochs.update(1)

    def close(self) -> None:
        for bar in (self._batches, self._epochs):
            if bar is not None:
                bar.close()
        self._batches = self._epochs = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
