"""Fast encoders for the result files: PNGs written with zlib directly, COCO RLEs of every id in
one pass over the index map, the overlay blended only where segments are, JPEG by libjpeg-turbo.

Each gives exactly what the straightforward way gives when read back (the same pixels, the same
RLE strings, the same colours): tests/worker/image/test_encoding.py keeps the straightforward
versions and compares.
"""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
import simplejpeg
from pycocotools import mask as mask_utils

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_FILTER_UP = 2  # each byte minus the byte above it: label maps become runs of zeros
_GREY, _PALETTE = 0, 3  # PNG colour types


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(rows: np.ndarray, width: int, bit_depth: int, colour_type: int, level: int, extra=b""):
    """(H, row_bytes) uint8 raw scanlines → PNG bytes, every row with the Up filter."""
    height = rows.shape[0]
    filtered = np.empty((height, rows.shape[1] + 1), np.uint8)
    filtered[:, 0] = _FILTER_UP
    filtered[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])  # uint8 wraps, as PNG's filter does
    # Z_RLE: label maps are runs; as small as the default strategy for them and faster.
    # memLevel 4 (zlib's default is 8; this was 9): a smaller symbol buffer and hash table that
    # stay in cache: ~40 % faster than 9 on these maps and a few % smaller (measured at 1 and
    # 12 MP); any memLevel makes a valid stream of the same pixels.
    packer = zlib.compressobj(level, zlib.DEFLATED, 15, 4, zlib.Z_RLE)
    data = packer.compress(filtered.data) + packer.flush()  # the buffer, no copy
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        _PNG_SIGNATURE
        + _chunk(b"IHDR", header)
        + extra
        + _chunk(b"IDAT", data)
        + _chunk(b"IEND", b"")
    )


def png_uint16(image: np.ndarray, level: int) -> bytes:
    """(H, W) uint16 → 16-bit greyscale PNG bytes (zlib `level` 0..9)."""
    height, width = image.shape
    rows = image.astype(">u2", copy=False).view(np.uint8).reshape(height, 2 * width)
    return _png(rows, width, 16, _GREY, level)


def png_palette(index: np.ndarray, colours: np.ndarray, level: int) -> bytes:
    """(H, W) uint8 indices and (N <= 256, 3) uint8 RGB colours → 8-bit palette PNG bytes;
    read back as RGB it is colours[index]."""
    height, width = index.shape
    plte = _chunk(b"PLTE", np.ascontiguousarray(colours, np.uint8).tobytes())
    return _png(np.ascontiguousarray(index, np.uint8), width, 8, _PALETTE, level, plte)


def png_rgb(image: np.ndarray, level: int) -> bytes:
    """(H, W, 3) uint8 RGB → 8-bit truecolour PNG bytes."""
    height, width = image.shape[:2]
    rows = np.ascontiguousarray(image, np.uint8).reshape(height, 3 * width)
    return _png(rows, width, 8, 2, level)


def jpeg_rgb(image: np.ndarray, quality: int) -> bytes:
    """(H, W, 3) uint8 RGB → baseline JPEG, 4:2:0, accurate DCT (OpenCV's defaults)."""
    return simplejpeg.encode_jpeg(
        np.ascontiguousarray(image), quality=quality, colorspace="RGB", colorsubsampling="420"
    )


def rle_from_index_map(index_map: np.ndarray, ids: list[int]) -> list[dict]:
    """COCO RLE ({"size": [H, W], "counts": str}) of each id's pixels, from one pass over the
    (H, W) index map in column-major order (pycocotools' order); pycocotools writes the strings."""
    height, width = index_map.shape
    if not ids:
        return []
    # Column-major order by OpenCV's blocked transpose (2.5x numpy's strided ravel("F") here).
    flat = cv2.transpose(np.ascontiguousarray(index_map)).ravel()
    total = flat.size
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts = np.concatenate(([0], change))
    ends = np.concatenate((change, [total]))
    values = flat[starts]
    order = np.argsort(values, kind="stable")  # runs grouped by id, each group in pixel order
    values, starts, ends = values[order], starts[order], ends[order]
    bounds = np.searchsorted(values, np.asarray(ids, dtype=values.dtype), side="left")
    stops = np.searchsorted(values, np.asarray(ids, dtype=values.dtype), side="right")
    out = []
    for lo, hi in zip(bounds.tolist(), stops.tolist(), strict=True):
        s, e = starts[lo:hi].astype(np.int64), ends[lo:hi].astype(np.int64)
        counts = np.empty(2 * len(s) + 1, np.int64)
        counts[0::2][: len(s)] = s - np.concatenate(([0], e[:-1]))  # background before each run
        counts[1::2] = e - s
        counts[-1] = total - (e[-1] if len(e) else 0)  # background after the last run
        if len(e) and counts[-1] == 0:
            counts = counts[:-1]
        rle = mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)
        out.append({"size": [height, width], "counts": rle["counts"].decode("ascii")})
    return out


def _colours(index_map: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """(H, W) ids → (H, W, 3) uint8 lut[id]; by cv2.LUT (a table per channel) for ids <= 255."""
    if index_map.size and int(index_map.max()) <= 255:
        ids = index_map.astype(np.uint8)
        return cv2.LUT(cv2.merge([ids, ids, ids]), lut[:256].reshape(1, 256, 3))
    return lut[index_map]


def blend_where(
    image: np.ndarray, index_map: np.ndarray, lut: np.ndarray, alpha: float
) -> np.ndarray:
    """(H, W, 3) uint8 image with the colours lut[id] blended over it where index_map > 0.

    cv2.addWeighted(image, 1 - alpha, colours, alpha, 0), OpenCV's arithmetic pixel for pixel,
    computed only inside the box around all segments; background pixels keep the image's.
    """
    out = image.copy()
    rows = np.flatnonzero(index_map.any(axis=1))
    if rows.size == 0:
        return out
    cols = np.flatnonzero(index_map[rows[0] : rows[-1] + 1].any(axis=0))
    box = (slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1))
    ids = np.ascontiguousarray(index_map[box])
    base = np.ascontiguousarray(image[box])
    blended = cv2.addWeighted(base, 1.0 - alpha, _colours(ids, lut), alpha, 0.0)
    cv2.copyTo(blended, (ids > 0).view(np.uint8), out[box])
    return out
