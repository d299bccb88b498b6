"""Result files, written to a hidden temp folder and published with one rename.

    <outbox>/<stem>/index.png      (H, W) uint16 instance ids, 0 = background
    <outbox>/<stem>/color.png      (H, W, 3) uint8, a fixed colour per id (same id, same colour)
    <outbox>/<stem>/overlay.jpg    the colours blended over the image
    <outbox>/<stem>/segments.json  per id: score, stability, area, bbox, prompt point, COCO RLE
    <outbox>/<stem>/manifest.json  written last: job id, input sha256, model, settings, timings

Publication: every file is fsynced in a hidden temp folder beside the final one
(`<outbox>/.tmp-<claim seq>-<token>/`, worker.image.placement.temp_folder), then the folder takes
the final name in one atomic step (an exchange with the previous result when there is one, so
readers see the old result or the new one, never half of either, and never a gap). Which folder
(`<stem>`, or `<stem>~2` when a different picture holds it) and whether a newer result (a later
claim of the same input) is already published there is decided at that moment, under the
publication lock of the parent folder held by every publisher (worker.image.placement), so an
older result never replaces a newer one and no result is replaced by another picture's.
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
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from common import published
from common.config import OutputsConfig
from common.durable import fsync_dir, write_bytes
from worker.image import encoding
from worker.image.encoding import rle_from_index_map
from worker.image.placement import TMP_PREFIX, locked, temp_folder
from worker.image.segmenter import Segmentation

INDEX_FILE = "index.png"
COLOR_FILE = "color.png"
OVERLAY_FILE = "overlay.jpg"
SEGMENTS_FILE = "segments.json"
MANIFEST_FILE = "manifest.json"
RESULT_FILES = (INDEX_FILE, COLOR_FILE, OVERLAY_FILE, SEGMENTS_FILE, MANIFEST_FILE)

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


def color_png(index_map: np.ndarray, level: int) -> bytes:
    """color.png's bytes: a palette PNG while the ids fit in 8 bits (a third of the bytes to
    compress), else RGB; read back as RGB both are color_map(index_map)."""
    top = int(index_map.max()) if index_map.size else 0
    if top <= 255:
        return encoding.png_palette(index_map.astype(np.uint8), palette()[: top + 1], level)
    return encoding.png_rgb(color_map(index_map), level)


def overlay(
    image: np.ndarray, colors: np.ndarray, index_map: np.ndarray, alpha: float
) -> np.ndarray:
    """Blend segment colours over an (H, W, 3) uint8 image where index_map > 0."""
    blended = cv2.addWeighted(image, 1.0 - alpha, colors, alpha, 0.0)
    return np.where((index_map > 0)[:, :, None], blended, image)


def rle_encode(index_map: np.ndarray, ids: list[int]) -> list[dict]:
    """COCO RLE ({"size": [H, W], "counts": str}) of each id's pixels, readable by pycocotools."""
    return rle_from_index_map(index_map, ids)


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


def publish(tmp: Path, final: Path, claim_seq: int | None = None) -> bool:
    """Give the finished folder `tmp` the name `final`, replacing any previous result atomically,
    unless `final` holds the result of a later claim (its manifest's `claim_seq` is greater than
    `claim_seq`): then `tmp` is removed and False returned. The check and the rename happen under
    the publication lock of `final.parent` (worker.image.placement.locked), so two publishers of
    the same stem cannot interleave. Returns True when published."""
    with locked(final.parent):
        if claim_seq is not None and published.claim_seq(published.read_manifest(final)) > int(
            claim_seq
        ):
            shutil.rmtree(tmp, ignore_errors=True)
            return False
        swap_in(tmp, final)
    return True


def swap_in(tmp: Path, final: Path) -> None:
    """Rename `tmp` to `final` atomically (an exchange with a previous result there, which is then
    removed). The caller holds the publication lock of `final.parent`."""
    previous = None
    try:
        os.rename(tmp, final)  # atomic when nothing is there yet
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
            raise
        previous = tmp
        if not _exchange(tmp, final):  # old kernels / file systems: a brief gap, never half
            previous = final.with_name(f"{TMP_PREFIX}old-{secrets.token_hex(8)}")
            os.rename(final, previous)
            os.rename(tmp, final)
    fsync_dir(final.parent)
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)  # the previous result, now under a temp name


WRITE_THREADS = 3  # index.png, color.png and overlay.jpg beside segments.json


@lru_cache(maxsize=1)
def _writers() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(WRITE_THREADS, thread_name_prefix="segd-write")


def _encode_to(path: Path, encode: Callable[[], bytes]) -> None:
    write_bytes(path, encode())


def _write_files(tmp: Path, image: np.ndarray, result: Segmentation, cfg: OutputsConfig) -> None:
    """index.png, color.png, overlay.jpg and segments.json into `tmp`, each fsynced. The three
    images are encoded side by side in threads (zlib, libjpeg-turbo and OpenCV release the GIL)
    while this thread writes the RLEs; every file's bytes are what one thread would write."""
    index_map, level = result.index_map, cfg.png_compression
    encoders: dict[str, Callable[[], bytes]] = {
        INDEX_FILE: lambda: encoding.png_uint16(index_map, level),
        COLOR_FILE: lambda: color_png(index_map, level),
        OVERLAY_FILE: lambda: encoding.jpeg_rgb(
            encoding.blend_where(image, index_map, palette(), cfg.overlay_alpha),
            cfg.jpeg_quality,
        ),
    }
    futures = [_writers().submit(_encode_to, tmp / name, fn) for name, fn in encoders.items()]
    try:
        write_bytes(tmp / SEGMENTS_FILE, json.dumps(segments_document(result)).encode())
    finally:
        wait(futures)  # never leave a thread writing into a folder the caller may remove
    for future in futures:
        future.result()  # the first error, as the one-thread version raised it


def write_result(
    final: Path,
    image: np.ndarray,
    result: Segmentation,
    manifest: dict,
    cfg: OutputsConfig,
    place: Callable[[dict, Callable[[Path, dict], None]], Path] | None = None,
) -> Path:
    """Write all result files for one image and publish them as the folder `final` (unless a
    later claim's result is published there already: then nothing changes; see `publish`).

    place(manifest, finish): chooses the folder instead (see worker.image.placement), holding
    the publication lock, and calls finish(folder, manifest) to write the manifest and publish
    there; returns the folder.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_folder(final, manifest.get("claim_seq"))
    tmp.mkdir()
    started = time.perf_counter()

    def finish(target: Path, manifest: dict) -> None:
        write_bytes(
            tmp / MANIFEST_FILE, json.dumps(manifest, indent=2).encode()
        )  # last: marks completeness
        fsync_dir(tmp)
        if place is None:
            publish(tmp, target, manifest.get("claim_seq"))
        else:
            swap_in(tmp, target)  # place() holds the lock and decided already

    try:
        _write_files(tmp, image, result, cfg)
        manifest.setdefault("timings_s", {})["write"] = round(time.perf_counter() - started, 4)
        if place is None:
            finish(final, manifest)
        else:
            final = place(manifest, finish)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if tmp.exists():  # place() kept a newer result: this one is not published
        shutil.rmtree(tmp, ignore_errors=True)
    return final
