"""Result files, written to a hidden temp folder and published with one rename.

    <outbox>/<stem>/index.png      (H, W) uint16 instance ids, 0 = background
    <outbox>/<stem>/color.png      (H, W, 3) uint8, a fixed colour per id (same id, same colour)
    <outbox>/<stem>/overlay.jpg    the colours blended over the image
    <outbox>/<stem>/segments.json  per id: score, stability, area, bbox, prompt point, COCO RLE
    <outbox>/<stem>/manifest.json  written last: job id, input sha256, model, settings, timings

Publication: every file is fsynced in `<outbox>/.tmp-<stem>-<token>/`, then the folder takes
the final name in one atomic step (an exchange with the previous result when there is one, so
readers see the old result or the new one, never half of either, and never a gap).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
import secrets
import shutil
import time
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from worker.config import OutputsConfig
from worker.durable import fsync_dir, write_bytes
from worker.segmenter import Segmentation

INDEX_FILE = "index.png"
COLOR_FILE = "color.png"
OVERLAY_FILE = "overlay.jpg"
SEGMENTS_FILE = "segments.json"
MANIFEST_FILE = "manifest.json"
RESULT_FILES = (INDEX_FILE, COLOR_FILE, OVERLAY_FILE, SEGMENTS_FILE, MANIFEST_FILE)
TMP_PREFIX = ".tmp-"

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


@lru_cache(maxsize=1)
def palette() -> np.ndarray:
    """(65536, 3) uint8 RGB: colour of every possible id; id 0 (background) is black.

    Hues step by the golden angle so neighbouring ids differ strongly; saturation and value
    cycle with the id. Fixed forever: the same id has the same colour in every result.
    """
    ids = np.arange(65536, dtype=np.float64)
    hue = (ids * 0.6180339887498949) % 1.0
    sat = 0.55 + 0.45 * ((ids * 7) % 5) / 4
    val = 0.70 + 0.30 * ((ids * 3) % 4) / 3
    h6 = hue * 6.0
    sector = np.floor(h6).astype(np.int64) % 6
    frac = h6 - np.floor(h6)
    p, q, t = val * (1 - sat), val * (1 - sat * frac), val * (1 - sat * (1 - frac))
    choices = [(val, t, p), (q, val, p), (p, val, t), (p, q, val), (t, p, val), (val, p, q)]
    rgb = np.zeros((65536, 3))
    for s, (r, g, b) in enumerate(choices):
        sel = sector == s
        rgb[sel] = np.stack([r[sel], g[sel], b[sel]], axis=1)
    lut = np.round(rgb * 255).astype(np.uint8)
    lut[0] = 0
    return lut


def color_map(index_map: np.ndarray) -> np.ndarray:
    """(H, W) uint16 ids → (H, W, 3) uint8 RGB with the fixed palette."""
    return palette()[index_map]


def overlay(
    image: np.ndarray, colors: np.ndarray, index_map: np.ndarray, alpha: float
) -> np.ndarray:
    """Blend segment colours over an (H, W, 3) uint8 image where index_map > 0."""
    blended = cv2.addWeighted(image, 1.0 - alpha, colors, alpha, 0.0)
    return np.where((index_map > 0)[:, :, None], blended, image)


def rle_encode(index_map: np.ndarray, ids: list[int]) -> list[dict]:
    """COCO RLE ({"size": [H, W], "counts": str}) of each id's pixels, readable by pycocotools."""
    if not ids:
        return []
    # A C-ordered (K, W, H) stack transposed to (H, W, K) is Fortran-ordered, as pycocotools wants.
    stacked = np.equal(
        index_map.T[None], np.asarray(ids, dtype=index_map.dtype)[:, None, None], order="C"
    )
    rles = mask_utils.encode(np.asfortranarray(stacked.view(np.uint8).transpose(2, 1, 0)))
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def segments_document(result: Segmentation) -> dict:
    height, width = result.index_map.shape
    rles = rle_encode(result.index_map, [s.id for s in result.segments])
    return {
        "image": {"height": height, "width": width},
        "coverage": round(result.coverage, 6),
        "segments": [
            {
                "id": s.id,
                "score": s.score,
                "stability": s.stability,
                "area": s.area,
                "bbox": list(s.bbox),
                "point": list(s.point_xy),
                "rle": rle,
            }
            for s, rle in zip(result.segments, rles, strict=True)
        ],
    }


def _encode(ext: str, image: np.ndarray, params: list[int]) -> bytes:
    ok, buffer = cv2.imencode(ext, image, params)
    if not ok:
        raise OSError(f"OpenCV could not encode {ext}")
    return buffer.tobytes()


@lru_cache(maxsize=1)
def _renameat2():
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    return getattr(libc, "renameat2", None)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False if unsupported."""
    func = _renameat2()
    if func is None:
        return False
    if func(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def publish(tmp: Path, final: Path) -> None:
    """Give the finished folder `tmp` the name `final`, replacing any previous result atomically."""
    try:
        os.rename(tmp, final)  # atomic when nothing is there yet
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
            raise
        if not _exchange(
            tmp, final
        ):  # old kernels / file systems: a brief gap, never a half folder
            old = final.with_name(f"{TMP_PREFIX}old-{final.name}-{secrets.token_hex(4)}")
            os.rename(final, old)
            os.rename(tmp, final)
            tmp = old
        shutil.rmtree(tmp, ignore_errors=True)  # the previous result, now under the temp name
    fsync_dir(final.parent)


def write_result(
    final: Path, image: np.ndarray, result: Segmentation, manifest: dict, cfg: OutputsConfig
) -> Path:
    """Write all result files for one image and publish them as the folder `final`."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f"{TMP_PREFIX}{final.name}-{secrets.token_hex(4)}")
    tmp.mkdir()
    started = time.perf_counter()
    try:
        colors = color_map(result.index_map)
        png = [cv2.IMWRITE_PNG_COMPRESSION, cfg.png_compression]
        write_bytes(tmp / INDEX_FILE, _encode(".png", result.index_map, png))
        write_bytes(tmp / COLOR_FILE, _encode(".png", colors[:, :, ::-1], png))
        shown = overlay(image, colors, result.index_map, cfg.overlay_alpha)
        write_bytes(
            tmp / OVERLAY_FILE,
            _encode(".jpg", shown[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, cfg.jpeg_quality]),
        )
        write_bytes(tmp / SEGMENTS_FILE, json.dumps(segments_document(result)).encode())
        manifest.setdefault("timings_s", {})["write"] = round(time.perf_counter() - started, 4)
        write_bytes(
            tmp / MANIFEST_FILE, json.dumps(manifest, indent=2).encode()
        )  # last: marks completeness
        fsync_dir(tmp)
        publish(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
