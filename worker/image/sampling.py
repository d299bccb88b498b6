"""Where to put the point prompts: inside the region (the whole image when there is no mask).

All functions are pure numpy and deterministic for a given seed. Points are (N, 2) float32 xy
pixel centres (x + 0.5 is not used: SAM2 takes integer pixel coordinates as the seed did).

- `random_points`: the seed's behaviour, but seeded and without repeats.
- `grid_points`: an even lattice clipped to the region.
- `CoverageSampler`: for `coverage` mode; hands out pending lattice points in small batches,
  skips those already inside an accepted mask, and places new points at the centre of the
  largest still-uncovered part of the region.
"""

from __future__ import annotations

import math

import cv2
import numpy as np


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed))


def random_points(region: np.ndarray, count: int, seed: int) -> np.ndarray:
    """`count` distinct pixels drawn uniformly from `region` ((H, W) bool) → (N, 2) float32 xy.

    Fewer than `count` only when the region has fewer pixels.
    """
    if region.all():  # the common no-mask case: no need to list every pixel
        chosen = _rng(seed).choice(region.size, size=min(count, region.size), replace=False)
        ys, xs = np.divmod(chosen, region.shape[1])
        return np.stack([xs, ys], axis=1).astype(np.float32)
    flat = np.flatnonzero(region.ravel())
    if flat.size == 0:
        return np.zeros((0, 2), np.float32)
    chosen = _rng(seed).choice(flat.size, size=min(count, flat.size), replace=False)
    ys, xs = np.divmod(flat[chosen], region.shape[1])
    return np.stack([xs, ys], axis=1).astype(np.float32)


def _bounds(region: np.ndarray) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1): the bounding box of a non-empty (H, W) bool region."""
    if region.all():  # the common no-mask case: no pass over the pixels
        return 0, region.shape[0], 0, region.shape[1]
    ys, xs = np.nonzero(region.any(axis=1))[0], np.nonzero(region.any(axis=0))[0]
    return int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1


def _axes(bounds: tuple[int, int, int, int], step: float) -> tuple[np.ndarray, np.ndarray]:
    """The lattice's pixel columns px and rows py inside `bounds` for spacing `step`."""
    y0, y1, x0, x1 = bounds
    nx, ny = max(1, int((x1 - x0) / step)), max(1, int((y1 - y0) / step))
    gx = x0 + ((x1 - x0) - (nx - 1) * step) / 2 + step * np.arange(nx)
    gy = y0 + ((y1 - y0) - (ny - 1) * step) / 2 + step * np.arange(ny)
    px = np.clip(np.floor(gx).astype(np.int64), x0, x1 - 1)
    py = np.clip(np.floor(gy).astype(np.int64), y0, y1 - 1)
    return px, py


def _lattice(
    region: np.ndarray, step: float, bounds: tuple[int, int, int, int] | None = None
) -> np.ndarray:
    """Lattice points (xy) spaced `step` pixels apart, centred in the region's bounding box
    (`bounds`, from `_bounds`), kept if inside."""
    px, py = _axes(bounds if bounds is not None else _bounds(region), step)
    yy, xx = np.meshgrid(py, px, indexing="ij")
    inside = region[yy, xx]
    return np.stack([xx[inside], yy[inside]], axis=1).astype(np.float32)


def grid_points(region: np.ndarray, count: int) -> np.ndarray:
    """About `count` (never more) points on an even square lattice clipped to `region` → (N, 2) float32.

    The spacing is found by bisection so the lattice puts as close to `count` points inside the
    region as it can; if it overshoots, points are thinned evenly along the raster order.
    """
    area = int(np.count_nonzero(region))
    if area == 0:
        return np.zeros((0, 2), np.float32)
    if count >= area:
        ys, xs = np.nonzero(region)
        return np.stack([xs, ys], axis=1).astype(np.float32)
    bounds = _bounds(region)  # once, not once per bisection step

    y0, y1, x0, x1 = bounds

    def size(step: float) -> int:  # points of the lattice inside the region
        if area == region.size:  # the whole image: every lattice point is inside (_axes' sizes)
            return max(1, int((x1 - x0) / step)) * max(1, int((y1 - y0) / step))
        return len(_lattice(region, step, bounds))

    lo, hi = 0.5, float(max(region.shape))
    best_step = hi
    for _ in range(30):
        step = math.sqrt(lo * hi)
        found = size(step)
        if found > count:
            lo = step
        else:
            hi, best_step = step, step
            if found == count:
                break
    best = _lattice(region, best_step, bounds)
    if len(best) < count:  # the next denser lattice, thinned evenly to exactly `count`
        dense = _lattice(region, lo, bounds)
        if len(dense) >= count:
            keep = np.linspace(0, len(dense) - 1, count).round().astype(np.int64)
            best = dense[keep]
    return best


