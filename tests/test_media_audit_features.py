"""Media a user brings that broke feature extraction: 16-bit, 32-bit and float images, colour
profiles, HEIC photos, mirrored videos, non-UTF-8 stream tags, an
MPEG-TS whose second program starts after the header, spreadsheet-made ids files, a mistyped
huge item id, and runs interrupted while writing their outputs or recording a failure."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from _media_files import (frame_pattern, linear_light_icc_profile, noise_image, require_av, write_ids, write_image,
                          write_video)
from jaxrec import features as jf
from jaxrec.errors import DataError
from jaxrec.features import _classic
from jaxrec.features import _extract as extract_module
from jaxrec.features._media_io import decode_video, load_audio, load_image


def _grey_rgb(values8: np.ndarray) -> np.ndarray:
    return np.repeat(values8.astype(np.uint8)[..., None], 3, axis=2)


def test_sixteen_bit_images_are_scaled_by_a_fixed_factor_not_their_own_maximum(tmp_path):
    # a dark 16-bit image (levels 100..4000 of 65535) stays dark: its 8-bit levels are the high bytes
    dark = np.linspace(100, 4000, 12 * 10).reshape(12, 10).astype(np.uint16)
    Image.fromarray(dark).save(tmp_path / "dark.png")
    assert Image.open(tmp_path / "dark.png").mode == "I;16"
    expected = _grey_rgb(dark.astype(np.int64) // 256)
    np.testing.assert_array_equal(np.asarray(load_image(tmp_path / "dark.png")), expected)
    # a flat 16-bit image is not white: level 100 of 65535 is black in 8 bits
    Image.fromarray(np.full((4, 4), 100, np.uint16)).save(tmp_path / "flat.png")
    np.testing.assert_array_equal(np.asarray(load_image(tmp_path / "flat.png")), np.zeros((4, 4, 3), np.uint8))
    # big-endian 16-bit TIFF (mode I;16B): 30000 -> 117, not clipped to 255
    big = Image.frombytes("I;16B", (5, 3), np.full((3, 5), 30000, ">u2").tobytes())
    big.save(tmp_path / "big.tif")
    assert Image.open(tmp_path / "big.tif").mode == "I;16B"
    np.testing.assert_array_equal(np.asarray(load_image(tmp_path / "big.tif")), np.full((3, 5, 3), 117, np.uint8))
    # a 16-bit PGM (Pillow's mode I): the same fixed scale
    levels = np.array([[0, 255, 256], [30000, 65280, 65535]], ">u2")
    (tmp_path / "p.pgm").write_bytes(b"P5\n3 2\n65535\n" + levels.tobytes())
    np.testing.assert_array_equal(np.asarray(load_image(tmp_path / "p.pgm")),
                                  _grey_rgb(np.array([[0, 0, 1], [117, 255, 255]])))
    # through the extractor: the descriptor of those 8-bit pixels
    ids = write_ids(tmp_path / "ids.tsv", [(0, "dark.png")])
    media = jf.read_media_list(ids, tmp_path)
    jf.extract_features(media, jf.ModalityPipeline("image", jf.ClassicImageEncoder()), tmp_path / "f.npy",
                        progress=False)
    np.testing.assert_array_equal(np.load(tmp_path / "f.npy")[0], _classic.image_descriptor(expected))


def _tiff_with_sample_format(source: Path, target: Path, sample_format: int) -> Path:
    """``source`` (a little-endian TIFF Pillow wrote, SampleFormat 2) with its SampleFormat tag
    (339, one SHORT) set to ``sample_format``: Pillow always writes 32-bit integer TIFFs as
    signed, other software writes them unsigned (1)."""
    data = bytearray(source.read_bytes())
    entry = bytes([0x53, 0x01, 0x03, 0x00, 0x01, 0x00, 0x00, 0x00, 0x02, 0x00])
    assert data.count(entry) == 1
    at = data.find(entry)
    data[at + 8] = sample_format
    target.write_bytes(bytes(data))
    return target


def test_thirty_two_bit_integer_tiffs_keep_their_top_byte_by_their_declared_depth(tmp_path):
    # signed 32-bit (Pillow's mode I, SampleFormat 2): levels 0 .. 2^31 - 1, negative ones black
    signed = np.array([[-5, 0, 2 ** 23, 2 ** 30, 2 ** 31 - 1]], np.int32)
    Image.fromarray(signed).save(tmp_path / "signed.tif")
    assert Image.open(tmp_path / "signed.tif").mode == "I"
    np.testing.assert_array_equal(np.asarray(load_image(tmp_path / "signed.tif")),
                                  _grey_rgb(np.array([[0, 0, 1, 128, 255]])))
    # unsigned 32-bit (SampleFormat 1): the same mode in Pillow, levels 0 .. 2^32 - 1 (the last
    # reads as -1 through Pillow's signed mode and is white, not black)
    bits = np.array([[0, 2 ** 24, 2 ** 31, 2 ** 32 - 1]], np.uint64).astype(np.uint32).view(np.int32)
    Image.fromarray(bits).save(tmp_path / "as_signed.tif")
    unsigned = _tiff_with_sample_format(tmp_path / "as_signed.tif", tmp_path / "unsigned.tif", 1)
    assert Image.open(unsigned).mode == "I"
    np.testing.assert_array_equal(np.asarray(load_image(unsigned)), _grey_rgb(np.array([[0, 1, 128, 255]])))


def test_float_images_in_the_unit_range_are_scaled_to_eight_bits_and_others_read_as_levels(tmp_path):
    # a float TIFF of 0..1 intensities (mode F) is not black: v -> round(255 v)
    unit = np.array([[0.0, 0.1, 0.5, 1.0]], np.float32)
    Image.fromarray(unit).save(tmp_path / "unit.tif")
    assert Image.open(tmp_path / "unit.tif").mode == "F"
    np.testing.assert_array_equal(np.asarray(load_image(tmp_path / "unit.tif")),
                                  _grey_rgb(np.array([[0, 26, 128, 255]])))
    # a dark one stays dark (a fixed scale, not the image's maximum)
    Image.fromarray(np.full((2, 2), 0.2, np.float32)).save(tmp_path / "dark.tif")
    np.testing.assert_array_equal(np.asarray(load_image(tmp_path / "dark.tif")), np.full((2, 2, 3), 51, np.uint8))
    # values past 1 are 8-bit levels, as Pillow reads them; past 255 or below 0 clipped, with a
    # warning naming the file and the range found; NaN black
    levels = np.array([[0.0, 2.0, 127.6, 255.0]], np.float32)
    Image.fromarray(levels).save(tmp_path / "levels.tif")
    np.testing.assert_array_equal(np.asarray(load_image(tmp_path / "levels.tif")),
                                  _grey_rgb(np.array([[0, 2, 128, 255]])))
    wide = np.array([[-3.0, np.nan, 100.0, 4000.0]], np.float32)
    Image.fromarray(wide).save(tmp_path / "wide.tif")
    with pytest.warns(UserWarning, match=r"wide\.tif.*-3.*4000.*clipped.*NaN read as black"):
        np.testing.assert_array_equal(np.asarray(load_image(tmp_path / "wide.tif")),
                                      _grey_rgb(np.array([[0, 0, 100, 255]])))
    # intensities with a hole: still intensities, the NaN black, said once
    holed = np.array([[0.0, np.nan, 0.5, np.inf]], np.float32)
    Image.fromarray(holed).save(tmp_path / "holed.tif")
    with pytest.warns(UserWarning) as caught:
        np.testing.assert_array_equal(np.asarray(load_image(tmp_path / "holed.tif")),
                                      _grey_rgb(np.array([[0, 0, 128, 255]])))
    assert len(caught) == 1 and "infinite values clipped; NaN read as black" in str(caught[0].message)
    assert "outside" not in str(caught[0].message)


def _with_non_utf8_tag(path: Path) -> Path:
    """The same file with its muxer tag ("Lavf...") starting with the Latin-1 byte 0xe9."""
    data = path.read_bytes()
    assert data.count(b"Lavf") == 1
    tagged = path.with_name("tagged" + path.suffix)
    tagged.write_bytes(data.replace(b"Lavf", b"\xe9avf"))
    return tagged


def test_a_video_with_a_non_utf8_tag_decodes_like_the_same_video_without_it(tmp_path):
    require_av()
    clean = write_video(tmp_path / "clip.mp4", 6)
    tagged = _with_non_utf8_tag(clean)
    sampling = jf.FrameSampling(count=3)
    expected = decode_video(clean, sampling, np.asarray)
    got = decode_video(tagged, sampling, np.asarray)
    assert len(got) == 3
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)


def test_audio_with_a_non_utf8_tag_decodes_like_the_same_audio_without_it(tmp_path):
    av = require_av()
    path = tmp_path / "tone.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        for index in range(8):
            samples = np.sin(0.05 * np.arange(index * 1024, (index + 1) * 1024)).astype(np.float32)[None]
            frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            frame.sample_rate = 16000
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    tagged = _with_non_utf8_tag(path)
    np.testing.assert_array_equal(load_audio(tagged), load_audio(path))


def _ts(path: Path, n_frames: int, first_pid: int | None = None) -> Path:
    av = require_av()
    options = {} if first_pid is None else {"mpegts_start_pid": hex(first_pid), "mpegts_pmt_start_pid": "0x1100"}
    with av.open(str(path), "w", format="mpegts", options=options) as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 48, 32, "yuv420p"
        stream.options = {"qscale": "1"}
        for index in range(n_frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame_pattern(index), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_an_mpegts_whose_second_program_starts_late_keeps_the_frames_before_it(tmp_path):
    av = require_av()
    # two TS segments back to back (as a recorder or an HLS dump writes them); the second
    # program's stream starts after the first 6 s, where FFmpeg's probing has stopped
    first = _ts(tmp_path / "first.ts", 60)
    second = _ts(tmp_path / "second.ts", 5, first_pid=0x200)
    joined = tmp_path / "joined.ts"
    joined.write_bytes(first.read_bytes() + second.read_bytes())
    with av.open(str(first)) as container:  # the first segment on its own, decoded by PyAV directly
        reference = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    assert len(reference) == 60
    got = decode_video(joined, jf.FrameSampling(count=4), np.asarray)
    wanted = [int((j + 0.5) * 60 / 4) for j in range(4)]  # 7, 22, 37, 52
    assert len(got) == 4
    for frame, index in zip(got, wanted):
        np.testing.assert_array_equal(frame, reference[index])
    got = decode_video(joined, jf.FrameSampling(kind="fps", rate=1.0), np.asarray)
    assert len(got) == 6  # t = 0, 1, ..., 5 s: frames 0, 10, ..., 50
    for frame, index in zip(got, range(0, 60, 10)):
        np.testing.assert_array_equal(frame, reference[index])


def test_ids_file_written_by_a_spreadsheet_or_with_odd_bytes(tmp_path):
    rng = np.random.default_rng(3)
    write_image(tmp_path / "a.png", noise_image(rng, 8, 8))
    write_image(tmp_path / "b.png", noise_image(rng, 8, 8))
    plain = write_ids(tmp_path / "plain.tsv", [(0, "a.png"), (1, "b.png")])
    bom = tmp_path / "bom.tsv"  # UTF-8 with a byte-order mark, as spreadsheets save it
    bom.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())
    with_bom, without = jf.read_media_list(bom, tmp_path), jf.read_media_list(plain, tmp_path)
    assert with_bom.items.tolist() == without.items.tolist() and with_bom.paths == without.paths
    superscript = tmp_path / "sup.tsv"  # '²'.isdigit() is True, but it is no item id
    superscript.write_text("itemID\tpath\n0\ta.png\n\u00b2\tb.png\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"sup\.tsv:3, field 'itemID': item id must be a non-negative integer"):
        jf.read_media_list(superscript, tmp_path)
    latin = tmp_path / "latin.tsv"  # a Latin-1 file name on line 3
    latin.write_bytes(b"itemID\tpath\n0\ta.png\n1\tcaf\xe9.png\n")
    with pytest.raises(DataError, match=r"latin\.tsv:3: ids file is not UTF-8 text; found byte 0xe9"):
        jf.read_media_list(latin, tmp_path)


def test_a_mistyped_huge_item_id_is_refused_naming_its_line_and_leaves_nothing(tmp_path):
    write_image(tmp_path / "a.png", noise_image(np.random.default_rng(4), 8, 8))
    ids = write_ids(tmp_path / "ids.tsv", [(0, "a.png"), (10**13, "a.png")])
    media = jf.read_media_list(ids, tmp_path)
    with pytest.raises(DataError, match=r"ids\.tsv:3, field 'itemID': the output would not fit on the disk"):
        jf.extract_features(media, jf.ModalityPipeline("image", jf.ClassicImageEncoder()), tmp_path / "f.npy",
                            progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "ids.tsv"]


@pytest.fixture()
def two_lists(tmp_path):
    rng = np.random.default_rng(5)
    folder = tmp_path / "media"
    folder.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        write_image(folder / name, noise_image(rng, 10, 12))
    first = write_ids(tmp_path / "first.tsv", [(0, "a.png"), (1, "b.png")])
    second = write_ids(tmp_path / "second.tsv", [(0, "c.png"), (1, "a.png")])
    return folder, first, second


def _run(folder, ids, output, **options):
    media = jf.read_media_list(ids, folder, on_error=options.get("on_error", "fail"))
    return jf.extract_features(media, jf.ModalityPipeline("image", jf.ClassicImageEncoder()), output,
                               progress=False, **options)


def _interrupt_write(monkeypatch, target_suffix: str):
    real = extract_module.write_atomic

    def interrupted(path, data, **kwargs):
        if Path(path).name.endswith(target_suffix):
            raise KeyboardInterrupt
        return real(path, data, **kwargs)

    monkeypatch.setattr(extract_module, "write_atomic", interrupted)


def test_a_run_interrupted_while_writing_its_outputs_is_finished_by_the_same_command(two_lists, tmp_path,
                                                                                     monkeypatch):
    folder, first, _ = two_lists
    _run(folder, first, tmp_path / "whole.npy")
    with monkeypatch.context() as patch:
        _interrupt_write(patch, ".mask.npz")  # the features are written, the mask and sidecar are not
        with pytest.raises(KeyboardInterrupt):
            _run(folder, first, tmp_path / "out.npy")
    assert (tmp_path / "out.npy").exists() and not (tmp_path / "out.json").exists()
    result = _run(folder, first, tmp_path / "out.npy")  # the same command again, no --overwrite
    assert result.encoded_now == 0
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), np.load(tmp_path / "whole.npy"))
    assert json.loads((tmp_path / "out.json").read_text())["rows"]["present"] == 2
    assert not (tmp_path / "out.partial").exists()
    with pytest.raises(DataError, match="output exists"):  # a finished output is still protected
        _run(folder, first, tmp_path / "out.npy")


def test_an_interrupted_overwrite_never_pairs_new_rows_with_the_old_sidecar(two_lists, tmp_path, monkeypatch):
    folder, first, second = two_lists
    _run(folder, first, tmp_path / "out.npy")
    _run(folder, second, tmp_path / "expected.npy")
    with monkeypatch.context() as patch:
        _interrupt_write(patch, ".mask.npz")
        with pytest.raises(KeyboardInterrupt):
            _run(folder, second, tmp_path / "out.npy", overwrite=True)
    # out.npy now holds the second list's rows: the first list's sidecar must not vouch for them
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), np.load(tmp_path / "expected.npy"))
    with pytest.raises(DataError, match="provenance sidecar not found"):
        jf.load_features(tmp_path / "out.npy")
    _run(folder, second, tmp_path / "out.npy", overwrite=True)
    record = json.loads((tmp_path / "out.json").read_text())
    assert record["media"]["ids_file"] == str(second)


def test_a_failure_recorded_twice_by_an_interrupted_run_counts_once(two_lists, tmp_path, monkeypatch):
    folder, first, _ = two_lists
    (folder / "b.png").write_bytes(b"not an image")
    with monkeypatch.context() as patch:
        def interrupted(self, row):
            raise KeyboardInterrupt  # after the failure was recorded, before the item was marked

        patch.setattr(extract_module._Partial, "mark_failed", interrupted)
        with pytest.warns(jf.MediaWarning), pytest.raises(KeyboardInterrupt):
            _run(folder, first, tmp_path / "out.npy", on_error="mask")
    with pytest.warns(jf.MediaWarning):
        result = _run(folder, first, tmp_path / "out.npy", on_error="mask")
    record = json.loads((tmp_path / "out.json").read_text())
    assert result.failed == 1 and record["rows"]["failed"] == 1
    assert [entry["item"] for entry in record["failures"]] == [1]


def test_a_symlinked_subfolder_or_file_inside_the_media_folder_is_not_outside_it(tmp_path):
    rng = np.random.default_rng(6)
    elsewhere = tmp_path / "other_disk"
    elsewhere.mkdir()
    arrays = [noise_image(rng, 9, 7), noise_image(rng, 6, 11)]
    write_image(elsewhere / "a.png", arrays[0])
    write_image(elsewhere / "b.png", arrays[1])
    folder = tmp_path / "media"
    folder.mkdir()
    (folder / "clips").symlink_to(elsewhere, target_is_directory=True)
    (folder / "b.png").symlink_to(elsewhere / "b.png")
    ids = write_ids(tmp_path / "ids.tsv", [(0, "clips/a.png"), (1, "b.png")])
    media = jf.read_media_list(ids, folder)
    jf.extract_features(media, jf.ModalityPipeline("image", jf.ClassicImageEncoder()), tmp_path / "f.npy",
                        progress=False)
    features = np.load(tmp_path / "f.npy")
    for row, array in enumerate(arrays):
        np.testing.assert_array_equal(features[row], _classic.image_descriptor(array))
    escaping = write_ids(tmp_path / "escaping.tsv", [(0, "clips/../../other_disk/a.png")])
    with pytest.raises(DataError, match=r"escaping\.tsv:2, field 'path': path outside the media folder"):
        jf.read_media_list(escaping, folder)


@pytest.mark.parametrize("seconds", [0, -1.0, float("nan"), float("inf")])
def test_an_audio_length_limit_that_is_no_length_is_refused(seconds):
    with pytest.raises(DataError, match="field 'max_audio_seconds': the audio length limit must be a positive"):
        jf.ModalityPipeline("audio", jf.ClassicAudioEncoder(), max_audio_seconds=seconds)


class _RecordingTextEncoder:
    name, dim = "recording", 2

    def __init__(self):
        self.texts = []

    def encode(self, texts):
        self.texts.extend(texts)
        return np.ones((len(texts), 2), np.float32)


def test_a_text_file_saved_with_a_byte_order_mark_is_read_without_it(tmp_path):
    (tmp_path / "t.txt").write_bytes("\ufeffh\u00e9llo w\u00f6rld\n".encode("utf-8"))
    ids = write_ids(tmp_path / "ids.tsv", [(0, "t.txt")])
    encoder = _RecordingTextEncoder()
    jf.extract_features(jf.read_media_list(ids, tmp_path), jf.ModalityPipeline("text", encoder), tmp_path / "f.npy",
                        progress=False)
    assert encoder.texts == ["h\u00e9llo w\u00f6rld"]


def test_loading_features_refuses_nan_and_a_width_the_sidecar_does_not_describe(two_lists, tmp_path):
    folder, first, _ = two_lists
    _run(folder, first, tmp_path / "f.npy")
    rows = np.load(tmp_path / "f.npy")
    damaged = rows.copy()
    damaged[1, 7] = np.nan
    np.save(tmp_path / "f.npy", damaged)
    with pytest.raises(DataError, match=r"f\.npy, field 'features': features contain NaN or inf; found nan at row 1"):
        jf.load_features(tmp_path / "f.npy")
    np.save(tmp_path / "f.npy", rows[:, :50])  # another encoder's rows dropped in under this sidecar
    with pytest.raises(DataError, match=r"f\.npy, field 'shape': features and sidecar disagree; found shape \(2, 50\)"):
        jf.load_features(tmp_path / "f.npy")
    np.save(tmp_path / "f.npy", rows)
    np.testing.assert_array_equal(jf.load_features(tmp_path / "f.npy").features, rows)


@pytest.mark.parametrize("container_format, suffix", [("mpegts", ".ts"), ("matroska", ".mkv"), ("mp4", ".mp4")])
def test_fps_sampling_counts_seconds_from_the_first_frame_not_from_time_zero(tmp_path, container_format, suffix):
    av = require_av()
    from fractions import Fraction

    path = tmp_path / f"late{suffix}"
    start = 2007  # timestamps start at 100.35 s (20 fps), as in a cut from a longer broadcast
    with av.open(str(path), "w", format=container_format) as container:
        stream = container.add_stream("mpeg4", rate=20)
        stream.width, stream.height, stream.pix_fmt = 48, 32, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 20)
        stream.options = {"qscale": "1"}
        for index in range(30):
            frame = av.VideoFrame.from_ndarray(frame_pattern(index), format="rgb24")
            frame.pts, frame.time_base = start + index, Fraction(1, 20)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    with av.open(str(path)) as container:
        decoded = [(frame.time, frame.to_ndarray(format="rgb24")) for frame in container.decode(video=0)]
    assert decoded[0][0] == pytest.approx(100.35)
    got = decode_video(path, jf.FrameSampling(kind="fps", rate=2.0), np.asarray)
    # 0, 0.5 and 1.0 s into the clip: frames 0, 10 and 20 (not 100.35, 100.5, 101.0, 101.5 s: frames 0, 3, 13, 23)
    assert len(got) == 3
    for frame, index in zip(got, (0, 10, 20)):
        np.testing.assert_array_equal(frame, decoded[index][1])


def test_the_cli_refuses_an_existing_output_before_loading_a_model(two_lists, tmp_path, monkeypatch, capsys):
    from jaxrec.cli.main import main

    folder, first, _ = two_lists
    _run(folder, first, tmp_path / "out.npy")
    loaded = []
    monkeypatch.setattr(jf, "make_encoder", lambda *args, **kwargs: loaded.append(args) or jf.ClassicImageEncoder())
    code = main(["features", "extract", "--modality", "image", "--input", str(folder), "--ids", str(first),
                 "--encoder", "timm", "--output", str(tmp_path / "out.npy"), "--no-progress"])
    assert code == 1 and "out.npy, field 'output': output exists" in capsys.readouterr().err
    assert loaded == []


def test_a_very_large_image_is_named_in_pillows_warning_and_error(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # warn above 100 pixels, refuse above 200
    array = noise_image(np.random.default_rng(7), 12, 12)
    write_image(tmp_path / "poster.png", array)
    write_image(tmp_path / "huge.png", noise_image(np.random.default_rng(8), 15, 15))
    with pytest.warns(Image.DecompressionBombWarning, match=r"poster\.png: Image size \(144 pixels\) exceeds limit"):
        loaded = load_image(tmp_path / "poster.png")
    np.testing.assert_array_equal(np.asarray(loaded), array)
    with pytest.raises(jf.MediaError, match=r"huge\.png: image too large to decode safely"):
        load_image(tmp_path / "huge.png")


def test_an_unreadable_ids_file_is_named_without_a_traceback(tmp_path, monkeypatch):
    ids = write_ids(tmp_path / "ids.tsv", [(0, "a.png")])
    real = Path.read_bytes

    def denied(self):
        if self == ids:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", denied)  # as for a file of another user (root reads anything)
    with pytest.raises(DataError, match=r"ids\.tsv: cannot read the ids file; found Permission denied"):
        jf.read_media_list(ids, tmp_path)


# EXIF Orientation -> what a viewer shows, in numpy terms (TIFF/EXIF 2.3 orientation values).
_UPRIGHT = {1: lambda a: a, 2: np.fliplr, 3: lambda a: np.rot90(a, 2), 4: np.flipud,
            5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1), 7: lambda a: np.rot90(a, 2).transpose(1, 0, 2),
            8: lambda a: np.rot90(a, 1)}


@pytest.mark.parametrize("orientation", sorted(_UPRIGHT))
def test_a_photo_stored_sideways_is_read_upright_as_its_exif_orientation_says(tmp_path, orientation):
    # Phones store the sensor's pixels and an Orientation tag; the features must see the picture
    # a viewer shows (before: the stored pixels, a portrait photo read as a sideways landscape).
    stored = np.random.default_rng(orientation).integers(0, 256, (3, 5, 3), dtype=np.uint8)
    image = Image.fromarray(stored)
    exif = image.getexif()
    exif[0x0112] = orientation
    image.save(tmp_path / "photo.png", exif=exif)
    upright = np.ascontiguousarray(_UPRIGHT[orientation](stored))
    np.testing.assert_array_equal(np.asarray(load_image(tmp_path / "photo.png")), upright)
    if orientation == 6:  # through the extractor: the descriptor of the upright pixels
        ids = write_ids(tmp_path / "ids.tsv", [(0, "photo.png")])
        jf.extract_features(jf.read_media_list(ids, tmp_path), jf.ModalityPipeline("image", jf.ClassicImageEncoder()),
                            tmp_path / "f.npy", progress=False)
        np.testing.assert_array_equal(np.load(tmp_path / "f.npy")[0], _classic.image_descriptor(upright))


@pytest.mark.parametrize("degrees", [0, 90, 180, -90])
@pytest.mark.parametrize("hflip,vflip", [(False, False), (True, False), (False, True), (True, True)])
def test_a_video_is_read_as_its_display_matrix_shows_it_turned_and_mirrored(tmp_path, degrees, hflip, vflip):
    # The same frames encoded twice, once with a display matrix (phones store their videos
    # sideways and say so there; front-camera clips add a mirror): the frame is turned
    # counter-clockwise by ``degrees``, then mirrored left-right and/or top-bottom, as PyAV writes
    # the matrix (``set_display_rotation(degrees, hflip, vflip)``: "hflip / vflip mirror after it").
    # Reading only the matrix's rotation angle gave a 180-degree turn for a plain left-right mirror.
    require_av()
    frames = [frame_pattern(i, 32, 48) for i in range(2)]
    for frame in frames:  # a mark in the top-left corner: the bars alone are symmetric top to bottom
        frame[:8, :8] = 120
    sampling = jf.FrameSampling("uniform", count=2)
    plain = decode_video(write_video(tmp_path / "plain.mp4", 2, frames=frames), sampling, np.asarray)
    shown = decode_video(write_video(tmp_path / "shown.mp4", 2, frames=frames, display=(degrees, hflip, vflip)),
                         sampling, np.asarray)
    assert len(plain) == len(shown) == 2
    for a, b in zip(plain, shown):
        expected = np.rot90(a, degrees // 90)
        expected = expected[:, ::-1] if hflip else expected
        expected = expected[::-1] if vflip else expected
        np.testing.assert_array_equal(b, expected)


@pytest.fixture
def pillow_without_heif(monkeypatch):
    """``forget()``: Pillow as a fresh process has it, no HEIF opener registered (pillow-heif
    registers one into Pillow's global tables, which this test or another of this process may
    have done), and load_image's registration memo cleared; both restored afterwards."""
    from jaxrec.features import _media_io

    opener = _media_io._heif_opener

    def forget():
        monkeypatch.setattr(Image, "OPEN", {k: v for k, v in Image.OPEN.items() if k != "HEIF"})
        monkeypatch.setattr(Image, "ID", [k for k in Image.ID if k != "HEIF"])
        opener.cache_clear()

    forget()
    yield forget
    opener.cache_clear()


