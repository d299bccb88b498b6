"""One input file to one published result folder: decode, segment, write. Shared by `segd segment`
and the worker's jobs so both run exactly the same code path."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common import __version__, jobids, names
from common.errors import BadInput
from worker.claimed import CHANGED_REASON
from worker.image import decode
from worker.image.outputs import TMP_PREFIX, write_result
from worker.image.placement import mirror, publish_placed
from worker.image.segmenter import Proposed, Segmentation, Segmenter


def result_dir(out_root: Path, image_path: Path) -> Path:
    """Where an image's results go: `<out_root>/<stem>/`."""
    stem = names.image_stem(image_path)
    if not stem or stem.startswith(".") or stem.startswith(TMP_PREFIX):
        raise BadInput(image_path, "names starting with '.' are reserved; rename the file")
    return out_root / stem


def _check_sha(loaded: decode.LoadedFile, expected: str | None) -> None:
    if expected is not None and loaded.sha256 != expected:
        raise BadInput(loaded.path, CHANGED_REASON)


@dataclass
class Loaded:
    """An input read, checked and decoded, and its model input made: everything the model
    needs. `batch` is the (1, 3, S, S) float32 `model.preprocess([image])` on the model's
    device (None: made by the encoder itself)."""

    image_path: Path
    image_file: decode.LoadedFile
    image: np.ndarray
    mask_file: decode.LoadedFile | None
    region: np.ndarray | None
    batch: Any
    load_s: float


@dataclass
class Prepared:
    """An input decoded and segmented, not yet written: everything `write_prepared` needs."""

    image_path: Path
    image_file: decode.LoadedFile
    image: np.ndarray
    mask_file: decode.LoadedFile | None
    result: Segmentation | Proposed  # Proposed: upsampling and stitching still to do
    read_decode_s: float
    total_before_write_s: float


def load(
    segmenter: Segmenter,
    image_path: str | Path,
    mask_path: str | Path | None,
    expected_sha256: tuple[str | None, str | None] = (None, None),
    preprocess: bool = False,
) -> Loaded:
    """Read and decode one input and its region mask (no model pass, no file written). Raises
    BadInput, also for an image or mask whose sha256 is not the one in `expected_sha256` (its
    claim's: the file changed after it was claimed). preprocess=True also makes the model's
    input (the worker's decode-ahead: done while the model runs on the input before it)."""
    cfg = segmenter.config
    image_path = Path(image_path)
    started = time.perf_counter()
    image_file = decode.read_file(image_path, cfg.inputs.max_file_bytes)
    _check_sha(image_file, expected_sha256[0])
    image = decode.decode_image(image_file, cfg.inputs.max_pixels)
    mask_file, region = None, None
    if mask_path is not None:
        mask_file = decode.read_file(mask_path, cfg.inputs.max_file_bytes)
        _check_sha(mask_file, expected_sha256[1])
        region = decode.decode_region_mask(mask_file, image.shape[:2], cfg.inputs.max_pixels)
    batch = segmenter.model.preprocess([image]) if preprocess else None
    return Loaded(
        image_path, image_file, image, mask_file, region, batch, time.perf_counter() - started
    )


def prepare(
    segmenter: Segmenter,
    image_path: str | Path,
    mask_path: str | Path | None,
    finish: bool = True,
    expected_sha256: tuple[str | None, str | None] = (None, None),
    loaded: Loaded | None = None,
) -> Prepared:
    """Read, decode and segment one input (no file is written). Raises BadInput, also for an
    image or mask whose sha256 is not the one in `expected_sha256` (see `load`). finish=False
    stops after the model (upsampling and stitching happen in write_prepared). `loaded`: this
    very input, loaded already (`load`), e.g. while the model ran on the input before it."""
    started = time.perf_counter()
    if loaded is None:
        loaded = load(segmenter, image_path, mask_path, expected_sha256)
    image, region = loaded.image, loaded.region
    proposed = segmenter.propose(image, region, loaded.batch)
    result = segmenter.finish(proposed) if finish else proposed
    return Prepared(
        loaded.image_path,
        loaded.image_file,
        image,
        loaded.mask_file,
        result,
        loaded.load_s,
        loaded.load_s + time.perf_counter() - started,
    )


