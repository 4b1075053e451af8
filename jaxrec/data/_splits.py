"""Train/valid/test splits of a :class:`MultimodalDataset`, vectorized over users.

Every split returns a new dataset whose interactions carry the new labels and whose
``metadata`` records ``split_method`` and ``split_params``. Per-user splits sort the
interactions once by a combined 64-bit key ``(user << 32) | order_key`` and label each
interaction from its rank inside its user's block, so there is no per-user Python loop:
ten million interactions split in a few seconds.

MMRec's rule for the per-user random split (``preprocessing/1splitting.ipynb`` in
github.com/enoche/MMRec, commit e775373): shuffle all interactions, group them by user, then
for a user with ``n`` interactions

* ``n < 10``: the first ``n - 2`` are train, then 1 valid and 1 test;
* ``n >= 10``: ``n_eval = int(0.2 * n)`` are held out, ``n_eval // 2`` valid and the rest
  test (test gets the odd one), the first ``n - n_eval`` are train.

MMRec runs this after 5-core filtering, so its users always have ``n >= 5``. Here the rule is
generalized to any ratios (``n_eval = floor(n * (valid + test))``, ``n_valid =
floor(n_eval * valid / (valid + test))``) and extended to tiny histories: a user with no
more interactions than there are held-out splits (``n <= 2`` by default, where MMRec would
leave no train interaction or fail) keeps everything in train.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import numbers
from collections.abc import Sequence

import numpy as np

from jaxrec.data._dataset import SPLIT_NAMES, TEST, TRAIN, VALID, MultimodalDataset
from jaxrec.errors import ConfigError, DataError

COLD_START_KEY = "cold_start_items"
# Float ratios such as 0.1 + 0.1 land a hair below whole numbers; floors must not lose one.
_FLOOR_SLACK = 1e-9


@dataclasses.dataclass(frozen=True)
class ColdStartItems:
    """The items a cold-start split held out, with all their interactions.

    Attributes:
      valid: (n_valid_items,) int32 sorted item ids whose interactions are all in valid.
      test: (n_test_items,) int32 sorted item ids whose interactions are all in test.
    """

    valid: np.ndarray
    test: np.ndarray

    @property
    def all(self) -> np.ndarray:
        """Every held-out item, sorted."""
        return np.union1d(self.valid, self.test).astype(np.int32)


def keep_given_split(dataset: MultimodalDataset) -> MultimodalDataset:
    """The dataset with the split labels it came with, checked to be usable.

    Args:
      dataset: a dataset whose interactions already carry labels (e.g. MMRec's ``x_label``).

    Returns:
      The same interactions and labels, with ``metadata["split_method"] = "given"``.

    Raises:
      DataError: when train, valid or test has no interaction (naming the split).
    """
    _check_non_empty(dataset.interactions.split, SPLIT_NAMES, method="given", source=_source(dataset))
    return _with_metadata(dataset, "given", {})


def ratio_split(
    dataset: MultimodalDataset,
    ratios: Sequence[float] = (0.8, 0.1, 0.1),
    *,
    order: str = "random",
    seed: int = 0,
    short_history: int = 10,
) -> MultimodalDataset:
    """Per-user train/valid/test split by ratio, MMRec's rule for short histories.

    For a user with ``n`` interactions, ordered randomly (``order="random"``) or by time
    (``order="time"``, the latest held out),

    .. math::
        n_\\text{eval} = \\lfloor n (r_v + r_t) \\rfloor, \\quad
        n_v = \\lfloor n_\\text{eval} \\, r_v / (r_v + r_t) \\rfloor, \\quad
        n_t = n_\\text{eval} - n_v

    when ``n >= short_history``; a shorter history gives one interaction to each held-out
    split with a positive ratio, and a history no longer than the number of such splits
    stays in train entirely (see the module docstring for MMRec's original rule).

    Args:
      dataset: the dataset to split; its current labels are ignored.
      ratios: (train, valid, test) shares, normalized to sum to one; valid or test may be 0.
      order: ``"random"`` (seeded shuffle within each user) or ``"time"`` (by timestamp;
        ties keep the dataset's row order).
      seed: seed of the random order (also recorded for ``order="time"``, where it is unused).
      short_history: users with fewer interactions get the one-each rule; 0 disables it.

    Returns:
      A new dataset with the new labels; ``metadata["split_params"]`` records the arguments.

    Raises:
      ConfigError: bad ratios, order, seed or short_history.
      DataError: ``order="time"`` without timestamps (field ``timestamp``), or a split with
        a positive ratio that ends up empty.

    References:
      MMRec, ``preprocessing/1splitting.ipynb`` (github.com/enoche/MMRec).
    """
    shares = _normalized_ratios(ratios)
    seed = _checked_seed(seed)
    if isinstance(short_history, bool) or not isinstance(short_history, numbers.Real) or int(short_history) != short_history or short_history < 0:
        raise ConfigError(f"short_history must be an integer >= 0, got {short_history!r}")
    counts = np.bincount(dataset.interactions.users, minlength=dataset.n_users).astype(np.int64)
    n_valid, n_test = _ratio_counts(counts, shares, int(short_history))
    labels = _label_by_rank(dataset, order, seed, n_valid, n_test)
    required = tuple(name for name, share in zip(SPLIT_NAMES, shares) if share > 0)
    _check_non_empty(labels, required, method="ratio", source=_source(dataset))
    params = {"ratios": [float(s) for s in shares], "order": order, "seed": int(seed),
              "short_history": int(short_history)}
    return _with_metadata(dataset, "ratio", params, labels)


def leave_one_out_split(
    dataset: MultimodalDataset, *, order: str = "time", seed: int = 0
) -> MultimodalDataset:
    """Per-user leave-one-out: the last interaction is test, the one before it valid.

    "Last" is by timestamp (``order="time"``, ties keep row order) or by a seeded shuffle
    (``order="random"``). Users with fewer than 3 interactions keep everything in train, so
    every user with a held-out interaction also has one to learn from.

    Args:
      dataset: the dataset to split; its current labels are ignored.
      order: ``"time"`` or ``"random"``.
      seed: seed of the random order.

    Returns:
      A new dataset with the new labels and ``metadata["split_method"] = "leave_one_out"``.

    Raises:
      ConfigError: a bad order, or a seed that is not an integer >= 0.
      DataError: ``order="time"`` without timestamps, or no user with 3 interactions.
    """
    seed = _checked_seed(seed)
    counts = np.bincount(dataset.interactions.users, minlength=dataset.n_users).astype(np.int64)
    held = (counts >= 3).astype(np.int64)
    labels = _label_by_rank(dataset, order, seed, held, held)
    _check_non_empty(labels, SPLIT_NAMES, method="leave_one_out", source=_source(dataset))
    return _with_metadata(dataset, "leave_one_out", {"order": order, "seed": int(seed)}, labels)


def cold_start_item_split(
    dataset: MultimodalDataset, *, holdout: float = 0.2, seed: int = 0
) -> tuple[MultimodalDataset, ColdStartItems]:
    """Holds out a share of items entirely: none of their interactions is in train.

    Of the items with at least one interaction, ``round(holdout * n)`` are drawn with a
    seeded permutation; the first half of them (rounded down) become valid items, the rest
    test items, and every interaction of a held-out item gets that item's split. All other
    interactions are train.

    Args:
      dataset: the dataset to split; its current labels are ignored.
      holdout: share of the interacted items to hold out, in (0, 1).
      seed: seed of the item draw.

    Returns:
      ``(new_dataset, ColdStartItems(valid, test))``. The held-out ids are also stored as
      plain lists in ``metadata["cold_start_items"] = {"valid": [...], "test": [...]}``;
      :func:`cold_items` reads them back.

    Raises:
      ConfigError: ``holdout`` outside (0, 1), or a seed that is not an integer >= 0.
      DataError: fewer than two interacted items to hold out, or an empty split.
    """
    seed = _checked_seed(seed)
    if isinstance(holdout, bool) or not isinstance(holdout, numbers.Real) or not 0.0 < float(holdout) < 1.0:
        raise ConfigError(f"holdout must be in (0, 1), got {holdout!r}")
    inter = dataset.interactions
    interacted = np.flatnonzero(np.bincount(inter.items, minlength=dataset.n_items))
    n_held = int(round(float(holdout) * interacted.size))
    if n_held < 2 or n_held >= interacted.size:
        raise DataError("too few interacted items for a cold-start split", path=_source(dataset),
                        field="itemID", found=f"{interacted.size} interacted items, {n_held} to hold out",
                        expected="at least 2 held-out items (1 valid, 1 test) and 1 left for train")
    drawn = np.random.default_rng(seed).permutation(interacted)[:n_held]
    cold = ColdStartItems(valid=np.sort(drawn[: n_held // 2]).astype(np.int32),
                          test=np.sort(drawn[n_held // 2:]).astype(np.int32))
    item_split = np.full(dataset.n_items, TRAIN, np.int8)
    item_split[cold.valid] = VALID
    item_split[cold.test] = TEST
    labels = item_split[inter.items]
    _check_non_empty(labels, SPLIT_NAMES, method="cold_start_items", source=_source(dataset))
    params = {"holdout": float(holdout), "seed": int(seed)}
    new = _with_metadata(dataset, "cold_start_items", params, labels,
                         extra={COLD_START_KEY: {"valid": cold.valid.tolist(), "test": cold.test.tolist()}})
    return new, cold


def cold_items(dataset: MultimodalDataset) -> ColdStartItems:
    """The held-out items of a dataset made by :func:`cold_start_item_split`.

    Raises:
      DataError: the dataset does not come from a cold-start split.
    """
    stored = dataset.metadata.get(COLD_START_KEY)
    if not isinstance(stored, dict) or set(stored) != {"valid", "test"}:
        raise DataError("dataset has no cold-start items", path=_source(dataset),
                        field=f"metadata[{COLD_START_KEY!r}]",
                        found=f"split_method {dataset.metadata.get('split_method')!r}",
                        expected="a dataset returned by cold_start_item_split")
    return ColdStartItems(valid=np.asarray(stored["valid"], np.int32), test=np.asarray(stored["test"], np.int32))


_METHODS = {"given": keep_given_split, "ratio": ratio_split, "leave_one_out": leave_one_out_split}


def split_dataset(dataset: MultimodalDataset, method: str, **params) -> MultimodalDataset:
    """Applies the split named ``method`` (as a config names it) with keyword ``params``.

    Methods: ``"given"``, ``"ratio"``, ``"leave_one_out"``, ``"cold_start_items"`` (the
    held-out items are then read back with :func:`cold_items`).

    Raises:
      ConfigError: an unknown method or parameter.
    """
    methods = {**_METHODS, "cold_start_items": cold_start_item_split}
    if method not in methods:
        raise ConfigError(f"unknown split method {method!r}; expected one of {sorted(methods)}")
    function = methods[method]
    accepted = [name for name, p in list(inspect.signature(function).parameters.items())[1:]  # after the dataset
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = [key for key in params if key not in accepted]
    if unknown:
        raise ConfigError(f"unknown parameter(s) {unknown} for split method {method!r}; "
                          f"it takes {accepted}")
    result = function(dataset, **params)
    return result[0] if method == "cold_start_items" else result


# ---- helpers ----------------------------------------------------------------------------


def _normalized_ratios(ratios) -> tuple[float, float, float]:
    if (isinstance(ratios, (str, bytes)) or not isinstance(ratios, Sequence | np.ndarray)
            or not all(isinstance(r, numbers.Real) and not isinstance(r, bool) for r in ratios)):
        raise ConfigError(f"ratios must be three finite numbers >= 0 (train, valid, test), got {ratios!r}")
    values = tuple(float(r) for r in ratios)
    if len(values) != 3 or not all(math.isfinite(v) and v >= 0 for v in values):
        raise ConfigError(f"ratios must be three finite numbers >= 0 (train, valid, test), got {ratios!r}")
    if values[0] <= 0 or values[1] + values[2] <= 0:
        raise ConfigError(f"ratios need a positive train share and a positive valid or test share, got {ratios!r}")
    total = sum(values)
    return tuple(v / total for v in values)


def _checked_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be an integer >= 0, got {seed!r}")
    return int(seed)


def _ratio_counts(counts: np.ndarray, shares, short_history: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-user numbers of valid and test interactions under the ratio rule."""
    _, valid_share, test_share = shares
    eval_share = valid_share + test_share
    n_eval = np.floor(counts * eval_share + _FLOOR_SLACK).astype(np.int64)
    n_valid = np.floor(n_eval * (valid_share / eval_share) + _FLOOR_SLACK).astype(np.int64)
    n_test = n_eval - n_valid
    short = counts < short_history
    one_valid, one_test = int(valid_share > 0), int(test_share > 0)
    n_valid = np.where(short, one_valid, n_valid)
    n_test = np.where(short, one_test, n_test)
    too_few = counts <= one_valid + one_test  # nothing would be left to train on
    return np.where(too_few, 0, n_valid), np.where(too_few, 0, n_test)


def _order_key(dataset: MultimodalDataset, order: str, seed: int) -> np.ndarray:
    """(n,) uint64 key whose sort groups rows by user, then orders them within the user."""
    inter = dataset.interactions
    if order == "random":
        within = np.random.default_rng(seed).integers(0, 2**32, len(inter), dtype=np.uint64)
    elif order == "time":
        if inter.timestamps is None:
            raise DataError("a chronological split needs timestamps", path=_source(dataset),
                            field="timestamp", found="no timestamp column",
                            expected="interactions with timestamps, or order='random'")
        times = inter.timestamps
        span = times.max() - times.min() if times.size else 0
        if times.dtype.kind in "iu" and span < 2**32:
            within = (times - times.min()).astype(np.uint64)
        else:  # floats or a wide range: ranks (ties in row order) keep the order in 32 bits
            within = np.empty(times.size, np.uint64)
            within[np.argsort(times, kind="stable")] = np.arange(times.size, dtype=np.uint64)
    else:
        raise ConfigError(f"order must be 'random' or 'time', got {order!r}")
    return (inter.users.astype(np.uint64) << np.uint64(32)) | within


def _label_by_rank(dataset, order, seed, n_valid: np.ndarray, n_test: np.ndarray) -> np.ndarray:
    """Labels the last ``n_valid + n_test`` interactions of each user in ``order``."""
    users = dataset.interactions.users
    # Stable so that equal keys (same timestamp) keep row order on every platform.
    ranked = np.argsort(_order_key(dataset, order, seed), kind="stable")
    counts = np.bincount(users, minlength=dataset.n_users).astype(np.int64)
    starts = np.cumsum(counts) - counts
    sorted_users = users[ranked]
    rank = np.arange(len(users), dtype=np.int64) - starts[sorted_users]
    n_train = (counts - n_valid - n_test)[sorted_users]
    sorted_labels = (rank >= n_train).astype(np.int8) + (rank >= n_train + n_valid[sorted_users])
    labels = np.empty(len(users), np.int8)
    labels[ranked] = sorted_labels
    return labels


def _check_non_empty(labels: np.ndarray, required, *, method: str, source) -> None:
    sizes = np.bincount(labels, minlength=3)
    for name in required:
        code = SPLIT_NAMES.index(name)
        if sizes[code] == 0:
            raise DataError(f"the {name} split is empty", path=source, field=f"split[{name!r}]",
                            found=f"0 {name} interactions after split_method {method!r} "
                            f"(sizes: {dict(zip(SPLIT_NAMES, sizes.tolist()))})",
                            expected=f"at least one {name} interaction")


def _with_metadata(dataset, method: str, params: dict, labels=None, extra=None) -> MultimodalDataset:
    metadata = {k: v for k, v in dataset.metadata.items() if k != COLD_START_KEY}
    metadata.update(split_method=method, split_params=params, **(extra or {}))
    changes = {"metadata": metadata}
    if labels is not None:
        changes["interactions"] = dataclasses.replace(dataset.interactions, split=labels)
    return dataset.replace(**changes)


def _source(dataset: MultimodalDataset):
    return dataset.metadata.get("source")
