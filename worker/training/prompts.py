"""Training prompts: for each image of a batch, up to K instances, each prompted by random
positive points (optionally negative points and a jittered box), in model-input pixels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from common.config import TrainingConfig

MIN_INSTANCE_PIXELS = 4  # instances smaller than this at model resolution are not prompted


@dataclass
class Prompts:
    """Prompts for the K instances of one image, in model-input pixels (0..S).

    coords (K, P, 2) float32 xy; labels (K, P) int32 (1 positive, 0 negative, 2/3 box corners,
    -1 padding); targets (K, S, S) float32 in {0, 1}.
    """

    coords: torch.Tensor
    labels: torch.Tensor
    targets: torch.Tensor


def instance_targets(label: np.ndarray, size: int) -> tuple[torch.Tensor, np.ndarray]:
    """(H, W) int32 instance ids → ((S, S) int32 ids at model resolution, usable ids (N,))."""
    resized = F.interpolate(
        torch.from_numpy(label.astype(np.float32))[None, None], size=(size, size), mode="nearest"
    )[0, 0].to(torch.int32)
    ids, counts = torch.unique(resized, return_counts=True)
    keep = (ids > 0) & (counts >= MIN_INSTANCE_PIXELS)
    return resized, ids[keep].numpy()


def sample_prompts(
    label_s: torch.Tensor, ids: np.ndarray, settings: TrainingConfig, rng: np.random.Generator
) -> Prompts:
    """Prompts for up to `instances_per_image` random instances of one (S, S) label map."""
    count = min(len(ids), settings.instances_per_image)
    chosen = rng.choice(ids, size=count, replace=False)
    size = label_s.shape[-1]
    positives, negatives = settings.points_per_instance, settings.negative_points
    use_box = settings.box_probability > 0
    width = positives + negatives + (2 if use_box else 0)
    coords = np.zeros((count, width, 2), np.float32)
    labels = np.full((count, width), -1, np.int32)
    targets = torch.stack([label_s == int(i) for i in chosen]).float()
    for k in range(count):
        mask = targets[k].bool().numpy()
        ys, xs = np.nonzero(mask)
        pick = rng.integers(0, len(xs), size=positives)
        coords[k, :positives] = np.stack([xs[pick], ys[pick]], axis=1)
        labels[k, :positives] = 1
        if negatives:
            ny, nx = np.nonzero(~mask)
            if len(nx):
                pick = rng.integers(0, len(nx), size=negatives)
                coords[k, positives : positives + negatives] = np.stack([nx[pick], ny[pick]], 1)
                labels[k, positives : positives + negatives] = 0
        if use_box and rng.random() < settings.box_probability:
            x0, x1, y0, y1 = xs.min(), xs.max(), ys.min(), ys.max()
            jitter = 0.1 * np.array([x1 - x0, y1 - y0, x1 - x0, y1 - y0]) + 1
            box = np.array([x0, y0, x1, y1]) + rng.normal(0, 1, 4) * jitter
            box = np.clip(box, 0, size - 1)
            coords[k, -2:] = box.reshape(2, 2)
            labels[k, -2:] = (2, 3)
    return Prompts(torch.from_numpy(coords), torch.from_numpy(labels), targets)