def segment_file(
    segmenter: Segmenter,
    image_path: str | Path,
    mask_path: str | Path | None,
    out_root: str | Path,
    *,
    job_id: str | None = None,
    claim_seq: int | None = None,
    folder: str | None = None,
    expected_sha256: tuple[str | None, str | None] = (None, None),
    prepared: Prepared | None = None,
    before_write: Callable[[], object] | None = None,
) -> Path:
    """Segment `image_path` (inside the region of `mask_path`, if given) and publish the result
    folder under `out_root`. Returns the folder. Raises BadInput for files that cannot be used, and
    for an image or mask whose sha256 is not the one in `expected_sha256` (see `prepare`).

    folder: the inbox folder of a claimed input ('' = the inbox): the result goes to the mirrored
    outbox folder, under a name no other picture holds (worker.image.placement). None (`segd
    segment`): `<out_root>/<stem>/`, replaced whatever it holds.
    `prepared`: this very input already decoded and segmented (the worker's prefetch);
    `before_write`: called once the model is no longer needed for this input (upsampling,
    stitching and writing follow, and need no model)."""
    out_root = Path(out_root)
    final = result_dir(out_root if folder is None else mirror(out_root, folder), Path(image_path))
    if prepared is None:
        prepared = prepare(segmenter, image_path, mask_path, False, expected_sha256)
    else:  # prefetched before the job ran: its bytes must still be the claim's
        _check_sha(prepared.image_file, expected_sha256[0])
        if prepared.mask_file is not None:
            _check_sha(prepared.mask_file, expected_sha256[1])
    if before_write is not None:
        before_write()
    return write_prepared(
        segmenter,
        prepared,
        final,
        job_id=job_id,
        claim_seq=claim_seq,
        folder=folder,
        out_root=out_root,
    )


def write_prepared(
    segmenter: Segmenter,
    prepared: Prepared,
    final: Path,
    *,
    job_id: str | None = None,
    claim_seq: int | None = None,
    folder: str | None = None,
    out_root: Path | None = None,
) -> Path:
    """Write and publish a prepared input's result folder `final` (manifest last). With `folder`
    (a claimed input's inbox folder) the name is chosen under the publication lock
    (worker.image.placement.publish_placed): `final`, or `final~2`, ... when a different picture
    holds it; `out_root` is the outbox (for the manifest's `published_as`)."""
    cfg = segmenter.config
    image_file, mask_file, image = prepared.image_file, prepared.mask_file, prepared.image
    result = prepared.result
    if isinstance(result, Proposed):
        result = segmenter.finish(result)
    info = segmenter.model.info
    manifest = {
        "job_id": job_id
        or jobids.job_id(
            image_file.sha256, mask_file.sha256 if mask_file else None, info.model_version
        ),
        "claim_seq": claim_seq,
        "input": {
            "name": prepared.image_path.name,
            "folder": folder or "",
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
            "read_decode": round(prepared.read_decode_s, 4),
            **{k: round(v, 4) for k, v in result.timings_s.items()},
            "total_before_write": round(prepared.total_before_write_s, 4),
        },
        "segd_version": __version__,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    place = None
    if folder is not None:
        root = out_root if out_root is not None else final.parent

        def place(manifest: dict, finish: Callable[[Path, dict], None]) -> Path:
            return publish_placed(
                final.parent, final.name, image_file.sha256, claim_seq, manifest, finish, root
            )

    # write_result adds timings_s.write (the other files) before it writes the manifest.
    return write_result(final, image, result, manifest, cfg.outputs, place=place)
