"""worker.video.tracker: the first frame segmented as an image, every object tracked by SAM2's video
predictor in bounded memory, new objects added with new ids when re-seeding is on.

Random-weights SAM2.1 tiny at 256 px on the first frames of bedroom.mp4 (shrunk to 320x180):
the masks mean nothing, but ids, bookkeeping and agreement with SAM2's own loop are exact."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import tiny_config
from worker.image.segmenter import Segmenter
from worker.video.frames import open_video
from worker.video.tracker import Tracker, index_map_from_logits, memory_window

pytestmark = pytest.mark.slow
FRAMES = 20  # more than SAM2's memory window (17 frames), so forgetting old outputs is exercised


@pytest.fixture(scope="module")
def bedroom_frames(tmp_path_factory, data_dir) -> Path:
    """The first FRAMES frames of bedroom.mp4 at 320x180 as 00000.jpg … (SAM2's folder layout)."""
    folder = tmp_path_factory.mktemp("bedroom") / "bedroom"
    folder.mkdir()
    capture = cv2.VideoCapture(str(data_dir / "bedroom.mp4"))
    for i in range(FRAMES):
        ok, bgr = capture.read()
        assert ok
        cv2.imwrite(str(folder / f"{i:05d}.jpg"), cv2.resize(bgr, (320, 180)))
    capture.release()
    return folder


def video_config(tmp_path, checkpoint, **env):
    """Few, overlapping random prompts, so a random-weights model gives several objects."""
    return tiny_config(
        tmp_path,
        SEGD_MODEL__CHECKPOINT=str(checkpoint),
        SEGD_SAMPLING__MODE="random",
        SEGD_SAMPLING__POINTS="3",
        SEGD_STITCHING__OVERLAP_THRESHOLD="1.0",
        **env,
    )


@pytest.fixture(scope="module")
def predictor(tiny_model):
    return tiny_model.video_predictor()


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, tiny_model, tiny_checkpoint, predictor, bedroom_frames):
    """One run without re-seeding: every frame's result plus the state sizes seen after it."""
    config = video_config(
        tmp_path_factory.mktemp("run"), tiny_checkpoint, SEGD_VIDEO__RESEED_EVERY="0"
    )
    tracker = Tracker(Segmenter(tiny_model, config), predictor, config)
    frames, held = [], []
    for frame in tracker.track(open_video(bedroom_frames, config).frames()):
        frames.append(frame)
        held.append((tracker.held_outputs(), tracker.frames.held()))
    return frames, held, tracker


def test_frame_zero_is_the_image_segmentation_and_every_segment_is_an_object(
    tracked, tiny_model, tiny_checkpoint, bedroom_frames, tmp_path
):
    """Frame 0's map is exactly what segmenting the frame as an image gives; each segment is an
    object with the segment's id."""
    frames, _, _ = tracked
    config = video_config(tmp_path, tiny_checkpoint)
    first = next(open_video(bedroom_frames, config).frames())
    image = Segmenter(tiny_model, config).segment(first)
    assert len(image.segments) >= 2
    assert np.array_equal(frames[0].index_map, image.index_map)
    assert frames[0].new_ids == [s.id for s in image.segments]
    assert sorted(frames[0].objects) == [s.id for s in image.segments]


def test_every_object_keeps_its_id_exactly_as_sams_own_propagate_in_video_reports_it(
    tracked, predictor, bedroom_frames
):
    """SAM2's own loop (init_state on the folder, add_new_mask per frame-0 segment under the
    segment's id, propagate_in_video) gives the same maps, frame by frame, as segd's streaming
    tracker with its bounded state: same ids, same pixels."""
    frames, _, _ = tracked
    seeds = frames[0].seeds
    state = predictor.init_state(str(bedroom_frames))
    for segment in seeds.segments:
        predictor.add_new_mask(state, 0, segment.id, seeds.index_map == segment.id)
    reference = {
        t: index_map_from_logits(logits, list(ids), 0.0)
        for t, ids, logits in predictor.propagate_in_video(state)
    }
    assert len(frames) == len(reference) == FRAMES
    ids = {s.id for s in seeds.segments}
    for t in range(1, FRAMES):
        assert np.array_equal(frames[t].index_map, reference[t]), f"frame {t}"
        assert set(frames[t].objects) == ids
    later = set(np.unique(np.stack([f.index_map for f in frames[1:]]))) - {0}
    assert later and later <= ids  # objects are seen after frame 0, under frame-0 ids only


def test_the_tracker_state_stays_bounded_as_frames_go_by(tracked, predictor):
    """After every frame, no object holds more per-frame outputs than SAM2's memory window and
    at most two decoded frames are in memory, however many frames have gone by."""
    _, held, _ = tracked
    window = memory_window(predictor)
    assert window == 17  # 7 memories, 16 object pointers (SAM2.1 tiny)
    outputs = [h[0] for h in held]
    assert max(outputs) <= window and outputs[-1] == window  # full, but no more
    assert max(h[1] for h in held) <= 2


def test_objects_entering_after_frame_zero_get_new_ids_when_reseeding_is_on(
    tracked, tiny_model, tiny_checkpoint, predictor, bedroom_frames, tmp_path
):
    """With video.reseed_every = 3, what is found at frames 3 and 6 where no tracked object is
    becomes new objects: ids above every earlier id, absent before, placed only on pixels the
    tracked objects left uncovered; the first objects keep their ids and pixels meanwhile."""
    plain, _, _ = tracked
    config = video_config(
        tmp_path, tiny_checkpoint, SEGD_VIDEO__RESEED_EVERY="3", SEGD_VIDEO__MAX_FRAMES="7"
    )
    tracker = Tracker(Segmenter(tiny_model, config), predictor, config)
    frames = list(tracker.track(open_video(bedroom_frames, config).frames()))
    assert len(frames) == 7

    first_ids = set(frames[0].new_ids)
    assert [f.index for f in frames if f.new_ids and f.index] == [3, 6]
    seen_before: set[int] = set(first_ids)
    for t in (3, 6):
        new = frames[t].new_ids
        assert min(new) > max(seen_before)
        assert new == list(range(max(seen_before) + 1, max(seen_before) + 1 + len(new)))
        for earlier in frames[:t]:
            assert not np.isin(earlier.index_map, new).any()
        placed = np.isin(frames[t].index_map, new)
        assert placed.any()
        uncovered = plain[t].index_map == 0 if t == 3 else None
        if uncovered is not None:  # before any new object can compete, they fill only gaps
            assert not (placed & ~uncovered).any()
        assert set(frames[t].objects) >= set(new)
        seen_before |= set(new)
    for t in (1, 2, 3):  # up to the first re-seed the first objects are untouched
        kept = np.isin(frames[t].index_map, list(first_ids))
        assert np.array_equal(np.where(kept, frames[t].index_map, 0), plain[t].index_map)
    # the new objects are tracked on after their seed frame, under their own ids
    assert set(frames[4].objects) == first_ids | set(frames[3].new_ids)
    assert set(frames[6].objects) == seen_before
