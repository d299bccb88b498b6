"""worker.image.sampling: where point prompts go."""

import numpy as np
import pytest

from worker.image import sampling


def _region() -> np.ndarray:
    region = np.zeros((120, 160), bool)
    region[20:100, 30:140] = True
    region[50:70, 60:100] = False  # a hole
    return region


def _inside(region, points) -> bool:
    return bool(region[points[:, 1].astype(int), points[:, 0].astype(int)].all())


def test_random_points_are_seeded_distinct_and_inside_the_region():
    """Random mode: same seed, same points; no repeats; every point inside the region."""
    region = _region()
    a = sampling.random_points(region, 30, seed=7)
    b = sampling.random_points(region, 30, seed=7)
    c = sampling.random_points(region, 30, seed=8)
    assert a.shape == (30, 2) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert len(np.unique(a, axis=0)) == 30
    assert _inside(region, a)


def test_random_points_without_a_mask_cover_the_whole_image_and_stop_at_the_region_size():
    """No mask: points anywhere; a region smaller than the count gives each of its pixels once."""
    full = np.ones((50, 60), bool)
    points = sampling.random_points(full, 100, seed=0)
    assert len(np.unique(points, axis=0)) == 100 and _inside(full, points)
    tiny = np.zeros((50, 60), bool)
    tiny[10, 10:15] = True
    assert len(sampling.random_points(tiny, 30, seed=0)) == 5


@pytest.mark.parametrize("count", [1, 7, 30, 100, 500])
def test_grid_points_give_the_requested_count_evenly_inside_the_region(count):
    """Grid mode: exactly `count` points (the region is big enough), all inside, evenly spaced."""
    region = _region()
    points = sampling.grid_points(region, count)
    assert len(points) == count
    assert _inside(region, points)
    if count >= 30:
        # Even: no two points much closer than the lattice step for this density.
        step = np.sqrt(region.sum() / count)
        diff = points[:, None, :] - points[None, :, :]
        dist = np.sqrt((diff**2).sum(-1)) + np.eye(count) * 1e9
        assert dist.min() >= 0.4 * step


def test_grid_points_are_deterministic():
    """Grid mode has no randomness at all."""
    region = _region()
    np.testing.assert_array_equal(
        sampling.grid_points(region, 30), sampling.grid_points(region, 30)
    )


def test_region_at_low_resolution_keeps_cells_that_are_mostly_inside():
    """A region is shrunk to the decoder's mask size by area: a cell counts when half of it is inside."""
    region = np.zeros((100, 100), bool)
    region[:, :50] = True
    small = sampling.region_at(region, (10, 10))
    assert small.shape == (10, 10)
    assert small[:, :5].all() and not small[:, 5:].any()


def test_coverage_sampler_skips_pending_points_inside_accepted_masks():
    """Coverage mode: once a mask covers an area, pending points there are never handed out."""
    region = np.ones((64, 64), bool)
    sampler = sampling.CoverageSampler(region, region.copy(), budget=16, seed=0)
    first = sampler.next_batch(4, target=0.99)
    assert len(first) == 4
    covered = np.zeros((1, 64, 64), bool)
    covered[0, :, :32] = True  # the left half is now covered
    sampler.accept(covered)
    rest = []
    while len(batch := sampler.next_batch(4, target=0.99)):
        rest.append(batch)
    rest = np.concatenate(rest)
    assert (rest[:, 0] >= 32).all(), "a pending point inside the covered half was decoded"
    assert sampler.used == 4 + len(rest) <= 16


def test_coverage_sampler_places_new_points_in_the_largest_uncovered_area_and_never_twice():
    """When pending points run out, new ones go to the middle of what is still uncovered, each once."""
    region = np.ones((64, 64), bool)
    sampler = sampling.CoverageSampler(region, region.copy(), budget=12, seed=0)
    sampler._pending = sampler._pending[:0]  # as if every lattice point had been used
    covered = np.ones((1, 64, 64), bool)
    covered[0, 40:60, 40:60] = False  # one uncovered square
    sampler.accept(covered)
    (x, y), *_ = sampler.next_batch(1, target=0.999)
    assert 45 <= x <= 54 and 45 <= y <= 54
    again = sampler.next_batch(1, target=0.999)  # nothing was accepted for it: go elsewhere
    assert np.abs(again[0] - (x, y)).max() >= 1


