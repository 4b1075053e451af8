"""The served model: :class:`Recommender`.

A :class:`Recommender` holds one immutable :class:`Snapshot` (embeddings, masks, the learner
that can rebuild and train the model, a version number). Readers take the current snapshot once
per call and use only it; ``update`` and ``add_items`` build a new snapshot from a copy under a
lock and publish it with one attribute assignment, so a reader sees the old model or the new
one, never a mix, and writers never wait for readers.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxrec import data as jdata
from jaxrec.data import MultimodalDataset
from jaxrec.errors import ConfigError, DataError
from jaxrec.serve import _foldin, _grow, _inputs, _online, _ranking
from jaxrec.serve._load import SERVED_FILE, load_run, resolve_run_dir
from jaxrec.serve._online import Learner, OnlineConfig
from jaxrec.serve._persist import load_served, save_served
from jaxrec.serve._snapshot import Snapshot, make_snapshot, seen_pairs


class Recommender:
    """A trained run served from memory (module docstring).

    Build one with :meth:`load`. All reading methods are thread-safe and may run while an
    ``update`` or ``add_items`` is in progress (they answer from the previous version).
    """

    def __init__(self, snapshot: Snapshot, *, source: Path, online: OnlineConfig | None = None,
                 seen_splits: tuple[str, ...] = ("train",)):
        self._snapshot = snapshot
        self._lock = threading.Lock()
        self._source = source
        self._seen_splits = tuple(seen_splits)
        _check_online(online)
        self.online = online or OnlineConfig()
        self._feature_probe: bool | None = None

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | os.PathLike, *, dataset: MultimodalDataset | None = None,
             online: OnlineConfig | None = None, seen_splits: Sequence[str] | str | None = None) -> "Recommender":
        """Serve a run: its ``config.yaml`` and BEST checkpoint (a search folder serves its
        winning trial), or a served model written by :meth:`save`.

        Args:
          path: a run folder, a search folder, or a folder written by :meth:`save`.
          dataset: the dataset, when the run was trained on one passed directly (default:
            the data its ``config.yaml`` names; relative paths resolve against the current
            directory, as in ``jaxrec evaluate``).
          online: how :meth:`update` trains (default :class:`OnlineConfig`).
          seen_splits: the splits (or one split's name) whose interactions ``exclude_seen``
            removes, besides streamed events (default: a saved model's own, else the train split:
            the ranking ``jaxrec evaluate`` uses for the test split under the ``mmrec`` protocol;
            add ``"valid"`` for the ``cornac`` one).

        Raises:
          ConfigError: not a run, a search without a winner, a checkpoint that does not fit, or
            an ``online`` that is not an :class:`OnlineConfig`.
        """
        _check_online(online)  # before the model is built
        if isinstance(seen_splits, str):  # one split's name, not its letters
            seen_splits = (seen_splits,)
        if seen_splits is not None:
            seen_splits = tuple(seen_splits)
            bad = [s for s in seen_splits if s not in jdata.SPLIT_NAMES]
            if bad:
                raise ConfigError(f"seen_splits: unknown split {bad[0]!r}; known: {', '.join(jdata.SPLIT_NAMES)}")
        path = Path(path).expanduser().resolve()
        if (path / SERVED_FILE).exists():  # None: the splits it was served with
            return load_served(cls, path, dataset=dataset, online=online, seen_splits=seen_splits)
        seen_splits = ("train",) if seen_splits is None else seen_splits
        run = load_run(resolve_run_dir(path), dataset)
        exp = run.experiment
        base = exp.dataset
        learner = Learner(config=exp.config, base=base, built=exp.built, ctx=run.ctx, params=run.state.params,
                          opt_state=None, step=0, rng=run.state.rng, loss_weights=dict(exp.loss_weights),
                          events=np.zeros((0, 2), np.int32), added=_grow.AddedItems.empty(base),
                          n_users=base.n_users, n_items=base.n_items, cap_users=base.n_users,
                          cap_items=base.n_items)
        seen = seen_pairs(base, tuple(seen_splits), learner.events)
        snapshot = make_snapshot(learner, 0, seen, 0, np.zeros(0, np.int64))
        return cls(snapshot, source=run.run_dir, online=online, seen_splits=tuple(seen_splits))

    # -- what is served -------------------------------------------------------------------

    @property
    def snapshot(self) -> Snapshot:
        """The current version (take it once and read from it for a consistent view)."""
        return self._snapshot

    @property
    def version(self) -> int:
        return self._snapshot.version

    @property
    def model_name(self) -> str:
        return self._snapshot.learner.config.model.name

    @property
    def n_users(self) -> int:
        return self._snapshot.n_users

    @property
    def n_items(self) -> int:
        return self._snapshot.n_items

    @property
    def events_applied(self) -> int:
        return self._snapshot.events_applied

    @property
    def source(self) -> Path:
        """The run folder this model was loaded from."""
        return self._source

    @property
    def feature_dims(self) -> dict[str, int]:
        """Width of each modality :meth:`add_items` accepts."""
        return {name: int(mod.features.shape[-1]) for name, mod in self._snapshot.learner.base.modalities.items()}

    def training_features(self) -> dict[str, np.ndarray]:
        """Per modality, the raw feature rows of the run's items that have it (drift monitors)."""
        base = self._snapshot.learner.base
        return {name: np.asarray(mod.features[mod.mask]) for name, mod in base.modalities.items()}

    def item_counts(self) -> np.ndarray:
        """``(n_items,)`` training interactions per item (train split and applied events)."""
        return self._snapshot.item_counts.copy()

    def added_items(self) -> np.ndarray:
        """Ids of the items added after training (cold items)."""
        return self._snapshot.added_items.copy()

    def seen_items(self, user_id: int) -> np.ndarray:
        """The items ``exclude_seen`` removes for ``user_id``."""
        snap = self._snapshot
        user = int(_inputs.ids([user_id], "user_id", snap.n_users, "user")[0])
        return np.asarray(snap.seen.indices[snap.seen.indptr[user]:snap.seen.indptr[user + 1]])

    def embeddings(self) -> tuple[np.ndarray, np.ndarray]:
        """``(user_emb (n_users, d), item_emb (n_items, d))`` of the current version."""
        snap = self._snapshot
        return np.asarray(snap.user_emb[:snap.n_users]), np.asarray(snap.item_emb[:snap.n_items])

    # -- reading --------------------------------------------------------------------------

    def recommend(self, user_ids, k: int = 20, exclude_seen: bool = True,
                  candidates=None) -> tuple[np.ndarray, np.ndarray]:
        """The top-``k`` items of known users.

        Args:
          user_ids: ``(n,)`` user ids (repeats allowed).
          k: list length.
          exclude_seen: leave out each user's known items (``seen_splits`` and streamed events).
          candidates: optional item ids; only these are ranked.

        Returns:
          ``(items (n, k) int32, scores (n, k) float32)`` numpy arrays, best first, ranked as
          ``jaxrec evaluate`` ranks (``-1`` / ``-inf`` fill slots no item can take).
        """
        snap = self._snapshot
        k = _inputs.check_k(k)
        users = _inputs.ids(user_ids, "user_ids", snap.n_users, "user")
        mask, n_rankable = _inputs.candidate_mask(snap, candidates)
        if exclude_seen:
            seen = snap.seen
            exclude = [seen.indices[seen.indptr[u]:seen.indptr[u + 1]] for u in users]
        else:
            exclude = [np.zeros(0, np.int32)] * users.size
        vectors = jax.numpy.take(snap.user_emb, jax.numpy.asarray(users, np.int32), axis=0)
        return _ranking.rank(vectors, snap.item_emb, exclude, mask, n_rankable, k)

    def similar_items(self, item_ids, k: int = 20) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` items most similar to each item: cosine similarity of the item embeddings
        without the bias columns (those opposite a user column that is the same for every
        user), the item itself left out."""
        snap = self._snapshot
        k = _inputs.check_k(k)
        items = _inputs.ids(item_ids, "item_ids", snap.n_items, "item")
        unit = snap.unit_items
        exclude = [np.asarray([i], np.int32) for i in items]
        vectors = jax.numpy.take(unit, jax.numpy.asarray(items, np.int32), axis=0)
        return _ranking.rank(vectors, unit, exclude, snap.candidate_mask, snap.n_items, k)

    def score(self, user_ids, item_ids) -> np.ndarray:
        """``(n,)`` scores of the (user, item) pairs (the model's ranking scores)."""
        snap = self._snapshot
        users = _inputs.ids(user_ids, "user_ids", snap.n_users, "user")
        items = _inputs.ids(item_ids, "item_ids", snap.n_items, "item")
        if users.size != items.size:
            raise DataError("user_ids and item_ids must have the same length", field="item_ids",
                            found=f"{users.size} users, {items.size} items", expected="one item per user")
        return _ranking.pair_scores(snap.user_emb, snap.item_emb, users, items)

    def fold_in_vectors(self, histories, *, method: str = "auto") -> np.ndarray:
        """``(n, d)`` user vectors for new users from their item histories (see
        :mod:`jaxrec.serve._foldin` for the method of each model)."""
        snap = self._snapshot
        return self._fold_in(snap, _inputs.histories(histories, snap.n_items), method)

    def _fold_in(self, snap: Snapshot, histories: list[np.ndarray], method: str) -> np.ndarray:
        method = _foldin.resolve_method(method, self.model_name)
        offset = np.broadcast_to(snap.fixed_values, (len(histories), snap.fixed_values.size)).copy()
        free = ~snap.fixed_columns
        if method.startswith("propagate"):
            offset = offset + _foldin.propagated_offsets(snap.learner, histories)
            if method == "propagate_only":
                return offset
        return _foldin.bpr_vectors(snap.item_emb, offset, free, histories, snap.n_items)

    def fold_in(self, histories, k: int = 20, *, exclude_seen: bool = True, candidates=None,
                method: str = "auto") -> tuple[np.ndarray, np.ndarray]:
        """Recommendations for users the model has never seen, from their item histories.

        Args:
          histories: a list of item-id lists, one per new user (each non-empty).
          k: list length.
          exclude_seen: leave each history's items out of its list.
          candidates: optional item ids; only these are ranked.
          method: ``"auto"`` (the model's natural method), ``"bpr"``, ``"propagate"`` or
            ``"propagate_only"`` (:mod:`jaxrec.serve._foldin`).

        Returns:
          ``(items (n, k), scores (n, k))`` as :meth:`recommend`.
        """
        snap = self._snapshot
        k = _inputs.check_k(k)
        lists = _inputs.histories(histories, snap.n_items)
        mask, n_rankable = _inputs.candidate_mask(snap, candidates)
        vectors = self._fold_in(snap, lists, method)
        exclude = lists if exclude_seen else [np.zeros(0, np.int32)] * len(lists)
        return _ranking.rank(vectors, snap.item_emb, exclude, mask, n_rankable, k)

    # -- writing --------------------------------------------------------------------------

    def update(self, events) -> int:
        """Learn from new (user, item) events and publish the result; returns the new version.

        Args:
          events: an int ``(n, 2)`` array of ``(user_id, item_id)`` rows, or a list of
            ``{"user_id": u, "item_id": i}`` dicts. An id at or above the current count is a
            new user (or item); a call may add at most ``n`` ids of each kind (ids below
            ``count + n``), ids in a gap get no interactions.

        Returns:
          the new version. The events are then part of ``exclude_seen``.

        Raises:
          DataError: malformed events (nothing changes).
          TrainingDivergedError: a non-finite loss or parameter (nothing changes).
        """
        with self._lock:
            snap = self._snapshot
            events = _inputs.parse_events(events, n_users=snap.n_users, n_items=snap.n_items)
            n_users = max(snap.n_users, int(events[:, 0].max()) + 1)
            n_items = max(snap.n_items, int(events[:, 1].max()) + 1)
            learner = snap.learner
            all_events = np.concatenate([learner.events, events])
            version = snap.version + 1
            # Items first seen in an event have no features: absent rows keep the added rows
            # aligned with the item ids (row j is item base.n_items + j).
            added = learner.added.extended({}, n_items - snap.n_items) if n_items > snap.n_items else learner.added
            learner = _online.rebuilt(learner, n_users=n_users, n_items=n_items, events=all_events,
                                      added=added, version=version)
            learner = _online.train_on_events(learner, events, self.online, version)
            self._publish(learner, version, snap.events_applied + len(events), snap.added_items)
            return version

    def add_items(self, features: Mapping[str, Any]) -> np.ndarray:
        """Add new items from their features; returns their ids (rankable at once).

        Args:
          features: ``{modality: (n, d) array}`` for some or all of the run's modalities (a
            modality left out is missing for these items); widths must match the training
            features and values be finite.

        Raises:
          DataError: unknown modality, wrong width, non-finite values, or ragged counts.
          ConfigError: the model scores items by ID only, so features cannot place new items.
        """
        with self._lock:
            snap = self._snapshot
            rows, count = self._checked_features(features)
            first = snap.n_items
            version = snap.version + 1
            learner = self._rebuilt_with_items(snap, rows, count, version)
            new_ids = np.arange(first, first + count, dtype=np.int64)
            self._publish(learner, version, snap.events_applied, np.concatenate([snap.added_items, new_ids]))
            return new_ids

    def _publish(self, learner: Learner, version: int, events_applied: int, added_items: np.ndarray) -> None:
        seen = seen_pairs(learner.base, self._seen_splits, learner.events)
        self._snapshot = make_snapshot(learner, version, seen, events_applied, added_items)

    def _checked_features(self, features) -> tuple[dict[str, np.ndarray], int]:
        dims = self.feature_dims
        if not dims:
            raise ConfigError(f"model {self.model_name!r} was trained without item features: add_items needs a "
                              "feature model")
        if not isinstance(features, Mapping) or not features:
            raise DataError("features must be a non-empty {modality: (n, d) array} mapping", field="features",
                            found=type(features).__name__, expected=f"keys among {sorted(dims)}")
        rows, count = {}, None
        for name, values in features.items():
            if name not in dims:
                raise DataError("unknown modality", field=f"features.{name}", found=repr(name),
                                expected=f"one of {sorted(dims)}")
            try:
                array = np.asarray(values, np.float32)
            except (TypeError, ValueError):
                raise DataError("features must be numbers", field=f"features.{name}",
                                found=repr(values)[:60], expected=f"(n, {dims[name]}) floats") from None
            if array.ndim == 1:
                array = array[None, :]
            if array.ndim != 2 or array.shape[1] != dims[name] or array.shape[0] == 0:
                raise DataError("wrong feature shape", field=f"features.{name}", found=f"shape {array.shape}",
                                expected=f"(n, {dims[name]})")
            if not np.all(np.isfinite(array)):
                raise DataError("features must be finite", field=f"features.{name}",
                                found="NaN or inf values", expected="finite floats")
            if count is not None and array.shape[0] != count:
                raise DataError("every modality needs one row per new item", field=f"features.{name}",
                                found=f"{array.shape[0]} rows", expected=f"{count} rows")
            count = array.shape[0]
            rows[name] = array
        return rows, int(count)

    def _rebuilt_with_items(self, snap: Snapshot, rows: dict, count: int, version: int) -> Learner:
        """The learner with the new items. The first call also rebuilds with other feature
        values for them: if their embeddings do not change, the model places items by ID
        only and is refused (the answer is kept for later calls)."""
        learner = snap.learner

        def with_rows(values):
            return _online.rebuilt(learner, n_users=snap.n_users, n_items=snap.n_items + count,
                                   events=learner.events, added=learner.added.extended(values, count),
                                   version=version)

        if self._feature_probe is False:
            raise self._id_only_error()
        grown = with_rows(rows)
        if self._feature_probe is None:
            other = with_rows({name: -2.0 * values - 3.0 for name, values in rows.items()})
            new = slice(snap.n_items, snap.n_items + count)
            self._feature_probe = not np.array_equal(np.asarray(grown.encode()[1][new]),
                                                     np.asarray(other.encode()[1][new]))
        if not self._feature_probe:
            raise self._id_only_error()
        return grown

    def _id_only_error(self) -> ConfigError:
        return ConfigError(f"model {self.model_name!r} scores items by their ID only: a new item's features "
                           "do not change its embedding, so add_items cannot place it (serve a feature model "
                           "such as vbpr, sidemf, fusion_mf, kernel, subspace, freedom or lattice)")

    def check_items(self, features: Mapping[str, Any]) -> None:
        """Raise what :meth:`add_items` would raise for ``features``, adding nothing: the server
        checks an item before it logs it, so a refused item never reaches its log. The first
        call on a model may rebuild it once (:meth:`add_items`' test of whether features place
        items at all; its answer is kept)."""
        with self._lock:
            snap = self._snapshot
            rows, count = self._checked_features(features)
            if self._feature_probe is None:
                self._rebuilt_with_items(snap, rows, count, snap.version + 1)  # the test; the rebuild is dropped
            elif not self._feature_probe:
                raise self._id_only_error()

    def save(self, directory: str | os.PathLike) -> Path:
        """Write the current version (parameters, grown tables, events, added items) to
        ``directory`` (atomically: a temporary folder renamed); :meth:`load` reads it back.
        ``directory`` must be new, empty or an earlier saved model: a run's folder or any other
        folder is refused (:class:`~jaxrec.errors.ConfigError`), never replaced."""
        return save_served(self, self._snapshot, directory)


def _check_online(online) -> None:
    if online is not None and not isinstance(online, OnlineConfig):
        raise ConfigError(f"online must be a jaxrec.serve.OnlineConfig (or None); found {type(online).__name__}")
