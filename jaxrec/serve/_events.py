"""The serving state on disk: an append-only operation log, snapshots, and the state-dir lock.

Layout of a state folder (``RUN_DIR/serving/`` unless ``jaxrec serve --state DIR``)::

    lock              held (flock) by the one server using this state; holds its pid
    log.jsonl         one JSON record a line, appended and fsync'ed before a request is answered
    snapshot.json     the latest snapshot: its folder, the events it includes, version, ...
    snapshots/NNNNNN  ``Recommender.save`` folders (the newest two are kept)

A log record is either a batch of interactions or one added item::

    {"kind": "events", "first": F, "events": [[user, item], ...]}   events F .. F+n-1
    {"kind": "item", "item_id": I, "features": {"<modality>": [floats]}}

Events are numbered from 0 over the state's whole life; a snapshot records how many of them
(``events_applied``) its model includes, so a restart applies exactly the events after that,
and an item record whose id the snapshot's model already has is skipped. A ``kill -9`` can
leave at most a torn last line, which was never acknowledged (the answer comes after fsync):
it is cut off when the log is opened. A bad line anywhere else is an error naming the line.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from jaxrec import _atomic
from jaxrec.errors import JaxrecError

LOG_NAME = "log.jsonl"
MANIFEST_NAME = "snapshot.json"
SNAPSHOTS_DIR = "snapshots"
LOCK_NAME = "lock"
_KEPT_SNAPSHOTS = 2


class StateError(JaxrecError):
    """The serving state folder is locked, unreadable or inconsistent."""


@dataclass
class LogContents:
    """What :meth:`EventLog.open` read back."""

    events: list[tuple[int, int]] = field(default_factory=list)  # every event, in order
    items: list[tuple[int, dict]] = field(default_factory=list)  # (item_id, features) in order
    torn_bytes: int = 0  # bytes of a torn last line cut off


class StateLock:
    """An exclusive ``flock`` on ``DIR/lock`` (:func:`jaxrec._atomic.lock_file`): one server per
    state folder. The file holds the server's pid and stays when it stops.

    The kernel drops the lock when the process dies, also on ``kill -9``, so a crashed server
    never leaves a stale lock behind.
    """

    def __init__(self, state_dir: Path):
        self.path = Path(state_dir) / LOCK_NAME
        self._locked: _atomic.LockedFile | None = None

    def acquire(self) -> None:
        try:
            self._locked = _atomic.lock_file(self.path, wait=False, record=f"{os.getpid()}\n".encode())
        except _atomic.LockHeld as held:
            holder = held.holder[:64].decode(errors="replace").strip() or "unknown"
            raise StateError(f"{self.path.parent}: another server (pid {holder}) is using this state folder; "
                             "stop it or pass a different --state") from None

    def release(self) -> None:
        if self._locked is not None:
            self._locked.release(remove=False)
            self._locked = None


def write_json_atomic(path: Path, payload: dict) -> None:
    """Writes ``payload`` durably (fsynced file and folder) and atomically: never half-written."""
    _atomic.write_json_atomic(path, payload, durable=True)


class EventLog:
    """The append-only operation log of one state folder (not thread-safe: the caller locks)."""

    def __init__(self, state_dir: Path):
        self.path = Path(state_dir) / LOG_NAME
        self._handle = None
        self.n_events = 0  # events in the log (the next event's number)

    def open(self) -> LogContents:
        """Reads the log back (cutting off a torn last line) and opens it for appending."""
        contents = LogContents()
        if self.path.exists():
            data = self.path.read_bytes()
            good_end = 0
            lines = data.split(b"\n")
            for number, line in enumerate(lines, start=1):
                is_last = number == len(lines)
                if is_last and line == b"":
                    break
                try:
                    if is_last:  # no newline after it: written only in part
                        raise ValueError("no end of line")
                    self._read_record(json.loads(line), contents)
                except (ValueError, KeyError, TypeError) as error:
                    if is_last:
                        contents.torn_bytes = len(line)
                        break
                    raise StateError(f"{self.path}, line {number}: not a valid log record ({error}); "
                                     "the log was changed by something other than jaxrec serve") from None
                good_end += len(line) + 1
            if contents.torn_bytes:
                with open(self.path, "r+b") as handle:
                    handle.truncate(good_end)
                    os.fsync(handle.fileno())
        self.n_events = len(contents.events)
        self._handle = open(self.path, "ab", buffering=0)
        _atomic.fsync_dir(self.path.parent)
        return contents

    def _read_record(self, record: dict, contents: LogContents) -> None:
        if record["kind"] == "events":
            if record["first"] != len(contents.events):
                raise ValueError(f"events start at {record['first']}, expected {len(contents.events)}")
            contents.events.extend((int(u), int(i)) for u, i in record["events"])
        elif record["kind"] == "item":
            contents.items.append((int(record["item_id"]), record["features"]))
        else:
            raise ValueError(f"unknown kind {record['kind']!r}")

    def _append(self, record: dict) -> int:
        """Appends one record and fsyncs; returns the byte offset before it (for :meth:`undo`)."""
        line = (json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n").encode()
        offset = self._handle.seek(0, os.SEEK_END)
        self._handle.write(line)
        os.fsync(self._handle.fileno())
        return offset

    def append_events(self, events: list[tuple[int, int]]) -> int:
        """Durably appends a batch of (user, item) events; returns the first one's number."""
        first = self.n_events
        self._append({"kind": "events", "first": first, "events": [[int(u), int(i)] for u, i in events]})
        self.n_events += len(events)
        return first

    def append_item(self, item_id: int, features: dict[str, list[float]]) -> int:
        """Durably appends an added item; returns the offset to :meth:`undo` it if adding fails."""
        return self._append({"kind": "item", "item_id": int(item_id), "features": features})

    def undo(self, offset: int) -> None:
        """Cuts the log back to ``offset`` (the last record was never acknowledged)."""
        os.ftruncate(self._handle.fileno(), offset)
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


