"""``load(path)``: one entry point for every on-disk format, by name or by sniffing the folder."""

from __future__ import annotations

import inspect
from pathlib import Path

from jaxrec.data._dataset import MultimodalDataset
from jaxrec.data._io import FORMAT_HINT, prepared_tfds_roots, read_text, require_folder, require_inter_file, \
    tfds_format_error
from jaxrec.data._readers_mmrec import read_mmrec
from jaxrec.data._readers_movielens import detect_movielens, read_movielens
from jaxrec.data._readers_recbole import FIELD_TYPES, read_recbole
from jaxrec.errors import ConfigError, DataError



def read_tfds(path, *, version: str | None = None) -> MultimodalDataset:
    """A dataset prepared by ``jaxrec data prepare`` (``path`` = ``DATA_DIR/NAME``)."""
    from jaxrec.data._tfds import load_prepared

    path = Path(path)
    if not _is_tfds_folder(path):
        roots = [root for root in prepared_tfds_roots(path) if root != path]
        if roots:
            shown = " or ".join(repr(str(root)) for root in roots[:3])
            raise DataError("not the folder of a prepared dataset", path=path,
                            found="a folder above or inside datasets prepared by 'jaxrec data prepare'",
                            expected=f"the DATA_DIR/NAME folder: {shown}")
    return load_prepared(path.parent, path.name, version)


def _is_tfds_folder(folder: Path) -> bool:
    # prepare_tfds commits a dataset by writing its interactions table last.
    return any(folder.glob("interactions/*/dataset_info.json"))


_READERS = {"mmrec": read_mmrec, "recbole": read_recbole, "movielens": read_movielens, "tfds": read_tfds}
FORMATS = tuple(_READERS)


def detect_format(path) -> str:
    """The format of a dataset folder (or of the folder of a ``.inter`` file).

    ``movielens`` when a MovieLens ratings file (``u.data``, ``ratings.dat``, ``ratings.csv``)
    is there; ``tfds`` for a folder written by ``jaxrec data prepare`` (``DATA_DIR/NAME``);
    otherwise, from the header of the ``.inter`` file: ``recbole`` when its columns are typed
    ``name:type`` (every column, or any with a RecBole type: the reader then checks the
    types), ``mmrec`` when it has plain ``userID`` / ``itemID`` columns.

    Raises:
      DataError: the folder is missing or matches no known format.
    """
    path = Path(path)
    if not path.exists():
        require_folder(path)  # says which: missing, a symbolic-link loop, a dangling link, unreachable
    folder = path.parent if path.is_file() else path
    if path.is_file() and path.suffix != ".inter" and (roots := prepared_tfds_roots(path)):
        raise tfds_format_error(path, roots, "raw dataset")
    if path.is_file():
        require_inter_file(path)
    if path.is_dir() and detect_movielens(folder):
        return "movielens"
    if path.is_dir() and _is_tfds_folder(folder):
        return "tfds"
    inter_files = [path] if path.is_file() else sorted(p for p in folder.glob("*.inter")
                                                      if not p.stem.endswith("_og_ids"))
    if not inter_files:
        if roots := prepared_tfds_roots(folder):
            raise tfds_format_error(path, roots, "raw dataset")
        raise DataError("cannot tell the dataset format", path=path, found="no .inter file and no MovieLens ratings",
                        expected=f"one of the formats {list(FORMATS)} (set it with {FORMAT_HINT})")
    preferred = [p for p in inter_files if p.stem == folder.name] or inter_files
    # Latin-1 decodes any bytes: the typed header of a RecBole file is ASCII in every encoding.
    first_line = read_text(preferred[0], encoding="latin-1").split("\n", 1)[0]
    fields = [field.strip() for field in first_line.split("\t")]
    # Typed columns mean RecBole, whose reader then names a misspelt type (``rating:flot``);
    # MMRec's headers are plain names (userID, itemID, ...).
    typed = [field.partition(":")[2] for field in fields if ":" in field]
    if len(typed) == len(fields) or any(kind in FIELD_TYPES for kind in typed):
        return "recbole"
    return "mmrec"


def load(path, format: str = "auto", **options) -> MultimodalDataset:  # noqa: A002  (the natural name)
    """Loads a dataset from disk.

    Args:
      path: a dataset folder (or its ``.inter`` file).
      format: ``"mmrec"``, ``"recbole"``, ``"movielens"``, ``"tfds"`` (a prepared
        ``DATA_DIR/NAME`` folder; option ``version``) or ``"auto"`` (see :func:`detect_format`).
      **options: passed to the reader (:func:`read_mmrec`, :func:`read_recbole`,
        :func:`read_movielens`), e.g. ``social=None`` or ``duplicates="error"``.

    Returns:
      The validated :class:`MultimodalDataset`; ``metadata["format"]`` names the reader used.

    Raises:
      DataError: unknown format, or malformed input (naming file, line and field).
      ConfigError: an option the reader does not take.
    """
    if format == "auto":
        format = detect_format(path)  # noqa: A001
    if format not in _READERS:
        raise DataError("unknown dataset format", path=path, field="format", found=repr(format),
                        expected=f"one of {['auto', *FORMATS]}")
    reader = _READERS[format]
    accepted = [name for name, p in inspect.signature(reader).parameters.items() if p.kind == p.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(f"unknown option(s) {unknown} for the {format} reader; it takes {accepted}")
    return reader(path, **options)
