"""The seed tutorial's inference flow, kept faithfully (bugs included) as the baseline to beat.

From sagieppel/fine-tune-train_segment_anything_2_in_60_lines_of_code (TEST_Net.py): predict 3
full-size masks per point with SAM2ImagePredictor, keep the *first* of the three (not the best),
sort by its score, and stitch with a Python loop over full-size numpy arrays. Only two things
differ, so that comparisons are fair: the points are passed in (the seed drew them unseeded and
with replacement), and the map is int32 (the seed's uint8 map overflows above 255 masks).
"""

from __future__ import annotations

import numpy as np
import torch


def seed_stitch(masks: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """The seed's stitching: (N, H, W) bool masks, (N,) scores → (H, W) int32 map, ids = rank + 1."""
    sorted_masks = masks[np.argsort(scores)][::-1].astype(bool)
    seg_map = np.zeros(sorted_masks.shape[1:], dtype=np.int32)
    occupancy = np.zeros(sorted_masks.shape[1:], dtype=bool)
    for i in range(sorted_masks.shape[0]):
        mask = sorted_masks[i].copy()
        if (mask * occupancy).sum() / mask.sum() > 0.15:
            continue
        mask[occupancy] = 0
        seg_map[mask] = i + 1
        occupancy[mask] = 1
    return seg_map


def seed_segment(predictor, image: np.ndarray, points_xy: np.ndarray, autocast) -> np.ndarray:
    """Run the seed's flow on an (H, W, 3) uint8 image with (N, 2) xy points → (H, W) int32 map."""
    with torch.no_grad(), autocast:
        predictor.set_image(image)
        masks, scores, _ = predictor.predict(
            point_coords=points_xy[:, None, :], point_labels=np.ones([len(points_xy), 1])
        )
    masks = masks[:, 0].astype(bool)
    return seed_stitch(masks, scores[:, 0])
