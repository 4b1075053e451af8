"""Streaming, resumable feature extraction from media files into an item-aligned matrix.

Outputs, for ``FEATURES.npy``:

- ``FEATURES.npy``: (n_rows, d) float32, row k = item k; rows of items without usable media are
  zero AND masked (never trust a row without its mask);
- ``FEATURES.mask.npz``: ``mask`` (n_rows,) bool, True where the item's media was encoded
  (a ``.npz``, so that an MMRec folder's "every .npy is a modality" rule never picks it up);
- ``FEATURES.json``: provenance (encoder, weights and their SHA-256, preprocessing, frame
  sampling, temporal pooling, the media list and its checksum, failures, date, versions);
- with ``keep_frames`` (video), ``FEATURES.frames.npz``: ``frames`` (n_rows, T, d_frame) float32
  per-frame vectors padded with zeros, ``lengths`` (n_rows,) int32 valid frames (0 = no video)
  and ``mask`` -- a sequence modality (:func:`load_features` with ``sequence=True``).

Work in progress lives in ``FEATURES.partial/`` (memory-mapped rows, a per-item status and the
settings' fingerprint). Each batch's rows are flushed to disk before the items are marked done,
so an interrupted run resumes where it stopped without redoing finished items; only when every
listed item is done are the outputs written to temporary names and renamed into place, so a
reader never sees a half-written output. Media are decoded one item at a time and dropped after
their batch: memory is bounded by the batch, not the catalogue.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from jaxrec._atomic import write_atomic, write_json_atomic
from jaxrec.errors import DataError
from jaxrec.features._encoders import ModalityPipeline
from jaxrec.features._media_io import MediaError
from jaxrec.features._media_list import ON_ERROR, MediaList, MediaWarning

FORMAT = "jaxrec-features/1"
PENDING, DONE, FAILED = 0, 1, 2
_FINISHING = "finishing"  # in the partial folder while the outputs are being written
_COPY_ROWS = 65536


@dataclasses.dataclass(frozen=True)
class ExtractionResult:
    """What :func:`extract_features` wrote and how fast.

    Attributes:
      output, sidecar, mask_path, frames_path: the files written (``frames_path`` None without frames).
      n_rows, dim: the matrix's shape.
      present: items with encoded media. failed: listed items whose media failed (masked).
      encoded_now: items encoded by this call (the rest were done by an interrupted earlier call).
      seconds: wall time of this call's encoding loop. items_per_second: ``encoded_now / seconds``.
    """

    output: Path
    sidecar: Path
    mask_path: Path
    frames_path: Path | None
    n_rows: int
    dim: int
    present: int
    failed: int
    encoded_now: int
    seconds: float
    items_per_second: float


def output_paths(output) -> dict[str, Path]:
    """The files of an extraction to ``output`` (``.npy``): features, json, mask, frames, partial."""
    output = Path(output)
    return {"features": output, "json": output.with_suffix(".json"), "mask": output.with_suffix(".mask.npz"),
            "frames": output.with_suffix(".frames.npz"), "partial": output.with_suffix(".partial")}


def _write_json(path: Path, data) -> None:
    write_json_atomic(path, data, indent=2, durable=True)


def _check_output(output, overwrite: bool, keep_frames: bool, fingerprint: str) -> dict[str, Path]:
    paths = output_paths(output)
    target = paths["features"]
    if target.suffix != ".npy":
        raise DataError("output must be a .npy file", path=target, field="output", found=target.suffix or "no suffix",
                        expected="FEATURES.npy")
    if not target.parent.is_dir():
        raise DataError("output folder not found", path=target.parent, field="output", found="no such folder",
                        expected="an existing folder")
    existing = [p for key, p in paths.items() if key != "partial" and (key != "frames" or keep_frames) and p.exists()]
    # Outputs that this same extraction was writing when it was interrupted are its own to finish.
    if existing and not overwrite and not _was_finishing(paths["partial"], fingerprint):
        raise DataError("output exists", path=existing[0], field="output", found="an existing file",
                        expected="a new path (or --overwrite)")
    return paths


def check_output(output, *, overwrite: bool = False, keep_frames: bool = False) -> dict[str, Path]:
    """The checks of ``output`` that need no encoder (run before loading a model): a ``.npy`` in an
    existing folder, and no finished output there unless ``overwrite`` or an interrupted run of
    it waits in its ``.partial`` folder (:func:`extract_features` then checks that it is this one)."""
    paths = output_paths(output)
    if paths["partial"].exists():
        overwrite = True  # decided later, against the partial run's settings
    return _check_output(output, overwrite, keep_frames, "")


def _fingerprint(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def _was_finishing(folder: Path, fingerprint: str) -> bool:
    """Whether ``folder`` holds this extraction, interrupted while writing its outputs."""
    try:
        state = json.loads((folder / "state.json").read_text())
    except (OSError, ValueError):
        return False
    return state.get("fingerprint") == fingerprint and (folder / _FINISHING).is_file()


def _check_space(folder: Path, n_rows: int, dim: int, steps: int, frame_dim: int, keep_frames: bool,
                 resumed: bool, media: MediaList) -> None:
    """Refuses an output the disk cannot hold (a mistyped huge item id makes a huge matrix)."""
    out_bytes = 4 * n_rows * (dim + (steps * frame_dim + 2 if keep_frames else 0)) + n_rows
    needed = out_bytes if resumed else 2 * out_bytes  # the work files, then the outputs
    free = shutil.disk_usage(folder).free
    if needed > free:
        largest = int(np.argmax(media.items))
        raise DataError("the output would not fit on the disk", path=media.source, line=media.lines[largest],
                        field="itemID",
                        found=f"{n_rows} rows x {dim} (largest id {int(media.items[largest])}), about "
                              f"{needed / 1e9:.1f} GB with the work files; {free / 1e9:.1f} GB free",
                        expected="dense item ids 0, 1, 2, ... (--n-items for the dataset's item count)")


def _library_versions() -> dict[str, str]:
    import importlib.metadata as metadata

    versions = {}
    for package in ("jaxrec", "numpy", "pillow", "av", "torch", "timm", "open_clip_torch", "sentence-transformers"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


class _Partial:
    """The on-disk state of an extraction in progress (memory-mapped rows and per-item status)."""

    def __init__(self, folder: Path, settings: dict, n_rows: int, dim: int, steps: int, frame_dim: int,
                 keep_frames: bool):
        self.folder = folder
        fingerprint = _fingerprint(settings)
        state_path = folder / "state.json"
        self.resumed = folder.exists()
        if self.resumed:
            try:
                state = json.loads(state_path.read_text())
            except (OSError, ValueError):
                raise DataError("unreadable partial extraction", path=folder, found="no valid state.json",
                                expected="the folder an interrupted extraction left; delete it to start over") from None
            if state.get("fingerprint") != fingerprint:
                raise DataError("a partial extraction with other settings is in the way", path=folder,
                                found="different encoder, media list or options",
                                expected="the same command to resume it, or delete the folder to start over")
        else:
            folder.mkdir()
        mode = "r+" if self.resumed else "w+"
        open_map = np.lib.format.open_memmap
        try:
            self.features = open_map(folder / "features.npy", mode=mode, dtype=np.float32, shape=(n_rows, dim))
            self.status = open_map(folder / "status.npy", mode=mode, dtype=np.int8, shape=(n_rows,))
            self.frames = self.lengths = None
            if keep_frames:
                self.frames = open_map(folder / "frames.npy", mode=mode, dtype=np.float32,
                                       shape=(n_rows, steps, frame_dim))
                self.lengths = open_map(folder / "lengths.npy", mode=mode, dtype=np.int32, shape=(n_rows,))
        except (OSError, ValueError) as error:
            if not self.resumed:  # nothing of ours is in it yet: leave no folder that blocks a rerun
                shutil.rmtree(folder, ignore_errors=True)
                raise DataError("cannot create the work files", path=folder, field="output",
                                found=f"{n_rows} rows x {dim}: {error}",
                                expected="a matrix the disk can hold (dense item ids)") from None
            raise DataError("unreadable partial extraction", path=folder, found=str(error),
                            expected="the folder an interrupted extraction left; delete it to start over") from None
        if not self.resumed:
            for array in (self.features, self.status, self.frames, self.lengths):
                if array is not None:
                    array.flush()
            _write_json(state_path, {"fingerprint": fingerprint, "settings": settings})  # last: marks it complete
        self.failures_path = folder / "failures.jsonl"

    def failures(self) -> list[dict]:
        """The recorded failures, one per item (a run killed between recording a failure and
        marking the item retries it on resume and records it again: the last record counts)."""
        if not self.failures_path.exists():
            return []
        entries: dict[int, dict] = {}
        for line in self.failures_path.read_text().splitlines():
            if line.strip():
                entry = json.loads(line)
                entries.pop(entry["item"], None)
                entries[entry["item"]] = entry
        return list(entries.values())

    def record_failure(self, entry: dict) -> None:
        with open(self.failures_path, "a") as handle:
            handle.write(json.dumps(entry) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def commit(self, rows: np.ndarray, vectors, frames, lengths) -> None:
        """Writes and flushes a batch's rows, then marks them done (in that order)."""
        self.features[rows] = vectors
        self.features.flush()
        if self.frames is not None:
            self.frames[rows] = frames
            self.lengths[rows] = lengths
            self.frames.flush()
            self.lengths.flush()
        self.status[rows] = DONE
        self.status.flush()

    def mark_failed(self, row: int) -> None:
        self.status[row] = FAILED
        self.status.flush()


