"""One video in, one published result folder out: read frames as a stream, track, write frame by
frame. Shared by the worker's video job and the benchmark, so both run the same code path."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from pathlib import Path

from common import __version__, jobids, names
from common.errors import BadInput
from worker.image import decode
from worker.image.outputs import TMP_PREFIX
from worker.image.placement import mirror, publish_placed
from worker.video.frames import open_video
from worker.video.outputs import VideoResultWriter
from worker.video.tracker import Tracker


def result_dir(out_root: Path, video_path: Path) -> Path:
    """Where a video's results go: `<out_root>/<stem>/` (a frame folder `x/` → `x`; as the watcher pairs masks)."""
    stem = names.image_stem(video_path)
    if not stem or stem.startswith(".") or stem.startswith(TMP_PREFIX):
        raise BadInput(video_path, "names starting with '.' are reserved; rename it")
    return out_root / stem


def segment_video_file(
    tracker: Tracker,
    video_path: str | Path,
    mask_path: str | Path | None,
    out_root: str | Path,
    *,
    job_id: str | None = None,
    claim_seq: int | None = None,
    progress: Callable[[int, int | None], None] | None = None,
    folder: str | None = None,
) -> Path:
    """Segment the first frame of `video_path` (a video file or a frame folder) inside the region
    of `mask_path` (if given), track every object through the video and publish the result folder
    under `out_root`. progress(frames_done, frames_total or None) is called as frames finish.
    Raises BadInput for inputs that cannot be used; nothing is published then. folder: as for
    `worker.image.pipeline.segment_file` (the mirrored outbox folder, a name no other input holds).
    """
    cfg = tracker.config
    video_path, out_root = Path(video_path), Path(out_root)
    final = result_dir(out_root if folder is None else mirror(out_root, folder), video_path)
    started = time.perf_counter()
    source = open_video(video_path, cfg)
    mask_file, region = None, None
    if mask_path is not None:
        mask_file = decode.read_file(mask_path, cfg.inputs.max_file_bytes)
        region = decode.decode_region_mask(mask_file, source.frame_hw, cfg.inputs.max_pixels)
    total = source.expected_frames

    writer = VideoResultWriter(final, source.frame_hw, source.fps, cfg.outputs, claim_seq)
    timings = {"track": 0.0, "write": 0.0}
    objects_seeded = 0
    try:
        clock = time.perf_counter()
        for frame in tracker.track(source.frames(), region):
            written = time.perf_counter()
            timings["track"] += written - clock
            seeds: dict[
                int, float | None
            ] = {}  # new object id → the predicted IoU of the segment it was seeded from
            if frame.new_ids and frame.seeds is not None:
                scores = [s.score for s in frame.seeds.segments]
                seeds = dict(zip(frame.new_ids, scores, strict=True))
            objects_seeded += len(frame.new_ids)
            writer.add_frame(frame.rgb, frame.index_map, frame.objects, seeds)
            clock = time.perf_counter()
            timings["write"] += clock - written
            if progress is not None:
                progress(writer.frames, total)
        source.check_complete()
        info = tracker.segmenter.model.info
        manifest = {
            "job_id": job_id
            or jobids.job_id(
                source.sha256, mask_file.sha256 if mask_file else None, info.model_version
            ),
            "claim_seq": claim_seq,
            "input": {
                "name": video_path.name,
                "folder": folder or "",
                "kind": source.kind,
                "sha256": source.sha256,
                "height": int(source.frame_hw[0]),
                "width": int(source.frame_hw[1]),
                "fps": round(float(source.fps), 4),
                "frames": writer.frames,
            },
            "mask": {"name": mask_file.path.name, "sha256": mask_file.sha256}
            if mask_file
            else None,
            "model": info.to_dict(),
            "random_weights": info.random_weights,
            "settings": {
                "video": cfg.video.model_dump(),
                "sampling": cfg.sampling.model_dump(),
                "stitching": cfg.stitching.model_dump(),
                "multimask": cfg.model.multimask,
                "mask_threshold": cfg.model.mask_threshold,
                "score": "sigmoid of SAM2's per-frame object score logit (object visible)",
            },
            "result": {"frames": writer.frames, "objects": objects_seeded},
            "timings_s": {
                **{k: round(v, 4) for k, v in timings.items()},
                "frames_per_s": round(writer.frames / max(time.perf_counter() - started, 1e-9), 4),
                "total": round(time.perf_counter() - started, 4),
            },
            "segd_version": __version__,
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        place = None
        if folder is not None:

            def place(manifest: dict, finish) -> Path:
                return publish_placed(
                    final.parent, final.name, source.sha256, claim_seq, manifest, finish, out_root
                )

        return writer.publish(manifest, place)
    except BaseException:
        writer.abort()
        raise
