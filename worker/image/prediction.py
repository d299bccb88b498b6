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
    def concat(
        parts: list[Proposals],
        hw: tuple[int, int],
        device: torch.device,
        logits: torch.Tensor | None = None,
    ) -> Proposals:
        """The parts in order, as one. `logits`: the parts' logits already side by side (a
        LowResStore's), so they are not copied again."""
        if not parts:
            empty = torch.zeros(0, device=device)
            return Proposals(
                np.zeros((0, 2), np.float32), torch.zeros((0, *hw), device=device), empty, empty
            )
        return Proposals(
            np.concatenate([p.points_xy for p in parts]),
            torch.cat([p.logits for p in parts]) if logits is None else logits,
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


class LowResStore:
    """The kept low-res logits of one image, written once, side by side, in one float32 buffer
    (instead of a copy per decoder round and a concatenation of them all at the end).

    capacity: the prompts the image may decode (the buffer grows if more come); hw: (h, w).
    """

    def __init__(self, capacity: int, hw: tuple[int, int]):
        self._buffer = np.empty((max(capacity, 1), *hw), np.float32)  # pages touched when used
        self.count = 0

    def reserve(self, n: int) -> np.ndarray:
        """(n, h, w) float32 room after the kept logits (kept only once `commit`ted)."""
        if self.count + n > len(self._buffer):
            grown = np.empty((2 * (self.count + n), *self._buffer.shape[1:]), np.float32)
            grown[: self.count] = self._buffer[: self.count]
            self._buffer = grown
        return self._buffer[self.count : self.count + n]

    def commit(self, n: int) -> None:
        self.count += n

    def logits(self) -> torch.Tensor:
        """(count, h, w) float32: every committed mask, in order (a view, no copy)."""
        return torch.from_numpy(self._buffer[: self.count])


def propose_kept(
    model,
    features,
    index: int,
    points_xy: np.ndarray,
    region_lr: torch.Tensor | None,
    *,
    multimask: bool,
    batch: int,
    threshold: float,
    min_score: float,
    min_stability: float,
    store: LowResStore | None = None,
) -> tuple[Proposals, np.ndarray]:
    """`select(propose(...))` in one pass, and the kept masks a coverage sampler accepts.

    region_lr: (h, w) bool on the model's device, None for the whole image. Returns the kept
    Proposals (the same as `select(propose(...), region_lr, ...)`, bit for bit) and their
    (k, h, w) bool numpy masks at low resolution: logits > threshold, inside the region.

    On the CPU the decoder's answers are read as numpy arrays and every mask is thresholded
    once: a few numpy passes per round instead of ~15 small torch ops, which cost more than the
    work in them (and more again with two OpenMP threads on a busy 2-core machine). With a
    `store` (CPU only) the kept logits are written straight into it.
    """
    if model.device.type != "cpu":
        region = region_lr if region_lr is not None else torch.ones((), dtype=torch.bool)
        kept = select(
            propose(
                model,
                features,
                index,
                points_xy,
                multimask=multimask,
                batch=batch,
                threshold=threshold,
            ),
            region.to(model.device),
            threshold=threshold,
            min_score=min_score,
            min_stability=min_stability,
        )
        return kept, ((kept.logits > threshold) & region.to(model.device)).cpu().numpy()
    region_flat = None if region_lr is None else region_lr.numpy().reshape(-1)
    f32 = np.float32
    cut, inner_cut, outer_cut = (
        f32(threshold),
        f32(threshold + STABILITY_OFFSET),
        f32(threshold - STABILITY_OFFSET),
    )
    points, logits_kept, scores, stability, hot_kept = [], [], [], [], []
    for start in range(0, len(points_xy), batch):
        chunk = points_xy[start : start + batch]
        logits, iou = model.decode(features, index, torch.from_numpy(chunk), multimask=multimask)
        best = iou.argmax(dim=1).numpy()  # the first of equal maxima, as `propose`
        answers = logits.float().numpy()
        n = len(chunk)
        shape = (n, *answers.shape[2:])
        chosen = store.reserve(n) if store is not None else np.empty(shape, np.float32)
        for i in range(n):
            np.copyto(chosen[i], answers[i, best[i]])
        chosen_iou = iou.float().numpy()[np.arange(n), best]
        flat = chosen.reshape(n, -1)
        hot = flat > cut  # (n, h*w): the masks, once
        if region_flat is not None:
            hot &= region_flat
        stab = np.zeros(n, np.float32)
        keep = np.zeros(n, bool)
        for i in range(n):
            inner = np.count_nonzero(flat[i] > inner_cut)
            outer = np.count_nonzero(flat[i] > outer_cut)
            stab[i] = f32(inner) / f32(outer) if outer > 0 else f32(0.0)
            keep[i] = hot[i].any()
        keep &= (chosen_iou >= f32(min_score)) & (stab >= f32(min_stability))
        count = int(np.count_nonzero(keep))
        if count < n:  # the kept ones first, in order (a copy only when some are dropped)
            picked = np.flatnonzero(keep)
            chosen[:count] = chosen[picked]
            chunk, chosen_iou, stab, hot = (
                chunk[picked],
                chosen_iou[picked],
                stab[picked],
                hot[picked],
            )
            chosen = chosen[:count]
        if store is not None:
            store.commit(count)
        if count == 0:
            continue
        points.append(chunk)
        logits_kept.append(chosen)
        scores.append(chosen_iou)
        stability.append(stab)
        hot_kept.append(hot.reshape(-1, *chosen.shape[1:]))
    hw = tuple(model.low_res_hw(features.image_hw[index]))
    if not points:
        empty = torch.zeros(0)
        kept = Proposals(np.zeros((0, 2), np.float32), torch.zeros((0, *hw)), empty, empty)
        return kept, np.zeros((0, *hw), bool)
    if len(points) == 1:  # one decoder call per round: no concatenation
        kept = Proposals(
            points[0].astype(np.float32, copy=False),
            torch.from_numpy(logits_kept[0]),
            torch.from_numpy(scores[0]),
            torch.from_numpy(stability[0]),
        )
        return kept, hot_kept[0]
    kept = Proposals(
        np.concatenate(points).astype(np.float32, copy=False),
        torch.from_numpy(np.concatenate(logits_kept)),
        torch.from_numpy(np.concatenate(scores)),
        torch.from_numpy(np.concatenate(stability)),
    )
    return kept, np.concatenate(hot_kept)


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
