"""A run's workdir: everything checked before it is touched, and one run at a time in it.

:func:`~jaxrec.train.train_and_evaluate` works in this order, so that a run that fails on
its input leaves nothing behind (no stub ``checkpoints/`` or ``log.txt``):

1. :func:`check_workdir` -- a read-only look: does the folder hold a run, may it be resumed
   with this config (:func:`check_resumable`), is there anything to resume at all?
2. :func:`check_data` and :func:`check_memory` -- the config against the loaded data:
   cut-offs within the number of items, and the memory an epoch's batches, the parameters
   with their optimizer state and an evaluation batch of scores would take, estimated by
   arithmetic and ``jax.eval_shape`` before anything is allocated and compared with what
   the machine has (:func:`available_memory`).
3. :class:`WorkdirLock` -- an exclusive ``flock`` on ``WORKDIR/.lock`` for the run's life,
   recording the holder's pid, host and start time. A second run on the same folder is
   refused with a message naming the holder. The kernel drops the lock when its process
   dies, so a lock file left by a killed run is stale: the next run takes it over and says
   so. The file is removed when the run ends.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxrec._atomic import LockedFile, LockHeld, LockReplaced, file_in_the_way, lock_file
from jaxrec.errors import ConfigError, ResourceError
from jaxrec.train._config import ExperimentConfig, config_to_dict

LOCK_FILE = ".lock"
CONFIG_FILE = "config.yaml"

# Keys that may differ between a run and its resumption: they change no number of the run.
# train.parallel and train.mesh lay the same computation out on other devices and processes (float
# rounding aside; the batches do not depend on the layout); a checkpoint holds the unpadded state, which restores onto any of them.
RESUMABLE_CHANGES = {"train.checkpoints_to_keep", "train.checkpoint_every", "train.parallel", "train.mesh"}
# Schedules whose learning rate at every step depends on train.epochs: extending such a run
# would not give the longer run.
_EPOCH_SCHEDULES = ("cosine", "warmup_cosine")


# ---- the lock ---------------------------------------------------------------------------------


def _describe(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "holder unknown: its lock file is empty"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
    return f"pid {holder.get('pid')} on {holder.get('host')}, since {since}"


def _parse_holder(record: bytes) -> dict[str, Any] | None:
    """A holder's record (:meth:`WorkdirLock.acquire` writes one JSON line), None if empty or unreadable."""
    try:
        text = record.decode("utf-8", "replace").strip()
        holder = json.loads(text) if text else None
    except ValueError:
        return None
    return holder if isinstance(holder, dict) else None


def _read_holder(fd: int) -> dict[str, Any] | None:
    try:
        return _parse_holder(os.pread(fd, 4096, 0))
    except OSError:
        return None


