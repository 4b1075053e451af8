"""Reading extracted features back as a :class:`~jaxrec.data.Modality` (with mask and provenance)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from jaxrec.data import Modality, MultimodalDataset
from jaxrec.errors import DataError
from jaxrec.features._extract import FORMAT, output_paths


def _load_npz(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise DataError("sidecar file not found", path=path, found="no such file",
                        expected="the file jaxrec features extract wrote beside the features")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [k for k in keys if k not in archive.files]
            if missing:
                raise DataError("sidecar lacks arrays", path=path, found=f"arrays {archive.files}",
                                expected=f"arrays {list(keys)}")
            return {k: archive[k] for k in keys}
    except (OSError, ValueError, EOFError) as error:
        raise DataError("corrupt sidecar file", path=path, found=str(error), expected="a complete .npz") from None


def load_features(path, *, name: str | None = None, n_items: int | None = None, sequence: bool = False) -> Modality:
    """The modality written by :func:`extract_features` to ``path`` (``FEATURES.npy``).

    Args:
      path: the features ``.npy``; its ``.json`` and ``.mask.npz`` (and ``.frames.npz`` for
        ``sequence``) must lie beside it.
      name: the modality's name (default: the file's stem).
      n_items: the dataset's item count; rows past the largest extracted id are added as
        missing (masked) rows; more rows than items is an error.
      sequence: load the per-frame sequence (``--keep-frames``) instead of the pooled rows.

    Returns:
      A :class:`~jaxrec.data.Modality` whose mask is the extraction's (never inferred from zeros)
      and whose provenance is the sidecar's record.
    """
    paths = output_paths(path)
    try:
        record = json.loads(paths["json"].read_text())
    except FileNotFoundError:
        raise DataError("provenance sidecar not found", path=paths["json"], found="no such file",
                        expected="the .json jaxrec features extract writes beside the features") from None
    except ValueError as error:
        raise DataError("corrupt provenance sidecar", path=paths["json"], found=str(error),
                        expected="JSON") from None
    if record.get("format") != FORMAT:
        raise DataError("not a jaxrec features sidecar", path=paths["json"], field="format",
                        found=record.get("format"), expected=FORMAT)
    mask = _load_npz(paths["mask"], ("mask",))["mask"].astype(bool)
    lengths = None
    if sequence:
        if not record.get("frames"):
            raise DataError("no frames were kept", path=paths["json"], field="frames", found="null",
                            expected="an extraction run with --keep-frames")
        arrays = _load_npz(paths["frames"], ("frames", "lengths"))
        features, lengths = arrays["frames"].astype(np.float32), arrays["lengths"].astype(np.int32)
    else:
        try:
            features = np.load(paths["features"], allow_pickle=False)
        except (OSError, ValueError, EOFError) as error:
            raise DataError("cannot read the features", path=paths["features"], found=str(error),
                            expected="a complete .npy") from None
        features = np.asarray(features, np.float32)
    shape = list(record.get("shape") or [None, None])
    if features.shape[0] != mask.shape[0] or list(features.shape[:1]) != shape[:1]:
        raise DataError("features and mask disagree", path=paths["features"], field="shape",
                        found=f"{features.shape[0]} rows, mask {mask.shape[0]}, sidecar {shape}",
                        expected="the files of one extraction")
    width = features.shape[1] if not sequence else (features.shape[2] if features.ndim == 3 else None)
    wanted = shape[1] if not sequence else record.get("frame_dim", width)
    if features.ndim != (3 if sequence else 2) or width != wanted:
        raise DataError("features and sidecar disagree", path=paths["frames" if sequence else "features"],
                        field="shape", found=f"shape {features.shape}, sidecar {shape}",
                        expected="the files of one extraction")
    finite = np.isfinite(features)
    if not finite.all():  # never written by an extraction: a damaged or edited file
        where = tuple(int(i) for i in np.argwhere(~finite)[0])
        raise DataError("features contain NaN or inf", path=paths["frames" if sequence else "features"],
                        field="frames" if sequence else "features",
                        found=f"{features[where]} at row {where[0]} (item {where[0]}), index {where}",
                        expected="finite values (an extraction writes zero, masked rows for missing media)")
    if n_items is not None:
        if features.shape[0] > n_items:
            raise DataError("more feature rows than items", path=paths["features"], field="shape",
                            found=f"{features.shape[0]} rows", expected=f"at most n_items = {n_items}")
        extra = n_items - features.shape[0]
        features = np.concatenate([features, np.zeros((extra, *features.shape[1:]), np.float32)])
        mask = np.concatenate([mask, np.zeros(extra, bool)])
        if lengths is not None:
            lengths = np.concatenate([lengths, np.zeros(extra, np.int32)])
    provenance = {key: value for key, value in record.items() if key not in ("failures",)}
    provenance["source"] = os.fspath(paths["features"])
    return Modality(name or Path(paths["features"]).stem, features, mask, lengths, provenance=provenance)


def add_features(dataset: MultimodalDataset, path, *, name: str | None = None,
                 sequence: bool = False) -> MultimodalDataset:
    """``dataset`` with the extracted features at ``path`` as a modality (rows padded to its items)."""
    return dataset.with_modality(load_features(path, name=name, n_items=dataset.n_items, sequence=sequence))
