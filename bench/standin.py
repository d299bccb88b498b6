"""Zero-cost stand-ins for SamModel, so a benchmark or a test measures segd's own code.

`OracleModel` has SamModel's interface (`encode`, `decode`, `low_res_hw`, `preprocess`, `device`,
`info`, `image_size`, `decoder_batch`) and answers each point prompt with the ground-truth
instance under it, as SAM2 would shape it: (N, 3, S/4, S/4) float32 logits over the whole image
stretched to the model's square, soft at the edges (each low-res cell's logit follows the
fraction of the cell the instance covers). `encode` runs segd's real preprocessing and nothing
else; `decode_s` counts the seconds its decoder pass took (the bench leaves them out of segd's
own work, like any network pass). `SleepingOracle` adds a fixed wall time to each pass without using the CPU (time.sleep), as
a GPU would: it measures how much of segd's own work a worker hides behind the model.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from worker.models.preprocess import preprocess_images
from worker.models.sam import ModelInfo


def voronoi_instances(hw: tuple[int, int], cells: int, seed: int = 0) -> np.ndarray:
    """(H, W) int32 instance map tiling the image with `cells` Voronoi cells of varied size."""
    rng = np.random.default_rng(seed)
    small = (max(2, hw[0] // 8), max(2, hw[1] // 8))  # draw small, then scale: fast at 12 MP
    sites = rng.uniform(0, 1, (cells, 2)) ** 1.4 * small
    yy, xx = np.mgrid[: small[0], : small[1]].astype(np.float32)
    dist = (yy[None] - sites[:, 0, None, None]) ** 2 + (xx[None] - sites[:, 1, None, None]) ** 2
    labels = (dist.argmin(0) + 1).astype(np.uint16)
    full = cv2.resize(labels, (hw[1], hw[0]), interpolation=cv2.INTER_NEAREST)
    return full.astype(np.int32)


@dataclass
class OracleFeatures:
    """What OracleModel.encode returns: the preprocessed batch (kept so it is not optimised
    away) and the original (H, W) of each image."""

    batch: torch.Tensor
    image_hw: list[tuple[int, int]]


class OracleModel:
    """A SamModel stand-in answering with ground-truth instances (see the module docstring)."""

    def __init__(self, instances: np.ndarray, image_size: int = 1024, decoder_batch: int = 64):
        self.device = torch.device("cpu")
        self.dtype = torch.float32
        self.image_size = image_size
        self.decoder_batch = decoder_batch
        self.instances = instances
        # Seconds spent answering (the stand-in's decoder pass, a table look-up and a copy of
        # the answers): the bench takes it out of segd's own work, as a network pass would be.
        self.decode_s = 0.0
        side = image_size // 4
        count = int(instances.max())
        # Per id, the fraction of each low-res cell it covers → logits in [-8, 8].
        onehot = np.zeros((count + 1, side, side), np.float32)
        for k in range(1, count + 1):
            mask = (instances == k).astype(np.float32)
            onehot[k] = cv2.resize(mask, (side, side), interpolation=cv2.INTER_AREA)
        self.low_res = torch.from_numpy((onehot - 0.5) * 16.0)
        self.low_res[0] = -8.0  # background answers an empty mask
        areas = np.bincount(instances.ravel(), minlength=count + 1).astype(np.float32)
        self.scores = torch.from_numpy(np.clip(areas / instances.size * 4 + 0.5, 0.5, 0.99))
        self.info = ModelInfo(
            name="oracle",
            version="oracle",
            size="none",
            checkpoint="none",
            checkpoint_sha256=None,
            random_weights=False,
            image_size=image_size,
            device="cpu",
            dtype="float32",
            model_version="base",
        )

    def low_res_hw(self, image_hw: tuple[int, int]) -> tuple[int, int]:
        side = self.image_size // 4
        return (side, side)

    def preprocess(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        return preprocess_images(images, self.image_size, self.device)

    def encode(self, images: Sequence[np.ndarray], batch=None) -> OracleFeatures:
        if batch is None:
            batch = self.preprocess(images)
        return OracleFeatures(batch, [tuple(image.shape[:2]) for image in images])

    def decode(self, features, index: int, points_xy: torch.Tensor, multimask: bool = True):
        """(N, 2) xy → (N, M, S/4, S/4) float32 logits and (N, M) float32 scores."""
        start = time.perf_counter()
        try:
            return self._answer(features, index, points_xy, multimask)
        finally:
            self.decode_s += time.perf_counter() - start

    def _answer(self, features, index: int, points_xy: torch.Tensor, multimask: bool):
        height, width = features.image_hw[index]
        xy = points_xy.long()
        xs = xy[:, 0].clamp(0, width - 1).numpy()
        ys = xy[:, 1].clamp(0, height - 1).numpy()
        ids = torch.from_numpy(self.instances[ys, xs].astype(np.int64))
        logits = torch.index_select(self.low_res, 0, ids)[:, None]  # a row copy per prompt
        scores = self.scores[ids][:, None]
        if multimask:  # the best of three is the instance; the other two score lower
            logits = logits.expand(-1, 3, -1, -1)
            scores = scores * torch.tensor([[1.0, 0.5, 0.25]])
        return logits, scores


class SleepingOracle(OracleModel):
    """OracleModel whose encoder and decoder passes together take `model_s` seconds of wall
    time per image without using the CPU (time.sleep), as a GPU would."""

    def __init__(self, instances: np.ndarray, model_s: float = 0.1, **kwargs):
        super().__init__(instances, **kwargs)
        self.model_s = model_s

    def encode(self, images: Sequence[np.ndarray], batch=None) -> OracleFeatures:
        features = super().encode(images, batch)
        time.sleep(self.model_s * 0.8 * len(images))
        return features

    def decode(self, features, index: int, points_xy: torch.Tensor, multimask: bool = True):
        time.sleep(self.model_s * 0.2 * len(points_xy) / 64)  # 64 prompts per image, in batches
        return super().decode(features, index, points_xy, multimask)
