"""The fine-tuning loss: all three mask outputs scored against the instance, the loss taken on the
best one (20 x focal + dice, as SAM2's own trainer), plus an L1 loss on the IoU head."""

from __future__ import annotations

import torch
import torch.nn.functional as F

FOCAL_WEIGHT, DICE_WEIGHT, IOU_WEIGHT = 20.0, 1.0, 1.0  # SAM2's fine-tuning weights


def mask_losses(
    logits: torch.Tensor, iou_pred: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss of K instances with M mask outputs each.

    logits (K, M, S, S) float32; iou_pred (K, M) float32; targets (K, S, S) float32 in {0, 1}.
    Returns (mask loss on the best of the M outputs + IoU-head loss, summed over K; and the
    IoU (K,) of the best output, detached).
    """
    target = targets[:, None].expand_as(logits)
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = prob * target + (1 - prob) * (1 - target)
    alpha_t = 0.25 * target + 0.75 * (1 - target)
    focal = (alpha_t * ce * (1 - p_t) ** 2).flatten(2).mean(-1)  # (K, M)
    inter = (prob * target).flatten(2).sum(-1)
    dice = 1 - (2 * inter + 1) / (prob.flatten(2).sum(-1) + target.flatten(2).sum(-1) + 1)
    combined = FOCAL_WEIGHT * focal + DICE_WEIGHT * dice  # (K, M)
    best = combined.argmin(dim=1)
    rows = torch.arange(len(best), device=logits.device)
    with torch.no_grad():
        hard = logits > 0
        hard_inter = (hard & target.bool()).flatten(2).sum(-1).float()
        hard_union = (hard | target.bool()).flatten(2).sum(-1).float()
        actual_iou = hard_inter / hard_union.clamp(min=1)  # (K, M)
    iou_loss = F.l1_loss(iou_pred, actual_iou, reduction="none").mean(-1)  # every output
    loss = (combined[rows, best] + IOU_WEIGHT * iou_loss).sum()
    return loss, actual_iou[rows, best]
