"""Kept video frames read back as a sequence modality padded to the dataset's items: the added
items have no frames (length 0, zero rows, mask False), as the frames layout documents
(``lengths`` 0 = no video); the extracted items keep their frame counts, worked out by hand."""

import numpy as np

from _media_files import require_av, write_ids, write_video
from jaxrec import features as jf

require_av()


def test_sequence_rows_added_for_items_past_the_extraction_have_length_zero(tmp_path):
    clips = tmp_path / "clips"
    clips.mkdir()
    write_video(clips / "a.mp4", 9)
    write_video(clips / "b.mp4", 2)  # fewer frames than the 3 sampled: both kept
    ids = write_ids(tmp_path / "ids.tsv", [(0, "a.mp4"), (1, "b.mp4")])
    pipeline = jf.ModalityPipeline("video", jf.ClassicImageEncoder(), sampling=jf.FrameSampling("uniform", count=3))
    jf.extract_features(jf.read_media_list(ids, clips), pipeline, tmp_path / "v.npy", keep_frames=True,
                        progress=False)
    frames = jf.load_features(tmp_path / "v.npy", sequence=True, n_items=5)
    assert frames.features.shape == (5, 3, 105)
    assert frames.lengths.tolist() == [3, 2, 0, 0, 0]
    assert frames.mask.tolist() == [True, True, False, False, False]
    assert not np.any(frames.features[2:]) and not np.any(frames.features[1, 2:])
    pooled = jf.load_features(tmp_path / "v.npy", n_items=5)
    assert pooled.features.shape == (5, 109) and not np.any(pooled.features[2:])
    assert pooled.mask.tolist() == [True, True, False, False, False]