def test_an_iphone_heic_photo_is_read_upright_with_pillow_heif(tmp_path, pillow_without_heif):
    # HEIC is the iPhone camera's default format; load_image reads it through the pillow-heif
    # plugin (the heif extra, in the test extra), registered on first use. Lossless HEVC, so the
    # pixels come back exactly. A photo taken turned (EXIF orientation 6: shown turned 90 degrees
    # clockwise) is stored as the plugin writes it, as an iPhone does (the turn as the HEIF's own
    # rotation), and read upright: turned once, not twice.
    pillow_heif = pytest.importorskip("pillow_heif", reason="the heif extra (pillow-heif) is in the test extra")
    pixels = np.zeros((32, 48, 3), np.uint8)
    pixels[:8, :8] = 200  # a mark in the top-left corner
    pixels[:, 20:26] = 90
    image = Image.fromarray(pixels)
    pillow_heif.register_heif_opener()  # to write through Pillow, as a camera app's library does
    image.save(tmp_path / "plain.heic", quality=-1)
    exif = image.getexif()
    exif[0x0112] = 6
    image.save(tmp_path / "turned.heic", quality=-1, exif=exif.tobytes())
    pillow_without_heif()
    assert "HEIF" not in Image.OPEN
    np.testing.assert_array_equal(np.asarray(load_image(tmp_path / "plain.heic")), pixels)
    np.testing.assert_array_equal(np.asarray(load_image(tmp_path / "turned.heic")), np.rot90(pixels, -1))


