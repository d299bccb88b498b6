"""worker.image.stitching: score-ordered stitching into an index map."""

import numpy as np
import pytest
import torch

from bench.seed_flow import seed_stitch
from worker.image.stitching import stitch


def _discs(count: int, hw=(120, 150), seed=0) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` random overlapping discs and distinct random scores."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: hw[0], : hw[1]]
    centres = rng.uniform(0, 1, (count, 2)) * hw
    radii = rng.uniform(5, 40, count)
    masks = ((yy - centres[:, 0, None, None]) ** 2 + (xx - centres[:, 1, None, None]) ** 2) < (
        radii[:, None, None] ** 2
    )
    scores = rng.permutation(count) / count + 0.01
    return torch.from_numpy(masks), torch.from_numpy(scores.astype(np.float32))


def _contiguous(seed_map: np.ndarray) -> np.ndarray:
    """Renumber the seed's rank ids (with gaps for skipped masks) to 1..n in the same order."""
    ids = np.unique(seed_map[seed_map > 0])
    lut = np.zeros(seed_map.max() + 1, np.int32)
    lut[ids] = np.arange(1, len(ids) + 1)
    return lut[seed_map]


@pytest.mark.parametrize("count", [1, 5, 30, 70, 150])
def test_stitching_with_the_seed_settings_gives_the_seed_map(count):
    """Same masks and scores: segd's map is the seed's map (ids renumbered 1..n in score order).

    70 and 150 masks need several 64-bit signature words."""
    masks, scores = _discs(count, seed=count)
    result = stitch(masks, scores, overlap_threshold=0.15, min_area=0)
    expected = _contiguous(seed_stitch(masks.numpy(), scores.numpy()))
    np.testing.assert_array_equal(result.index_map.numpy(), expected)
    assert result.index_map.dtype == torch.int32


def test_ids_are_contiguous_in_descending_score_order():
    """Id 1 is the best-scoring kept mask; ids run 1..n without gaps; areas match the map."""
    masks, scores = _discs(40, seed=3)
    result = stitch(masks, scores, min_area=0)
    index_map = result.index_map.numpy()
    n = len(result.source)
    assert set(np.unique(index_map)) - {0} == set(range(1, n + 1))
    kept_scores = scores.numpy()[result.source]
    assert (np.diff(kept_scores) <= 0).all()
    np.testing.assert_array_equal(np.bincount(index_map.ravel(), minlength=n + 1)[1:], result.areas)


def test_a_mask_mostly_claimed_already_is_skipped_and_a_lightly_overlapping_one_takes_the_rest():
    """Overlap above the threshold: skipped; at or below it: the mask takes only unclaimed pixels."""
    masks = torch.zeros((3, 10, 10), dtype=torch.bool)
    masks[0, :, :5] = True  # 50 px, best score
    masks[1, :, 4:] = True  # 60 px, 10 of them claimed: 1/6 > 0.15 → skipped
    masks[2, :, 5:] = True  # 50 px, no overlap → taken
    result = stitch(masks, torch.tensor([0.9, 0.8, 0.7]), overlap_threshold=0.15)
    assert result.source.tolist() == [0, 2]
    masks[1, :, 4] = False
    masks[1, :2, 4] = True  # now 52 px with 2 claimed: 0.038 ≤ 0.15 → taken, minus the claimed
    result = stitch(masks, torch.tensor([0.9, 0.8, 0.7]), overlap_threshold=0.15)
    assert result.source.tolist() == [0, 1]  # mask 2 is then 100 % claimed → skipped
    assert result.areas.tolist() == [50, 50]


def test_masks_are_clipped_to_the_region():
    """No pixel outside the region gets an id, and overlap is measured inside the region only."""
    masks, scores = _discs(20, seed=5)
    region = torch.zeros(masks.shape[1:], dtype=torch.bool)
    region[30:90, 40:110] = True
    index_map = stitch(masks, scores, region).index_map
    assert (index_map[~region] == 0).all()
    assert (index_map[region] > 0).any()


def test_segments_smaller_than_min_area_are_dropped_and_leave_their_pixels_free():
    """A mask that would claim fewer than min_area pixels gets no id; a later mask may take them."""
    masks = torch.zeros((2, 10, 10), dtype=torch.bool)
    masks[0, 0, :3] = True  # 3 px, best score
    masks[1, :2, :] = True  # 20 px
    result = stitch(masks, torch.tensor([0.9, 0.5]), min_area=5)
    assert result.source.tolist() == [1]
    assert result.areas.tolist() == [20]


def test_ties_in_score_keep_the_input_order_and_no_masks_give_an_empty_map():
    """Equal scores: the earlier mask wins; zero masks: an all-background map."""
    masks = torch.ones((2, 4, 4), dtype=torch.bool)
    assert stitch(masks, torch.tensor([0.5, 0.5])).source.tolist() == [0]
    empty = stitch(torch.zeros((0, 4, 4), dtype=torch.bool), torch.zeros(0))
    assert empty.index_map.shape == (4, 4) and int(empty.index_map.max()) == 0
