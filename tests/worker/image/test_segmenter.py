"""worker.image.segmenter: the whole sampling → prediction → stitching pipeline.

The oracle tests use a stand-in predictor that returns the ground-truth instance under each point,
so they test sampling and stitching, not SAM2."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tests.conftest import tiny_config
from worker.image.segmenter import Segmenter


class OraclePredictor:
    """Stand-in for SamModel: the mask for a point is the ground-truth instance under it
    (empty on background), at full resolution, with a fixed score."""

    device = torch.device("cpu")

    def __init__(self, instances: np.ndarray):
        self.instances = torch.from_numpy(instances.astype(np.int64))
        self.decoded_points = 0

    def encode(self, images):
        return SimpleNamespace(image_hw=[tuple(image.shape[:2]) for image in images])

    def low_res_hw(self, image_hw):
        return tuple(image_hw)

    def decode(self, features, index, points_xy, multimask=True):
        self.decoded_points += len(points_xy)
        xy = points_xy.long()
        ids = self.instances[xy[:, 1], xy[:, 0]]
        masks = (self.instances[None] == ids[:, None, None]) & (ids[:, None, None] > 0)
        logits = torch.where(masks, 10.0, -10.0)[:, None]
        # Bigger instances score higher, as a real model tends to be surest of large objects.
        scores = (masks.flatten(1).sum(1).float() / masks[0].numel()).clamp(min=0.01)[:, None]
        return logits, scores


def _instances(hw=(120, 160), cells=12, seed=0) -> np.ndarray:
    """A synthetic instance map tiling the image: Voronoi cells of very different sizes."""
    rng = np.random.default_rng(seed)
    sites = rng.uniform(0, 1, (cells, 2)) ** 1.6 * hw
    yy, xx = np.mgrid[: hw[0], : hw[1]]
    dist = (yy[None] - sites[:, 0, None, None]) ** 2 + (xx[None] - sites[:, 1, None, None]) ** 2
    return dist.argmin(0) + 1


def _config(tmp_path, **env):
    # min_gain 0: these tests measure how many points reach a coverage, so never stop early.
    base = {
        "SEGD_STITCHING__MIN_AREA": "0",
        "SEGD_SAMPLING__BATCH": "4",
        "SEGD_SAMPLING__MIN_GAIN": "0",
    }
    return tiny_config(tmp_path, **{**base, **env})


def _per_instance_iou(truth: np.ndarray, index_map: np.ndarray) -> list[float]:
    ious = []
    for gt in np.unique(truth[truth > 0]):
        g = truth == gt
        best = 0.0
        for pid in np.unique(index_map[g]):
            if pid == 0:
                continue
            p = index_map == pid
            best = max(best, (g & p).sum() / (g | p).sum())
        ious.append(best)
    return ious


@pytest.mark.parametrize("mode", ["random", "grid", "coverage"])
def test_oracle_pipeline_reproduces_the_instance_map(tmp_path, mode):
    """Given enough points, every synthetic instance comes back with IoU ≥ 0.95."""
    truth = _instances()
    image = np.zeros((*truth.shape, 3), np.uint8)
    cfg = _config(
        tmp_path,
        SEGD_SAMPLING__MODE=mode,
        SEGD_SAMPLING__POINTS="400",
        SEGD_SAMPLING__COVERAGE_TARGET="1.0",
    )
    result = Segmenter(OraclePredictor(truth), cfg).segment(image)
    ious = _per_instance_iou(truth, result.index_map)
    assert min(ious) >= 0.95, ious
    assert result.index_map.dtype == np.uint16 and result.index_map.shape == truth.shape


def test_oracle_pipeline_respects_the_region_and_background(tmp_path):
    """Background points add nothing; nothing is labelled outside the region."""
    truth = _instances()
    truth[:, :20] = 0  # background
    region = np.zeros(truth.shape, bool)
    region[10:110, 10:150] = True
    oracle = OraclePredictor(truth)
    cfg = _config(tmp_path, SEGD_SAMPLING__MODE="grid", SEGD_SAMPLING__POINTS="400")
    result = Segmenter(oracle, cfg).segment(np.zeros((*truth.shape, 3), np.uint8), region)
    assert not result.index_map[~region].any()
    assert not result.index_map[truth == 0].any()
    inside = truth[region & (truth > 0)]
    assert result.coverage == pytest.approx((result.index_map > 0).sum() / region.sum())
    # Everything labelled inside the region is found but slivers of clipped instances (11 px here).
    assert (result.index_map > 0).sum() >= 0.99 * inside.size


def _points_to_reach(tmp_path, mode: str, truth, target: float) -> int:
    """The fewest decoded points with which `mode` labels ≥ `target` of the image."""
    image = np.zeros((*truth.shape, 3), np.uint8)
    for budget in range(2, 400, 2):
        oracle = OraclePredictor(truth)
        cfg = _config(
            tmp_path,
            SEGD_SAMPLING__MODE=mode,
            SEGD_SAMPLING__POINTS=str(budget),
            SEGD_SAMPLING__COVERAGE_TARGET=str(target),
        )
        result = Segmenter(oracle, cfg).segment(image)
        if result.coverage >= target:
            return oracle.decoded_points
    raise AssertionError(f"{mode} never reached {target}")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_coverage_mode_needs_fewer_points_than_random_for_the_same_coverage(tmp_path, seed):
    """Coverage mode decodes fewer prompts than random sampling to cover 99 % of the image."""
    truth = _instances(cells=15, seed=seed)
    coverage_points = _points_to_reach(tmp_path, "coverage", truth, 0.99)
    random_points = _points_to_reach(tmp_path, "random", truth, 0.99)
    assert coverage_points < random_points, (coverage_points, random_points)


def test_same_seed_same_map_with_the_real_model(tmp_path, tiny_model, data_dir):
    """With SAM2 (random weights), each mode is deterministic for a seed and stays in the region."""
    from worker.image import decode

    cfg = tiny_config(tmp_path)
    image = decode.decode_image(
        decode.read_file(data_dir / "labpics_sample_image.jpg", 2**30), 10**8
    )
    region = decode.decode_region_mask(
        decode.read_file(data_dir / "labpics_sample_region_mask.png", 2**30), image.shape[:2], 10**8
    )
    features = tiny_model.encode([image])
    for mode in ("random", "grid", "coverage"):
        cfg_mode = tiny_config(tmp_path, SEGD_SAMPLING__MODE=mode, SEGD_STITCHING__MIN_AREA="0")
        segmenter = Segmenter(tiny_model, cfg_mode)
        first = segmenter.segment_encoded(features, 0, region)
        second = segmenter.segment_encoded(features, 0, region)
        np.testing.assert_array_equal(first.index_map, second.index_map)
        assert first.segments, mode
        assert not first.index_map[~region].any(), mode
        assert first.points_used <= cfg.sampling.points
