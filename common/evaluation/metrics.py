"""Per-image binary segmentation metrics (the figures of the papers' tables)."""

from __future__ import annotations

import torch


def binary_scores(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """Dice, IoU and pixel accuracy of one binary prediction against its ground truth.

    Both inputs are masks of the same shape (any channels; values > 0.5 are
    foreground). An empty prediction of an empty ground truth scores 1 (the
    model was right that there is nothing), as MONAI's metrics do with
    ``ignore_empty=False``.
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    p = pred.detach().reshape(-1) > 0.5
    t = target.detach().reshape(-1) > 0.5
    inter = (p & t).sum().item()
    p_sum, t_sum = p.sum().item(), t.sum().item()
    union = p_sum + t_sum - inter
    dice = 1.0 if p_sum + t_sum == 0 else 2.0 * inter / (p_sum + t_sum)
    iou = 1.0 if union == 0 else inter / union
    accuracy = (p == t).float().mean().item()
    return {"dice": dice, "iou": iou, "accuracy": accuracy}
