"""Orbax checkpoints of a run: the latest few, and the best by validation.

Layout: ``WORKDIR/checkpoints/<epochs_done>/{state, meta}`` (absolute paths, as Orbax
requires). ``state`` is the :class:`~jaxrec.train.TrainState` pytree (params, optimizer
state, step, PRNG key); ``meta`` is JSON: the epoch counter, early-stopping state, history
so far and timings. One Orbax manager keeps the newest ``keep`` checkpoints plus the one
saved at the best validation epoch (each save at a new best is tagged, and the highest tag
is preserved). Orbax writes a step to a temporary folder and renames it when complete, so a
killed process leaves either a whole checkpoint or none. Saves are synchronous: when
:meth:`Checkpoints.save` returns, the checkpoint is on disk.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from jaxrec.errors import ConfigError

_BEST_TAG = "best_at"


class Checkpoints:
    """The checkpoints of one run.

    Args:
      directory: the checkpoint folder (made absolute).
      keep: how many of the latest checkpoints to keep (the best one is kept as well).
      read_only: open existing checkpoints without creating or deleting anything.
    """

    def __init__(self, directory: str | os.PathLike, *, keep: int = 2, read_only: bool = False):
        self.directory = Path(directory).expanduser().resolve()
        policy = policies.AnyPreservationPolicy([
            policies.LatestN(keep),
            policies.BestN(get_metric_fn=lambda metrics: metrics[_BEST_TAG], n=1,
                           keep_checkpoints_without_metrics=False),
        ])
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy, enable_async_checkpointing=False, create=not read_only,
            read_only=read_only, cleanup_tmp_directories=not read_only, save_interval_steps=0 if read_only else 1)
        absl_logger = logging.getLogger("absl")
        level = absl_logger.level
        if read_only:  # Orbax warns that a read-only manager is read-only
            absl_logger.setLevel(logging.ERROR)
        try:
            self._manager = ocp.CheckpointManager(self.directory, options=options)
        finally:
            absl_logger.setLevel(level)

    def epochs(self) -> list[int]:
        """Epoch counts (epochs completed) of the stored checkpoints."""
        return sorted(self._manager.all_steps())

    def last_epoch(self) -> int | None:
        """The newest checkpoint's epoch count, or None."""
        return self._manager.latest_step()

    def save(self, epochs_done: int, state, meta: dict[str, Any], *, is_best: bool) -> None:
        """Write ``state`` and ``meta`` as checkpoint ``epochs_done``.

        A checkpoint of the same number (a resumed run redoing an epoch whose checkpoint
        was lost) is replaced.
        """
        host_state = jax.tree.map(np.asarray, jax.device_get(state))
        if epochs_done in self._manager.all_steps():
            self._manager.delete(epochs_done)
        self._manager.save(
            epochs_done,
            args=ocp.args.Composite(state=ocp.args.StandardSave(host_state),
                                    meta=ocp.args.JsonSave(meta)),
            metrics={_BEST_TAG: float(epochs_done)} if is_best else None,
            force=True)
        self._manager.wait_until_finished()

    def restore(self, target_state, epochs_done: int | None = None):
        """``(state, meta)`` of checkpoint ``epochs_done`` (default: the newest).

        Args:
          target_state: the state's abstract tree (``jax.eval_shape`` of the initializer),
            giving the pytree structure (optax's named tuples) and dtypes to restore into.
          epochs_done: which checkpoint.

        Raises:
          ConfigError: no such checkpoint, or one whose shapes do not match the model built
            from the config.
        """
        self._manager.wait_until_finished()
        epochs_done = self._manager.latest_step() if epochs_done is None else epochs_done
        if epochs_done is None or epochs_done not in self._manager.all_steps():
            which = "checkpoint" if epochs_done is None else f"checkpoint after epoch {epochs_done}"
            raise ConfigError(f"no {which} in {self.directory} (found: {self.epochs() or 'none'})")
        try:
            restored = self._manager.restore(epochs_done, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target_state), meta=ocp.args.JsonRestore()))
        except (ValueError, KeyError, TypeError) as error:
            raise ConfigError(f"checkpoint {self.directory / str(epochs_done)} does not match the model built "
                              f"from the config ({error})") from None
        state = jax.tree.unflatten(jax.tree.structure(target_state), jax.tree.leaves(restored["state"]))
        return state, dict(restored["meta"])

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
