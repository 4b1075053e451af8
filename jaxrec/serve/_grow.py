"""Growing a served model: the run's dataset extended with streamed interactions, new users and
added items (padded to a capacity), the model rebuilt for it, and the old parameters carried
over into the new shapes.

Capacities double (users and items separately) whenever the counts outgrow them, so a stream
of new users or items changes the parameter shapes -- and so recompiles the jitted programs --
only a logarithmic number of times. Padding users have no interactions; padding items have no
features (every modality masked absent), no interactions, and are never ranked or sampled.

Carrying parameters over (:func:`transplant`): a leaf of the same shape keeps its value; a leaf
that grew along an axis whose size was a user or item capacity keeps its old block, and its new
rows come from the rebuilt model's own initialization when that initialization is
deterministic (e.g. FREEDOM's trainable feature tables start AT the features, so a new item's
row is its features), and are that random initialization scaled by ``NEW_ROW_SCALE`` when it
is random (ID embedding tables): a new user or item starts with almost no ID signal, so a cold
item is scored from its features (or its feature-graph neighbours) and a new user's rows are
learned from its events -- but not exactly zero, since a model that normalizes parameter rows
(MMGCN's preference rows) has an undefined gradient at a zero row.

Padding must be inert: the real users' and items' embeddings may not depend on it. Some models
read every row of their item tables -- LATTICE's learned kNN graph and LGMRec's hypergraph run
over all items, so featureless padding items became neighbours of real ones and moved their
embeddings. :func:`padding_moves_real_rows` tests this once, at the first growth (padding rows
of the grown parameters perturbed, real rows compared); a model that fails is served at exact
capacities (no padding: its programs recompile whenever a count grows).
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from jaxrec import data as jdata
from jaxrec.data import MultimodalDataset
from jaxrec.errors import DataError

NEW_ROW_SCALE = 1e-3


def grown_capacity(capacity: int, needed: int) -> int:
    """``capacity`` doubled until it holds ``needed`` (unchanged when it already does)."""
    capacity = max(int(capacity), 1)
    while capacity < needed:
        capacity *= 2
    return capacity


@dataclasses.dataclass(frozen=True)
class AddedItems:
    """Items added after training: per modality, the raw feature rows and presence masks.

    Attributes:
      features: modality -> ``(n_added, d)`` float32 rows (zeros where absent).
      masks: modality -> ``(n_added,)`` bool, True where the item has the modality.
    """

    features: dict
    masks: dict
    count: int = 0

    @staticmethod
    def empty(base: MultimodalDataset) -> "AddedItems":
        return AddedItems(
            {name: np.zeros((0, mod.features.shape[-1]), np.float32) for name, mod in base.modalities.items()},
            {name: np.zeros(0, bool) for name in base.modalities}, 0)

    def extended(self, features: dict, count: int) -> "AddedItems":
        """These rows followed by ``count`` more (``features[modality]`` ``(count, d)``; a
        modality not given is absent for them)."""
        return AddedItems(
            {name: np.concatenate([rows, features[name] if name in features
                                   else np.zeros((count, rows.shape[1]), np.float32)]) for name, rows in self.features.items()},
            {name: np.concatenate([mask, np.full(count, name in features)]) for name, mask in self.masks.items()},
            self.count + int(count))


def extended_dataset(base: MultimodalDataset, *, n_users: int, n_items: int, cap_users: int, cap_items: int,
                     events: np.ndarray, added: AddedItems) -> MultimodalDataset:
    """``base`` with ``events`` as extra TRAIN interactions, the added items' features, and
    ``cap_users`` users and ``cap_items`` items (padding beyond ``n_users`` / ``n_items``).

    Items ``base.n_items .. n_items - 1`` are the added ones (features from ``added``, or absent
    when an item first appeared in an event); id maps are dropped (the served model keeps its own).
    """
    if base.modalities and any(mod.features.ndim != 2 for mod in base.modalities.values()):
        raise DataError("serving cannot grow a dataset with sequence modalities", field="modalities",
                        expected="(n_items, d) modalities")
    inter = base.interactions
    events = np.asarray(events, np.int32).reshape(-1, 2)
    users = np.concatenate([inter.users, events[:, 0]])
    items = np.concatenate([inter.items, events[:, 1]])
    split = np.concatenate([inter.split, np.zeros(len(events), np.int8)])
    ratings = None
    if inter.ratings is not None:
        ratings = np.concatenate([inter.ratings, np.ones(len(events), np.float32)])
    timestamps = None
    if inter.timestamps is not None:
        last = inter.timestamps.max(initial=0)
        timestamps = np.concatenate([inter.timestamps, np.full(len(events), last, inter.timestamps.dtype)])
    n_new_items = n_items - base.n_items
    modalities = {}
    for name, mod in base.modalities.items():
        rows = np.zeros((cap_items, mod.features.shape[1]), np.float32)
        mask = np.zeros(cap_items, bool)
        rows[:base.n_items], mask[:base.n_items] = mod.features, mod.mask
        if added.count != n_new_items:
            raise DataError("the added items do not match the item count", field="added",
                            found=f"{added.count} rows", expected=f"{n_new_items} (items beyond the run's)")
        rows[base.n_items:n_items] = added.features[name]
        mask[base.n_items:n_items] = added.masks[name]
        modalities[name] = jdata.Modality(name, rows, mask, None, dict(mod.provenance))
    user_features = None
    if base.user_features is not None:
        user_features = np.zeros((cap_users, base.user_features.shape[1]), np.float32)
        user_features[:base.n_users] = base.user_features
    return dataclasses.replace(
        base, n_users=cap_users, n_items=cap_items,
        interactions=jdata.Interactions(users, items, split, ratings, timestamps),
        modalities=modalities, user_features=user_features, user_ids=None, item_ids=None)


def _grown_axis(old_shape, new_shape, grown_sizes) -> int | None:
    """The axis along which ``old_shape`` grew into ``new_shape`` (one axis, a capacity), or None."""
    if len(old_shape) != len(new_shape):
        return None
    diffs = [a for a, (o, n) in enumerate(zip(old_shape, new_shape)) if o != n]
    if len(diffs) != 1:
        return None
    axis = diffs[0]
    old, new = old_shape[axis], new_shape[axis]
    return axis if new > old and (old, new) in grown_sizes else None


def transplant(old_tree, fresh_tree, deterministic_tree, grown_sizes) -> object:
    """``fresh_tree`` with ``old_tree``'s values carried over (module docstring).

    Args:
      old_tree: the old parameters (or optimizer state).
      fresh_tree: the rebuilt model's initialization (same structure, new shapes).
      deterministic_tree: a bool per leaf, True when the initialization does not depend on
        the PRNG seed (its new rows are kept; otherwise they are scaled by ``NEW_ROW_SCALE``).
      grown_sizes: set of ``(old, new)`` sizes that are capacity growths.

    Raises:
      DataError: a leaf changed shape in a way that is not a capacity growth.
    """
    old_leaves, old_def = jax.tree.flatten(old_tree)
    fresh_leaves, fresh_def = jax.tree.flatten(fresh_tree)
    flags = jax.tree.leaves(deterministic_tree)
    if old_def != fresh_def or len(flags) != len(fresh_leaves):
        raise DataError("the rebuilt model's parameters do not have the served model's structure",
                        field="params", found=str(fresh_def)[:200], expected=str(old_def)[:200])
    out = []
    for old, fresh, keep_fresh in zip(old_leaves, fresh_leaves, flags):
        old, fresh = np.asarray(old), np.asarray(fresh)
        if old.shape == fresh.shape:
            out.append(old)
            continue
        axis = _grown_axis(old.shape, fresh.shape, grown_sizes)
        if axis is None:
            raise DataError("a parameter changed shape in a way capacity growth cannot explain", field="params",
                            found=f"{old.shape} -> {fresh.shape}", expected="growth along a user or item axis")
        grown = np.array(fresh, copy=True) if keep_fresh else (fresh * NEW_ROW_SCALE).astype(fresh.dtype)
        index = [slice(None)] * fresh.ndim
        index[axis] = slice(0, old.shape[axis])
        grown[tuple(index)] = old
        out.append(grown)
    return jax.tree.unflatten(fresh_def, out)


def deterministic_leaves(first, second):
    """Per leaf, whether two initializations from different seeds are equal."""
    return jax.tree.map(lambda a, b: bool(np.array_equal(np.asarray(a), np.asarray(b))), first, second)


def _padding_slices(size: int, *, n_users: int, n_items: int, cap_users: int, cap_items: int) -> list[slice]:
    """The padding rows along an axis of ``size`` (a capacity: users, items, or users then items)."""
    out = []
    if size == cap_users + cap_items and cap_users + cap_items not in (cap_users, cap_items):
        return [slice(n_users, cap_users), slice(cap_users + n_items, cap_users + cap_items)]
    if size == cap_users and size == cap_items:  # ambiguous: rows past both counts only
        return [slice(max(n_users, n_items), size)]
    if size == cap_users:
        out.append(slice(n_users, cap_users))
    if size == cap_items:
        out.append(slice(n_items, cap_items))
    return out


def padding_moves_real_rows(encode, ctx, old_params, params, *, n_users: int, n_items: int, cap_users: int,
                            cap_items: int, grown_sizes, seed: int = 0) -> bool:
    """Whether the real rows of ``encode(params, ctx)`` change when the padding rows of the
    leaves that grew from ``old_params`` are perturbed (module docstring)."""
    rng = np.random.default_rng(seed)
    old_leaves = jax.tree.leaves(old_params)
    new_leaves, treedef = jax.tree.flatten(params)
    perturbed, touched = [], False
    for old, new in zip(old_leaves, new_leaves):
        new = np.asarray(new)
        axis = _grown_axis(np.shape(old), new.shape, grown_sizes)
        if axis is None:
            perturbed.append(new)
            continue
        new = np.array(new, copy=True)
        for rows in _padding_slices(new.shape[axis], n_users=n_users, n_items=n_items, cap_users=cap_users,
                                    cap_items=cap_items):
            index = [slice(None)] * new.ndim
            index[axis] = rows
            block = new[tuple(index)]
            if block.size and np.issubdtype(new.dtype, np.floating):
                new[tuple(index)] = block + rng.normal(1.0, 1.0, size=block.shape).astype(new.dtype)
                touched = True
        perturbed.append(new)
    if not touched:
        return False
    users, items = encode(params, ctx)
    users2, items2 = encode(jax.tree.unflatten(treedef, perturbed), ctx)
    return not (np.array_equal(np.asarray(users[:n_users]), np.asarray(users2[:n_users]))
                and np.array_equal(np.asarray(items[:n_items]), np.asarray(items2[:n_items])))