def extract_features(media: MediaList, pipeline: ModalityPipeline, output, *, batch_size: int = 32,
                     on_error: str = "fail", keep_frames: bool = False, overwrite: bool = False,
                     progress: bool = True, command: dict | None = None) -> ExtractionResult:
    """Encodes every listed item's media into ``output`` (see the module docstring).

    Args:
      media: the checked media list (:func:`read_media_list`).
      pipeline: decoding and encoding of the modality.
      output: the ``.npy`` to write (its sidecars go beside it).
      batch_size: items decoded and encoded together (and flushed together).
      on_error: a file that cannot be decoded: ``"fail"`` stops with a :class:`DataError` naming it
        (finished items stay in ``.partial`` for a resume); ``"mask"`` warns, records it in the
        sidecar's ``failures`` and masks the item.
      keep_frames: also write the per-frame sequence (video only).
      overwrite: replace existing outputs.
      progress: show a progress bar.
      command: how it was called (e.g. the command-line options), recorded in the provenance.

    Returns:
      An :class:`ExtractionResult`.
    """
    if on_error not in ON_ERROR:
        raise DataError("unknown error policy", field="on_error", found=on_error, expected=" or ".join(ON_ERROR))
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise DataError("batch size must be a positive integer", field="batch_size", found=batch_size)
    if keep_frames and pipeline.modality != "video":
        raise DataError("only videos have frames to keep", field="keep_frames", found=pipeline.modality,
                        expected="--modality video")
    provenance = pipeline.provenance()
    settings = {"format": FORMAT, "provenance": provenance, "ids_sha256": media.sha256,
                "folder": os.fspath(media.folder.resolve()), "n_rows": media.n_rows, "dim": pipeline.dim,
                "keep_frames": bool(keep_frames), "steps": pipeline.steps, "skipped": list(media.skipped)}
    paths = _check_output(output, overwrite, keep_frames, _fingerprint(settings))
    _check_space(paths["features"].parent, media.n_rows, pipeline.dim, pipeline.steps, pipeline.frame_dim,
                 keep_frames, paths["partial"].exists(), media)
    partial = _Partial(paths["partial"], settings, media.n_rows, pipeline.dim, pipeline.steps, pipeline.frame_dim,
                       keep_frames)
    status = partial.status
    pending = [k for k in range(len(media)) if status[media.items[k]] == PENDING]
    encoded_now, started = 0, time.perf_counter()
    with tqdm(total=len(media), initial=len(media) - len(pending), desc=f"extracting {pipeline.modality}",
              unit="item", disable=not progress) as bar:
        for start in range(0, len(pending), int(batch_size)):
            rows, payloads = [], []
            for index in pending[start:start + int(batch_size)]:
                row = int(media.items[index])
                try:
                    payloads.append(pipeline.load(media.file(index)))
                    rows.append(row)
                except MediaError as error:
                    if on_error == "fail":
                        raise DataError(f"cannot use the media of {media.where(index)}: {error}. Fix or replace "
                                        "the file, or pass --on-error mask to mask such items; items finished "
                                        f"so far are kept in {paths['partial']} and a rerun resumes there") from None
                    warnings.warn(f"{media.where(index)}: {error}; item masked", MediaWarning, stacklevel=2)
                    partial.record_failure({"item": row, "line": media.lines[index], "path": media.paths[index],
                                            "reason": str(error)})
                    partial.mark_failed(row)
                    bar.update(1)
            if rows:
                vectors, frames, lengths = pipeline.encode(payloads)
                partial.commit(np.asarray(rows), vectors, frames, lengths)
                encoded_now += len(rows)
                bar.update(len(rows))
            del payloads
    seconds = time.perf_counter() - started
    return _finish(media, pipeline, paths, partial, keep_frames, provenance, encoded_now, seconds, command)


