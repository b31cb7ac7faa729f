"""MONCH's segmentation loss: binary cross-entropy per cell class (paper eq. 9)."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from transforms.base.describe import configurable


def one_hot_labels(label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, 1, H, W) or (B, H, W) class indices -> (B, K, H, W) float one-hot."""
    if label.ndim == 4:
        if label.shape[1] != 1:
            raise ValueError(f"label must hold class indices (B, 1, H, W), got shape {tuple(label.shape)}")
        label = label[:, 0]
    label = label.long()
    if label.min() < 0 or label.max() >= num_classes:
        raise ValueError(f"label values must be in 0..{num_classes - 1}, got {int(label.min())}..{int(label.max())}")
    return F.one_hot(label, num_classes).permute(0, 3, 1, 2).float()


@configurable
class MONCHLoss(nn.Module):
    """Eq. 9: mean over classes n and pixels i of ``BCE(sigmoid(logit_in), y_in)``, one-hot targets.

    Args:
        include_background: also supervise class 0's map (the paper's N+1 prompts include background).
        class_weights: optional weight per class (length K) for the per-class BCE terms.
        dice_weight: add ``dice_weight`` x soft Dice over the classes (0 = the paper's BCE only).

    Call: ``loss(outputs, label)``; ``outputs`` (B, K, H, W) logits or a dict with ``pred``,
    ``label`` (B, 1, H, W) class indices. Returns a dict ``{"loss", "bce"[, "dice"]}``.
    """

    def __init__(self, include_background: bool = True, class_weights: Sequence[float] | None = None,
                 dice_weight: float = 0.0):
        super().__init__()
        self.include_background = include_background
        self.register_buffer("class_weights", None if class_weights is None
                             else torch.as_tensor([float(w) for w in class_weights]))
        self.dice_weight = float(dice_weight)

    def forward(self, outputs, label: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = outputs["pred"] if isinstance(outputs, dict) else outputs
        target = one_hot_labels(label.to(logits.device), logits.shape[1])
        logits = logits.float()
        per_class = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(dim=(0, 2, 3))  # (K,)
        if self.class_weights is not None:
            if self.class_weights.numel() != per_class.numel():
                raise ValueError(f"class_weights has {self.class_weights.numel()} values for {per_class.numel()} classes")
            per_class = per_class * self.class_weights.to(per_class)
        start = 0 if self.include_background else 1
        bce = per_class[start:].mean()
        terms = {"loss": bce, "bce": bce}
        if self.dice_weight > 0:
            prob = torch.sigmoid(logits)[:, start:]
            tgt = target[:, start:]
            inter = (prob * tgt).sum(dim=(0, 2, 3))
            dice = 1 - (2 * inter + 1e-5) / (prob.sum(dim=(0, 2, 3)) + tgt.sum(dim=(0, 2, 3)) + 1e-5)
            terms["dice"] = dice.mean()
            terms["loss"] = bce + self.dice_weight * terms["dice"]
        return terms
