"""Upsampling and stitching inside each mask's box: the same index map as `upsample_masks` +
`stitch`, without 30 full-size masks.

A kept mask is a (h, w) low-res logit map (h = w = S/4) over the whole image. Where every logit is
below the threshold, no upsampled pixel can be above it (bilinear is a convex combination of four
cells), so a mask's full-size pixels lie in the box of full-size rows and columns that read a
cell above the threshold. Only that box is computed and stitched.

Bit-identical on the CPU: torch's 2-D bilinear kernel equals its 1-D linear kernel along x, then
along y (checked by tests/worker/image/test_boxes.py on many sizes); rows of the x pass and
columns of the y pass are independent, so each pass runs only on the rows / columns the box
needs, through torch's own kernel. On CUDA, masks are upsampled with the 2-D kernel in chunks on
the device (cheap there) and cut to their boxes; stitching runs in boxes on the device too.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from worker.image.prediction import upsample_masks

# A cell below threshold - MARGIN * max|logit| is surely below after interpolation (float error of
# two convex combinations is a few ulp of the largest input, ~1e-7 relative; this is 1000x that).
MARGIN = 1e-4


@dataclass
class BoxMask:
    """One full-size mask held only inside its box: rows y0:y1, columns x0:x1 of the image;
    mask: (y1 - y0, x1 - x0) bool tensor on the logits' device."""

    y0: int
    y1: int
    x0: int
    x1: int
    mask: torch.Tensor


def _source_index(out_size: int, in_size: int) -> tuple[np.ndarray, np.ndarray]:
    """For each output index of a linear resize (align_corners=False), the two input indices it
    reads (i0 <= i1, both non-decreasing), as ATen computes them (float32 arithmetic)."""
    scale = np.float32(in_size) / np.float32(out_size)
    src = scale * (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5)
    i0 = np.minimum(np.maximum(src, 0).astype(np.int64), in_size - 1)
    i1 = np.where(i0 < in_size - 1, i0 + 1, i0)
    return i0, i1


def _span(i0: np.ndarray, i1: np.ndarray, lo: int, hi: int) -> tuple[int, int]:
    """Output indices [a, b) that read an input index in [lo, hi]; widened by one each side so
    any kernel rounding of the source position is covered too."""
    a = int(np.searchsorted(i1, lo, side="left"))
    b = int(np.searchsorted(i0, hi, side="right"))
    return max(a - 1, 0), min(b + 1, len(i0))


def _low_res_boxes(logits: torch.Tensor, threshold: float) -> np.ndarray:
    """(K, h, w) logits → (K, 4) int64 [r0, r1, c0, c1] inclusive cells that may be above the
    threshold after interpolation; r0 = -1 where none may."""
    if logits.shape[0] == 0:
        return np.zeros((0, 4), np.int64)
    if logits.device.type == "cpu":
        values = logits.numpy()
        # At threshold 0 no margin is needed: a sum of non-positive products cannot round above 0.
        margin = 0.0
        if threshold != 0:  # max |logit| without abs()'s copy
            margin = MARGIN * max(float(values.max()), -float(values.min()))
        hot = np.asarray(values > np.float32(threshold - margin))  # float32, as torch does
        rows, cols = hot.any(axis=2), hot.any(axis=1)
    else:
        margin = MARGIN * float(logits.abs().amax()) if threshold != 0 else 0.0
        hot_t = logits > threshold - margin
        rows, cols = hot_t.any(dim=2).cpu().numpy(), hot_t.any(dim=1).cpu().numpy()
    rows, cols = np.asarray(rows), np.asarray(cols)
    h, w = rows.shape[1], cols.shape[1]
    r0, r1 = rows.argmax(1), h - 1 - rows[:, ::-1].argmax(1)
    c0, c1 = cols.argmax(1), w - 1 - cols[:, ::-1].argmax(1)
    boxes = np.stack([r0, r1, c0, c1], axis=1).astype(np.int64)
    boxes[~rows.any(1)] = -1
    return boxes


@dataclass(frozen=True)
class _Weights:
    """torch's linear resize (align_corners=False) from `in_size` to `out_size`, as its CPU kernel
    computes it: output i reads inputs i0[i] and i1[i] with weights w0[i] and w1[i] (float32;
    w1 = 0 where it reads one input)."""

    i0: np.ndarray
    i1: np.ndarray
    w0: np.ndarray
    w1: np.ndarray


@lru_cache(maxsize=32)
def _kernel_weights(in_size: int, out_size: int) -> _Weights:
    """Read torch's own weights off its kernel: resizing the identity's rows (one-hot inputs)
    gives each weight exactly (a product with 1 or 0 and a sum with 0 are exact)."""
    eye = torch.eye(in_size, dtype=torch.float32)[None]
    table = F.interpolate(eye, size=out_size, mode="linear", align_corners=False)[0].numpy()
    hot = table != 0  # (in, out): at most two inputs per output
    i0 = hot.argmax(0)
    i1 = in_size - 1 - hot[::-1].argmax(0)
    cols = np.arange(out_size)
    w0 = table[i0, cols]
    w1 = np.where(i1 != i0, table[i1, cols], np.float32(0)).astype(np.float32)
    return _Weights(i0, i1, w0, w1)