class Snapshots:
    """``Recommender.save`` folders plus ``snapshot.json`` naming the newest complete one."""

    def __init__(self, state_dir: Path):
        self.state_dir = Path(state_dir)
        self.root = self.state_dir / SNAPSHOTS_DIR
        self.manifest_path = self.state_dir / MANIFEST_NAME

    def latest(self) -> dict | None:
        """The manifest of the newest snapshot (with ``path`` made absolute), or None."""
        if not self.manifest_path.exists():
            return None
        try:
            manifest = json.loads(self.manifest_path.read_text())
            manifest["path"] = str(self.state_dir / manifest["folder"])
            int(manifest["events_applied"])
        except (ValueError, KeyError, TypeError) as error:
            raise StateError(f"{self.manifest_path}: not a valid snapshot manifest ({error})") from None
        if not Path(manifest["path"]).is_dir():
            raise StateError(f"{self.manifest_path}: names {manifest['folder']}, which does not exist")
        return manifest

    def write(self, recommender, manifest: dict) -> dict:
        """Saves ``recommender`` into a new folder, then points the manifest at it (atomically).

        A crash before the rename leaves the previous manifest and its folder untouched.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        previous = self.latest()
        number = (int(Path(previous["folder"]).name) + 1) if previous else 1
        folder = Path(SNAPSHOTS_DIR) / f"{number:06d}"
        target = self.state_dir / folder
        if target.exists():  # left by a crash between save and manifest: never referenced
            shutil.rmtree(target)
        recommender.save(target)
        _atomic.fsync_dir(self.root)
        manifest = {**manifest, "folder": str(folder)}
        write_json_atomic(self.manifest_path, manifest)
        self._prune(keep_from=number - _KEPT_SNAPSHOTS + 1)
        return manifest

    def _prune(self, keep_from: int) -> None:
        for child in self.root.iterdir():
            if child.name.isdigit() and int(child.name) < keep_from:
                shutil.rmtree(child, ignore_errors=True)