def test_a_heic_photo_without_the_plugin_names_what_to_install(tmp_path, monkeypatch, pillow_without_heif):
    pillow_heif = pytest.importorskip("pillow_heif", reason="the heif extra (pillow-heif) is in the test extra")
    path = tmp_path / "IMG_0001.HEIC"
    pillow_heif.from_pillow(Image.new("RGB", (16, 8), (10, 20, 30))).save(path, quality=-1)
    from jaxrec.features import _media_io

    monkeypatch.setattr(_media_io, "_heif_opener", lambda: False)  # as without pillow-heif installed
    with pytest.raises(DataError, match=r"IMG_0001\.HEIC.*HEIF.*pip install 'jaxrec\[heif\]'"):
        load_image(path)
    # a file that is not an image at all keeps the general message
    (tmp_path / "notes.jpg").write_bytes(b"plain text, not a picture")
    with pytest.raises(DataError, match="not a readable image") as error:
        load_image(tmp_path / "notes.jpg")
    assert "jaxrec[heif]" not in str(error.value)


def _srgb_colorants():
    from PIL import ImageCms

    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).profile
    return srgb.red_colorant[0], srgb.green_colorant[0], srgb.blue_colorant[0]


def _srgb_encode(levels: np.ndarray) -> np.ndarray:
    """IEC 61966-2-1's transfer function of linear levels 0..255, as 8-bit levels."""
    v = levels.astype(np.float64) / 255.0
    return np.round(255 * np.where(v <= 0.0031308, 12.92 * v, 1.055 * v ** (1 / 2.4) - 0.055)).astype(np.uint8)


