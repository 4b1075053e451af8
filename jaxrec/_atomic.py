"""Atomic file writes: a reader (or a writer killed half-way) sees the old file or the new one,
never a half-written one; and :func:`exclusive_lock`, the inter-process lock of a folder that
one writer at a time may replace.

Every writer in jaxrec and in ``experiments/`` goes through :func:`write_atomic`: the bytes go
to a fresh temporary file in the target's folder, which is then renamed over the target
(``os.replace``, atomic on POSIX within one file system). ``durable=True`` also flushes the file
and its folder to disk (``fsync``) so that the rename survives a power cut; that costs a disk
flush per write, which the per-epoch run outputs skip (they are rebuilt from the checkpoint on
resume) and the serving state log and feature files pay.
"""

from __future__ import annotations

import contextlib
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


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike, *, wait: bool = True) -> Iterator[Path]:
    """Hold an exclusive ``flock`` on the file ``path`` for the ``with`` block: one holder at a
    time across processes (and across open handles of one process).

    The file is created on entry and removed on exit while still held, so nothing is left
    behind; a holder that finds, once locked, that the file it opened was removed in between
    (by the previous holder's exit) opens the new one. The kernel drops a lock when its holder
    dies, so a killed holder never leaves it held (only its file, which the next holder reuses).

    Args:
      path: the lock file; its folder must exist.
      wait: block until the lock is free; with False, raise :class:`BlockingIOError` at once
        when another holder has it.
    """
    path = Path(path)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            try:
                current = os.stat(path)
            except FileNotFoundError:
                current = None
        except BaseException:
            os.close(fd)
            raise
        if current is not None and os.path.samestat(os.fstat(fd), current):
            break
        os.close(fd)  # locked a file its holder has just removed: take the one now at ``path``
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)  # while held: no one else can hold the removed file
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


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
