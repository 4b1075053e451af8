"""Writing a MultimodalDataset as TFDS tables: the builder class and ``prepare_tfds``.

See :mod:`jaxrec.data._tfds` for the public API and ``_tfds_schema`` for the tables.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import tempfile
import threading
import types
from pathlib import Path

import tensorflow_datasets as tfds

from jaxrec._atomic import exclusive_lock, file_in_the_way
from jaxrec.data._dataset import MultimodalDataset
from jaxrec.data._tfds_schema import (COMMIT_TABLE, LAYOUT, TABLE_SPLITS, TABLES, build_manifest, table_examples,
                                      table_features, table_rows)
from jaxrec.errors import ConfigError, DataError

_DATASET_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class MultimodalDatasetBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """TFDS builder writing one table (builder config) of a :class:`MultimodalDataset`.

    TFDS builders carry a fixed class-level ``name`` and ``VERSION``: get a subclass for a
    dataset name and version from :func:`tfds_builder_class`, then construct it with the
    dataset to write, e.g. ``cls(dataset=data, data_dir=d, config="items")``. Reading needs no
    class: ``tfds.builder_from_directory`` or ``tfds.data_source`` read the prepared folders.
    """

    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=table, description=f"{table}: one example per row")
                       for table in (COMMIT_TABLE, *[t for t in TABLES if t != COMMIT_TABLE])]
    DEFAULT_BUILDER_CONFIG_NAME = COMMIT_TABLE

    def __init__(self, *, dataset: MultimodalDataset, **kwargs):
        if not isinstance(dataset, MultimodalDataset):
            raise DataError("a TFDS builder needs the MultimodalDataset it writes", field="dataset",
                            found=type(dataset).__name__, expected="a MultimodalDataset (to read, use load_prepared)")
        self._dataset = dataset
        self._manifest = build_manifest(dataset)
        super().__init__(**kwargs)

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
        # TFDS 4.9.10 resolves this for package modules through `importlib_resources`, which it
        # only installs on Python < 3.9; this file is where that lookup would end.
        return tfds.core.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        table = self.builder_config.name
        metadata = {"jaxrec": self._manifest} if table == COMMIT_TABLE else {"jaxrec_layout": LAYOUT}
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"{self._dataset.name!r} as jaxrec TFDS tables; this config: {table}.",
            features=table_features(table, self._manifest),
            disable_shuffling=True,  # rows stay in dataset order; random access needs no shuffle
            metadata=tfds.core.MetadataDict(metadata),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download: the data is in memory
        table = self.builder_config.name
        if table == COMMIT_TABLE:
            sizes = self._dataset.split_sizes()
        else:
            sizes = {TABLE_SPLITS[table][0]: table_rows(self._dataset)[table]}
        # TFDS cannot write an empty split; the manifest records the true sizes.
        return {split: self._generate_examples(table, split) for split in TABLE_SPLITS[table] if sizes[split]}

    def _generate_examples(self, table: str, split: str):
        yield from table_examples(self._dataset, table, split, self._manifest)


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _DATASET_NAME.match(name):
        suggestion = re.sub(r"[^a-z0-9_]", "_", str(name).lower()).lstrip("_0123456789") or "dataset"
        raise ConfigError(f"TFDS dataset name {name!r} is not valid: use lower-case letters, digits and "
                          f"underscores, starting with a letter (e.g. {suggestion!r})")
    return name


def check_version(version) -> tfds.core.Version:
    try:
        return tfds.core.Version(str(version))
    except ValueError:
        raise ConfigError(f"dataset version {version!r} is not valid: expected MAJOR.MINOR.PATCH, e.g. '1.0.0'") from None


def tfds_builder_class(name: str, *, version: str = "1.0.0", release_notes: str | None = None):
    """See :func:`jaxrec.data.tfds_builder_class`."""
    check_name(name)
    parsed = check_version(version)
    from jaxrec._version import __version__

    notes = release_notes if release_notes is not None else f"Prepared with jaxrec {__version__}."
    body = {"name": name, "VERSION": parsed, "RELEASE_NOTES": {str(parsed): notes}, "__module__": __name__}
    class_name = "".join(part.capitalize() for part in name.split("_")) + "Builder"
    return types.new_class(class_name, (MultimodalDatasetBuilder,), {"skip_registration": True},
                           lambda namespace: namespace.update(body))


@contextlib.contextmanager
def _tfds_output(verbose: bool):
    """TFDS's own output -- "Downloading and preparing dataset ..." and "... downloaded and
    prepared to ..." printed on stdout, and its tqdm progress bars on stderr -- only when
    ``verbose``; TFDS's progress-bar switch is restored afterwards."""
    if verbose:
        yield
        return
    from tensorflow_datasets.core.utils import tqdm_utils

    was_active = tqdm_utils._active  # TFDS keeps the switch as a module global, with no getter
    tqdm_utils.display_progress_bar(False)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        tqdm_utils.display_progress_bar(was_active)


# tempfile's default folder is a module global: one redirect at a time.
_TEMPDIR_LOCK = threading.Lock()


