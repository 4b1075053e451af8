"""The serving process without HTTP: a Recommender, its durable state and its online learner.

:class:`Service` is what ``jaxrec serve`` runs behind its routes:

- reads go through :class:`~jaxrec.serve._batcher.MicroBatcher` s (one per kind of call) on a
  single model thread, so concurrent requests share one jitted call;
- writes are logged first (``_events.EventLog``: appended and fsync'ed before the answer);
  an added item becomes rankable at once, events wait for the online learner;
- the learner thread applies pending events with ``Recommender.update`` every
  ``update_every_events`` events or ``update_every_seconds`` after the oldest pending one,
  then snapshots (``Recommender.save`` + ``snapshot.json``) every ``snapshot_every_updates``
  updates. A restart loads the latest snapshot, re-adds logged items it lacks and applies the
  events after its ``events_applied``: nothing acknowledged is lost, nothing applied twice.

Deviation worth knowing: an added item is applied when it arrives, events when the learner
runs, so a model can contain an item logged after events it has not learned yet; a restart
reproduces that order (items first, then the pending events).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jaxrec.errors import JaxrecError
from jaxrec.serve import _events
from jaxrec.serve._batcher import MicroBatcher
from jaxrec.serve._monitor import DriftMonitor, LatencyTimeline, QualityMonitor


@dataclass(frozen=True)
class ServeOptions:
    """Knobs of ``jaxrec serve`` (each one a command-line flag of the same name)."""

    max_batch: int = 64  # most requests per jitted call
    max_wait_ms: float = 1.0  # how long a batch's first request waits for company
    update_every_events: int = 256  # learner runs once this many events are pending ...
    update_every_seconds: float = 10.0  # ... or the oldest pending event is this old
    max_update_events: int = 65_536  # most events one update takes
    snapshot_every_updates: int = 1  # snapshot after every N-th update (and on shutdown)
    hit_window_seconds: float = 1800.0  # online hit rate: how long a served list can be hit
    sample_seconds: float = 5.0  # one point of the latency / hit-rate timeline per interval
    max_k: int = 1000  # largest k a request may ask for

    def __post_init__(self):
        for name in ("max_batch", "update_every_events", "max_update_events", "snapshot_every_updates", "max_k"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("max_wait_ms", "update_every_seconds", "hit_window_seconds", "sample_seconds"):
            value = float(getattr(self, name))
            if not (value >= 0 and np.isfinite(value)) or (name == "sample_seconds" and value == 0):
                raise ValueError(f"--{name.replace('_', '-')} must be a finite number > 0, got {value}")


class InputError(ValueError):
    """A request that names a field wrongly; ``status`` is the HTTP status to answer."""

    def __init__(self, field: str, message: str, status: int = 422):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.status = status


def _refused_item(refused: JaxrecError) -> InputError:
    """The request error for an item the model refuses (its field, else ``features``)."""
    return InputError(getattr(refused, "field", None) or "features", str(refused))


class Service:
    """One served model with its state folder (see the module doc). Call :meth:`start` first."""

    def __init__(self, run_dir: str | Path, state_dir: str | Path | None = None,
                 options: ServeOptions = ServeOptions(), *, clock=time.time):
        self.run_dir = Path(run_dir).expanduser().resolve()
        self.state_dir = Path(state_dir).expanduser().resolve() if state_dir else self.run_dir / "serving"
        self.options = options
        self.clock = clock
        self.started_at = clock()
        self._lock = _events.StateLock(self.state_dir)
        self.log = _events.EventLog(self.state_dir)
        self.snapshots = _events.Snapshots(self.state_dir)
        self._mutate = threading.Lock()  # add_items / update / save: one at a time
        self._log_lock = threading.Lock()  # log appends and the pending list
        self._wake = threading.Condition(self._log_lock)
        self._stopping = False
        self._pending: list[tuple[int, int]] = []
        self._pending_since: float | None = None
        self.events_applied = 0
        self.updates: list[dict] = []  # every update of this state's life: event range, version, seconds
        self.updates_since_snapshot = 0
        self.last_update_error: str | None = None
        self.last_snapshot_error: str | None = None
        self.update_seconds: list[float] = []  # durations of this process's updates (for /metrics)
        self.n_users_known = 0
        self._model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jaxrec-model")
        self._learner: threading.Thread | None = None
        self.batchers: dict[str, MicroBatcher] = {}
        self.on_batch = None  # set by the HTTP layer: (kind, size) -> None
        self.on_update = None  # set by the HTTP layer: (seconds) -> None

    # ------------------------------------------------------------------ life cycle
    def start(self) -> None:
        """Locks the state, loads the newest snapshot (or the run), replays the log's tail."""
        from jaxrec.serve import Recommender

        if not self.run_dir.is_dir():
            raise _events.StateError(f"{self.run_dir}: no such run folder")
        loaded = None
        if not self.state_dir.exists():  # a new state: check the run loads before creating anything
            loaded = Recommender.load(self.run_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._lock.acquire()
        try:
            manifest = self.snapshots.latest()
            if manifest or loaded is None:
                loaded = Recommender.load(manifest["path"] if manifest else self.run_dir)
            self.recommender = loaded
            if manifest:  # the items the newest snapshot holds (an idle stop then writes no copy of it)
                self._snapshot_items = int(self.recommender.n_items)
            self.training = self._training_view(self.recommender)
            contents = self.log.open()
            if manifest:
                self.events_applied = int(manifest["events_applied"])
                self.updates = list(manifest.get("updates", []))
            if self.events_applied > len(contents.events):
                raise _events.StateError(f"{self.snapshots.manifest_path}: the snapshot includes "
                                         f"{self.events_applied} events but {self.log.path} holds only "
                                         f"{len(contents.events)}")
            readded = 0
            for item_id, features in contents.items:
                if item_id >= self.recommender.n_items:
                    self._add_to_model(item_id, {k: np.asarray(v, np.float32)[None] for k, v in features.items()})
                    readded += 1
            self._pending = list(contents.events[self.events_applied:])
            self._pending_since = self.clock() if self._pending else None
            users = [u for u, _ in contents.events]
            self.n_users_known = max([self.recommender.n_users, *(u + 1 for u in users)])
            self.quality = QualityMonitor(self.training["item_counts"], window_seconds=self.options.hit_window_seconds)
            self.quality.set_catalog_size(self.recommender.n_items)
            self.drift = DriftMonitor(self.training["features"])
            for _, features in contents.items:  # every item added over the state's life
                self.drift.record_added({k: np.asarray(v, np.float64)[None] for k, v in features.items()})
            self.timeline = LatencyTimeline()
            self.replayed = {"events": len(self._pending), "items": readded, "torn_bytes": contents.torn_bytes}
        except BaseException:
            self.log.close()
            self._lock.release()
            raise
        self._learner = threading.Thread(target=self._learn, name="jaxrec-learner", daemon=True)
        self._learner.start()

    @staticmethod
    def _training_view(recommender) -> dict:
        """Item popularity and features the model was trained on, for the quality and drift monitors.

        Popularity is the model's item counts (train split, plus events a snapshot has learned)
        over the items it was trained with; the added items are the cold ones.
        """
        snap = recommender.snapshot  # one version for all three (an update may land meanwhile)
        n_items = int(snap.n_items - len(snap.added_items))
        return {"n_items": n_items, "item_counts": np.array(snap.item_counts[:n_items]),
                "features": recommender.training_features()}

    @property
    def feature_widths(self) -> dict[str, int]:
        return dict(self.recommender.feature_dims)

    def start_batchers(self) -> None:
        """Starts the micro-batchers on the running event loop (from the HTTP app's start-up)."""
        options = self.options
        for kind, run in (("recommend", self._recommend_batch), ("fold_in", self._fold_in_batch),
                          ("similar", self._similar_batch)):
            batcher = MicroBatcher(run, max_batch=options.max_batch, max_wait=options.max_wait_ms / 1e3,
                                   executor=self._model_thread,
                                   on_batch=(lambda size, kind=kind: self.on_batch and self.on_batch(kind, size)))
            batcher.start()
            self.batchers[kind] = batcher

    async def stop_batchers(self) -> None:
        for batcher in self.batchers.values():
            await batcher.stop()

    def shutdown(self, snapshot: bool = True) -> None:
        """Stops the learner, snapshots what it applied (events still pending stay in the log)."""
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        if self._learner is not None:
            self._learner.join()
        try:
            if snapshot and (self.updates_since_snapshot or self.snapshots.latest() is None
                             or self.recommender.n_items > self._snapshot_items):
                self.snapshot()
        finally:
            self._model_thread.shutdown(wait=True)
            self.log.close()
            self._lock.release()

    # ------------------------------------------------------------------ reads (model thread)
    def _consistent(self, call):
        """``call()`` and the version it answered from: the call is repeated in the rare case an
        update was published while it ran (versions only grow, so equal before and after means
        the call read that version)."""
        for _ in range(3):
            version = self.recommender.version
            result = call()
            if self.recommender.version == version:
                return result, int(version)
        return result, int(self.recommender.version)  # updates back to back: the newest one or the one before

    def _recommend_batch(self, payloads: list[tuple[int, int, bool]]) -> list:
        """Each payload ``(user, k, exclude_seen)`` -> ``(items, scores, version)``."""
        results = [None] * len(payloads)
        for flag in (True, False):
            rows = [n for n, p in enumerate(payloads) if p[2] is flag]
            if not rows:
                continue
            users = np.asarray([payloads[n][0] for n in rows], np.int64)
            k = max(payloads[n][1] for n in rows)
            (items, scores), version = self._consistent(
                lambda: self.recommender.recommend(users, k=k, exclude_seen=flag))
            now = self.clock()
            for row, n in enumerate(rows):
                results[n] = (*self._trim(items[row], scores[row], payloads[n][1]), version)
                self.quality.record_served(payloads[n][0], results[n][0], now)
        return results

    def _fold_in_batch(self, payloads: list[tuple[list[int], int]]) -> list:
        """Each payload ``(history, k)`` -> ``(items, scores, version)``."""
        (items, scores), version = self._consistent(
            lambda: self.recommender.fold_in([p[0] for p in payloads], k=max(p[1] for p in payloads)))
        now = self.clock()
        results = []
        for row, (_, want) in enumerate(payloads):
            results.append((*self._trim(items[row], scores[row], want), version))
            self.quality.record_served(None, results[-1][0], now)
        return results

    def _similar_batch(self, payloads: list[tuple[int, int]]) -> list:
        """Each payload ``(item, k)`` -> ``(items, scores)``."""
        items, scores = self.recommender.similar_items(np.asarray([p[0] for p in payloads], np.int64),
                                                       k=max(p[1] for p in payloads))
        return [self._trim(items[row], scores[row], want) for row, (_, want) in enumerate(payloads)]

    @staticmethod
    def _trim(items: np.ndarray, scores: np.ndarray, k: int) -> tuple[list[int], list[float]]:
        """The first k entries, without slots no item could fill (item -1, score -inf)."""
        items, scores = items[:k], scores[:k]
        keep = (items >= 0) & np.isfinite(scores)
        return items[keep].astype(int).tolist(), scores[keep].astype(float).tolist()

    # ------------------------------------------------------------------ checks
    def check_user(self, user_id: int) -> None:
        if user_id < self.recommender.n_users:
            return
        if user_id < self.n_users_known:
            raise InputError("user_id", f"user {user_id} has events not learned yet (the online learner applies "
                                        "them shortly); try again later", status=404)
        raise InputError("user_id", f"unknown user {user_id} (known users: 0..{self.recommender.n_users - 1})", 404)

    def check_item(self, item_id: int, field: str = "item_id", status: int = 404) -> None:
        if not 0 <= item_id < self.recommender.n_items:
            raise InputError(field, f"unknown item {item_id} (items: 0..{self.recommender.n_items - 1})", status)

    def check_k(self, k: int) -> None:
        limit = min(self.options.max_k, self.recommender.n_items)
        if not 1 <= k <= limit:
            raise InputError("k", f"must be between 1 and {limit}, got {k}")

    # ------------------------------------------------------------------ writes (worker threads)
    def add_item(self, features: dict[str, np.ndarray]) -> int:
        """Checks, logs (fsync) and adds one item; its id. ``features`` are already validated rows (1, d).

        The model's check runs before the item is logged and outside the log's lock (its first
        call may rebuild the model once): a refused item never reaches the log, so no crash can
        leave one there for the next start to replay, and events are not held up meanwhile."""
        with self._mutate:
            try:
                self.recommender.check_items(features)
            except JaxrecError as refused:  # an ID-only model, or features it rejects
                raise _refused_item(refused) from None
            with self._log_lock:
                item_id = self.recommender.n_items
                offset = self.log.append_item(item_id, {k: np.asarray(v[0], np.float64).tolist()
                                                        for k, v in features.items()})
                try:
                    self._add_to_model(item_id, features)
                except JaxrecError as refused:  # checked above: only a model that changed its mind
                    self.log.undo(offset)
                    raise _refused_item(refused) from None
                except BaseException:
                    self.log.undo(offset)
                    raise
        self.quality.set_catalog_size(self.recommender.n_items)
        self.drift.record_added(features)
        return item_id

    def _add_to_model(self, item_id: int, features: dict[str, np.ndarray]) -> None:
        new_ids = np.asarray(self.recommender.add_items(features)).ravel()
        if new_ids.tolist() != [item_id]:
            raise _events.StateError(f"the model gave the added item id {new_ids.tolist()}, the log expected {item_id}")

    def add_events(self, events: list[tuple[int, int]]) -> int:
        """Validates, logs (fsync) and queues events for the learner; how many were accepted."""
        with self._log_lock:
            next_free = self.n_users_known
            for n, (user, _) in enumerate(events):
                if user == next_free:
                    next_free += 1
                elif user > next_free:
                    raise InputError(f"events[{n}].user_id", f"{user} skips ids: a new user takes the next free id "
                                     f"({next_free}), in the order new users first appear")
            for n, (_, item) in enumerate(events):
                self.check_item(item, f"events[{n}].item_id", status=422)
            self.log.append_events(events)
            self.n_users_known = next_free
            if not self._pending:
                self._pending_since = self.clock()
            self._pending.extend(events)
            if len(self._pending) >= self.options.update_every_events:
                self._wake.notify_all()
        self.quality.record_events(events, self.clock())
        return len(events)

    # ------------------------------------------------------------------ the online learner
    def _learn(self) -> None:
        options = self.options
        while True:
            with self._wake:
                while not self._stopping:
                    if len(self._pending) >= options.update_every_events:
                        break
                    if self._pending and self.clock() - self._pending_since >= options.update_every_seconds:
                        break
                    timeout = options.update_every_seconds
                    if self._pending:
                        timeout = max(self._pending_since + options.update_every_seconds - self.clock(), 0.001)
                    self._wake.wait(timeout)
                if self._stopping:
                    return
                batch = self._pending[:options.max_update_events]
            self._apply(batch)

    def _apply(self, batch: list[tuple[int, int]]) -> None:
        first = self.events_applied
        started = time.perf_counter()
        try:
            with self._mutate:
                version = self.recommender.update(np.asarray(batch, dtype=np.int64))
        except Exception as error:  # noqa: BLE001 - kept for /status; the events stay pending
            self.last_update_error = f"{type(error).__name__}: {error}"
            with self._wake:
                self._pending_since = self.clock()  # retry after another interval
            return
        seconds = time.perf_counter() - started
        with self._wake:
            del self._pending[:len(batch)]
            self.events_applied = first + len(batch)
            self._pending_since = self.clock() if self._pending else None
        self.last_update_error = None
        self.update_seconds.append(seconds)
        if self.on_update is not None:
            self.on_update(seconds)
        self.updates.append({"first": first, "end": first + len(batch), "version": int(version),
                             "seconds": round(seconds, 4)})
        self.updates_since_snapshot += 1
        if self.updates_since_snapshot >= self.options.snapshot_every_updates:
            try:
                self.snapshot()
            except Exception as error:  # noqa: BLE001 - the log still holds every event; retried next update
                self.last_snapshot_error = f"{type(error).__name__}: {error}"

    _snapshot_items = 0

    def snapshot(self) -> dict:
        """Saves the model with the count of events it includes (one at a time with updates)."""
        with self._mutate:
            manifest = self.snapshots.write(self.recommender, {
                "events_applied": self.events_applied, "version": int(self.recommender.version),
                "n_items": int(self.recommender.n_items), "n_users": int(self.recommender.n_users),
                "updates": self.updates, "time": self.clock()})
            self.updates_since_snapshot = 0
            self._snapshot_items = int(self.recommender.n_items)
            self.last_snapshot_error = None
        return manifest

    # ------------------------------------------------------------------ monitors
    @property
    def events_received(self) -> int:
        return self.log.n_events

    @property
    def events_pending(self) -> int:
        return len(self._pending)

    def sample_timeline(self) -> dict:
        quality = self.quality.summary(self.clock())
        return self.timeline.sample(self.clock(), {"hit_rate": quality["hit_rate"],
                                                   "catalog_coverage": quality["catalog_coverage"],
                                                   "version": int(self.recommender.version)})

    def status(self) -> dict:
        rec = self.recommender
        return {
            "model": rec.model_name,
            "version": int(rec.version),
            "n_users": int(rec.n_users),
            "n_items": int(rec.n_items),
            "n_train_items": int(self.training["n_items"]),
            "uptime_seconds": self.clock() - self.started_at,
            "events_received": self.events_received,
            "events_applied": self.events_applied,
            "events_pending": self.events_pending,
            "updates": len(self.updates),
            "last_updates": self.updates[-20:],
            "update_ranges_contiguous": all(a["end"] == b["first"] for a, b in zip(self.updates, self.updates[1:]))
            and (not self.updates or self.updates[0]["first"] == 0),
            "last_update_seconds": self.update_seconds[-1] if self.update_seconds else None,
            "last_update_error": self.last_update_error,
            "last_snapshot_error": self.last_snapshot_error,
            "replayed_at_start": self.replayed,
            "quality": self.quality.summary(self.clock()),
            "drift": self.drift.summary(),
            "timeline": self.timeline.history(),
            "options": self.options.__dict__,
        }
