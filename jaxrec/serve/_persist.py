"""Saving and loading a served model: its version, grown tables, events and added items.

Layout of a saved folder::

  served.json     format, model, version, counts, capacities, events applied, run folder
  config.yaml     the run's experiment config
  state/          Orbax checkpoint of the parameters and the PRNG key
  arrays.npz      events (m, 2), added item ids, added items' features and masks per modality

The folder is written under a temporary name beside the target and renamed into place, so a
reader (or a crash) finds the previous complete folder or the new complete one. Loading
rebuilds the run's dataset from ``config.yaml``, extends it with the saved events and added
items at the saved capacities, rebuilds the model and restores the parameters into it. The
online optimizer's moments are not saved: they restart at zero after a load.

Orbax's checkpointer is not safe to run from two threads of one process at once (its
completion signals collide and a save can hang for minutes or fail): saves and restores of
this module take one process-wide lock, so concurrent ``save`` calls run one after the other.
Saves of one folder from several processes write their own temporary folders and swap them in
one at a time (:func:`replace_folder`'s inter-process lock): the last save wins, whole.

Older layout: folders saved before added-item rows were kept aligned with item ids hold one
feature row per item added by ``add_items`` only (none for items that first appeared in an
event); they are read with each of those rows at its item's id (``added_items``) and the other
items without features.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import threading
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxrec._atomic import exclusive_lock, file_in_the_way
from jaxrec.data import SPLIT_NAMES
from jaxrec.errors import ConfigError
from jaxrec.serve import _grow, _online
from jaxrec.serve._load import SERVED_FILE, load_config_of, prepare_experiment
from jaxrec.serve._online import Learner
from jaxrec.serve._snapshot import make_snapshot, seen_pairs
from jaxrec.train import dump_config

FORMAT = "jaxrec-served/1"
_ORBAX_LOCK = threading.Lock()  # module docstring


def save_served(recommender, snapshot, directory) -> Path:
    with _ORBAX_LOCK:
        return _save_served(recommender, snapshot, directory)


def _save_served(recommender, snapshot, directory) -> Path:
    learner = snapshot.learner
    if not all(bool(np.all(np.isfinite(np.asarray(leaf)))) for leaf in jax.tree.leaves(learner.params)):
        raise ConfigError("refusing to save non-finite parameters")
    target = Path(directory).expanduser().resolve()
    check_replaceable(target, SERVED_FILE, FORMAT, "saved served model")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        info = {
            "format": FORMAT, "model": learner.config.model.name, "version": snapshot.version,
            "n_users": learner.n_users, "n_items": learner.n_items, "cap_users": learner.cap_users,
            "cap_items": learner.cap_items, "events_applied": snapshot.events_applied, "step": learner.step,
            "run_dir": os.fspath(recommender.source), "seen_splits": list(recommender._seen_splits),
            "n_added_items": int(snapshot.added_items.size), "base_items": learner.base.n_items,
        }
        (tmp / "config.yaml").write_text(dump_config(learner.config))
        tree = {"params": jax.tree.map(np.asarray, learner.params), "rng": np.asarray(learner.rng)}
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(tmp / "state", tree)
        checkpointer.wait_until_finished()
        arrays = {"events": np.asarray(learner.events, np.int32).reshape(-1, 2),
                  "added_items": np.asarray(snapshot.added_items, np.int64)}
        arrays.update({f"features/{k}": np.asarray(v) for k, v in learner.added.features.items()})
        arrays.update({f"masks/{k}": np.asarray(v) for k, v in learner.added.masks.items()})
        with open(tmp / "arrays.npz", "wb") as handle:
            np.savez(handle, **arrays)
        (tmp / SERVED_FILE).write_text(json.dumps(info, indent=2) + "\n")
        replace_folder(tmp, target, SERVED_FILE, FORMAT, "saved served model")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def check_replaceable(target: Path, marker: str, fmt: str, what: str) -> None:
    """Raise :class:`ConfigError` unless ``target`` can take a new ``what`` folder: it does not
    exist (and no file stands where a parent folder must be), is an empty folder, or is an
    earlier ``what`` (``marker`` a JSON file with ``"format": fmt``). A run folder, a search
    folder, a file or any other folder is never replaced."""
    blocking = file_in_the_way(target.parent)
    if blocking is not None:
        raise ConfigError(f"{target}: {blocking} is a file, not a folder; choose another path for the {what}")
    if not target.exists():
        return
    if not target.is_dir():
        raise ConfigError(f"{target}: a file already stands there; the {what} is a folder (choose another path)")
    if not any(target.iterdir()):
        return
    try:
        info = json.loads((target / marker).read_text())
    except (OSError, ValueError):
        info = None
    if not isinstance(info, dict) or info.get("format") != fmt:
        raise ConfigError(f"{target}: the folder exists and is not a {what} ({marker} with format {fmt!r}); "
                          f"refusing to replace it: choose a new or empty folder, or an earlier {what}")


def replace_folder(tmp: Path, target: Path, marker: str, fmt: str, what: str) -> None:
    """Put the finished folder ``tmp`` at ``target`` by renames (an older ``target``, which
    :func:`check_replaceable` accepts, is moved aside first and removed after), so a reader
    finds the old folder or the new one, whole. Writers of one ``target`` (other processes, or
    threads not already serialized) swap one at a time under an inter-process lock beside it
    (``.<name>.lock``): the last one wins and every one succeeds."""
    with exclusive_lock(target.with_name(f".{target.name}.lock")):
        check_replaceable(target, marker, fmt, what)
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def load_served(cls, path: Path, *, dataset=None, online=None, seen_splits=None):
    try:
        info = json.loads((path / SERVED_FILE).read_text())
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path / SERVED_FILE}: not valid JSON ({error.msg} at line {error.lineno})") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise ConfigError(f"{path / SERVED_FILE}: field 'format' must be {FORMAT!r}; "
                          f"found {info.get('format') if isinstance(info, dict) else info!r}")
    _check_info(path / SERVED_FILE, info)
    for name in ("state", "arrays.npz"):
        if not (path / name).exists():
            raise ConfigError(f"{path}: {name} is missing (a saved served model holds {SERVED_FILE}, config.yaml, "
                              "state/ and arrays.npz)")
    config = load_config_of(path)
    experiment = prepare_experiment(config, dataset)
    base = experiment.dataset
    if base.n_items != info["base_items"]:
        raise ConfigError(f"{path}: the dataset has {base.n_items} items; the served model was built on "
                          f"{info['base_items']}")
    with _ORBAX_LOCK:
        raw = ocp.StandardCheckpointer().restore(path / "state")
    with np.load(path / "arrays.npz") as stored:
        arrays = {name: stored[name] for name in stored.files}
    added = _added_items(path / "arrays.npz", arrays, base, int(info["n_items"]) - base.n_items)
    if "events" not in arrays:
        raise ConfigError(f"{path / 'arrays.npz'}: field 'events' is missing; expected the (m, 2) applied events")
    events = np.asarray(arrays["events"], np.int32).reshape(-1, 2)
    if events.size and (events.min() < 0 or events[:, 0].max() >= info["n_users"]
                        or events[:, 1].max() >= info["n_items"]):
        raise ConfigError(f"{path / 'arrays.npz'}: field 'events' holds ids outside the saved counts "
                          f"({info['n_users']} users, {info['n_items']} items)")
    learner = Learner(config=config, base=base, built=experiment.built, ctx=experiment.built.ctx,
                      params=None, opt_state=None, step=int(info["step"]), rng=np.asarray(raw["rng"]),
                      loss_weights=dict(experiment.loss_weights), events=np.zeros((0, 2), np.int32),
                      added=_grow.AddedItems.empty(base), n_users=base.n_users, n_items=base.n_items,
                      cap_users=int(info["cap_users"]), cap_items=int(info["cap_items"]))
    learner = _online.rebuilt(learner, n_users=int(info["n_users"]), n_items=int(info["n_items"]), events=events,
                              added=added, version=int(info["version"]), params_from_init=True)

    def restored(target, saved):
        saved = np.asarray(saved, np.asarray(target).dtype)
        if saved.size != np.size(target):
            raise ConfigError(f"{path / 'state'}: a saved parameter has shape {saved.shape}; the model rebuilt at "
                              f"the capacities of {SERVED_FILE} needs {np.shape(target)}")
        return saved.reshape(np.shape(target))

    try:
        params = jax.tree.map(restored, learner.params, raw["params"])
    except ValueError as error:  # another tree structure
        if isinstance(error, ConfigError):
            raise
        raise ConfigError(f"{path / 'state'}: the saved parameters do not fit the model of config.yaml "
                          f"({str(error)[:200]})") from None
    learner = dataclasses.replace(learner, params=params)
    if seen_splits is None:  # the splits it was served with
        seen_splits = info.get("seen_splits", ["train"])
    splits = tuple(seen_splits)
    snapshot = make_snapshot(learner, int(info["version"]), seen_pairs(base, splits, events),
                             int(info["events_applied"]), np.asarray(arrays["added_items"], np.int64))
    return cls(snapshot, source=Path(info.get("run_dir") or path), online=online, seen_splits=splits)


def _added_items(where: Path, arrays: dict, base, count: int) -> _grow.AddedItems:
    """The added items' features and masks of a saved folder, one row per item beyond the run's
    (``count``), reading the older layout too (module docstring)."""
    ids = np.asarray(arrays.get("added_items", np.zeros(0, np.int64)), np.int64).reshape(-1)
    if ids.size and (ids.min() < base.n_items or ids.max() >= base.n_items + count):
        raise ConfigError(f"{where}: field 'added_items' holds ids outside the added range "
                          f"[{base.n_items}, {base.n_items + count}); found {ids.min()}..{ids.max()}")
    features, masks = {}, {}
    for name, mod in base.modalities.items():
        width = int(mod.features.shape[-1])
        if f"features/{name}" not in arrays or f"masks/{name}" not in arrays:
            raise ConfigError(f"{where}: fields 'features/{name}' and 'masks/{name}' are missing; expected the "
                              f"added items' rows of modality {name!r}")
        rows = np.asarray(arrays[f"features/{name}"], np.float32)
        mask = np.asarray(arrays[f"masks/{name}"], bool).reshape(-1)
        if rows.ndim != 2 or rows.shape[1] != width or rows.shape[0] != mask.shape[0]:
            raise ConfigError(f"{where}: field 'features/{name}' has shape {rows.shape} with {mask.shape[0]} mask "
                              f"entries; expected (rows, {width}) with one mask entry per row")
        if rows.shape[0] != count:
            if rows.shape[0] != ids.size:
                raise ConfigError(f"{where}: field 'features/{name}' has {rows.shape[0]} rows; expected {count} "
                                  f"(one per item beyond the run's {base.n_items}) or, in the older layout, "
                                  f"{ids.size} (one per added item)")
            aligned = np.zeros((count, width), np.float32)
            aligned_mask = np.zeros(count, bool)
            aligned[ids - base.n_items], aligned_mask[ids - base.n_items] = rows, mask
            rows, mask = aligned, aligned_mask
        features[name], masks[name] = rows, mask
    return _grow.AddedItems(features, masks, count)


def _check_info(where: Path, info: dict) -> None:
    """Raise :class:`ConfigError` naming the first field of ``served.json`` that is missing or
    out of range."""
    for key in ("version", "n_users", "n_items", "cap_users", "cap_items", "events_applied", "step", "base_items"):
        value = info.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{where}: field {key!r} must be a non-negative integer; found {value!r}")
    for count, cap in (("n_users", "cap_users"), ("n_items", "cap_items"), ("base_items", "n_items")):
        if info[cap] < info[count]:
            raise ConfigError(f"{where}: field {cap!r} ({info[cap]}) is below {count!r} ({info[count]})")
    splits = info.get("seen_splits")
    if splits is not None and (not isinstance(splits, list) or not all(x in SPLIT_NAMES for x in splits)):
        raise ConfigError(f"{where}: field 'seen_splits' must be a list of split names among "
                          f"{', '.join(SPLIT_NAMES)}; found {splits!r}")
    if not isinstance(info.get("run_dir", ""), str):
        raise ConfigError(f"{where}: field 'run_dir' must be a path; found {info.get('run_dir')!r}")
