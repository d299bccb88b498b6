"""From point prompts to one low-resolution mask per point, and from kept masks to full size.

Masks stay at the decoder's resolution (S/4 square, float32 logits) while they are scored,
thresholded and filtered; only the masks that survive are upsampled to the image size, in
chunks, straight to bool. Nothing here holds 3 x N full-size float masks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

STABILITY_OFFSET = 1.0  # logit offset of SAM's stability score


@dataclass
class Proposals:
    """One candidate mask per point prompt.

    points_xy: (N, 2) float32 xy pixels; logits: (N, h, w) float32 low-res mask logits;
    scores: (N,) float32 predicted IoU; stability: (N,) float32 (IoU of the mask thresholded at
    +-STABILITY_OFFSET). Tensors live on the model's device.
    """

    points_xy: np.ndarray
    logits: torch.Tensor
    scores: torch.Tensor
    stability: torch.Tensor

    def __len__(self) -> int:
        return len(self.points_xy)

    def take(self, keep: torch.Tensor) -> Proposals:
        """The proposals selected by a (N,) bool mask or an index tensor."""
        keep_np = keep.cpu().numpy()
        return Proposals(
            self.points_xy[keep_np], self.logits[keep], self.scores[keep], self.stability[keep]
        )

    @staticmethod
    def concat(parts: list[Proposals], hw: tuple[int, int], device: torch.device) -> Proposals:
        if not parts:
            empty = torch.zeros(0, device=device)
            return Proposals(
                np.zeros((0, 2), np.float32), torch.zeros((0, *hw), device=device), empty, empty
            )
        return Proposals(
            np.concatenate([p.points_xy for p in parts]),
            torch.cat([p.logits for p in parts]),
            torch.cat([p.scores for p in parts]),
            torch.cat([p.stability for p in parts]),
        )


def stability_score(
    logits: torch.Tensor, threshold: float, offset: float = STABILITY_OFFSET
) -> torch.Tensor:
    """(N, h, w) logits → (N,) IoU between the masks thresholded at threshold +- offset."""
    flat = logits.flatten(1)
    inner = (flat > threshold + offset).sum(1, dtype=torch.int32)
    outer = (flat > threshold - offset).sum(1, dtype=torch.int32)
    return torch.where(
        outer > 0,
        inner.float() / outer.clamp(min=1).float(),
        torch.zeros_like(inner, dtype=torch.float32),
    )


def propose(
    model,
    features,
    index: int,
    points_xy: np.ndarray,
    *,
    multimask: bool,
    batch: int,
    threshold: float,
) -> Proposals:
    """Decode every point of image `index` and keep one mask per point.

    With multimask output the best of SAM2's three masks by predicted IoU is kept, otherwise its
    single-mask output. Prompts go through the decoder `batch` at a time (to bound memory).
    """
    parts = []
    for start in range(0, len(points_xy), batch):
        chunk = points_xy[start : start + batch]
        logits, iou = model.decode(features, index, torch.from_numpy(chunk), multimask=multimask)
        best = iou.argmax(dim=1)
        rows = torch.arange(len(chunk), device=logits.device)
        logits, iou = logits[rows, best], iou[rows, best]
        parts.append(Proposals(chunk, logits, iou, stability_score(logits, threshold)))
    return Proposals.concat(parts, model.low_res_hw(features.image_hw[index]), model.device)


def select(
    proposals: Proposals,
    region_lr: torch.Tensor,
    *,
    threshold: float,
    min_score: float,
    min_stability: float,
) -> Proposals:
    """Drop masks that are empty inside the region (at low resolution) or score too low.

    region_lr: (h, w) bool on the proposals' device.
    """
    if len(proposals) == 0:
        return proposals
    nonempty = ((proposals.logits > threshold) & region_lr).flatten(1).any(dim=1)
    keep = nonempty & (proposals.scores >= min_score) & (proposals.stability >= min_stability)
    return proposals.take(keep)


def upsample_masks(
    logits: torch.Tensor, image_hw: tuple[int, int], threshold: float, chunk: int = 8
) -> torch.Tensor:
    """(K, h, w) low-res logits → (K, H, W) bool masks at the image size.

    Bilinear, as SAM2's own post-processing; at most `chunk` full-size float masks exist at once.
    """
    masks = torch.empty((logits.shape[0], *image_hw), dtype=torch.bool, device=logits.device)
    for start in range(0, logits.shape[0], chunk):
        part = logits[start : start + chunk, None]
        up = F.interpolate(part, size=image_hw, mode="bilinear", align_corners=False)
        torch.gt(up[:, 0], threshold, out=masks[start : start + chunk])
    return masks
