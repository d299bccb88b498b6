"""A video's result files, written frame by frame into a hidden temp folder and published with one
rename (as image results are: `worker.image.outputs.publish`).

    <outbox>/<stem>/index/000000.png  (H, W) uint16 object ids per frame, 0 = background
    <outbox>/<stem>/color.mp4         the ids' palette colours blended over the frames (mp4v)
    <outbox>/<stem>/tracks.json       per object: first and last frame, per-frame area and score
    <outbox>/<stem>/manifest.json     written last: job id, input sha256, model, settings, timings

An object's id is the same in every frame and its colour is the image palette's colour for that id.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from common.config import OutputsConfig
from common.durable import fsync_dir, write_bytes
from worker.image.outputs import color_map, overlay, publish, swap_in
from worker.image.placement import temp_folder

INDEX_DIR = "index"
COLOR_VIDEO = "color.mp4"
TRACKS_FILE = "tracks.json"
MANIFEST_FILE = "manifest.json"
INDEX_NAME = "{:06d}.png"


@dataclass
class Track:
    """One object across the video. areas[i] / scores[i] belong to frame first_frame + i (area 0:
    the object is hidden or lost there); seeded_at: the frame it was added on."""

    id: int
    seeded_at: int
    seed_score: float | None
    first_frame: int | None = None
    last_frame: int | None = None
    areas: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)

    def add(self, frame: int, area: int, score: float | None) -> None:
        if self.first_frame is None:
            if area == 0:
                return  # not visible yet: the track starts where the object first shows
            self.first_frame = frame
        offset = frame - self.first_frame
        while len(self.areas) < offset:  # frames where it was not tracked
            self.areas.append(0)
            self.scores.append(0.0)
        self.areas.append(area)
        self.scores.append(round(score, 6) if score is not None else 0.0)
        if area:
            self.last_frame = frame

    def to_dict(self) -> dict:
        length = (
            0
            if self.last_frame is None or self.first_frame is None
            else self.last_frame - self.first_frame + 1
        )
        return {
            "id": self.id,
            "seeded_at": self.seeded_at,
            "seed_score": self.seed_score,
            "first_frame": self.first_frame,
            "last_frame": self.last_frame,
            "frames_visible": sum(1 for a in self.areas[:length] if a),
            "areas": self.areas[:length],
            "scores": self.scores[:length],
        }


class VideoResultWriter:
    """Writes one video's results frame by frame; `publish` makes them visible at once."""

    def __init__(
        self,
        final: Path,
        frame_hw: tuple[int, int],
        fps: float,
        cfg: OutputsConfig,
        claim_seq: int | None = None,
    ):
        final.parent.mkdir(parents=True, exist_ok=True)
        self.final = final
        self.cfg = cfg
        self.tmp = temp_folder(final, claim_seq)  # a later run removes it if this one dies
        (self.tmp / INDEX_DIR).mkdir(parents=True)
        height, width = frame_hw
        self.video = cv2.VideoWriter(
            str(self.tmp / COLOR_VIDEO), cv2.VideoWriter.fourcc(*"mp4v"), fps, (width, height)
        )
        if not self.video.isOpened():
            raise OSError(f"OpenCV cannot write {COLOR_VIDEO} (mp4v) in {self.tmp}")
        self.tracks: dict[int, Track] = {}
        self.frames = 0

    def add_frame(
        self,
        rgb: np.ndarray,
        index_map: np.ndarray,
        scores: dict[int, float],
        seeds: dict[int, float | None],
    ) -> None:
        """Write frame `self.frames`: rgb (H, W, 3) uint8, index_map (H, W) uint16; scores: id →
        per-frame score of each tracked object; seeds: id → seed score of objects added here."""
        frame = self.frames
        png = [cv2.IMWRITE_PNG_COMPRESSION, self.cfg.png_compression]
        ok, buffer = cv2.imencode(".png", index_map, png)
        if not ok:
            raise OSError("OpenCV could not encode a PNG")
        write_bytes(self.tmp / INDEX_DIR / INDEX_NAME.format(frame), buffer.tobytes())
        colors = color_map(index_map)
        shown = overlay(rgb, colors, index_map, self.cfg.overlay_alpha)
        self.video.write(np.ascontiguousarray(shown[:, :, ::-1]))
        for obj_id, seed_score in seeds.items():
            self.tracks[obj_id] = Track(obj_id, frame, seed_score)
        areas = np.bincount(index_map.ravel(), minlength=max(self.tracks, default=0) + 1)
        for obj_id, track in self.tracks.items():
            track.add(frame, int(areas[obj_id]), scores.get(obj_id))
        self.frames += 1

    def tracks_document(self) -> dict:
        return {
            "frames": self.frames,
            "objects": [self.tracks[k].to_dict() for k in sorted(self.tracks)],
        }

    def publish(self, manifest: dict, place=None) -> Path:
        """Finish color.mp4, write tracks.json and manifest.json (last), publish the folder.

        place(manifest, finish): chooses the folder instead (see worker.image.placement)."""
        self.video.release()
        with open(self.tmp / COLOR_VIDEO, "rb+") as handle:
            os.fsync(handle.fileno())
        write_bytes(self.tmp / TRACKS_FILE, json.dumps(self.tracks_document()).encode())

        def finish(target: Path, manifest: dict) -> None:
            write_bytes(self.tmp / MANIFEST_FILE, json.dumps(manifest, indent=2).encode())
            fsync_dir(self.tmp / INDEX_DIR)
            fsync_dir(self.tmp)
            if place is None:
                publish(self.tmp, target, manifest.get("claim_seq"))  # not over a later claim's
            else:
                swap_in(self.tmp, target)  # place() holds the lock and decided already

        if place is None:
            finish(self.final, manifest)
            final = self.final
        else:
            final = place(manifest, finish)
        if self.tmp.exists():  # a newer result of the same input was kept
            shutil.rmtree(self.tmp, ignore_errors=True)
        return final

    def abort(self) -> None:
        """Drop everything written so far (nothing was published)."""
        self.video.release()
        shutil.rmtree(self.tmp, ignore_errors=True)