def test_an_embedded_colour_profile_is_converted_to_srgb_as_a_browser_shows_the_image(tmp_path):
    # A PNG whose ICC profile says its values are linear light (sRGB's primaries, identity tone
    # curves): shown as sRGB each level v becomes the sRGB encoding of v / 255 (64 -> 137).
    icc = linear_light_icc_profile(*_srgb_colorants())
    levels = np.array([[0, 1, 10, 64, 128, 200, 255]], np.uint8)
    rgb = np.stack([levels, np.roll(levels, 1, axis=1), np.roll(levels, 2, axis=1)], axis=-1)
    Image.fromarray(rgb).save(tmp_path / "linear.png", icc_profile=icc)
    np.testing.assert_allclose(np.asarray(load_image(tmp_path / "linear.png")).astype(int), _srgb_encode(rgb), atol=1)
    # with transparency: composited over white first, then converted (white stays white)
    rgba = np.concatenate([rgb, np.array([[[255], [255], [255], [255], [0], [0], [255]]], np.uint8)], axis=-1)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "linear_alpha.png", icc_profile=icc)
    expected = _srgb_encode(np.where(rgba[..., 3:] == 0, 255, rgb))
    np.testing.assert_allclose(np.asarray(load_image(tmp_path / "linear_alpha.png")).astype(int), expected, atol=1)
    # a grey picture with a grey profile: the same tone curve, shown as sRGB grey
    # (Little CMS's grey transform is coarse at the darkest levels, where this curve is steepest:
    # level 1 comes out 6, not 13; from 10 up it is within one level)
    grey = np.array([[0, 10, 64, 128, 200, 255]], np.uint8)
    Image.fromarray(grey, "L").save(tmp_path / "linear_grey.png", icc_profile=linear_light_icc_profile())
    np.testing.assert_allclose(np.asarray(load_image(tmp_path / "linear_grey.png")).astype(int),
                               _grey_rgb(_srgb_encode(grey)), atol=1)
    # an sRGB profile changes nothing (no transform: not even rounding); no profile changes nothing
    from PIL import ImageCms

    srgb_icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.fromarray(rgb).save(tmp_path / "srgb.png", icc_profile=srgb_icc)
    Image.fromarray(rgb).save(tmp_path / "plain.png")
    np.testing.assert_array_equal(np.asarray(load_image(tmp_path / "srgb.png")), rgb)
    np.testing.assert_array_equal(np.asarray(load_image(tmp_path / "plain.png")), rgb)


def test_an_unreadable_colour_profile_is_named_and_the_pixels_are_read_as_srgb(tmp_path):
    rgb = np.full((4, 4, 3), 64, np.uint8)
    Image.fromarray(rgb).save(tmp_path / "odd.png", icc_profile=b"not an ICC profile at all" * 8)
    with pytest.warns(UserWarning, match=r"odd\.png.*colour profile"):
        image = load_image(tmp_path / "odd.png")
    np.testing.assert_array_equal(np.asarray(image), rgb)
