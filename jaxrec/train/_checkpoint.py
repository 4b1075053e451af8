"""Orbax checkpoints of a run: the latest few, and the best by validation.

Layout: ``WORKDIR/checkpoints/<epochs_done>/{state, meta}`` (absolute paths, as Orbax
requires). ``state`` is the :class:`~jaxrec.train.TrainState` pytree (params, optimizer
state, step, PRNG key); ``meta`` is JSON: the epoch counter, early-stopping state, history
so far and timings, and a digest of the state's bytes. One Orbax manager keeps the newest
``keep`` checkpoints plus the one saved at the best validation epoch (each save at a new
best is tagged, and the highest tag is preserved). Orbax writes a step to a temporary
folder and renames it when complete, so a killed process leaves either a whole checkpoint
or none. Saves are synchronous: when :meth:`Checkpoints.save` returns, the checkpoint is
on disk.

Never saved: a state with a NaN or an infinity (:meth:`Checkpoints.save` refuses it).
Verified on restore: a checkpoint whose files cannot be read, or whose arrays no longer
hash to the digest written with them (a truncated or corrupted file), is *damaged*;
:meth:`Checkpoints.restore` without an epoch falls back to the newest intact checkpoint
and lists the damaged ones in :attr:`Checkpoints.damaged`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from jaxrec.errors import ConfigError, TrainingDivergedError
from jaxrec.train._state import leaf_name, non_finite_leaves

_BEST_TAG = "best_at"
_DIGEST = "state_digest"


class DamagedCheckpointError(ConfigError):
    """A checkpoint whose files cannot be read back, or whose arrays do not hash to the
    digest saved with them."""


def state_digest(host_state) -> str:
    """BLAKE2b over every leaf's path, dtype, shape and bytes (a host pytree)."""
    digest = hashlib.blake2b(digest_size=16)
    for path, leaf in jax.tree_util.tree_flatten_with_path(host_state)[0]:
        array = np.ascontiguousarray(leaf)
        digest.update(f"{leaf_name(path)}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def _quiet_closed_loop_reports() -> None:
    """After a failed read, TensorStore still completes the reads it had started and calls
    back into the event loop Orbax has closed meanwhile; Python reports each such callback
    as an "Exception ignored" traceback on stderr, at a moment of the threads' choosing.
    From the first damaged checkpoint on, those reports (and only those) are dropped."""
    previous = sys.unraisablehook
    if getattr(previous, "_jaxrec_closed_loop_filter", False):
        return

    def hook(unraisable):
        error = unraisable.exc_value
        if not (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"):
            previous(unraisable)

    hook._jaxrec_closed_loop_filter = True
    sys.unraisablehook = hook


def _short(error: Exception) -> str:
    """The gist of a storage error (TensorStore appends its whole JSON spec)."""
    text = str(error).split(" [tensorstore_spec=")[0]
    return f"{type(error).__name__}: {text if len(text) <= 300 else text[:300] + '...'}"


def _shapes(leaves) -> Counter:
    return Counter((tuple(leaf.shape), np.dtype(leaf.dtype).str) for leaf in leaves)


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
            self._manager = ocp.CheckpointManager(
                self.directory, options=options,
                item_handlers={"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()})
        finally:
            absl_logger.setLevel(level)
        # The manager starts a thread that removes unfinished temporary folders; wait for it
        # here, so that it can never outlive an early exit (it would raise "cannot schedule new
        # futures after interpreter shutdown" while the interpreter exits).
        self._await_cleanup()
        self.damaged: list[tuple[int, str]] = []

    def _await_cleanup(self) -> None:
        wait = getattr(self._manager, "_maybe_await_cleanup_tmp_directory", None)
        if wait is not None:
            wait()

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
        bad = non_finite_leaves(host_state)
        if bad:
            raise TrainingDivergedError(f"refusing to save non-finite state as checkpoint {epochs_done}: "
                                        f"{', '.join(bad)} hold NaN or infinite values")
        meta = {**meta, _DIGEST: state_digest(host_state)}
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
        """``(state, meta)`` of checkpoint ``epochs_done``, or of the newest intact one.

        Args:
          target_state: the state's abstract tree (``jax.eval_shape`` of the initializer),
            giving the pytree structure (optax's named tuples) and dtypes to restore into.
          epochs_done: which checkpoint; None: the newest that is intact, skipping damaged
            ones (listed in :attr:`damaged` as ``(epochs_done, reason)``, newest first).

        Raises:
          ConfigError: no such checkpoint, or one whose shapes do not match the model built
            from the config; :class:`DamagedCheckpointError` when the checkpoint asked for
            (or every checkpoint) is damaged.
        """
        self._manager.wait_until_finished()
        available = self.epochs()
        if epochs_done is not None:
            if epochs_done not in available:
                raise ConfigError(f"no checkpoint after epoch {epochs_done} in {self.directory} "
                                  f"(found: {available or 'none'})")
            return self._restore_verified(target_state, epochs_done)
        if not available:
            raise ConfigError(f"no checkpoint in {self.directory} (found: none)")
        self.damaged = []
        for epoch in reversed(available):
            try:
                return self._restore_verified(target_state, epoch)
            except DamagedCheckpointError as error:
                self.damaged.append((epoch, str(error)))
        raise DamagedCheckpointError(
            f"no intact checkpoint in {self.directory}; damaged: "
            + ", ".join(str(epoch) for epoch, _ in self.damaged)
            + " (" + "; ".join(reason for _, reason in self.damaged) + ")")

    def _restore_verified(self, target_state, epochs_done: int):
        where = self.directory / str(epochs_done)
        expected = _shapes(jax.tree.leaves(target_state))
        try:
            saved = self._manager.item_metadata(epochs_done)["state"]
            saved = _shapes(jax.tree.leaves(getattr(saved, "tree", saved)))
        except Exception as error:  # noqa: BLE001 -- any failure to read the metadata is damage
            _quiet_closed_loop_reports()
            raise DamagedCheckpointError(f"checkpoint {where} is damaged: its metadata cannot be read "
                                         f"({_short(error)})") from None
        if saved != expected:
            missing = sorted((expected - saved).elements())[:3]
            extra = sorted((saved - expected).elements())[:3]
            raise ConfigError(f"checkpoint {where} does not match the model built from the config (the "
                              f"model has arrays {missing} that the checkpoint lacks, the checkpoint has "
                              f"{extra}); was the config changed?")
        try:
            restored = self._manager.restore(epochs_done, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target_state), meta=ocp.args.JsonRestore()))
        except Exception as error:  # noqa: BLE001 -- shapes match, so an unreadable array is damage
            _quiet_closed_loop_reports()
            raise DamagedCheckpointError(f"checkpoint {where} is damaged: an array cannot be read "
                                         f"({_short(error)})") from None
        state = jax.tree.unflatten(jax.tree.structure(target_state), jax.tree.leaves(restored["state"]))
        meta = dict(restored["meta"])
        digest = meta.pop(_DIGEST, None)
        if digest is not None and state_digest(jax.tree.map(np.asarray, state)) != digest:
            raise DamagedCheckpointError(f"checkpoint {where} is damaged: its arrays do not match the digest "
                                         "written with them (a corrupted file)")
        return state, meta

    def close(self) -> None:
        self._await_cleanup()
        self._manager.wait_until_finished()
        self._manager.close()
