"""worker.image.boxes: upsampling and stitching in boxes give the full-size pipeline's index map.

The reference is segd's previous path, kept as it was: `prediction.upsample_masks` (torch's 2-D
bilinear kernel on full-size masks) then `stitching.stitch` (atoms over full-size masks)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from worker.image.boxes import stitch_boxes, upsample_in_boxes
from worker.image.prediction import upsample_masks
from worker.image.stitching import stitch

CPU = torch.device("cpu")


def _logits(count: int, side: int, seed: int) -> torch.Tensor:
    """(count, side, side) float32 smooth random logit fields (blobs of all sizes), with the edge
    cases: an empty mask, masks touching each border, a one-cell mask, a near-threshold field."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randn((count, 1, side // 8 + 2, side // 8 + 2), generator=gen) * 4 - 3
    logits = F.interpolate(coarse, size=(side, side), mode="bicubic", align_corners=False)[:, 0]
    logits = logits.contiguous()
    logits[0] = -6.0  # empty
    logits[1, :, :2] = 5.0  # left border
    logits[2, -1:, :] = 5.0  # bottom border
    logits[3] = -6.0
    logits[3, side // 2, side // 2] = 0.5  # one cell
    logits[4] = torch.randn((side, side), generator=gen) * 1e-3  # everything near the threshold
    return logits


def _full(boxes, count: int, hw) -> torch.Tensor:
    masks = torch.zeros((count, *hw), dtype=torch.bool)
    for k, box in enumerate(boxes):
        if box is not None:
            masks[k, box.y0 : box.y1, box.x0 : box.x1] = box.mask
    return masks


SIZES = [  # (low-res side, image H, W): SAM2's S/4 = 256 at camera and phone sizes, odd sizes
    (256, 768, 1024),
    (256, 3024, 4032),
    (64, 257, 999),
    (64, 120, 160),
    (32, 33, 31),
    (16, 1000, 17),
    (64, 64, 64),
]


@pytest.mark.parametrize(("side", "height", "width"), SIZES)
def test_masks_upsampled_in_boxes_equal_the_full_size_bilinear_masks(side, height, width):
    """Inside its box each mask is bit-identical to torch's full-size bilinear + threshold, and
    the full-size mask is empty outside the box."""
    count = 8 if height * width > 10**6 else 12
    logits = _logits(count, side, seed=side + height)
    expected = upsample_masks(logits, (height, width), 0.0)
    boxes = upsample_in_boxes(logits, (height, width), 0.0)
    assert boxes[0] is None  # nothing above the threshold anywhere
    assert torch.equal(_full(boxes, count, (height, width)), expected)


@pytest.mark.parametrize("threshold", [-1.0, 0.7])
def test_boxes_hold_every_pixel_with_a_threshold_other_than_zero(threshold):
    """With a non-zero mask_threshold no pixel above it falls outside a mask's box."""
    logits = _logits(10, 64, seed=3)
    expected = upsample_masks(logits, (301, 407), threshold)
    boxes = upsample_in_boxes(logits, (301, 407), threshold)
    assert torch.equal(_full(boxes, 10, (301, 407)), expected)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(("overlap", "min_area"), [(0.15, 0), (0.15, 40), (0.5, 5), (0.0, 0)])
def test_stitching_in_boxes_gives_the_bit_identical_index_map(seed, overlap, min_area):
    """Same masks and scores (ties included): the same index map, ids, sources and areas as the
    full-size stitcher; bboxes are each id's pixels' bounding box."""
    hw = (203, 311)
    logits = _logits(24, 64, seed)
    scores = torch.rand(24, generator=torch.Generator().manual_seed(seed))
    scores[5:9] = scores[4]  # ties keep the input order
    masks = upsample_masks(logits, hw, 0.0)
    expected = stitch(masks, scores, overlap_threshold=overlap, min_area=min_area)
    got = stitch_boxes(
        upsample_in_boxes(logits, hw, 0.0),
        scores,
        hw,
        None,
        overlap_threshold=overlap,
        min_area=min_area,
        device=CPU,
    )
    np.testing.assert_array_equal(got.index_map.numpy(), expected.index_map.numpy())
    assert got.source.tolist() == expected.source.tolist()
    assert got.areas.tolist() == expected.areas.tolist()
    index_map = expected.index_map.numpy()
    for i, (x, y, w, h) in enumerate(got.bboxes.tolist(), start=1):
        ys, xs = np.nonzero(index_map == i)
        assert (x, y, w, h) == (
            xs.min(),
            ys.min(),
            xs.max() + 1 - xs.min(),
            ys.max() + 1 - ys.min(),
        )


@pytest.mark.parametrize("seed", range(3))
def test_stitching_in_boxes_clips_to_a_region_like_the_full_size_stitcher(seed):
    """With a region mask (holes, borders) the maps are identical and nothing lies outside it."""
    hw = (180, 240)
    rng = np.random.default_rng(seed)
    region = np.zeros(hw, bool)
    region[10:170, 5:200] = True
    region[rng.random(hw) < 0.1] = False
    logits = _logits(20, 64, seed + 10)
    scores = torch.rand(20, generator=torch.Generator().manual_seed(seed))
    region_t = torch.from_numpy(region)
    expected = stitch(upsample_masks(logits, hw, 0.0), scores, region_t, min_area=10)
    got = stitch_boxes(
        upsample_in_boxes(logits, hw, 0.0),
        scores,
        hw,
        region_t,
        overlap_threshold=0.15,
        min_area=10,
        device=CPU,
    )
    np.testing.assert_array_equal(got.index_map.numpy(), expected.index_map.numpy())
    assert not got.index_map.numpy()[~region].any()


def test_no_masks_give_an_empty_map():
    """Zero proposals: an all-background uint16 map and no segments."""
    got = stitch_boxes(
        upsample_in_boxes(torch.zeros((0, 16, 16)), (40, 30), 0.0),
        torch.zeros(0),
        (40, 30),
        None,
        overlap_threshold=0.15,
        min_area=0,
        device=CPU,
    )
    assert got.index_map.shape == (40, 30) and not got.index_map.numpy().any()
    assert got.source.size == 0 and got.bboxes.shape == (0, 4)


# --- the numpy evaluation with torch's own weights (worker.image.boxes._upsample_boxes_cpu) ----


def _per_box_reference(logits: torch.Tensor, hw, threshold: float):
    """segd's previous CPU path, kept as it was: per mask, torch's 1-D kernel along x for the
    rows its box reads, then along y for the box's columns (one pair of kernel calls a mask)."""
    from worker.image.boxes import _low_res_boxes, _source_index, _span

    height, width = hw
    h = logits.shape[1]
    yi, xi = _source_index(height, h), _source_index(width, logits.shape[2])
    out = []
    for k, (r0, r1, c0, c1) in enumerate(_low_res_boxes(logits, threshold).tolist()):
        if r0 < 0:
            out.append(None)
            continue
        y0, y1 = _span(yi[0], yi[1], r0, r1)
        x0, x1 = _span(xi[0], xi[1], c0, c1)
        ra, rb = max(int(yi[0][y0]) - 1, 0), min(int(yi[1][y1 - 1]) + 2, h)
        along_x = F.interpolate(logits[k][None, ra:rb], size=width, mode="linear")
        columns = logits.new_zeros((x1 - x0, h))
        columns[:, ra:rb] = along_x[0, :, x0:x1].T
        along_y = F.interpolate(columns[None], size=height, mode="linear")
        out.append((y0, y1, x0, x1, (along_y[0, :, y0:y1] > threshold).T.contiguous()))
    return out


def _hard_logits(count: int, side: int, seed: int) -> torch.Tensor:
    """Logit fields that put many full-size pixels within rounding reach of the threshold:
    exact zeros next to large values, ties (equal cells), cells of +-1 ulp around 0, +-x pairs
    whose interpolations cancel, and quantised soft edges like the stand-in's."""
    gen = torch.Generator().manual_seed(seed)
    logits = _logits(count, side, seed)
    logits[5] = 0.0
    logits[5, side // 4 : side // 2, side // 4 : side // 2] = 8.0  # exact zeros around a block
    logits[6] = torch.where(torch.rand((side, side), generator=gen) < 0.5, 1e-45, -1e-45)
    logits[6, 0, 0] = 9.0  # a large max |logit|: the whole field is within the near band
    checker = (torch.arange(side)[:, None] + torch.arange(side)[None, :]) % 2 == 0
    logits[7] = torch.where(checker, 3.0, -3.0)  # +-x pairs: interpolated values cancel
    frac = torch.randint(0, 13, (side, side), generator=gen).float() / 12
    logits[8] = (frac - 0.5) * 16  # multiples of 16/12 with exact zeros, like the stand-in
    logits[9] = 2.5  # a constant field: every cell ties
    return logits


@pytest.mark.parametrize("threshold", [0.0, 0.5, -1.0])
@pytest.mark.parametrize(
    ("side", "height", "width"), [(64, 257, 999), (64, 200, 150), (32, 33, 31)]
)
def test_numpy_upsampling_equals_the_per_box_kernel_path_bit_for_bit(
    threshold, side, height, width
):
    """Same boxes and the same bits as the previous per-mask torch path, on fields built to sit
    on the threshold (ties, zeros, +-1 ulp, cancelling pairs), also against the 2-D kernel."""
    logits = _hard_logits(12, side, seed=side + height)
    reference = _per_box_reference(logits, (height, width), threshold)
    got = upsample_in_boxes(logits, (height, width), threshold)
    for box, ref in zip(got, reference, strict=True):
        if ref is None:
            assert box is None
            continue
        assert (box.y0, box.y1, box.x0, box.x1) == ref[:4]
        assert box.mask.dtype == torch.bool and torch.equal(box.mask, ref[4])
    # Against the 2-D kernel too, but for the subnormal field: on +-1e-45 the previous path's
    # 1-D kernels already differed from the 2-D kernel (rounding of subnormal products), and
    # the new path keeps the previous path's bits. Real logits are never subnormal.
    expected = upsample_masks(logits, (height, width), threshold)
    full = _full(got, 12, (height, width))
    normal = [k for k in range(12) if k != 6]
    assert torch.equal(full[normal], expected[normal])


def test_pixels_too_close_to_call_are_decided_by_torchs_kernel():
    """A field of +-1e-45 under a large max |logit| is all within the near band: every column
    goes through torch's kernel, and the result is its bits."""
    from worker.image import boxes as box_module

    logits = _hard_logits(12, 64, seed=1)[6:7].contiguous()
    logits[0] *= 1e38  # +-1.4e-7: normal floats, still all within the near band of 9 * 2^-16
    calls = []
    exact = box_module._exact_columns

    def counting(*args, **kwargs):
        calls.append(len(args[3]))
        return exact(*args, **kwargs)

    box_module._exact_columns = counting
    try:
        got = upsample_in_boxes(logits, (150, 210), 0.0)
    finally:
        box_module._exact_columns = exact
    assert calls and sum(calls) > 100
    assert torch.equal(_full(got, 1, (150, 210)), upsample_masks(logits, (150, 210), 0.0))


def test_non_finite_logits_take_torchs_path_for_the_whole_box():
    """inf / nan in a mask's rows: its box is computed by torch's kernel alone."""
    logits = _logits(6, 32, seed=2)
    logits[1, 10, 10] = float("inf")
    logits[2, 5, 5] = float("nan")
    got = upsample_in_boxes(logits, (100, 90), 0.0)
    assert torch.equal(_full(got, 6, (100, 90)), upsample_masks(logits, (100, 90), 0.0))


@pytest.mark.parametrize(
    ("in_size", "out_size"), [(256, 768), (256, 3024), (64, 999), (16, 17), (32, 31)]
)
def test_kernel_weights_are_torchs_own(in_size, out_size):
    """The weights read off torch's kernel rebuild its output (within float rounding), and
    read the inputs `_source_index` predicts (or one of them where the other weighs 0)."""
    from worker.image.boxes import _kernel_weights, _source_index

    weights = _kernel_weights(in_size, out_size)
    x = torch.randn(3, in_size, generator=torch.Generator().manual_seed(0))
    expected = F.interpolate(x[None], size=out_size, mode="linear")[0].numpy()
    rebuilt = x.numpy()[:, weights.i0] * weights.w0 + x.numpy()[:, weights.i1] * weights.w1
    np.testing.assert_allclose(rebuilt, expected, atol=1e-6, rtol=0)
    i0, i1 = _source_index(out_size, in_size)
    assert np.all(weights.i0 == i0)
    assert np.all((weights.i1 == i1) | (weights.w1 == 0))
