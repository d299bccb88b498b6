"""Validation mIoU with the service's own protocol (the `Segmenter`, its sampling, prediction and
stitching), each ground-truth instance matched to its best predicted segment."""

from __future__ import annotations

import numpy as np

from common.config import Config
from worker.image.segmenter import Segmenter
from worker.models.sam import SamModel
from worker.training.datasets import Sample


def best_ious(predicted: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """IoU of each ground-truth instance with its best-matching predicted segment.

    predicted (H, W) uint16 segment ids, truth (H, W) int32 instance ids (0 = background in
    both). Returns (N,) float64 for the N instances of `truth`.
    """
    gt_ids, gt_index = np.unique(truth, return_inverse=True)
    pr_ids, pr_index = np.unique(predicted, return_inverse=True)
    table = np.bincount(
        gt_index.ravel() * len(pr_ids) + pr_index.ravel(), minlength=len(gt_ids) * len(pr_ids)
    ).reshape(len(gt_ids), len(pr_ids))
    gt_rows = gt_ids > 0
    pr_cols = pr_ids > 0
    if not gt_rows.any():
        return np.zeros(0)
    if not pr_cols.any():
        return np.zeros(int(gt_rows.sum()))
    inter = table[gt_rows][:, pr_cols].astype(np.float64)
    union = table[gt_rows].sum(1)[:, None] + table[:, pr_cols].sum(0)[None, :] - inter
    return (inter / np.maximum(union, 1)).max(axis=1)


def evaluate(model: SamModel, config: Config, samples: list[Sample], reader) -> float:
    """Validation mIoU: the service's Segmenter on each image, mean best IoU over instances."""
    segmenter = Segmenter(model, config)
    ious = []
    was_training = model.sam.training
    model.sam.eval()
    try:
        for sample in samples:
            image, label = reader(sample)
            result = segmenter.segment(image)
            ious.append(best_ious(result.index_map, label))
    finally:
        model.sam.train(was_training)
    values = np.concatenate(ious) if ious else np.zeros(0)
    return float(values.mean()) if len(values) else 0.0