# numpy's and torch's float32 bilinear values (same weights, a different rounding or FMA use)
# differ by at most ~8 ulp of max|logit| (two passes of two products and a sum, each within
# ~2 ulp of the exact value, in both): 2^-16 relative is ~30x that.
NEAR = 2.0**-16
BLOCK = 2**17  # pixels of a box evaluated at once (cache-sized)


def _upsample_boxes_cpu(
    logits: torch.Tensor,
    image_hw: tuple[int, int],
    boxes: np.ndarray,
    yi: tuple[np.ndarray, np.ndarray],
    xi: tuple[np.ndarray, np.ndarray],
    threshold: float,
) -> list[BoxMask | None]:
    """(K, h, w) logit maps → their BoxMasks: each box's pixels evaluated in numpy, and only
    those within rounding reach of the threshold decided by torch's own kernels.

    numpy computes each box's bilinear values with torch's exact weights (`_kernel_weights`),
    separably (along x on the low-res rows the box reads, then along y), in float32: within a
    few ulp of max|logit| of what torch's kernel computes. A pixel more than NEAR * max|logit|
    (of the rows the box reads) from the threshold is therefore on the same side in both; the
    box's columns holding a pixel closer than that are recomputed as before (torch's 1-D kernel
    along x, then along y: bit-identical to the 2-D kernel). So the masks are torch's, bit for
    bit (tested on ties, exact zeros and near-threshold fields), for ~8 numpy passes over each
    box instead of torch's kernel over every image row of each of the box's columns.
    """
    height, width = image_hw
    values = logits.float().numpy()
    wy, wx = _kernel_weights(values.shape[1], height), _kernel_weights(values.shape[2], width)
    out: list[BoxMask | None] = []
    for k, (r0, r1, c0, c1) in enumerate(boxes.tolist()):
        if r0 < 0:
            out.append(None)
            continue
        y0, y1 = _span(yi[0], yi[1], r0, r1)
        x0, x1 = _span(xi[0], xi[1], c0, c1)
        ra, rb = int(wy.i0[y0]), int(wy.i1[y1 - 1]) + 1  # the low-res rows read
        rows = values[k, ra:rb]
        top = max(float(rows.max()), -float(rows.min()))
        if not np.isfinite(top):  # inf or nan: torch decides every pixel
            mask = _exact_columns(values[k], image_hw, (y0, y1), np.arange(x0, x1), yi, threshold)
            out.append(BoxMask(y0, y1, x0, x1, torch.from_numpy(mask)))
            continue
        high, low = np.float32(threshold + NEAR * top), np.float32(threshold - NEAR * top)
        along_x = np.take(rows, wx.i0[x0:x1], axis=1)
        along_x *= wx.w0[x0:x1]
        part = np.take(rows, wx.i1[x0:x1], axis=1)
        part *= wx.w1[x0:x1]
        along_x += part
        mask = np.empty((y1 - y0, x1 - x0), bool)
        unsure = None
        step = max(1, BLOCK // (x1 - x0))
        for b0 in range(y0, y1, step):
            b1 = min(b0 + step, y1)
            value = np.take(along_x, wy.i0[b0:b1] - ra, axis=0)
            value *= wy.w0[b0:b1, None]
            part = np.take(along_x, wy.i1[b0:b1] - ra, axis=0)
            part *= wy.w1[b0:b1, None]
            value += part
            sure = np.greater(value, high, out=mask[b0 - y0 : b1 - y0])
            maybe = value > low
            if np.count_nonzero(maybe) != np.count_nonzero(sure):  # too close to call
                close = np.flatnonzero((maybe ^ sure).any(axis=0))
                unsure = close if unsure is None else np.union1d(unsure, close)
        if unsure is not None:
            mask[:, unsure] = _exact_columns(
                values[k], image_hw, (y0, y1), x0 + unsure, yi, threshold
            )
        out.append(BoxMask(y0, y1, x0, x1, torch.from_numpy(mask)))
    return out


def _exact_columns(
    logits: np.ndarray,
    image_hw: tuple[int, int],
    rows: tuple[int, int],
    cols: np.ndarray,
    yi: tuple[np.ndarray, np.ndarray],
    threshold: float,
) -> np.ndarray:
    """Full-size pixels rows[0]:rows[1] of columns `cols` of one (h, w) logit map > threshold,
    as torch computes them: its 1-D kernel along x, then along y (the 2-D kernel's bits)."""
    height, width = image_hw
    h = logits.shape[0]
    y0, y1 = rows
    ra, rb = max(int(yi[0][y0]) - 1, 0), min(int(yi[1][y1 - 1]) + 2, h)
    band = torch.from_numpy(np.ascontiguousarray(logits[ra:rb]))[None]
    along_x = F.interpolate(band, size=width, mode="linear", align_corners=False)[0]
    columns = torch.zeros((len(cols), h))  # rows the kept outputs never read stay 0
    columns[:, ra:rb] = along_x[:, torch.from_numpy(cols)].T
    along_y = F.interpolate(columns[None], size=height, mode="linear", align_corners=False)
    return (along_y[0, :, y0:y1] > threshold).T.numpy()


def upsample_in_boxes(
    logits: torch.Tensor, image_hw: tuple[int, int], threshold: float
) -> list[BoxMask | None]:
    """(K, h, w) low-res logits → per mask its full-size pixels above `threshold` inside its box
    (None for a mask with no such pixel possible). Equal to `upsample_masks` inside the box and
    False outside it."""
    boxes = _low_res_boxes(logits, threshold)
    h, w = logits.shape[1:]
    yi, xi = _source_index(image_hw[0], h), _source_index(image_hw[1], w)
    if logits.device.type != "cpu":
        return _upsample_on_device(logits, image_hw, threshold, boxes, yi, xi)
    return _upsample_boxes_cpu(logits, image_hw, boxes, yi, xi, threshold)


def _upsample_on_device(logits, image_hw, threshold, boxes, yi, xi, chunk: int = 8):
    """CUDA: the 2-D kernel on `chunk` full masks at a time, each cut to its box."""
    out: list[BoxMask | None] = []
    for start in range(0, logits.shape[0], chunk):
        full = upsample_masks(logits[start : start + chunk], image_hw, threshold, chunk=chunk)
        for j, (r0, r1, c0, c1) in enumerate(boxes[start : start + chunk].tolist()):
            if r0 < 0:
                out.append(None)
                continue
            y0, y1 = _span(yi[0], yi[1], r0, r1)
            x0, x1 = _span(xi[0], xi[1], c0, c1)
            out.append(BoxMask(y0, y1, x0, x1, full[j, y0:y1, x0:x1].clone()))
        del full
    return out


@dataclass
class BoxStitched:
    """index_map: (H, W) tensor on the masks' device (uint16 on the CPU, int32 on CUDA); source: (n,) int64, the input mask
    behind each id; areas: (n,) int64 pixels per id; bboxes: (n, 4) int64 [x, y, w, h]."""

    index_map: torch.Tensor
    source: np.ndarray
    areas: np.ndarray
    bboxes: np.ndarray


def stitch_boxes(
    masks: list[BoxMask | None],
    scores: torch.Tensor,
    image_hw: tuple[int, int],
    region: torch.Tensor | None,
    *,
    overlap_threshold: float,
    min_area: int,
    device: torch.device,
) -> BoxStitched:
    """The seed's score-ordered rule (worker.image.stitching) mask by mask, each in its box.

    Ties in score keep the input order; a mask more than `overlap_threshold` claimed already is
    skipped; one that would claim fewer than `min_area` pixels (or none) is dropped. On the CPU
    the boxes are numpy views (counting bools is 50x faster there than torch's sum).
    """
    on_cpu = device.type == "cpu"
    index_map: Any
    region_a: Any
    count: Any
    any_of: Any
    if on_cpu:
        index_map = np.zeros(image_hw, dtype=np.uint16)  # ids <= sampling.points <= 4096
        region_a = None if region is None else region.cpu().numpy()
        count, any_of = np.count_nonzero, (lambda a, axis: np.flatnonzero(a.any(axis=axis)))
    else:
        index_map = torch.zeros(image_hw, dtype=torch.int32, device=device)
        region_a = region
        count = lambda a: int(a.sum())  # noqa: E731
        any_of = lambda a, axis: torch.nonzero(a.any(dim=axis))[:, 0].tolist()  # noqa: E731
    order = torch.argsort(scores.float().cpu(), descending=True, stable=True).tolist()
    source, areas, bboxes = [], [], []
    for k in order:
        box = masks[k]
        if box is None:
            continue
        mask = box.mask.numpy() if on_cpu else box.mask
        if region_a is not None:
            mask = mask & region_a[box.y0 : box.y1, box.x0 : box.x1]
        area = int(count(mask))
        if area == 0:
            continue
        window = index_map[box.y0 : box.y1, box.x0 : box.x1]
        take = mask & (window == 0)
        taken = int(count(take))
        if (area - taken) / area > overlap_threshold:
            continue
        if taken == 0 or taken < min_area:
            continue
        source.append(k)
        areas.append(taken)
        if on_cpu:
            np.copyto(window, len(source), where=take)
        else:
            window.masked_fill_(take, len(source))
        rows, cols = any_of(take, 1), any_of(take, 0)
        y, x = box.y0 + int(rows[0]), box.x0 + int(cols[0])
        bboxes.append((x, y, box.x0 + int(cols[-1]) + 1 - x, box.y0 + int(rows[-1]) + 1 - y))
    return BoxStitched(
        torch.from_numpy(index_map) if on_cpu else index_map,
        np.array(source, np.int64),
        np.array(areas, np.int64),
        np.array(bboxes, np.int64).reshape(-1, 4),
    )
