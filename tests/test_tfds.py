"""TFDS storage: prepare -> load gives back the identical dataset; the files are standard TFDS.

Identity is checked field by field against the original (bytes and dtypes of every array, types
of every metadata value); the standard TFDS decoding path (``tfds.data_source``) is compared with
the original rows independently of jaxrec's bulk loader.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

import jaxrec.data
from jaxrec.cli.data_prepare import add_prepare_parser
from jaxrec.data import Interactions, Modality, MultimodalDataset
from jaxrec.data import _tfds_schema
from jaxrec.data import load_prepared, make_synthetic, prepare_tfds, prepared_versions, tfds_builder_class
from jaxrec.errors import ConfigError, DataError


def _same(a, b, where="") -> None:
    """Deep equality that also demands equal types, dtypes and bytes (NaN equals NaN)."""
    assert type(a) is type(b) or (isinstance(a, dict) and isinstance(b, dict)) or (
        hasattr(a, "keys") and hasattr(b, "keys")), f"{where}: {type(a)} vs {type(b)}"
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, f"{where}: {a.dtype}{a.shape} vs {b.dtype}{b.shape}"
        if a.dtype == object:
            assert len(a) == len(b)
            for i, (x, y) in enumerate(zip(a.tolist(), b.tolist())):
                _same(x, y, f"{where}[{i}]")
        else:
            assert a.tobytes() == b.tobytes(), f"{where}: values differ"
    elif hasattr(a, "keys"):
        assert list(a.keys()) == list(b.keys()), f"{where}: keys {list(a)} vs {list(b)}"
        for key in a:
            _same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
    elif isinstance(a, (float, np.floating)) and np.isnan(a):
        assert np.isnan(b), where
    else:
        assert a == b, f"{where}: {a!r} vs {b!r}"


def assert_identical(original: MultimodalDataset, loaded: MultimodalDataset) -> None:
    for field in ("name", "n_users", "n_items", "n_entities", "n_relations"):
        _same(getattr(original, field), getattr(loaded, field), field)
    for field in ("users", "items", "split", "ratings", "timestamps"):
        a, b = getattr(original.interactions, field), getattr(loaded.interactions, field)
        assert (a is None) == (b is None), field
        if a is not None:
            _same(a, b, f"interactions.{field}")
    assert list(original.modalities) == list(loaded.modalities)
    for name, mod in original.modalities.items():
        other = loaded.modalities[name]
        assert other.name == name
        for field in ("features", "mask", "lengths"):
            a, b = getattr(mod, field), getattr(other, field)
            assert (a is None) == (b is None), f"{name}.{field}"
            if a is not None:
                _same(a, b, f"modalities[{name!r}].{field}")
        _same(dict(mod.provenance), dict(other.provenance), f"modalities[{name!r}].provenance")
    for field in ("user_features", "kg_triples", "social_edges", "user_ids", "item_ids"):
        a, b = getattr(original, field), getattr(loaded, field)
        assert (a is None) == (b is None), field
        if a is not None:
            _same(a, b, field)
    _same(dict(original.metadata), dict(loaded.metadata), "metadata")


def rich_dataset(seed=0) -> MultimodalDataset:
    """Synthetic data plus every optional part, in awkward dtypes, names and metadata types."""
    base = make_synthetic(30, 24, n_interactions=240, seed=seed, dims={"text": 6, "img/v2": 5},
                          sequence_modality=("video", 4, 3), missing_rate=0.25)
    rng = np.random.default_rng(seed)
    n = len(base.interactions)
    interactions = Interactions(base.interactions.users, base.interactions.items, base.interactions.split,
                                ratings=rng.integers(1, 6, n).astype(np.float32),
                                timestamps=rng.random(n) * 1e9)  # float64, not representable in float32
    order = rng.permutation(n)  # rows not grouped by user or split: the row order must survive
    interactions = interactions.select(order)
    item_ids = np.empty(24, dtype=object)
    item_ids[:] = [10**12 + 7 * i for i in range(24)]  # Python ints beyond int32
    return base.replace(
        name="rich", interactions=interactions,
        user_features=rng.standard_normal((30, 7)).astype(np.float32),
        kg_triples=np.stack([rng.integers(0, 24, 50), rng.integers(0, 4, 50), rng.integers(0, 40, 50)], 1),
        n_entities=40, n_relations=4,
        social_edges=rng.integers(0, 30, (45, 2)),
        user_ids=np.array([f"użytkownik-{i}" for i in range(30)]),
        item_ids=item_ids,
        metadata={**base.metadata, "tuple": (1, "a", (2.5, None)), "np_scalar": np.float32(0.1), "nan": float("nan"),
                  "array": np.arange(6, dtype=np.int16).reshape(2, 3), "nested": {"list": [1, [2, 3]], 5: "int key"},
                  "bool": True, "numpy_types": [np.float64(1 / 3), np.str_("txt"), np.bool_(False), np.uint8(7)]},
    )


def test_rich_dataset_round_trips_exactly(tmp_path):
    original = rich_dataset()
    root = prepare_tfds(original, tmp_path, name="rich", version="1.0.0")
    assert root == tmp_path / "rich"
    assert_identical(original, load_prepared(tmp_path, "rich"))
    assert "tensorflow" not in sys.modules, "TFDS must work without TensorFlow"


def test_identity_check_catches_a_changed_value(tmp_path):
    original = rich_dataset()
    prepare_tfds(original, tmp_path, name="rich")
    loaded = load_prepared(tmp_path, "rich")
    timestamps = loaded.interactions.timestamps.copy()
    timestamps[3] = np.nextafter(timestamps[3], np.inf)  # one ulp: lost if stored as float32
    changed = loaded.replace(interactions=Interactions(loaded.interactions.users, loaded.interactions.items,
                                                       loaded.interactions.split, loaded.interactions.ratings, timestamps))
    with pytest.raises(AssertionError):
        assert_identical(original, changed)


def test_files_are_versioned_array_record_readable_by_plain_tfds(tmp_path):
    original = make_synthetic(40, 30, n_interactions=300, seed=2, dims={"text": 4},
                              sequence_modality=("video", 3, 2))
    prepare_tfds(original, tmp_path, name="plain_tfds", version="2.1.0", release_notes="Second cut.")
    info = json.loads((tmp_path / "plain_tfds/interactions/2.1.0/dataset_info.json").read_text())
    assert info["fileFormat"] == "array_record" and info["version"] == "2.1.0"
    assert info["releaseNotes"] == {"2.1.0": "Second cut."}
    assert sorted(p.name.split(".")[0] for p in (tmp_path / "plain_tfds/interactions/2.1.0").glob("*.array_record*")) \
        == ["plain_tfds-test", "plain_tfds-train", "plain_tfds-valid"]
    assert not list(tmp_path.rglob("incomplete*")) and not (tmp_path / "downloads").exists()
    # The standard TFDS decode path, by name, gives the original rows.
    train = tfds.data_source("plain_tfds/interactions:2.1.0", split="train", data_dir=tmp_path, download=False)
    inter = original.interactions
    train_rows = np.flatnonzero(inter.split == 0)
    assert len(train) == len(train_rows)
    for position in (0, 17, len(train) - 1):
        example = train[position]
        row = train_rows[position]
        assert int(example["index"]) == row and example["user"] == inter.users[row] and example["item"] == inter.items[row]
    items = tfds.data_source("plain_tfds/items:2.1.0", split="items", data_dir=tmp_path, download=False)
    example = items[11]
    video = original.modalities["video"]
    np.testing.assert_array_equal(example["modalities"]["video"]["features"], video.features[11])
    assert example["modalities"]["video"]["length"] == video.lengths[11]
    assert example["modalities"]["text"]["features"].dtype == np.float32
    # The default config is the interactions table.
    assert len(tfds.data_source("plain_tfds", split="test", data_dir=tmp_path, download=False)) == inter.split.tolist().count(2)


def test_versions_live_side_by_side_and_the_newest_loads_by_default(tmp_path):
    old, new = make_synthetic(20, 15, n_interactions=100, seed=3, dims={"a": 2}), \
        make_synthetic(20, 15, n_interactions=120, seed=4, dims={"a": 2})
    prepare_tfds(old, tmp_path, name="versions", version="1.0.0")
    prepare_tfds(new, tmp_path, name="versions", version="1.10.0")  # numeric, not string, order
    assert prepared_versions(tmp_path, "versions") == ["1.0.0", "1.10.0"]
    assert_identical(new, load_prepared(tmp_path, "versions"))
    assert_identical(old, load_prepared(tmp_path, "versions", version="1.0.0"))
    with pytest.raises(DataError, match="not prepared"):
        load_prepared(tmp_path, "versions", version="3.0.0")


def test_existing_version_is_refused_unless_overwritten(tmp_path):
    first = make_synthetic(20, 15, n_interactions=100, seed=5, dims={"a": 2})
    second = rich_dataset(seed=1)
    prepare_tfds(first, tmp_path, name="again")
    with pytest.raises(DataError, match="already prepared"):
        prepare_tfds(second, tmp_path, name="again")
    assert_identical(first, load_prepared(tmp_path, "again"))
    prepare_tfds(second, tmp_path, name="again", overwrite=True)
    assert_identical(second, load_prepared(tmp_path, "again"))


def test_interrupted_preparation_commits_nothing_and_the_next_run_recovers(tmp_path, monkeypatch):
    data = rich_dataset()
    real_examples = _tfds_schema.table_examples

    def failing_examples(dataset, table, split, manifest):
        for count, pair in enumerate(real_examples(dataset, table, split, manifest)):
            if table == "interactions" and count == 20:
                raise KeyboardInterrupt("simulated crash while writing the last table")
            yield pair

    monkeypatch.setattr("jaxrec.data._tfds_builder.table_examples", failing_examples)
    with pytest.raises(KeyboardInterrupt):
        prepare_tfds(data, tmp_path, name="crash")
    assert prepared_versions(tmp_path, "crash") == []  # nothing is committed
    assert not list(tmp_path.rglob("incomplete*"))
    assert not list(tmp_path.glob(".crash-*"))  # the staging folder is gone
    with pytest.raises(DataError, match="no prepared TFDS dataset"):
        load_prepared(tmp_path, "crash")
    monkeypatch.setattr("jaxrec.data._tfds_builder.table_examples", real_examples)
    other = rich_dataset(seed=2)  # different data: stale tables must not be reused
    prepare_tfds(other, tmp_path, name="crash")
    assert_identical(other, load_prepared(tmp_path, "crash"))


def test_missing_table_and_foreign_layout_are_reported(tmp_path):
    prepare_tfds(rich_dataset(), tmp_path, name="broken")
    manifest_file = tmp_path / "broken/interactions/1.0.0/metadata.json"
    import shutil
    shutil.rmtree(tmp_path / "broken/kg/1.0.0")
    with pytest.raises(DataError, match="incomplete") as error:
        load_prepared(tmp_path, "broken")
    assert "kg" in str(error.value)
    metadata = json.loads(manifest_file.read_text())
    metadata["jaxrec"]["layout"] = "someone-else-1"
    manifest_file.write_text(json.dumps(metadata))
    with pytest.raises(DataError, match="layout"):
        load_prepared(tmp_path, "broken")


@pytest.mark.parametrize("name, version, error", [
    ("Bad-Name", "1.0.0", ConfigError), ("9lives", "1.0.0", ConfigError), ("fine", "1.0", ConfigError),
])
def test_bad_name_or_version(tmp_path, name, version, error):
    with pytest.raises(error):
        prepare_tfds(make_synthetic(5, 5, n_interactions=10, dims={"a": 1}), tmp_path, name=name, version=version)
    assert not any(tmp_path.iterdir())


def test_unstorable_metadata_and_empty_interactions_fail_before_writing(tmp_path):
    data = make_synthetic(5, 5, n_interactions=10, dims={"a": 1})
    with pytest.raises(DataError, match="metadata value cannot be stored") as error:
        prepare_tfds(data.replace(metadata={"when": object()}), tmp_path, name="meta")
    assert "metadata['when']" in str(error.value)
    empty = data.replace(interactions=data.interactions.select(np.zeros(10, bool)))
    with pytest.raises(DataError, match="without interactions"):
        prepare_tfds(empty, tmp_path, name="empty")
    assert not any(tmp_path.iterdir())
    with pytest.raises(DataError, match="MultimodalDataset"):
        tfds_builder_class("x")(dataset=None, data_dir=str(tmp_path))


def test_empty_kg_and_missing_splits_round_trip(tmp_path):
    base = make_synthetic(12, 10, n_interactions=40, seed=6, dims={"a": 2})
    only_train = Interactions(base.interactions.users, base.interactions.items,
                              np.zeros(len(base.interactions), np.int8))
    data = base.replace(interactions=only_train, kg_triples=np.empty((0, 3), np.int32), social_edges=None,
                        modalities={})
    prepare_tfds(data, tmp_path, name="sparse_parts")
    assert sorted(p.name for p in (tmp_path / "sparse_parts").iterdir() if not p.name.startswith(".")) == ["interactions"]
    assert_identical(data, load_prepared(tmp_path, "sparse_parts"))


def _read_lfm2k_with_numpy(path: Path) -> MultimodalDataset:
    """A tiny independent reader of the MMRec files (used when jaxrec.data.load is absent)."""
    inter = np.loadtxt(path / "lfm2k.inter", skiprows=1, dtype=np.int64)
    features = {name: np.load(path / f"{name}.npy") for name in ("all-MiniLM-L6-v2", "vggish", "whisper")}
    n_items = len(features["whisper"])
    return MultimodalDataset(
        "lfm2k", int(inter[:, 0].max()) + 1, n_items,
        Interactions(inter[:, 0], inter[:, 1], inter[:, 3], ratings=inter[:, 2]),
        {name: Modality(name, f, np.ones(n_items, bool), provenance={"source": str(path / f"{name}.npy")})
         for name, f in features.items()},
        metadata={"source": str(path), "format": "mmrec"})


@pytest.mark.shared_data
def test_lfm2k_round_trips_exactly(tmp_path, lfm2k_path):
    original = jaxrec.data.load(lfm2k_path) if hasattr(jaxrec.data, "load") else _read_lfm2k_with_numpy(lfm2k_path)
    assert len(original.interactions) == 56_345 and original.n_items == 1425
    prepare_tfds(original, tmp_path, name="lfm2k")
    assert_identical(original, load_prepared(tmp_path, "lfm2k"))


def test_cli_prepare_writes_a_loadable_dataset(tmp_path, monkeypatch, capsys):
    data = rich_dataset()
    calls = []

    def fake_load(path, format="auto"):  # noqa: A002  the readers are tested elsewhere
        calls.append((path, format))
        return data

    monkeypatch.setattr(jaxrec.data, "load", fake_load)
    parser = argparse.ArgumentParser(prog="jaxrec data")
    add_prepare_parser(parser.add_subparsers())
    args = parser.parse_args(["prepare", "some/folder", "--name", "cli_ds", "--data-dir", str(tmp_path),
                              "--format", "mmrec", "--version", "1.2.3", "--release-notes", "first"])
    assert args.func(args) == 0
    assert calls == [("some/folder", "mmrec")]
    assert_identical(data, load_prepared(tmp_path, "cli_ds", version="1.2.3"))
    out = capsys.readouterr().out
    assert "cli_ds" in out and "1.2.3" in out and str(tmp_path) in out
    with pytest.raises(DataError, match="already prepared"):
        args.func(args)