def test_coverage_sampler_stops_at_the_target_or_the_budget():
    """No points are handed out once coverage reaches the target, nor past the budget."""
    region = np.ones((32, 32), bool)
    sampler = sampling.CoverageSampler(region, region.copy(), budget=10, seed=0)
    sampler.accept(np.ones((1, 32, 32), bool))
    assert sampler.coverage == 1.0
    assert len(sampler.next_batch(8, target=0.95)) == 0
    sampler = sampling.CoverageSampler(region, region.copy(), budget=10, seed=0)
    total = 0
    while len(batch := sampler.next_batch(4, target=0.95)):
        total += len(batch)
    assert total == 10


def test_coverage_sampler_stops_when_a_round_adds_almost_nothing():
    """A round of prompts in uncovered spots that adds < min_gain of the region ends coverage mode."""
    region = np.ones((64, 64), bool)
    sampler = sampling.CoverageSampler(region, region.copy(), budget=40, seed=0, min_gain=0.01)
    half = np.zeros((1, 64, 64), bool)
    half[0, :, :32] = True
    assert len(sampler.next_batch(4, target=0.99)) == 4
    sampler.accept(half)  # +50 %: keep going
    assert len(sampler.next_batch(4, target=0.99)) == 4
    sampler.accept(np.zeros((0, 64, 64), bool))  # nothing new
    assert sampler.last_gain == 0.0
    assert len(sampler.next_batch(4, target=0.99)) == 0
    assert sampler.used == 8


def _grid_points_before(region: np.ndarray, count: int) -> np.ndarray:
    """grid_points as it was (a lattice built at every bisection step), for comparison."""
    import math

    def lattice(step):
        ys, xs = np.nonzero(region.any(axis=1))[0], np.nonzero(region.any(axis=0))[0]
        y0, y1, x0, x1 = ys[0], ys[-1] + 1, xs[0], xs[-1] + 1
        nx, ny = max(1, int((x1 - x0) / step)), max(1, int((y1 - y0) / step))
        gx = x0 + ((x1 - x0) - (nx - 1) * step) / 2 + step * np.arange(nx)
        gy = y0 + ((y1 - y0) - (ny - 1) * step) / 2 + step * np.arange(ny)
        px = np.clip(np.floor(gx).astype(np.int64), x0, x1 - 1)
        py = np.clip(np.floor(gy).astype(np.int64), y0, y1 - 1)
        yy, xx = np.meshgrid(py, px, indexing="ij")
        inside = region[yy, xx]
        return np.stack([xx[inside], yy[inside]], axis=1).astype(np.float32)

    area = int(region.sum())
    if area == 0:
        return np.zeros((0, 2), np.float32)
    if count >= area:
        ys, xs = np.nonzero(region)
        return np.stack([xs, ys], axis=1).astype(np.float32)
    lo, hi = 0.5, float(max(region.shape))
    best = lattice(hi)
    for _ in range(30):
        step = math.sqrt(lo * hi)
        points = lattice(step)
        if len(points) > count:
            lo = step
        else:
            hi, best = step, points
            if len(points) == count:
                break
    if len(best) < count:
        dense = lattice(lo)
        if len(dense) >= count:
            keep = np.linspace(0, len(dense) - 1, count).round().astype(np.int64)
            best = dense[keep]
    return best


@pytest.mark.parametrize("count", [1, 7, 30, 64, 100, 333])
@pytest.mark.parametrize("shape", [(768, 1024), (3024, 4032), (50, 60), (1, 999)])
def test_grid_points_are_the_previous_implementations(count, shape):
    """The bisection that counts lattice points without building them gives the same points
    as building every lattice, with and without a region mask."""
    whole = np.ones(shape, bool)
    np.testing.assert_array_equal(
        sampling.grid_points(whole, count), _grid_points_before(whole, count)
    )
    if shape[0] > 1:
        masked = whole.copy()
        masked[: shape[0] // 3, :] = False
        masked[:, shape[1] // 2 :] = False
        np.testing.assert_array_equal(
            sampling.grid_points(masked, count), _grid_points_before(masked, count)
        )
