"""TFDS storage of any MultimodalDataset: versioned array_record tables that load back bitwise.

:func:`prepare_tfds` writes a dataset as TFDS builder configs ("tables": items, users, kg,
social, interactions; see ``_tfds_schema``) under ``data_dir/<name>/<table>/<version>/``;
:func:`load_prepared` reads them back through ``builder.as_data_source()`` into an identical
:class:`MultimodalDataset`. The files are plain TFDS, readable without jaxrec or TensorFlow:
``tfds.data_source("<name>/interactions:<version>", split="train", data_dir=...)`` gives
random access to the training interactions (the interactions table is the default config).

Atomicity: every table is written into a staging data directory beside the dataset
(``data_dir/.<name>-<version>.*.partial``) and moved into place when all are written, the
interactions config, which carries the manifest, last, so its presence commits the whole
dataset. An interrupted preparation commits nothing and leaves an earlier preparation of the
same version (``overwrite``) as it was; the next one clears the leftovers before writing.

This module imports TFDS only when one of its functions runs, so ``import jaxrec.data`` stays
light; the implementation is in ``_tfds_builder`` (writing) and ``_tfds_reader`` (reading).
"""

from __future__ import annotations

from pathlib import Path


def prepare_tfds(dataset, data_dir, *, name: str | None = None, version: str = "1.0.0",
                 release_notes: str | None = None, overwrite: bool = False, verbose: bool = False) -> Path:
    """Writes ``dataset`` as versioned TFDS array_record tables under ``data_dir/name``.

    One example per row: interactions (splits ``train`` / ``valid`` / ``test``, each example
    with its row ``index``, ``user``, ``item`` and optional ``rating`` / ``timestamp``), items
    (each modality's feature row, mask and length, and the original id), users, knowledge-graph
    triples and social edges. Counts, provenance, metadata and id-map types go in the
    interactions config's metadata. Tables without rows are not written.

    Args:
      dataset: any :class:`MultimodalDataset` with at least one interaction.
      data_dir: the TFDS data directory (created if absent).
      name: TFDS dataset name (lower_snake_case); defaults to ``dataset.name``.
      version: ``MAJOR.MINOR.PATCH``; versions live side by side.
      release_notes: notes for this version (``dataset_info.json``); by default, the jaxrec
        version that prepared it.
      overwrite: replace an already prepared dataset of the same name and version (kept as it
        was until the new one is fully written).
      verbose: let TFDS print its "Downloading and preparing dataset" messages and progress
        bars (silenced by default: jaxrec downloads nothing and the tables are small).

    Returns:
      ``data_dir/name``, holding one folder per table, each with a ``<version>`` folder.

    Raises:
      DataError: the version is already prepared (and ``overwrite`` is False), the dataset
        has no interactions, its metadata holds values that cannot be stored, or
        ``data_dir`` or ``data_dir/name`` is a file.
      ConfigError: an invalid name or version.

    Example:
      >>> import tempfile
      >>> from jaxrec.data import make_synthetic
      >>> data = make_synthetic(20, 15, n_interactions=100, dims={"text": 4})
      >>> folder = tempfile.mkdtemp()
      >>> root = prepare_tfds(data, folder, name="tiny")  # doctest: +SKIP
      >>> load_prepared(folder, "tiny").n_items  # doctest: +SKIP
      15
    """
    from jaxrec.data import _tfds_builder

    return _tfds_builder.prepare_tfds(dataset, data_dir, name=name, version=version,
                                      release_notes=release_notes, overwrite=overwrite, verbose=verbose)


def load_prepared(data_dir, name: str, version: str | None = None):
    """Loads a dataset written by :func:`prepare_tfds`, bitwise identical to the original.

    Records are read raw through ``builder.as_data_source()`` and decoded in bulk (each numeric
    column of a chunk of records is one ``np.frombuffer``); every row's stored index is checked
    to cover the dataset exactly once.

    Args:
      data_dir: the TFDS data directory given to :func:`prepare_tfds`.
      name: the TFDS dataset name.
      version: ``MAJOR.MINOR.PATCH``; the newest fully prepared version when None.

    Returns:
      The :class:`MultimodalDataset`: arrays with their dtypes, masks, lengths, provenance,
      metadata, id maps, knowledge graph, social edges and user features as prepared.

    Raises:
      DataError: nothing prepared there, an unknown version, or incomplete or corrupt tables.
      ConfigError: an invalid name or version string.
    """
    from jaxrec.data import _tfds_reader

    return _tfds_reader.load_prepared(data_dir, name, version)


def read_train_shard(data_dir, name: str, version: str | None, shard: int, n_shards: int):
    """``(columns, n_train)``: the interaction columns (``index``, ``user``, ``item``, and
    ``rating`` / ``timestamp`` when stored) of train records ``[n_train * shard // n_shards,
    n_train * (shard + 1) // n_shards)`` of a prepared dataset, read by random access: no other
    record is read or decoded. One process's share of a multi-process run
    (``data.per_process_read``)."""
    from jaxrec.data import _tfds_reader

    return _tfds_reader.read_train_shard(data_dir, name, version, shard, n_shards)


def load_prepared_side(data_dir, name: str, version: str | None = None, train_columns=None):
    """:func:`load_prepared` with the train records given (``train_columns``: every train
    record's columns as :func:`read_train_shard` returns them, all shards concatenated in any
    order) instead of read; everything else is read. The same dataset, bitwise."""
    from jaxrec.data import _tfds_reader

    return _tfds_reader.load_prepared_side(data_dir, name, version, train_columns)


def prepared_versions(data_dir, name: str) -> list[str]:
    """Versions of ``name`` fully prepared (committed) in ``data_dir``, oldest first."""
    from jaxrec.data import _tfds_reader

    return _tfds_reader.prepared_versions(data_dir, name)


def tfds_builder_class(name: str, *, version: str = "1.0.0", release_notes: str | None = None):
    """A TFDS ``GeneratorBasedBuilder`` subclass for one dataset name and version.

    TFDS builders carry a fixed class-level ``name`` and ``VERSION``, so each (name, version)
    gets its own subclass of ``MultimodalDatasetBuilder``, left out of TFDS's global registry
    (any number can coexist in one process). Construct it with the dataset to write and a
    table: ``cls(dataset=data, data_dir=d, config="items").download_and_prepare(
    file_format="array_record")``; :func:`prepare_tfds` does this for every table, in the
    committing order. Reading needs no class (``tfds.builder_from_directory``).

    Args:
      name: the TFDS dataset name (lower_snake_case); folders go under ``data_dir/name``.
      version: ``MAJOR.MINOR.PATCH``.
      release_notes: what changed in this version.

    Returns:
      The builder class.

    Raises:
      ConfigError: an invalid name or version.
    """
    from jaxrec.data import _tfds_builder

    return _tfds_builder.tfds_builder_class(name, version=version, release_notes=release_notes)
