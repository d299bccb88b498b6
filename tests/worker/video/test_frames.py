"""worker.video.frames: video files and frame folders read as a stream, and refused with a reason."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from common import jobids
from common.errors import BadInput
from tests.conftest import tiny_config
from worker.video.frames import natural_key, open_video


def moving_square_frames(count: int, size=(48, 64)) -> list[np.ndarray]:
    """`count` (H, W, 3) uint8 RGB frames: a white square moving right over a grey background."""
    height, width = size
    frames = []
    for i in range(count):
        frame = np.full((height, width, 3), 60, np.uint8)
        x = 2 + (i * 3) % (width - 16)
        frame[10:26, x : x + 14] = (250, 250, 250)
        frames.append(frame)
    return frames


def write_video(path: Path, frames: list[np.ndarray], fourcc: str = "mp4v", fps: float = 12.0):
    """Write RGB frames with OpenCV's VideoWriter."""
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
    assert writer.isOpened()
    for frame in frames:
        writer.write(np.ascontiguousarray(frame[:, :, ::-1]))
    writer.release()
    return path


def write_frame_folder(folder: Path, frames: list[np.ndarray], names=None) -> Path:
    folder.mkdir(parents=True)
    for i, frame in enumerate(frames):
        name = names[i] if names else f"f{i}.png"
        Image.fromarray(frame).save(folder / name)
    return folder


def test_natural_order_puts_frame_2_before_frame_10():
    """Digit runs sort as numbers, so unpadded frame numbers keep their order."""
    names = ["f10.png", "f2.png", "f1.png", "g0.png"]
    assert sorted(names, key=natural_key) == ["f1.png", "f2.png", "f10.png", "g0.png"]


def test_a_video_file_streams_all_its_frames_with_its_fps_and_hash(tmp_path):
    """An mp4 written by OpenCV reads back as its 10 frames (size, fps, sha256 of the file)."""
    path = write_video(tmp_path / "clip.mp4", moving_square_frames(10))
    source = open_video(path, tiny_config(tmp_path))
    frames = list(source.frames())
    source.check_complete()
    assert len(frames) == 10 and source.expected_frames == 10
    assert frames[0].shape == (48, 64, 3) and frames[0].dtype == np.uint8
    assert source.frame_hw == (48, 64) and source.fps == pytest.approx(12.0)
    assert source.sha256 == jobids.file_sha256(path)


def test_max_frames_reads_only_the_first_frames(tmp_path):
    """video.max_frames = 4 reads 4 frames and is not reported as truncation."""
    path = write_video(tmp_path / "clip.mp4", moving_square_frames(10))
    source = open_video(path, tiny_config(tmp_path, SEGD_VIDEO__MAX_FRAMES="4"))
    assert len(list(source.frames())) == 4 and source.expected_frames == 4
    source.check_complete()


def test_a_truncated_mp4_is_refused_with_a_reason(tmp_path, data_dir):
    """bedroom.mp4 cut in half (its index is at the end) cannot be opened: refused with a reason."""
    data = (data_dir / "bedroom.mp4").read_bytes()
    path = tmp_path / "cut.mp4"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadInput) as caught:
        open_video(path, tiny_config(tmp_path))
    assert caught.value.path == str(path)
    assert caught.value.reason == (
        "cannot be read as a video (truncated, corrupt, or a codec FFmpeg does not know)"
    )


def test_a_video_whose_frames_end_before_its_header_says_is_truncated(tmp_path):
    """An AVI cut short keeps a header that promises 20 frames; fewer decode: refused as truncated."""
    full = write_video(tmp_path / "full.avi", moving_square_frames(20), fourcc="MJPG")
    data = full.read_bytes()
    path = tmp_path / "cut.avi"
    path.write_bytes(data[: len(data) // 2])
    source = open_video(path, tiny_config(tmp_path))
    frames = list(source.frames())
    assert 0 < len(frames) < 20
    with pytest.raises(
        BadInput, match="truncated or corrupt: the container says 20 frames but only"
    ):
        source.check_complete()


def test_a_fifo_named_like_a_video_is_refused_without_blocking(tmp_path):
    """A FIFO called x.mp4 is not a regular file: refused at once (opening it would hang)."""
    os.mkfifo(tmp_path / "x.mp4")
    with pytest.raises(BadInput, match="not a regular file"):
        open_video(tmp_path / "x.mp4", tiny_config(tmp_path))


def test_a_frame_folder_streams_its_images_in_natural_order(tmp_path):
    """f0.png … f11.png read in numeric order; the hash is the folder hash the watcher computes."""
    frames = moving_square_frames(12)
    folder = write_frame_folder(tmp_path / "clip", frames)
    source = open_video(folder, tiny_config(tmp_path))
    read = list(source.frames())
    assert len(read) == 12 and source.kind == "frames"
    for got, expected in zip(read, frames, strict=True):
        assert np.array_equal(got, expected)
    assert source.sha256 == jobids.folder_sha256(folder)
    assert source.fps == 25.0  # video.folder_fps


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ("notes.txt", "not a frame: a frame folder holds only images"),
        ("sub", "a frame folder may hold only image files (not folders or links)"),
    ],
)
def test_a_frame_folder_with_something_else_inside_is_refused_naming_it(tmp_path, extra, reason):
    """A text file or a subfolder among the frames is refused, naming that entry."""
    folder = write_frame_folder(tmp_path / "clip", moving_square_frames(2))
    if extra == "sub":
        (folder / extra).mkdir()
    else:
        (folder / extra).write_text("hello")
    with pytest.raises(BadInput) as caught:
        open_video(folder, tiny_config(tmp_path))
    assert caught.value.path == str(folder / extra) and caught.value.reason.startswith(reason)


def test_frames_of_different_sizes_are_refused_naming_the_frame(tmp_path):
    """All frames must have the first frame's size; the odd one is named."""
    frames = moving_square_frames(3)
    frames[2] = frames[2][:, :32]
    folder = write_frame_folder(tmp_path / "clip", frames)
    source = open_video(folder, tiny_config(tmp_path))
    with pytest.raises(BadInput) as caught:
        list(source.frames())
    assert caught.value.path == str(folder / "f2.png")
    assert caught.value.reason == (
        "the frame is 32x48 but the first frame is 64x48; all frames must be the same size"
    )


def test_an_empty_frame_folder_is_refused(tmp_path):
    """A folder with no frames is refused."""
    (tmp_path / "clip").mkdir()
    with pytest.raises(BadInput, match="the folder holds no frames"):
        open_video(tmp_path / "clip", tiny_config(tmp_path))
