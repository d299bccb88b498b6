"""Reading videos as a stream of frames: a video file (mp4, mov, avi, mkv) or a folder of frames.

    source = open_video(path, config)      # checks the file or folder; reads no frame yet
    for rgb in source.frames():             # (H, W, 3) uint8 RGB, one at a time
        ...
    source.check_complete()                 # BadInput when the file ended before its header said

Nothing holds more than one decoded frame. Every refusal is a BadInput naming the file (or the
frame inside a folder) and a one-line reason: not a regular file, too large, undecodable,
truncated, frames of different sizes, a folder entry that is not an image.
"""

from __future__ import annotations

import math
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from common import jobids
from common.config import Config
from common.errors import BadInput
from common.names import IMAGE_SUFFIXES, MASK_SUFFIX, VIDEO_SUFFIXES
from worker.image import decode


def natural_key(name: str) -> list:
    """Sort key that orders `frame2.png` before `frame10.png` (digit runs compare as numbers)."""
    return [
        (0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name)
    ]


def _regular_file(path: Path, max_bytes: int) -> int:
    """Size of `path` after checking it is a regular file (not a link, FIFO or device) ≤ max_bytes."""
    fd = decode.open_input(path)
    try:
        info = os.fstat(fd)
    finally:
        os.close(fd)
    if not stat.S_ISREG(info.st_mode):
        raise BadInput(path, "not a regular file (a FIFO, device or folder)")
    if info.st_size == 0:
        raise BadInput(path, "the file is empty")
    if info.st_size > max_bytes:
        raise BadInput(
            path,
            f"the file is {info.st_size} bytes; the limit is {max_bytes} (video.max_file_bytes)",
        )
    return info.st_size


class VideoSource:
    """One video input. frame_hw: (H, W) of every frame; fps: frames per second for color.mp4;
    expected_frames: how many frames will be read (None when the container does not say);
    sha256: hex digest of the input (a folder: see `jobids.folder_sha256`)."""

    path: Path
    frame_hw: tuple[int, int]
    fps: float
    expected_frames: int | None
    sha256: str
    kind: str

    def frames(self) -> Iterator[np.ndarray]:
        raise NotImplementedError

    def check_complete(self) -> None:
        """Raise BadInput if fewer frames were read than the input holds."""


class VideoFile(VideoSource):
    """A video file decoded by OpenCV's FFmpeg backend, one frame at a time."""

    kind = "file"

    def __init__(self, path: Path, config: Config):
        self.path = path
        self.max_frames = config.video.max_frames
        _regular_file(path, config.video.max_file_bytes)
        self.sha256 = jobids.file_sha256(path)
        capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
        if not capture.isOpened():
            raise BadInput(
                path,
                "cannot be read as a video (truncated, corrupt, or a codec FFmpeg does not know)",
            )
        width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        fps = capture.get(cv2.CAP_PROP_FPS)
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        capture.release()
        if width < 2 or height < 2:
            raise BadInput(path, f"the video's frames are {width}x{height} pixels; too small")
        if width * height > config.inputs.max_pixels:
            raise BadInput(
                path,
                f"the video's frames are {width}x{height} pixels; the limit is "
                f"{config.inputs.max_pixels} pixels (inputs.max_pixels)",
            )
        self.frame_hw = (height, width)
        self.fps = fps if math.isfinite(fps) and 0 < fps <= 1000 else config.video.folder_fps
        self.container_frames = count if count > 0 else None
        self.expected_frames = self.container_frames
        if self.max_frames is not None and self.expected_frames is not None:
            self.expected_frames = min(self.expected_frames, self.max_frames)
        self.read = 0

    def frames(self) -> Iterator[np.ndarray]:
        capture = cv2.VideoCapture(str(self.path), cv2.CAP_FFMPEG)
        try:
            while self.max_frames is None or self.read < self.max_frames:
                ok, bgr = capture.read()
                if not ok:
                    return
                if bgr.shape[:2] != self.frame_hw:
                    raise BadInput(
                        self.path,
                        f"frame {self.read} is {bgr.shape[1]}x{bgr.shape[0]} but the video is "
                        f"{self.frame_hw[1]}x{self.frame_hw[0]}",
                    )
                self.read += 1
                yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        finally:
            capture.release()

    def check_complete(self) -> None:
        if self.read == 0:
            raise BadInput(self.path, "no frame could be decoded (truncated or corrupt video)")
        if self.max_frames is not None and self.read >= self.max_frames:
            return
        expected = self.container_frames
        # Containers that store no frame count give an estimate (duration x fps): allow 1 %.
        if expected is not None and expected - self.read > max(1, expected // 100):
            raise BadInput(
                self.path,
                f"truncated or corrupt: the container says {expected} frames but only "
                f"{self.read} could be decoded",
            )


class FrameFolder(VideoSource):
    """A folder of numbered images (`x/000.png`, `x/001.png`, ...) in natural name order."""

    kind = "frames"

    def __init__(self, path: Path, config: Config):
        self.path = path
        self.config = config
        if path.is_symlink() or not path.is_dir():
            raise BadInput(path, "not a folder of frames")
        entries = jobids.folder_entries(path)  # not `names`: that is the module
        for name in entries:
            entry = path / name
            if entry.is_symlink() or not entry.is_file():
                raise BadInput(
                    entry, "a frame folder may hold only image files (not folders or links)"
                )
            lower = name.lower()
            if not lower.endswith(IMAGE_SUFFIXES) or lower.endswith(MASK_SUFFIX):
                raise BadInput(
                    entry,
                    f"not a frame: a frame folder holds only images ({', '.join(IMAGE_SUFFIXES)})",
                )
        if not entries:
            raise BadInput(path, "the folder holds no frames")
        self.names = sorted(entries, key=natural_key)
        if config.video.max_frames is not None:
            self.names = self.names[: config.video.max_frames]
        self.sha256 = jobids.folder_sha256(path)
        self.expected_frames = len(self.names)
        self.fps = config.video.folder_fps
        first = self._decode(self.names[0])
        self.frame_hw = tuple(first.shape[:2])
        self._first: np.ndarray | None = first

    def _decode(self, name: str) -> np.ndarray:
        cfg = self.config.inputs
        return decode.decode_image(
            decode.read_file(self.path / name, cfg.max_file_bytes), cfg.max_pixels
        )

    def frames(self) -> Iterator[np.ndarray]:
        for i, name in enumerate(self.names):
            rgb = self._first if i == 0 and self._first is not None else self._decode(name)
            self._first = None
            if rgb.shape[:2] != self.frame_hw:
                raise BadInput(
                    self.path / name,
                    f"the frame is {rgb.shape[1]}x{rgb.shape[0]} but the first frame is "
                    f"{self.frame_hw[1]}x{self.frame_hw[0]}; all frames must be the same size",
                )
            yield rgb


def open_video(path: str | os.PathLike, config: Config) -> VideoSource:
    """A VideoSource for a video file or a frame folder; BadInput if it cannot be one."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        return FrameFolder(path, config)
    if not path.name.lower().endswith(VIDEO_SUFFIXES):
        raise BadInput(path, f"not a video ({', '.join(VIDEO_SUFFIXES)}) or a frame folder")
    return VideoFile(path, config)