@contextlib.contextmanager
def _temporary_folders_under(folder: str):
    """A new TFDS builder (no ``dataset_info.json`` yet) makes a temporary folder for the
    GCS bucket's metadata and never removes it (an empty ``/tmp/tmp...tfds`` per builder when
    GCS is off): made under ``folder`` (removed with it) while the builder is constructed."""
    with _TEMPDIR_LOCK:
        saved = tempfile.tempdir
        tempfile.tempdir = folder
        try:
            yield
        finally:
            tempfile.tempdir = saved


def prepare_tfds(dataset: MultimodalDataset, data_dir, *, name: str | None = None, version: str = "1.0.0",
                 release_notes: str | None = None, overwrite: bool = False, verbose: bool = False) -> Path:
    """See :func:`jaxrec.data.prepare_tfds`."""
    name = check_name(dataset.name if name is None else name)
    builder_class = tfds_builder_class(name, version=version, release_notes=release_notes)
    version = str(builder_class.VERSION)
    root = Path(data_dir) / name
    committed = root / COMMIT_TABLE / version
    rows = table_rows(dataset)
    if rows[COMMIT_TABLE] == 0:
        raise DataError("cannot prepare a dataset without interactions", field="interactions", found="0 rows",
                        expected="at least one interaction")
    build_manifest(dataset)  # fails early on metadata that cannot be stored, before touching disk
    if committed.exists() and not overwrite:
        raise DataError("this dataset version is already prepared", path=committed, found=f"{name} {version}",
                        expected="a new version (--version) or overwrite=True (--overwrite)")
    data_dir = Path(data_dir)
    blocking = file_in_the_way(Path(root))  # the dataset's folder, the data directory or a folder above
    if blocking is not None:
        raise DataError("cannot prepare into a file", path=blocking, found="a file",
                        expected="a folder (or nothing) for the TFDS data directory and its dataset")
    data_dir.mkdir(parents=True, exist_ok=True)
    # One preparation of a name and version at a time: another one would clear this one's
    # staging folder as a leftover, and the two commits would interleave.
    lock = data_dir / f".{name}-{version}.lock"
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(exclusive_lock(lock, wait=False))
        except BlockingIOError:
            raise DataError("another process is preparing this dataset version now", path=lock,
                            found=f"{name} {version}", expected="its preparation to finish first (or another --version)"
                            ) from None
        if committed.exists() and not overwrite:  # committed by a preparation that held the lock before us
            raise DataError("this dataset version is already prepared", path=committed, found=f"{name} {version}",
                            expected="a new version (--version) or overwrite=True (--overwrite)")
        _clear_leftovers(data_dir, name, version)
        _prepare_staged(dataset, builder_class, data_dir, name, root, version, rows, verbose)
    return root


def _prepare_staged(dataset, builder_class, data_dir: Path, name: str, root: Path, version: str, rows: dict,
                    verbose: bool) -> None:
    # Every table is written into a staging data directory beside the dataset and moved into
    # place only when all are written: an interrupted run (even a killed one) leaves an
    # already prepared version untouched.
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-{version}.", suffix=_STAGING_SUFFIX, dir=data_dir))
    try:
        with tempfile.TemporaryDirectory(prefix="jaxrec_tfds_") as scratch, _tfds_output(verbose):
            for table in TABLES:
                if rows[table]:
                    with _temporary_folders_under(scratch):
                        builder = builder_class(dataset=dataset, data_dir=str(staging), config=table)
                    builder.download_and_prepare(download_dir=scratch, file_format="array_record")
        _commit(staging, name, root, version, rows)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


_STAGING_SUFFIX = ".partial"


def _clear_leftovers(data_dir: Path, name: str, version: str) -> None:
    """Removes what interrupted preparations of ``name`` ``version`` left: staging folders and
    TFDS ``incomplete.*`` folders."""
    for leftover in data_dir.glob(f".{name}-{version}.*{_STAGING_SUFFIX}"):
        shutil.rmtree(leftover, ignore_errors=True)
    for table in TABLES:
        for leftover in (data_dir / name / table).glob(f"incomplete.*_{version}"):
            shutil.rmtree(leftover, ignore_errors=True)


def _commit(staging: Path, name: str, root: Path, version: str, rows: dict) -> None:
    """Moves the staged tables into ``root``: the old commit table out first (so a crash in
    between never leaves a committed mix of old and new tables), the new commit table last."""
    retired = staging / ".retired"
    retired.mkdir()
    for table in (COMMIT_TABLE, *TABLES):
        if (root / table / version).exists():
            os.replace(root / table / version, retired / table)
    root.mkdir(parents=True, exist_ok=True)
    for entry in (staging / name).iterdir():  # TFDS's own files beside the tables (.config: the default table)
        if entry.name not in TABLES:
            if (root / entry.name).exists():
                os.replace(root / entry.name, retired / entry.name)
            os.replace(entry, root / entry.name)
    for table in TABLES:  # the commit table is last
        if rows[table]:
            (root / table).mkdir(parents=True, exist_ok=True)
            os.replace(staging / name / table / version, root / table / version)