class WorkdirLock:
    """An exclusive lock on ``workdir`` (created if missing) for as long as it is held.

    Attributes:
      stale_holder: the record of a previous holder that ended without releasing the lock
        (a killed process), taken over by :meth:`acquire`; None otherwise.
    """

    def __init__(self, workdir: str | os.PathLike, name: str = LOCK_FILE):
        # ``name``: the lock file; process I > 0 of a multi-process run holds its own
        # (``.lock.process<I>``) beside process 0's ``.lock``, which any other run checks.
        self.workdir = Path(workdir)
        self.path = self.workdir / name
        self.stale_holder: dict[str, Any] | None = None
        self._locked: LockedFile | None = None

    def acquire(self) -> "WorkdirLock":
        """Take the lock, or raise ConfigError naming the run that holds it."""
        try:
            self.workdir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ConfigError(f"cannot create the workdir {self.workdir}: {error.strerror}") from None
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                  "command": " ".join(sys.argv)[:500]}
        try:
            self._locked = lock_file(self.path, wait=False, record=(json.dumps(record) + "\n").encode())
        except LockHeld as held:
            raise ConfigError(f"{self.workdir} is in use by another run ({_describe(_parse_holder(held.holder))}); "
                              "wait for it to finish, or use another --workdir") from None
        except LockReplaced:
            raise ConfigError(f"could not lock {self.path}: it keeps being replaced by other runs") from None
        except OSError as error:
            raise ConfigError(f"cannot write in the workdir {self.workdir}: {error.strerror}") from None
        self.stale_holder = _parse_holder(self._locked.previous)
        return self

    @staticmethod
    def check_free(workdir: str | os.PathLike) -> None:
        """Raise ConfigError naming the holder if a live run holds ``workdir``'s lock
        (read-only: creates nothing)."""
        path = Path(workdir) / LOCK_FILE
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return  # no lock file: no run holds the folder
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"{Path(workdir)} is in use by another run ({_describe(_read_holder(fd))}); wait for "
                              "it to finish, or use another --workdir") from None
        finally:
            os.close(fd)  # closing drops the probe's shared lock

    def describe_stale(self) -> str | None:
        if self.stale_holder is None:
            return None
        return (f"took over the lock of a run that ended without releasing it ({_describe(self.stale_holder)}; "
                "it is no longer running)")

    def release(self) -> None:
        if self._locked is not None:
            self._locked.release(remove=True)
            self._locked = None

    def __enter__(self) -> "WorkdirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


# ---- the workdir's state, resuming -------------------------------------------------------------


def stored_epochs(workdir: Path) -> list[int]:
    """Epoch counts of the finished checkpoints in ``workdir/checkpoints`` (read-only: Orbax
    names each finished step folder by its number; unfinished ones carry a suffix)."""
    folder = workdir / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit() and p.is_dir())


