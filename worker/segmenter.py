"""One image in, one instance index map out: sampling → decoder → selection → upsampling → stitching.

`Segmenter` is what `segd segment` and the worker both run. It works with any model that has
`encode(images)`, `decode(features, index, points_xy, multimask)`, `low_res_hw(image_hw)` and
`device` (SamModel, or a stand-in in tests).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from worker import prediction, sampling
from worker.config import Config
from worker.stitching import stitch


@dataclass(frozen=True)
class Segment:
    """One instance of the index map. bbox: [x, y, width, height] pixels (COCO order);
    point_xy: the prompt that produced it; score: predicted IoU; area: pixels in the map."""

    id: int
    score: float
    stability: float
    area: int
    bbox: tuple[int, int, int, int]
    point_xy: tuple[float, float]


@dataclass
class Segmentation:
    """index_map: (H, W) uint16, 0 = background, ids 1..n in descending score order."""

    index_map: np.ndarray
    segments: list[Segment]
    region_area: int
    points_used: int
    timings_s: dict[str, float] = field(default_factory=dict)

    @property
    def coverage(self) -> float:
        """Fraction of the region's pixels that belong to a segment."""
        return float(sum(s.area for s in self.segments)) / max(self.region_area, 1)


def _bboxes(index_map: torch.Tensor, count: int) -> np.ndarray:
    """(H, W) int index map → (count, 4) int64 [x, y, w, h] per id 1..count, by two scatters."""
    height, width = index_map.shape
    ids = index_map.long()
    rows = torch.zeros((count + 1, height), dtype=torch.bool, device=ids.device)
    cols = torch.zeros((count + 1, width), dtype=torch.bool, device=ids.device)
    rows[ids, torch.arange(height, device=ids.device)[:, None].expand(height, width)] = True
    cols[ids, torch.arange(width, device=ids.device)[None, :].expand(height, width)] = True
    rows, cols = rows[1:].cpu().numpy(), cols[1:].cpu().numpy()
    y0, y1 = rows.argmax(1), height - rows[:, ::-1].argmax(1)
    x0, x1 = cols.argmax(1), width - cols[:, ::-1].argmax(1)
    return np.stack([x0, y0, x1 - x0, y1 - y0], axis=1)


class Segmenter:
    """Segments images with one resident model and one configuration."""

    def __init__(self, model, config: Config):
        self.model = model
        self.config = config

    def segment(self, image: np.ndarray, region: np.ndarray | None = None) -> Segmentation:
        """Segment an (H, W, 3) uint8 RGB image inside an optional (H, W) bool region."""
        start = time.perf_counter()
        features = self.model.encode([image])
        encoded = time.perf_counter()
        result = self.segment_encoded(features, 0, region)
        result.timings_s = {"encode": encoded - start, **result.timings_s}
        return result

    def _propose(self, features, index: int, points_xy: np.ndarray, region_lr: torch.Tensor):
        cfg = self.config
        proposals = prediction.propose(
            self.model,
            features,
            index,
            points_xy,
            multimask=cfg.model.multimask,
            batch=getattr(self.model, "decoder_batch", 64),
            threshold=cfg.model.mask_threshold,
        )
        return prediction.select(
            proposals,
            region_lr,
            threshold=cfg.model.mask_threshold,
            min_score=cfg.stitching.min_score,
            min_stability=cfg.stitching.min_stability,
        )

    def segment_encoded(
        self, features, index: int, region: np.ndarray | None = None
    ) -> Segmentation:
        """Segment image `index` of already-encoded `features` (the encoder is not run again)."""
        cfg, device = self.config, self.model.device
        image_hw = tuple(features.image_hw[index])
        if region is None:
            region = np.ones(image_hw, dtype=bool)
        region_lr_np = sampling.region_at(region, self.model.low_res_hw(image_hw))
        region_lr = torch.from_numpy(region_lr_np).to(device)
        threshold = cfg.model.mask_threshold
        t0 = time.perf_counter()

        if cfg.sampling.mode == "coverage":
            sampler = sampling.CoverageSampler(
                region, region_lr_np, cfg.sampling.points, cfg.sampling.seed, cfg.sampling.min_gain
            )
            parts = []
            while len(
                batch := sampler.next_batch(cfg.sampling.batch, cfg.sampling.coverage_target)
            ):
                kept = self._propose(features, index, batch, region_lr)
                sampler.accept(((kept.logits > threshold) & region_lr).cpu().numpy())
                parts.append(kept)
            proposals = prediction.Proposals.concat(parts, region_lr_np.shape, device)
            points_used = sampler.used
        else:
            points_xy = sampling.points(
                cfg.sampling.mode, region, cfg.sampling.points, cfg.sampling.seed
            )
            proposals = self._propose(features, index, points_xy, region_lr)
            points_used = len(points_xy)
        t1 = time.perf_counter()

        masks = prediction.upsample_masks(proposals.logits, image_hw, threshold)
        stitched = stitch(
            masks,
            proposals.scores,
            torch.from_numpy(region).to(device),
            overlap_threshold=cfg.stitching.overlap_threshold,
            min_area=cfg.stitching.min_area,
        )
        del masks
        count = len(stitched.source)
        bboxes = _bboxes(stitched.index_map, count) if count else np.zeros((0, 4), np.int64)
        index_map = stitched.index_map.to(torch.int32).cpu().numpy().astype(np.uint16)
        scores = proposals.scores.cpu().numpy()
        stability = proposals.stability.cpu().numpy()
        segments = [
            Segment(
                id=i + 1,
                score=round(float(scores[k]), 6),
                stability=round(float(stability[k]), 6),
                area=int(stitched.areas[i]),
                bbox=tuple(int(v) for v in bboxes[i]),
                point_xy=(float(proposals.points_xy[k, 0]), float(proposals.points_xy[k, 1])),
            )
            for i, k in enumerate(stitched.source)
        ]
        t2 = time.perf_counter()
        return Segmentation(
            index_map=index_map,
            segments=segments,
            region_area=int(region.sum()),
            points_used=points_used,
            timings_s={"decode": t1 - t0, "stitch": t2 - t1},
        )
