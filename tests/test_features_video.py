"""Video extraction: frame sampling, temporal pooling, kept frames, broken videos (PyAV)."""

import json

import numpy as np
import pytest

from _media_files import require_av, write_ids, write_video
from jaxrec import features as jf
from jaxrec.errors import DataError
from jaxrec.features import _classic

require_av()


def _grey(frame):
    return float(np.median(np.asarray(frame)))  # the bar covers 6 of 48 columns: the median is the background


def test_uniform_sampling_takes_the_centre_frame_of_each_slice(tmp_path):
    clip = write_video(tmp_path / "c.mp4", 12)
    frames = jf._media_io.decode_video(clip, jf.FrameSampling("uniform", count=4), np.asarray)
    # floor((j + 1/2) * 12 / 4) = 1, 4, 7, 10 -> grey 20, 80, 140, 200
    assert [round(_grey(f) / 20) * 20 for f in frames] == [20, 80, 140, 200]
    every = jf._media_io.decode_video(clip, jf.FrameSampling("uniform", count=50), np.asarray)
    assert len(every) == 12  # a short video gives all its frames


def test_fps_sampling_takes_the_first_frame_at_each_tick(tmp_path):
    clip = write_video(tmp_path / "c.mp4", 24, fps=10)
    frames = jf._media_io.decode_video(clip, jf.FrameSampling("fps", rate=4.0, max_frames=64), np.asarray)
    # ticks every 0.25 s over frames at 0.1 s: frames 0, 3, 5, 8, 10, 13, 15, 18, 20, 23
    expected = [20 * (i % 12) for i in (0, 3, 5, 8, 10, 13, 15, 18, 20, 23)]
    assert [round(_grey(f) / 20) * 20 for f in frames] == expected
    capped = jf._media_io.decode_video(clip, jf.FrameSampling("fps", rate=4.0, max_frames=3), np.asarray)
    assert len(capped) == 3


@pytest.fixture()
def clips(tmp_path):
    folder = tmp_path / "clips"
    folder.mkdir()
    write_video(folder / "moving.mp4", 20)
    still = [np.full((32, 48, 3), 90, np.uint8)] * 15
    write_video(folder / "still.mp4", 15, frames=still)
    write_video(folder / "wide.mp4", 9, height=24, width=64)
    write_video(folder / "short.mp4", 4)  # fewer frames than 6 sampled: all 4 kept, the rest padding
    (folder / "garbage.mp4").write_bytes(np.random.default_rng(0).bytes(3000))
    write_video(folder / "empty.mp4", 0)
    (folder / "zero.mp4").write_bytes(b"")
    return folder


def test_video_features_pool_the_frames_and_add_motion(clips, tmp_path):
    ids = write_ids(tmp_path / "ids.tsv", [(0, "moving.mp4"), (1, "still.mp4"), (3, "wide.mp4"),
                                                 (4, "short.mp4")])
    pipeline = jf.ModalityPipeline("video", jf.ClassicImageEncoder(), sampling=jf.FrameSampling("uniform", count=6))
    result = jf.extract_features(jf.read_media_list(ids, clips), pipeline, tmp_path / "v.npy", keep_frames=True,
                                 batch_size=2, progress=False)
    assert result.dim == _classic.VIDEO_DIM == 109
    items = jf.load_features(tmp_path / "v.npy")
    frames = jf.load_features(tmp_path / "v.npy", sequence=True)
    assert frames.is_sequence and frames.features.shape == (5, 6, 105)
    assert frames.lengths.tolist() == [6, 6, 0, 6, 4] and items.mask.tolist() == [True, True, False, True, True]
    assert not np.any(frames.features[4, 4:])  # the short clip's padding frames are zero
    # the pooled part is the mean of each item's kept frames (naive numpy; zeros for an item without frames)
    pooled = np.stack([frames.features[i, :n].astype(np.float64).mean(axis=0) if n else np.zeros(105)
                       for i, n in enumerate(frames.lengths.tolist())])
    np.testing.assert_allclose(items.features[:, :105], pooled, rtol=1e-5, atol=1e-7)
    assert not np.any(frames.features[2]) and not np.any(items.features[2])
    # motion: the still clip has none, the moving bar a lot
    still_motion, moving_motion = items.features[1, 105:], items.features[0, 105:]
    assert np.all(still_motion < 0.01) and moving_motion[2] > 0.1
    # each kept frame is the descriptor of that decoded frame
    decoded = jf._media_io.decode_video(clips / "moving.mp4", jf.FrameSampling("uniform", count=6), np.asarray)
    np.testing.assert_allclose(frames.features[0], np.stack([_classic.image_descriptor(f) for f in decoded]), atol=1e-6)
    record = json.loads((tmp_path / "v.json").read_text())
    assert record["frame_sampling"]["frames"] == 6 and "mean" in record["temporal_pooling"]
    assert record["frames"] == "v.frames.npz" and "lengths" in record["frames_layout"]


@pytest.mark.parametrize("name, message", [("garbage.mp4", "not a readable media file|corrupt video|no video"),
                                           ("empty.mp4", "no frames|no decodable frames|no video stream"),
                                           ("zero.mp4", "not a readable media file")])
def test_broken_videos_fail_or_are_masked_by_name(clips, tmp_path, name, message):
    ids = write_ids(tmp_path / "ids.tsv", [(0, "moving.mp4"), (1, name)])
    pipeline = jf.ModalityPipeline("video", jf.ClassicImageEncoder(), sampling=jf.FrameSampling("uniform", count=3))
    with pytest.raises(DataError, match=rf"ids.tsv:3 \(item 1, {name}\).*({message})"):
        jf.extract_features(jf.read_media_list(ids, clips), pipeline, tmp_path / "f.npy", progress=False)
    assert not (tmp_path / "f.npy").exists()
    with pytest.warns(jf.MediaWarning, match=name):
        result = jf.extract_features(jf.read_media_list(ids, clips), pipeline, tmp_path / "m.npy", on_error="mask",
                                     keep_frames=True, progress=False)
    assert result.present == 1 and np.load(tmp_path / "m.mask.npz")["mask"].tolist() == [True, False]
    assert np.load(tmp_path / "m.frames.npz")["lengths"].tolist() == [3, 0]


def test_keep_frames_is_for_videos_only(clips, tmp_path):
    ids = write_ids(tmp_path / "ids.tsv", [(0, "moving.mp4")])
    with pytest.raises(DataError, match="only videos"):
        jf.extract_features(jf.read_media_list(ids, clips), jf.ModalityPipeline("image", jf.ClassicImageEncoder()),
                            tmp_path / "x.npy", keep_frames=True, progress=False)
