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

from common.config import Config
from worker.image import prediction, sampling
from worker.image.boxes import stitch_boxes, upsample_in_boxes


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
    row_hits, col_hits = rows[1:].cpu().numpy(), cols[1:].cpu().numpy()
    y0, y1 = row_hits.argmax(1), height - row_hits[:, ::-1].argmax(1)
    x0, x1 = col_hits.argmax(1), width - col_hits[:, ::-1].argmax(1)
    return np.stack([x0, y0, x1 - x0, y1 - y0], axis=1)


@dataclass
class Proposed:
    """The model's output for one image, before upsampling: the kept low-res proposals, the
    image's (H, W), its (H, W) bool region (None: the whole image), prompts decoded, timings."""

    proposals: prediction.Proposals
    image_hw: tuple[int, int]
    region: np.ndarray | None
    points_used: int
    timings_s: dict[str, float]


class Segmenter:
    """Segments images with one resident model and one configuration."""

    def __init__(self, model, config: Config):
        self.model = model
        self.config = config

    def segment(self, image: np.ndarray, region: np.ndarray | None = None) -> Segmentation:
        """Segment an (H, W, 3) uint8 RGB image inside an optional (H, W) bool region."""
        return self.finish(self.propose(image, region))

    def propose(self, image: np.ndarray, region: np.ndarray | None = None, batch=None) -> Proposed:
        """The model's part of `segment`: encoder, sampling and decoder (low-res masks only).
        `batch`: the image's `model.preprocess([image])` when it was made already."""
        start = time.perf_counter()
        features = (
            self.model.encode([image]) if batch is None else self.model.encode([image], batch)
        )
        encoded = time.perf_counter()
        proposed = self.propose_encoded(features, 0, region)
        proposed.timings_s = {"encode": encoded - start, **proposed.timings_s}
        return proposed

    def _propose(self, features, index: int, points_xy: np.ndarray, region_lr, store=None):
        """Kept proposals for `points_xy` and their (k, h, w) bool low-res masks (numpy)."""
        cfg = self.config
        return prediction.propose_kept(
            self.model,
            features,
            index,
            points_xy,
            region_lr,
            multimask=cfg.model.multimask,
            batch=getattr(self.model, "decoder_batch", 64),
            threshold=cfg.model.mask_threshold,
            min_score=cfg.stitching.min_score,
            min_stability=cfg.stitching.min_stability,
            store=store,
        )

    def segment_encoded(
        self, features, index: int, region: np.ndarray | None = None
    ) -> Segmentation:
        """Segment image `index` of already-encoded `features` (the encoder is not run again)."""
        return self.finish(self.propose_encoded(features, index, region))

    def propose_encoded(self, features, index: int, region: np.ndarray | None = None) -> Proposed:
        """Sampling and decoder for image `index` of `features`: the kept low-res masks."""
        cfg, device = self.config, self.model.device
        image_hw = tuple(features.image_hw[index])
        whole = region is None
        if region is None:
            region = np.ones(image_hw, dtype=bool)
            region_lr_np = np.ones(self.model.low_res_hw(image_hw), dtype=bool)
        else:
            region_lr_np = sampling.region_at(region, self.model.low_res_hw(image_hw))
        # None: the whole image (no mask to intersect with).
        region_lr = None if whole else torch.from_numpy(region_lr_np).to(device)
        t0 = time.perf_counter()

        if cfg.sampling.mode == "coverage":
            sampler = sampling.CoverageSampler(
                region, region_lr_np, cfg.sampling.points, cfg.sampling.seed, cfg.sampling.min_gain
            )
            parts = []
            # On the CPU the kept logits go straight into one buffer (no concatenation).
            store = None
            if device.type == "cpu":
                store = prediction.LowResStore(cfg.sampling.points, region_lr_np.shape)
            while len(
                batch := sampler.next_batch(cfg.sampling.batch, cfg.sampling.coverage_target)
            ):
                kept, masks_lr = self._propose(features, index, batch, region_lr, store)
                sampler.accept(masks_lr)
                parts.append(kept)
            proposals = prediction.Proposals.concat(
                parts, region_lr_np.shape, device, None if store is None else store.logits()
            )
            points_used = sampler.used
        else:
            points_xy = sampling.points(
                cfg.sampling.mode, region, cfg.sampling.points, cfg.sampling.seed
            )
            proposals, _ = self._propose(features, index, points_xy, region_lr)
            points_used = len(points_xy)
        return Proposed(
            proposals,
            image_hw,
            None if whole else region,
            points_used,
            {"decode": time.perf_counter() - t0},
        )

    def finish(self, proposed: Proposed) -> Segmentation:
        """Upsampling and stitching of proposed masks into the index map (no model pass)."""
        cfg, device = self.config, self.model.device
        proposals, image_hw, region = proposed.proposals, proposed.image_hw, proposed.region
        whole, threshold = region is None, cfg.model.mask_threshold
        t1 = time.perf_counter()

        boxes = upsample_in_boxes(proposals.logits, image_hw, threshold)
        t_up = time.perf_counter()
        stitched = stitch_boxes(
            boxes,
            proposals.scores,
            image_hw,
            None if whole else torch.from_numpy(region).to(device),
            overlap_threshold=cfg.stitching.overlap_threshold,
            min_area=cfg.stitching.min_area,
            device=device,
        )
        del boxes
        bboxes = stitched.bboxes
        if stitched.index_map.dtype == torch.uint16:
            index_map = stitched.index_map.numpy()
        else:  # CUDA: only the final map comes back, as 16-bit (int16 bits are uint16's)
            index_map = stitched.index_map.to(torch.int16).cpu().numpy().view(np.uint16)
        scores = proposals.scores.cpu().numpy()
        stability = proposals.stability.cpu().numpy()
        segments = [
            Segment(
                id=i + 1,
                score=round(float(scores[k]), 6),
                stability=round(float(stability[k]), 6),
                area=int(stitched.areas[i]),
                bbox=(int(bboxes[i, 0]), int(bboxes[i, 1]), int(bboxes[i, 2]), int(bboxes[i, 3])),
                point_xy=(float(proposals.points_xy[k, 0]), float(proposals.points_xy[k, 1])),
            )
            for i, k in enumerate(stitched.source)
        ]
        t2 = time.perf_counter()
        return Segmentation(
            index_map=index_map,
            segments=segments,
            region_area=int(image_hw[0] * image_hw[1])
            if region is None
            else int(np.count_nonzero(region)),
            points_used=proposed.points_used,
            timings_s={**proposed.timings_s, "upsample": t_up - t1, "stitch": t2 - t_up},
        )
