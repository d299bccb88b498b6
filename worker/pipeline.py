"""One input file to one published result folder: decode, segment, write. Shared by `segd segment`
and the worker's jobs so both run exactly the same code path."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

from worker import __version__, inputs, jobids
from worker.errors import BadInput
from worker.outputs import TMP_PREFIX, write_result
from worker.segmenter import Segmenter


def result_dir(out_root: Path, image_path: Path) -> Path:
    """Where an image's results go: `<out_root>/<stem>/`."""
    stem = inputs.image_stem(image_path)
    if not stem or stem.startswith(".") or stem.startswith(TMP_PREFIX):
        raise BadInput(image_path, "names starting with '.' are reserved; rename the file")
    return out_root / stem


def segment_file(
    segmenter: Segmenter,
    image_path: str | Path,
    mask_path: str | Path | None,
    out_root: str | Path,
    *,
    job_id: str | None = None,
    claim_seq: int | None = None,
) -> Path:
    """Segment `image_path` (inside the region of `mask_path`, if given) and publish the result
    folder under `out_root`. Returns the folder. Raises BadInput for files that cannot be used."""
    cfg = segmenter.config
    image_path, out_root = Path(image_path), Path(out_root)
    final = result_dir(out_root, image_path)
    started = time.perf_counter()

    image_file = inputs.read_file(image_path, cfg.inputs.max_file_bytes)
    image = inputs.decode_image(image_file, cfg.inputs.max_pixels)
    mask_file, region = None, None
    if mask_path is not None:
        mask_file = inputs.read_file(mask_path, cfg.inputs.max_file_bytes)
        region = inputs.decode_region_mask(mask_file, image.shape[:2], cfg.inputs.max_pixels)
    decoded = time.perf_counter()

    result = segmenter.segment(image, region)
    segmented = time.perf_counter()

    info = segmenter.model.info
    manifest = {
        "job_id": job_id
        or jobids.job_id(image_file.sha256, mask_file and mask_file.sha256, info.model_version),
        "claim_seq": claim_seq,
        "input": {
            "name": image_path.name,
            "sha256": image_file.sha256,
            "height": int(image.shape[0]),
            "width": int(image.shape[1]),
        },
        "mask": {"name": mask_file.path.name, "sha256": mask_file.sha256} if mask_file else None,
        "model": info.to_dict(),
        "random_weights": info.random_weights,
        "settings": {
            "sampling": cfg.sampling.model_dump(),
            "stitching": cfg.stitching.model_dump(),
            "multimask": cfg.model.multimask,
            "mask_threshold": cfg.model.mask_threshold,
        },
        "result": {
            "segments": len(result.segments),
            "points_used": result.points_used,
            "region_area": result.region_area,
            "coverage": round(result.coverage, 6),
        },
        "timings_s": {
            "read_decode": round(decoded - started, 4),
            **{k: round(v, 4) for k, v in result.timings_s.items()},
            "total_before_write": round(segmented - started, 4),
        },
        "segd_version": __version__,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    # write_result adds timings_s.write (the other files) before it writes the manifest.
    return write_result(final, image, result, manifest, cfg.outputs)