def _finish(media, pipeline, paths, partial, keep_frames, provenance, encoded_now, seconds, command):
    mask = np.asarray(partial.status) == DONE
    failures = partial.failures()
    n_rows, dim = partial.features.shape
    missing = np.flatnonzero(~mask)
    for start in range(0, missing.size, _COPY_ROWS):  # rows never finished (or finished, then failed): zero
        rows = missing[start:start + _COPY_ROWS]
        partial.features[rows] = 0.0
        if keep_frames:
            partial.frames[rows] = 0.0
            partial.lengths[rows] = 0

    def write_features(handle):
        np.lib.format.write_array_header_1_0(handle, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
                                                      "fortran_order": False, "shape": (n_rows, dim)})
        for start in range(0, n_rows, _COPY_ROWS):
            handle.write(np.ascontiguousarray(partial.features[start:start + _COPY_ROWS]).tobytes())

    record = {
        "format": FORMAT,
        "features": paths["features"].name, "mask": paths["mask"].name,
        "frames": paths["frames"].name if keep_frames else None,
        "modality": pipeline.modality, "shape": [int(n_rows), int(dim)], "dtype": "float32",
        **provenance,
        "missing_rows": "zero in the .npy and False in the .mask.npz: items not listed, left out, or whose "
                        "media failed",
        "rows": {"total": int(n_rows), "present": int(mask.sum()), "failed": len(failures),
                 "left_out": len(media.skipped), "unlisted": int(n_rows - len(media) - len(media.skipped))},
        "media": {"folder": os.fspath(media.folder), "ids_file": os.fspath(media.source),
                  "ids_sha256": media.sha256, "listed": len(media) + len(media.skipped),
                  "left_out": [{"line": line, "reason": reason} for line, reason in media.skipped]},
        "failures": failures,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": _library_versions(),
        **({"command": dict(command)} if command else {}),
    }
    if keep_frames:
        record["frame_dim"] = int(pipeline.frame_dim)
        record["frames_layout"] = ("frames (n_rows, T, d_frame) float32, frame t of item k at [k, t], zero past "
                                   "lengths[k]; lengths (n_rows,) int32, 0 for items without video; mask (n_rows,)")
    # The sidecar goes first and comes back last: load_features needs it, so a reader never pairs
    # new rows with an old sidecar, and the marker lets a rerun of this command finish the job.
    write_atomic(partial.folder / _FINISHING, b"", durable=True)
    paths["json"].unlink(missing_ok=True)
    write_atomic(paths["features"], write_features, durable=True)
    write_atomic(paths["mask"], lambda h: np.savez(h, mask=mask), durable=True)
    if keep_frames:
        # savez streams a memory-mapped array into the archive in buffered chunks
        write_atomic(paths["frames"], lambda h: np.savez(h, frames=partial.frames, lengths=partial.lengths, mask=mask),
                     durable=True)
    _write_json(paths["json"], record)
    del partial.features, partial.status, partial.frames, partial.lengths
    shutil.rmtree(paths["partial"], ignore_errors=True)
    return ExtractionResult(output=paths["features"], sidecar=paths["json"], mask_path=paths["mask"],
                            frames_path=paths["frames"] if keep_frames else None, n_rows=int(n_rows), dim=int(dim),
                            present=int(mask.sum()), failed=len(failures), encoded_now=encoded_now, seconds=seconds,
                            items_per_second=encoded_now / seconds if seconds > 0 else float("inf"))
