"""An on-disk cache for expensive graphs, keyed by the content they were built from.

A key hashes the algorithm's name and version, its settings, and the BYTES (plus dtype and
shape) of every input array — item features, modality masks, training pairs — so a cached
graph is only ever reused for identical inputs: changing one feature value changes the key.
(MMRec names its cached graphs by k alone, e.g. ``mm_adj_freedomdsp_10_1.pt``, inside the data
folder, so a graph built from other features is silently reused.) Each file also stores its
own key and is checked on load; writes go to a temporary file renamed into place, so a
crashed or concurrent writer never leaves a half-written graph under a valid name.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from jaxrec._atomic import write_atomic
from jaxrec.errors import ConfigError

_KEY_ENTRY = "__cache_key__"
_META_ENTRY = "__cache_meta__"


def default_cache_dir() -> Path:
    """``$JAXREC_GRAPH_CACHE``, else ``$XDG_CACHE_HOME/jaxrec/graphs``, else ``~/.cache/jaxrec/graphs``."""
    if os.environ.get("JAXREC_GRAPH_CACHE"):
        return Path(os.environ["JAXREC_GRAPH_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "jaxrec" / "graphs"


def array_digest(array) -> str:
    """Hex BLAKE2b digest of an array's dtype, shape and bytes (no copy when contiguous)."""
    array = np.ascontiguousarray(array)
    digest = hashlib.blake2b(digest_size=20)
    digest.update(f"{array.dtype.str}{array.shape}".encode())
    digest.update(memoryview(array.reshape(-1)).cast("B"))
    return digest.hexdigest()


def cache_key(kind: str, *, version: str, settings: Mapping, arrays: Mapping[str, object]) -> str:
    """The key of a graph built by algorithm ``kind`` (at ``version``) from ``arrays`` with ``settings``.

    Args:
      kind: the builder's name, e.g. ``"knn_neighbours"``.
      version: the builder's algorithm version; bump it when its output changes.
      settings: JSON-able parameters (k, normalization, ...).
      arrays: name -> input array (``None`` entries are recorded as absent).

    Returns:
      A 40-character hex key.
    """
    record = {"kind": kind, "version": str(version), "settings": dict(settings),
              "arrays": {name: None if a is None else array_digest(a) for name, a in sorted(arrays.items())}}
    try:
        text = json.dumps(record, sort_keys=True)
    except TypeError as error:
        raise ConfigError(f"graph settings must be JSON values: {error}") from None
    return hashlib.blake2b(text.encode(), digest_size=20).hexdigest()


class GraphCache:
    """A folder of cached graphs, one ``<kind>-<key>.npz`` file each.

    Args:
      directory: where to keep the files (created on first write); default
        :func:`default_cache_dir`. Pass e.g. ``workdir / "graphs"`` to keep them with a run.
      forbidden: folders the cache must not be inside (the dataset's data folder); a
        directory inside one raises ``ConfigError``.
    """

    def __init__(self, directory: str | os.PathLike | None = None, *, forbidden=()):
        self.directory = Path(directory).expanduser() if directory is not None else default_cache_dir()
        for folder in forbidden:
            self.check_outside(folder)

    def check_outside(self, data_path) -> None:
        """Raises ``ConfigError`` if the cache folder is ``data_path`` (its folder, for a file) or inside it."""
        if data_path is None:
            return
        data_path = Path(data_path).expanduser()
        if not data_path.exists():
            return
        folder = (data_path if data_path.is_dir() else data_path.parent).resolve()
        cache = self.directory.resolve()
        if cache == folder or folder in cache.parents:
            raise ConfigError(f"graph cache {cache} is inside the data folder {folder}; keep cached graphs "
                              "outside the data (default ~/.cache/jaxrec/graphs, or a run's workdir)")

    def path(self, kind: str, key: str) -> Path:
        return self.directory / f"{kind}-{key}.npz"

    def load(self, kind: str, key: str) -> dict[str, np.ndarray] | None:
        """The cached arrays, or None if absent, unreadable, or stored under another key."""
        path = self.path(kind, key)
        try:
            with np.load(path, allow_pickle=False) as stored:
                if _KEY_ENTRY not in stored.files or str(stored[_KEY_ENTRY]) != key:
                    return None
                return {name: stored[name] for name in stored.files if name not in (_KEY_ENTRY, _META_ENTRY)}
        except (FileNotFoundError, zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError):
            return None

    def save(self, kind: str, key: str, arrays: Mapping[str, np.ndarray], *, meta: Mapping | None = None) -> Path:
        """Writes the arrays atomically (temporary file in the same folder, then rename)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.path(kind, key)
        write_atomic(path, lambda file: np.savez(
            file, **{_KEY_ENTRY: np.asarray(key), _META_ENTRY: np.asarray(json.dumps(dict(meta or {}))),
                     **{name: np.asarray(a) for name, a in arrays.items()}}), durable=True)
        return path

    def get_or_build(self, kind: str, key: str, build: Callable[[], Mapping[str, np.ndarray]], *,
                     meta: Mapping | None = None) -> tuple[dict[str, np.ndarray], bool]:
        """``(arrays, hit)``: the cached arrays, or ``build()``'s, saved under ``key``."""
        cached = self.load(kind, key)
        if cached is not None:
            return cached, True
        arrays = {name: np.asarray(a) for name, a in build().items()}
        self.save(kind, key, arrays, meta=meta)
        return arrays, False
