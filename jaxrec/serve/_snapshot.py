"""One immutable version of a served model (:class:`Snapshot`) and how it is laid out from a
learner (:func:`make_snapshot`): what :class:`~jaxrec.serve.Recommender`'s readers use, and what
loading a saved served model rebuilds (:mod:`jaxrec.serve._persist`)."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from jaxrec import data as jdata
from jaxrec.data import MultimodalDataset
from jaxrec.serve._online import Learner


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """One version of the served model (never modified after it is published).

    Attributes:
      version: 0 for the model as loaded from its run, +1 per update or item addition.
      user_emb, item_emb: ``(cap_users, d)``, ``(cap_items, d)`` device arrays.
      candidate_mask: ``(cap_items,)`` bool device array, True for real items.
      seen: each user's known items (train split, streamed events), over the real ids.
      fixed_columns: ``(d,)`` bool, columns of ``user_emb`` equal for every user (bias columns).
      fixed_values: ``(d,)`` their values (0 elsewhere).
      item_counts: ``(n_items,)`` training interactions per item (train split and events).
      learner: what rebuilds and trains the model.
      events_applied: events trained on so far.
      added_items: ids of the items added after training.
      unit_items: ``(cap_items, d)`` device array, the item embeddings with the bias columns zeroed,
        scaled to unit norm (zero rows stay zero): what ``similar_items`` ranks.
    """

    version: int
    user_emb: Any
    item_emb: Any
    candidate_mask: Any
    seen: jdata.PositiveSets
    fixed_columns: np.ndarray
    fixed_values: np.ndarray
    item_counts: np.ndarray
    learner: Learner
    events_applied: int
    added_items: np.ndarray
    unit_items: Any

    @property
    def n_users(self) -> int:
        return self.learner.n_users

    @property
    def n_items(self) -> int:
        return self.learner.n_items


def make_snapshot(learner: Learner, version: int, seen_pairs: np.ndarray, events_applied: int,
                  added_items: np.ndarray) -> Snapshot:
    """Encode ``learner``'s model and lay out everything the readers need."""
    user_emb, item_emb = learner.encode()
    user_emb, item_emb = jax.block_until_ready((user_emb, item_emb))
    users = np.asarray(user_emb[:learner.n_users])
    if users.shape[0] > 1:
        fixed = np.all(users == users[:1], axis=0)
    else:
        fixed = np.zeros(users.shape[1], bool)
    values = np.where(fixed, users[0] if users.shape[0] else 0.0, 0.0).astype(np.float32)
    mask = np.zeros(learner.cap_items, bool)
    mask[:learner.n_items] = True
    seen = jdata.PositiveSets.from_pairs(seen_pairs[:, 0], seen_pairs[:, 1], n_users=learner.n_users,
                                         n_items=learner.n_items)
    train = learner.train_pairs()
    counts = np.bincount(train[:, 1], minlength=learner.n_items).astype(np.int64)
    return Snapshot(version, user_emb, item_emb, jax.device_put(mask), seen, fixed, values, counts, learner,
                    events_applied, np.asarray(added_items, np.int64), _unit_rows(item_emb, ~fixed))


@jax.jit
def _unit_rows(item_emb, keep):
    rows = jax.numpy.where(keep[None, :], item_emb, 0.0)
    norms = jax.numpy.linalg.norm(rows, axis=1, keepdims=True)
    return jax.numpy.where(norms > 0, rows / jax.numpy.where(norms > 0, norms, 1.0), 0.0)


def seen_pairs(base: MultimodalDataset, splits: tuple[str, ...], events: np.ndarray) -> np.ndarray:
    """The (user, item) pairs a reader excludes as seen: the base dataset's ``splits`` and the
    streamed ``events``, (m, 2) int32."""
    parts = [base.split_pairs(s).astype(np.int32) for s in splits] + [np.asarray(events, np.int32).reshape(-1, 2)]
    return np.concatenate(parts).reshape(-1, 2)