def _flat(tree: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key not in ("args", "loss_weights", "roles", "synthetic", "space", "grid", "mesh"):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def check_resumable(config: ExperimentConfig, saved_config_path: Path) -> int | None:
    """Refuse a resumption whose config differs from the run's, except in keys that change
    no number (:data:`RESUMABLE_CHANGES`) and a larger ``train.epochs`` (extending a run).

    Returns:
      The run's ``train.epochs`` when the config raises it (an extension), else None.
    """
    old = _epochs_raised_from(config, saved_config_path)
    if old is not None and config.train.schedule in _EPOCH_SCHEDULES:
        raise ConfigError(f"cannot extend {saved_config_path.parent} from {old} to {config.train.epochs} epochs: "
                          f"schedule {config.train.schedule!r} spreads its decay over train.epochs, so the learning "
                          "rate of every step already taken would differ; start a new run instead")
    return old


def reusable_finished_run(config: ExperimentConfig, workdir: Path, *, stopped_early: bool) -> bool:
    """Whether the finished run in ``workdir`` is ``config``'s run as it is: the same config, or
    one whose ``train.epochs`` ``config`` raises but which stopped early (more epochs change
    nothing). False when ``config`` raises the epochs of a run that reached its limit: resuming
    it extends it. Raises the ConfigError of :func:`check_resumable` for any other difference,
    and for an extension its schedule forbids."""
    if _epochs_raised_from(config, workdir / CONFIG_FILE) is None or stopped_early:
        return True
    check_resumable(config, workdir / CONFIG_FILE)
    return False


def _epochs_raised_from(config: ExperimentConfig, saved_config_path: Path) -> int | None:
    """The run's ``train.epochs`` when ``config`` raises it, None when the configs agree; a
    ConfigError for any other difference (:data:`RESUMABLE_CHANGES` aside) or lowered epochs."""
    import yaml

    if not saved_config_path.exists():
        return None
    saved = _flat(yaml.safe_load(saved_config_path.read_text()) or {})
    current = _flat(config_to_dict(config))
    changed = sorted(k for k in set(saved) | set(current)
                     if saved.get(k) != current.get(k) and k not in RESUMABLE_CHANGES)
    detail = lambda keys: "; ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in keys)  # noqa: E731
    if changed and changed != ["train.epochs"]:
        raise ConfigError(f"cannot resume {saved_config_path.parent}: the config differs from the run's "
                          f"({detail(changed)}); only train.epochs may be raised to extend a run")
    if not changed:
        return None
    old, new = saved["train.epochs"], current["train.epochs"]
    if not isinstance(old, int) or new < old:
        raise ConfigError(f"cannot resume {saved_config_path.parent}: {detail(changed)}; train.epochs can only be "
                          "raised (to extend a run), not lowered")
    return old


def check_run_folder_path(workdir: Path) -> None:
    """A ConfigError when a file stands where the run (or search) folder, or a folder above
    it, would have to be: checked before anything is created."""
    blocking = file_in_the_way(Path(workdir))
    if blocking is not None:
        raise ConfigError(f"cannot use {workdir} as a run folder: {blocking} is a file, not a folder")


def check_workdir(config: ExperimentConfig, workdir: Path, resume: bool, *, locked: bool = False) -> None:
    """A read-only look at ``workdir`` before anything is loaded or written.

    Raises:
      ConfigError: a file where the folder must be; the folder is locked by a live run;
        ``resume`` with nothing to resume (no folder, or a folder holding no run); a folder
        holding a run without ``resume``; a config that differs from the run's.
    """
    check_run_folder_path(workdir)
    if not locked:  # (a second flock by the holder itself would conflict with its own)
        WorkdirLock.check_free(workdir)
    epochs = stored_epochs(workdir)
    if resume:
        if not workdir.is_dir() or (not epochs and not (workdir / CONFIG_FILE).exists()):
            why = " (it does not exist)" if not workdir.exists() else ""
            raise ConfigError(f"nothing to resume: {workdir} holds no run{why}; drop --resume to start a new run "
                              "there, or check --workdir")
        if epochs:
            check_resumable(config, workdir / CONFIG_FILE)
    elif epochs:
        raise ConfigError(f"{workdir} already holds a run (checkpoint after epoch {epochs[-1]}); pass --resume to "
                          "continue it, or use another --workdir")


# ---- the config against the data, and memory ----------------------------------------------------


def check_data(config: ExperimentConfig, dataset) -> None:
    """Settings that only make sense for some data or machine: every cut-off within the
    items (and below a cold-start split's held-out items), a batch that divides over the
    devices in a parallel mode, the sharded mode in a multi-process run."""
    t = config.train
    if t.parallel == "sharded":
        from jaxrec.train._mesh import check_mesh

        check_mesh(t)
    else:
        from jaxrec.train import _distributed

        _distributed.check_parallel_mode(t.parallel)  # before the run folder exists (StepRunner checks it too)
    if t.parallel not in ("none", "sharded"):
        n = len(jax.local_devices())
        if t.batch_size % n:
            raise ConfigError(f"train.batch_size {t.batch_size} does not divide over {n} devices in "
                              f"train.parallel={t.parallel!r} mode; use a multiple of {n}")
    too_large = [k for k in config.eval.ks if k > dataset.n_items]
    if too_large:
        raise ConfigError(f"eval.ks has {', '.join(map(str, too_large))}, but the dataset has only "
                          f"{dataset.n_items} items: a top-{too_large[0]} list cannot be formed (use cut-offs up to "
                          f"{dataset.n_items})")
    if dataset.metadata.get("split_method") == "cold_start_items":
        from jaxrec.train._data import candidate_items

        # A split ranks only its held-out items: at a cut-off of that many, every metric is trivially 1.
        fewest = min(((len(candidate_items(dataset, split)), split) for split in ("valid", "test")), key=lambda c: c[0])
        too_large = [k for k in config.eval.ks if k >= fewest[0]]
        if too_large:
            raise ConfigError(f"eval.ks has {', '.join(map(str, too_large))}, but the cold-start {fewest[1]} split "
                              f"ranks only its {fewest[0]} held-out items: at a cut-off that large every item is "
                              f"recommended (use cut-offs below {fewest[0]}, or a larger data.split.holdout)")


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def available_memory() -> int:
    """Bytes of memory this process can still take: ``MemAvailable`` of ``/proc/meminfo``,
    lowered to the cgroup's limit minus its usage where one is set (containers); the free
    physical pages (``os.sysconf``) where ``/proc`` is absent."""
    available = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
                break
    except OSError:
        pass
    if available is None:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return sys.maxsize
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        limit, usage = _read_int(limit_file), _read_int(usage_file)
        if limit is not None and usage is not None and limit < 2**60:
            available = min(available, max(limit - usage, 0))
    return available


def _device_memory() -> int | None:
    """The first device's memory limit where the backend reports one (GPUs), else None."""
    try:
        stats = jax.local_devices()[0].memory_stats()
    except Exception:  # noqa: BLE001 -- backends without memory stats
        return None
    return int(stats["bytes_limit"]) if stats and stats.get("bytes_limit") else None


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def _refuse(setting: str, need: int, what: str, have: int, where: str, advice: str) -> None:
    if need > have:
        raise ResourceError(f"{setting} would need {_gib(need)} for {what}, more than the {_gib(have)} available "
                            f"{where}; {advice}")


def check_batch_memory(config: ExperimentConfig, dataset) -> None:
    """An epoch's batches, stacked on the host and again on the device, against the memory.

    ``ceil(n_train / B)`` batches of ``B`` rows (the last padded), each row ``users``,
    ``pos_items``, ``weights`` and ``n_negatives`` negatives of 4 bytes.
    """
    t = config.train
    n_train = max(int(dataset.split_sizes()["train"]), 1)
    steps = math.ceil(n_train / t.batch_size)
    need = 2 * steps * t.batch_size * (3 + t.n_negatives) * 4
    _refuse(f"train.batch_size={t.batch_size}", need,
            f"an epoch's batches ({steps} batch(es) of {t.batch_size} rows for {n_train:,} training interactions, "
            "on the host and on the device)", available_memory(), "on this machine",
            f"use a smaller train.batch_size (at most {n_train:,} covers the data in one batch)")


def check_memory(experiment) -> None:
    """The parameters with their optimizer state (about twice over during an update: the
    state and its gradients) and one evaluation batch of scores, against the memory of
    the host and, where the backend reports it, of the device."""
    config, dataset = experiment.config, experiment.dataset
    state_bytes = sum(math.prod(leaf.shape) * np.dtype(leaf.dtype).itemsize
                      for leaf in jax.tree.leaves(experiment.target))
    have, where = available_memory(), "on this machine"
    device = _device_memory()
    if device is not None and device < have:
        have, where = device, "on the device"
    args = ", ".join(f"{k}={v}" for k, v in config.model.args.items()) or "defaults"
    _refuse(f"model {config.model.name!r} (model.args: {args})", 2 * state_bytes,
            f"its {experiment.n_params:,} parameters and optimizer state ({_gib(state_bytes)}, twice over during "
            f"an update) with {dataset.n_users:,} users and {dataset.n_items:,} items", have, where,
            "use smaller embeddings (model.args) or check that user and item ids are dense")
    # One evaluation batch: a (users, items) float32 score block, masked and ranked (~3 copies).
    from jaxrec.eval import check_batch_size

    split = dataset.interactions.split
    eval_users = max(int(np.unique(dataset.interactions.users[split == code]).size) for code in (1, 2))
    users = check_batch_size(config.eval.batch_size, dataset.n_items, max(eval_users, 1))
    setting = (f"eval.batch_size={config.eval.batch_size}" if config.eval.batch_size is not None
               else f"eval.batch_size (automatic: {users} users)")
    _refuse(setting, 3 * users * dataset.n_items * 4,
            f"a batch of scores ({users:,} users x {dataset.n_items:,} items)", have, where,
            "use a smaller eval.batch_size")
