"""Atomic file writes: a reader (or a writer killed half-way) sees the old file or the new one,
never a half-written one; and :func:`lock_file` / :func:`exclusive_lock`, the inter-process
lock of a folder that one writer at a time may replace (also the run folder's and the serving
state folder's locks).

Every writer in jaxrec and in ``experiments/`` goes through :func:`write_atomic`: the bytes go
to a fresh temporary file in the target's folder, which is then renamed over the target
(``os.replace``, atomic on POSIX within one file system). ``durable=True`` also flushes the file
and its folder to disk (``fsync``) so that the rename survives a power cut; that costs a disk
flush per write, which the per-epoch run outputs skip (they are rebuilt from the checkpoint on
resume) and the serving state log and feature files pay.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

Writer = Callable[[BinaryIO], object]


def file_in_the_way(folder: Path) -> Path | None:
    """The nearest existing one of ``folder`` and its parents when it is not a folder: a file
    standing where ``folder``, or a folder above it, would have to be created. None when the
    nearest existing one is a folder (or nothing exists)."""
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            return None if candidate.is_dir() else candidate
    return None


class LockHeld(BlockingIOError):
    """:func:`lock_file` without waiting found the lock held; ``holder`` is what its holder wrote
    into the file (its record; empty when it wrote none)."""

    def __init__(self, path: Path, holder: bytes):
        super().__init__(f"{path} is locked by another holder")
        self.path, self.holder = path, holder


class LockReplaced(OSError):
    """:func:`lock_file` kept locking files that their holders removed at once (100 times)."""


@dataclasses.dataclass
class LockedFile:
    """An exclusive ``flock`` held on ``path`` (:func:`lock_file`) until :meth:`release`.

    Attributes:
      path: the lock file.
      previous: what the file held when it was locked: the record of a holder that ended
        without removing it (a killed process), empty for a new file.
    """

    path: Path
    previous: bytes
    _fd: int | None

    def release(self, *, remove: bool = True) -> None:
        """Drop the lock (once; later calls do nothing). ``remove``: delete the file first, while
        still holding it, so that nothing is left behind and no one else locks a removed file."""
        if self._fd is None:
            return
        if remove:
            self.path.unlink(missing_ok=True)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None


def lock_file(path: str | os.PathLike, *, wait: bool = True, record: bytes | None = None) -> LockedFile:
    """Take an exclusive ``flock`` on the file ``path`` (created if missing): one holder at a
    time across processes (and across open handles of one process).

    A holder releasing with ``remove`` deletes the file while still holding it; one that finds,
    once locked, that the file it opened was removed in between opens the one now at ``path``.
    The kernel drops a lock when its holder dies, so a killed holder never leaves it held (only
    its file and record, which the next holder gets as :attr:`LockedFile.previous`).

    Args:
      path: the lock file; its folder must exist.
      wait: block until the lock is free; with False, raise :class:`LockHeld` (a
        :class:`BlockingIOError`, carrying the holder's record) at once when another holder has it.
      record: bytes that replace the file's contents once locked (who holds it), for a refused
        process to read.

    Raises:
      LockHeld: ``wait`` is False and another holder has the lock.
      LockReplaced: 100 files in a row were removed between opening and locking them.
      OSError: the file cannot be opened or created.
    """
    path = Path(path)
    for _ in range(100):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise LockHeld(path, _read_record(fd)) from None
            try:
                current = os.stat(path)
            except FileNotFoundError:
                current = None
        except BaseException:
            os.close(fd)
            raise
        if current is not None and os.path.samestat(os.fstat(fd), current):
            previous = _read_record(fd)
            if record is not None:
                os.ftruncate(fd, 0)
                os.pwrite(fd, record, 0)
            return LockedFile(path, previous, fd)
        os.close(fd)  # locked a file its holder has just removed: take the one now at ``path``
    raise LockReplaced(f"could not lock {path}: it keeps being replaced")


def _read_record(fd: int) -> bytes:
    try:
        return os.pread(fd, 4096, 0)
    except OSError:
        return b""


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike, *, wait: bool = True) -> Iterator[Path]:
    """:func:`lock_file` for the ``with`` block, the file removed on exit (nothing is left
    behind). With ``wait=False`` a held lock raises :class:`LockHeld` (a
    :class:`BlockingIOError`) at once."""
    locked = lock_file(path, wait=wait)
    try:
        yield locked.path
    finally:
        locked.release(remove=True)


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (a rename inside it) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike, data: str | bytes | Writer, *, durable: bool = False) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename.

    Args:
      path: the target; its folder is created if missing.
      data: text (written as UTF-8), bytes, or a function that writes into the open binary
        handle (e.g. ``lambda h: np.savez(h, x=x)``).
      durable: fsync the file before the rename and the folder after it.

    Returns:
      ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A fresh name opened with "x" (not mkstemp, whose files are private 0600): the file gets
    # the usual permissions of the user's umask. The pid and a random tag keep two writers of
    # the same target apart.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as handle:
            if callable(data):
                data(handle)
            else:
                handle.write(data.encode("utf-8") if isinstance(data, str) else data)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)
    return path


def write_json_atomic(path: str | os.PathLike, payload, *, indent: int | None = 1, durable: bool = False,
                      **dumps_kwargs) -> Path:
    """``json.dumps(payload)`` plus a final newline, written by :func:`write_atomic`."""
    return write_atomic(path, json.dumps(payload, indent=indent, **dumps_kwargs) + "\n", durable=durable)
