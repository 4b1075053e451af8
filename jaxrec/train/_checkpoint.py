"""Orbax checkpoints of a run: the latest few, and the best by validation.

Layout: ``WORKDIR/checkpoints/<epochs_done>/{state, meta}`` (absolute paths, as Orbax
requires). ``state`` is the :class:`~jaxrec.train.TrainState` pytree (params, optimizer
state, step, PRNG key); ``meta`` is JSON: the epoch counter, early-stopping state, history
so far and timings, the state's logical shapes and a checksum of its values.

**Sharded arrays are written where they live.** :meth:`Checkpoints.save` takes the state as
it is -- host arrays, one device's arrays, or global ``jax.Array`` s row-sharded over a
``(data, model)`` mesh that spans several processes -- and hands it to Orbax unchanged: in a
multi-process run every process calls ``save`` and writes the shards its devices hold (one
copy of each replicated array), Orbax's primary process commits the step after all have
written. No process ever holds the whole state. A mesh's tables are stored with their
padding rows (zero; see :mod:`jaxrec.train._mesh`); ``meta`` keeps the logical shapes.
:meth:`Checkpoints.restore` reads into any layout: the abstract target's shardings say
where each device's rows go (another process count, another mesh, one device), and a
table's stored row count may differ from the target's (Orbax's non-strict restore pads
with zero rows or drops the padding rows), so a checkpoint of a 2-process ``{data: 2,
model: 2}`` run restores into one process on one device or onto a ``{data: 1, model: 4}``
mesh. One Orbax manager keeps the newest
``keep`` checkpoints plus the one saved at the best validation epoch (each save at a new
best is tagged, and the highest tag is preserved). Orbax writes a step to a temporary
folder and renames it when complete, so a killed process leaves either a whole checkpoint
or none. Saves are synchronous: when :meth:`Checkpoints.save` returns, the checkpoint is
on disk.

Never saved: a state with a NaN or an infinity (:meth:`Checkpoints.save` refuses it; the
check runs where the arrays are -- NumPy for host memory, a compiled reduction on an
accelerator or over other processes' shards -- nothing is gathered).
Verified on restore: a checkpoint whose files cannot be read, or whose arrays no longer
match the checksum written with them (a truncated or corrupted file), is *damaged*. The
checksum (:func:`state_checksum`) is computed where the arrays are (the same two paths) and
is the same for any sharding and any padding, so it is checked after a restore onto another mesh;
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
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from jaxrec.errors import ConfigError, TrainingDivergedError
from jaxrec.train._state import host_view, leaf_name, non_finite_leaves

_BEST_TAG = "best_at"
_DIGEST = "state_digest"  # checkpoints written before the checksum: BLAKE2b of the host state
_CHECKSUM = "state_checksum"
_SHAPES = "state_shapes"


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


def _as_words(x):
    """``x`` as uint32 words, row-major: a 4-byte element's bits; a 2-byte element's bits, zero-extended;
    a 1-byte element or a bool, its value mod 2^32 (an int8 -1 is 0xFFFFFFFF); an 8-byte element's
    two words, low word first."""
    x = jnp.asarray(x)
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    size = np.dtype(x.dtype).itemsize
    if x.dtype == jnp.bool_ or size == 1:
        return x.astype(jnp.uint32)
    if size == 2:
        return jax.lax.bitcast_convert_type(x, jnp.uint16).astype(jnp.uint32)
    return jax.lax.bitcast_convert_type(x, jnp.uint32)  # 4 bytes: same shape; 8 bytes: a trailing 2


@jax.jit
def _checksums(leaves):
    out = []
    for leaf in leaves:
        words = _as_words(leaf).reshape(-1)
        index = jnp.arange(words.size, dtype=jnp.uint32)
        rotated = (words << 13) | (words >> 19)
        out.append(jnp.stack([jnp.sum(words * (2 * index + 1), dtype=jnp.uint32),
                              jnp.sum(rotated * (index * jnp.uint32(0x9E3779B1) | 1), dtype=jnp.uint32)]))
    return out


def _host_words(view: np.ndarray) -> np.ndarray:
    """:func:`_as_words` of a host array, with NumPy: the same words (a 64-bit leaf first takes
    the dtype JAX would give it, float32 or int32 unless 64-bit mode is on, as
    ``jnp.asarray`` does before :func:`_checksums`)."""
    view = np.asarray(view, dtype=jax.dtypes.canonicalize_dtype(view.dtype))
    size = view.dtype.itemsize
    if view.dtype == np.bool_ or size == 1:
        return view.astype(np.uint32).reshape(-1)
    if size == 2:
        return view.view(np.uint16).astype(np.uint32).reshape(-1)
    return np.ascontiguousarray(view).view(np.uint32).reshape(-1)  # 8 bytes: two words each


def _host_checksum(view: np.ndarray, chunk: int = 1 << 20) -> tuple[int, int]:
    """:func:`_checksums`' two sums of one leaf, in NumPy's uint32 arithmetic (wrapping, mod
    2^32 as XLA's), over chunks of ``chunk`` words (bounded temporary memory)."""
    words = _host_words(view)
    first = second = np.uint32(0)
    with np.errstate(over="ignore"):
        for start in range(0, words.size, chunk):
            w = words[start:start + chunk]
            index = (np.arange(start, start + w.size, dtype=np.uint64) & 0xFFFFFFFF).astype(np.uint32)
            rotated = (w << np.uint32(13)) | (w >> np.uint32(19))
            first = first + np.sum(w * (np.uint32(2) * index + np.uint32(1)), dtype=np.uint32)
            second = second + np.sum(rotated * ((index * np.uint32(0x9E3779B1)) | np.uint32(1)), dtype=np.uint32)
    return int(first), int(second)


def state_checksum(state) -> str:
    """A checksum of a state's values that does not depend on where they are.

    Per leaf, over its elements' uint32 words ``w_i`` (their bits; :func:`_as_words`; row-major index ``i``):
    ``sum_i w_i (2i + 1)`` and ``sum_i rotl(w_i, 13) (i * 0x9E3779B1 | 1)``, both mod 2^32.
    The weights are odd, so any single changed word changes the first sum. Integer sums do not
    depend on the order of addition, so the value is the same for any sharding; zero rows
    appended to a table add zero, so a mesh's padded table has the checksum of its logical
    rows. A state in host memory (every array a NumPy array or on this process's CPU devices,
    :func:`~jaxrec.train._state.host_view`) is summed with NumPy, without compiling anything;
    any other by one compiled reduction where the arrays are (a collective for global arrays:
    every process calls it). Both give the same sums (tested).
    """
    leaves = jax.tree.leaves(state)
    views = [host_view(leaf) for leaf in leaves]
    if all(view is not None for view in views):
        sums = [_host_checksum(view) for view in views]
    else:
        sums = jax.device_get(_checksums(leaves)) if leaves else []
    return "".join(f"{int(a):08x}{int(b):08x}" for a, b in sums)


def _gathered(x) -> np.ndarray:
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def _with_sharding(abstract):
    """Leaves without a sharding read onto this process's first device."""
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree.map(lambda leaf: leaf if getattr(leaf, "sharding", None) is not None
                        else jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=device), abstract)