def points(mode: str, region: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Points for the one-shot modes (`random`, `grid`)."""
    if mode == "random":
        return random_points(region, count, seed)
    if mode == "grid":
        return grid_points(region, count)
    raise ValueError(f"sampling mode {mode!r} is not one-shot; use CoverageSampler")


class CoverageSampler:
    """Hands out prompts for `coverage` mode, round by round, in a low-resolution frame.

    region_lr: (h, w) bool, the region at the decoder's mask resolution (the whole image
    stretched to h x w); region: (H, W) bool at full resolution, to snap points inside it.
    Coverage bookkeeping happens on region_lr so each round costs O(h*w), not O(H*W).
    """

    def __init__(
        self,
        region: np.ndarray,
        region_lr: np.ndarray,
        budget: int,
        seed: int,
        min_gain: float = 0.0,
    ):
        self.region = region
        self.region_lr = region_lr
        self.budget = budget
        self.min_gain = min_gain
        self.used = 0
        self.last_gain: float | None = None  # coverage added by the latest accepted round
        self.covered_lr = np.zeros_like(region_lr)
        self._covered_cells = 0  # count of covered_lr & region_lr, kept by `accept`
        self._whole = bool(region_lr.all())
        # Cells around every point already handed out: a point whose mask was rejected must not
        # be proposed again, or coverage mode would spend its budget on one spot.
        self._tried_lr = np.zeros(region_lr.shape, np.uint8)
        self._tried_radius = max(1, min(region_lr.shape) // 64)
        self._area_lr = max(int(region_lr.sum()), 1)
        self._scale = np.array(
            [region.shape[1] / region_lr.shape[1], region.shape[0] / region_lr.shape[0]], np.float32
        )
        # Pending points: an even lattice over the region, handed out in a seeded shuffled order
        # so that every round spreads over the whole region.
        lattice = grid_points(region, budget)
        self._pending = lattice[_rng(seed).permutation(len(lattice))]

    @property
    def coverage(self) -> float:
        """Fraction of the low-res region covered by accepted masks."""
        return float(self._covered_cells) / self._area_lr

    def _to_lr(self, points_xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cells = np.floor(points_xy / self._scale).astype(np.int64)
        # np.clip's semantics by maximum / minimum (np.clip costs ~10x more on a few points)
        cx = np.minimum(np.maximum(cells[:, 0], 0), self.region_lr.shape[1] - 1)
        cy = np.minimum(np.maximum(cells[:, 1], 0), self.region_lr.shape[0] - 1)
        return cx, cy

    def _uncovered_centres(self, count: int) -> np.ndarray:
        """Up to `count` points, each at the deepest point of the still-uncovered region.

        Uses a distance transform; after each pick, the disc it reaches is marked as taken so the
        next point goes to the next-largest uncovered part.
        """
        free = (self.region_lr & ~self.covered_lr & ~self._tried_lr.astype(bool)).astype(np.uint8)
        picked = []
        for _ in range(count):
            if not free.any():
                break
            dist = cv2.distanceTransform(np.pad(free, 1), cv2.DIST_L2, 3)[1:-1, 1:-1]
            cy, cx = np.unravel_index(int(np.argmax(dist)), dist.shape)
            picked.append(self._snap(int(cx), int(cy)))
            radius = max(1, int(dist[cy, cx]))
            cv2.circle(free, (int(cx), int(cy)), radius, 0, thickness=-1)
        return np.array(picked, np.float32).reshape(-1, 2)

    def _snap(self, cx: int, cy: int) -> tuple[float, float]:
        """The full-resolution region pixel nearest the centre of low-res cell (cx, cy)."""
        sx, sy = self._scale
        x0, y0 = int(cx * sx), int(cy * sy)
        x1 = max(x0 + 1, int(math.ceil((cx + 1) * sx)))
        y1 = max(y0 + 1, int(math.ceil((cy + 1) * sy)))
        window = self.region[y0:y1, x0:x1]
        centre = ((x0 + x1 - 1) / 2, (y0 + y1 - 1) / 2)
        if not window.any():  # the cell is mostly outside: fall back to its centre pixel
            return float(int(centre[0])), float(int(centre[1]))
        ys, xs = np.nonzero(window)
        nearest = np.argmin((xs + x0 - centre[0]) ** 2 + (ys + y0 - centre[1]) ** 2)
        return float(xs[nearest] + x0), float(ys[nearest] + y0)

    def next_batch(self, size: int, target: float) -> np.ndarray:
        """The next prompts, (n, 2) float32 xy; empty when the target or the budget is reached,
        or when the previous round added less than `min_gain` of the region."""
        size = min(size, self.budget - self.used)
        saturated = self.last_gain is not None and self.last_gain < self.min_gain
        if size <= 0 or self.coverage >= target or saturated:
            return np.zeros((0, 2), np.float32)
        if len(self._pending):  # skip pending points already inside an accepted mask
            cx, cy = self._to_lr(self._pending)
            self._pending = self._pending[~self.covered_lr[cy, cx]]
        batch = self._pending[:size]
        self._pending = self._pending[size:]
        if len(batch) < size:
            batch = np.concatenate([batch, self._uncovered_centres(size - len(batch))])
        self.used += len(batch)
        cx, cy = self._to_lr(batch)
        for x, y in zip(cx.tolist(), cy.tolist(), strict=True):
            cv2.circle(self._tried_lr, (x, y), self._tried_radius, 1, thickness=-1)
        return batch

    def accept(self, masks_lr: np.ndarray) -> None:
        """Mark one round's accepted masks ((k, h, w) bool at low resolution) as covered."""
        before = self.coverage
        if len(masks_lr):
            covered = self.covered_lr
            for mask in masks_lr:  # in place; one pass each (any(axis=0) makes a copy)
                covered |= mask
            self._covered_cells = int(
                np.count_nonzero(covered if self._whole else covered & self.region_lr)
            )
        self.last_gain = self.coverage - before


def region_at(region: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Resize a (H, W) bool region to (h, w): a cell is inside when at least half of it is."""
    if region.shape == tuple(hw):
        return region.copy()
    resized = cv2.resize(
        region.astype(np.uint8) * 255, (hw[1], hw[0]), interpolation=cv2.INTER_AREA
    )
    return resized >= 128