def _quiet_closed_loop_reports() -> None:
    """After a failed read, TensorStore still completes the reads it had started and calls
    back into the event loop Orbax has closed meanwhile; Python reports each such callback
    as an "Exception ignored" traceback on stderr, at a moment of the threads' choosing (also
    before Orbax's error reaches us). From the first checkpoint read on, those reports (and
    only those: a RuntimeError "Event loop is closed") are dropped."""
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
        # best_fn makes Orbax write each step's metrics (the best tag) beside it and read them back
        # when the folder is reopened: without it the tags live only in this process, and a resumed
        # run's first rotation deleted the best checkpoint saved by the previous session.
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy, best_fn=lambda metrics: metrics[_BEST_TAG], best_mode="max",
            enable_async_checkpointing=False, create=not read_only,
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

    def save(self, epochs_done: int, state, meta: dict[str, Any], *, is_best: bool,
             logical_shapes: list[tuple[int, ...]] | None = None) -> None:
        """Write ``state`` and ``meta`` as checkpoint ``epochs_done``.

        Args:
          state: the train state as it is: host arrays, device arrays, or global arrays sharded
            over several processes (then every process calls ``save`` and writes its shards).
          logical_shapes: the state's leaf shapes without a mesh's padding rows (default: the
            arrays' shapes), stored in ``meta`` for the shape check on restore.

        A checkpoint of the same number (a resumed run redoing an epoch whose checkpoint
        was lost) is replaced.
        """
        bad = non_finite_leaves(state)
        if bad:
            raise TrainingDivergedError(f"refusing to save non-finite state as checkpoint {epochs_done}: "
                                        f"{', '.join(bad)} hold NaN or infinite values")
        leaves = jax.tree.leaves(state)
        shapes = logical_shapes if logical_shapes is not None else [np.shape(leaf) for leaf in leaves]
        meta = {**meta, _CHECKSUM: state_checksum(state),
                _SHAPES: [[list(map(int, shape)), np.dtype(leaf.dtype).str] for shape, leaf in zip(shapes, leaves)]}
        meta.pop(_DIGEST, None)
        if epochs_done in self._manager.all_steps():
            self._manager.delete(epochs_done)
        absl_logger = logging.getLogger("absl")
        level = absl_logger.level
        if not is_best:  # Orbax warns of every save without metrics when it tracks the best
            absl_logger.setLevel(logging.ERROR)
        try:
            self._manager.save(
                epochs_done,
                args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
                metrics={_BEST_TAG: float(epochs_done)} if is_best else None,
                force=True)
        finally:
            absl_logger.setLevel(level)
        self._manager.wait_until_finished()

    def restore(self, target_state, epochs_done: int | None = None, *, read_as=None):
        """``(state, meta)`` of checkpoint ``epochs_done``, or of the newest intact one.

        Args:
          target_state: the state's abstract tree (``jax.eval_shape`` of the initializer) at
            its logical shapes, giving the pytree structure (optax's named tuples) and dtypes
            to restore into.
          read_as: the same tree with the shapes and shardings to read into (a mesh's padded,
            row-sharded layout: each device reads its own rows); default ``target_state``,
            leaves without a sharding on this process's first device.
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
            return self._restore_verified(target_state, epochs_done, read_as)
        if not available:
            raise ConfigError(f"no checkpoint in {self.directory} (found: none)")
        self.damaged = []
        for epoch in reversed(available):
            try:
                return self._restore_verified(target_state, epoch, read_as)
            except DamagedCheckpointError as error:
                self.damaged.append((epoch, str(error)))
        raise DamagedCheckpointError(
            f"no intact checkpoint in {self.directory}; damaged: "
            + ", ".join(str(epoch) for epoch, _ in self.damaged)
            + " (" + "; ".join(reason for _, reason in self.damaged) + ")")

    def _restore_verified(self, target_state, epochs_done: int, read_as=None):
        where = self.directory / str(epochs_done)
        expected = _shapes(jax.tree.leaves(target_state))
        _quiet_closed_loop_reports()  # before the read: a damaged one's late callbacks can come first
        try:
            meta = dict(self._manager.restore(epochs_done, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])
            if _SHAPES in meta:  # the logical shapes (a mesh's tables are stored with padding rows)
                saved = Counter((tuple(shape), dtype) for shape, dtype in meta[_SHAPES])
            else:  # written before the logical shapes were stored: the arrays' own shapes
                saved = self._manager.item_metadata(epochs_done)["state"]
                saved = _shapes(jax.tree.leaves(getattr(saved, "tree", saved)))
        except Exception as error:  # noqa: BLE001 -- any failure to read the metadata is damage
            raise DamagedCheckpointError(f"checkpoint {where} is damaged: its metadata cannot be read "
                                         f"({_short(error)})") from None
        if saved != expected:
            missing = sorted((expected - saved).elements())[:3]
            extra = sorted((saved - expected).elements())[:3]
            raise ConfigError(f"checkpoint {where} does not match the model built from the config (the "
                              f"model has arrays {missing} that the checkpoint lacks, the checkpoint has "
                              f"{extra}); was the config changed?")
        read_as = _with_sharding(target_state if read_as is None else read_as)
        try:
            # Not strict: a table's stored rows (a mesh's padding included) may differ from the
            # rows read into; missing rows read as zero, extra (padding) rows are dropped.
            restored = self._manager.restore(epochs_done, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(read_as, strict=False)))
        except Exception as error:  # noqa: BLE001 -- shapes match, so an unreadable array is damage
            raise DamagedCheckpointError(f"checkpoint {where} is damaged: an array cannot be read "
                                         f"({_short(error)})") from None
        state = jax.tree.unflatten(jax.tree.structure(target_state), jax.tree.leaves(restored["state"]))
        checksum, digest = meta.pop(_CHECKSUM, None), meta.pop(_DIGEST, None)
        meta.pop(_SHAPES, None)
        if checksum is not None:
            intact = state_checksum(state) == checksum
        elif digest is not None:  # an older checkpoint: BLAKE2b of the logical host state
            intact = state_digest(jax.tree.unflatten(jax.tree.structure(target_state), [
                _gathered(leaf)[:np.shape(t)[0]] if np.ndim(t) else _gathered(leaf)
                for leaf, t in zip(jax.tree.leaves(state), jax.tree.leaves(target_state))])) == digest
        else:
            intact = True
        if not intact:
            raise DamagedCheckpointError(f"checkpoint {where} is damaged: its arrays do not match the checksum "
                                         "written with them (a corrupted file)")
        return state, meta

    def tag_best(self, epochs_done: int, target_state, *, read_as=None) -> bool:
        """Rewrite checkpoint ``epochs_done`` with the best tag when it has none on disk (written
        before the tags were stored: a reopened manager then saw no best, and its next save's
        rotation deleted it); True when rewritten. Call it on resume with the run's best epoch."""
        if epochs_done not in self.epochs() or (self.directory / str(epochs_done) / "metrics").exists():
            return False
        state, meta = self._restore_verified(target_state, epochs_done, read_as)
        self.save(epochs_done, state, meta, is_best=True,
                  logical_shapes=[np.shape(leaf) for leaf in jax.tree.leaves(target_state)])
        return True

    def close(self) -> None:
        self._await_cleanup()
        self._manager.wait_until_finished()
        self._manager.close()
