"""LTSE training loss (Sec. 2.3, eqs. 7-8): text generation CE + BCE + Dice on the [SEG] masks.

    L = w_ce * CE(y_txt_hat, y_txt) + w_bce * BCE(y_mask_hat, y_mask) + w_dice * DICE(y_mask_hat, y_mask)

CE is the auto-regressive next-token cross-entropy over the answer tokens (labels -100 elsewhere),
averaged over those tokens. BCE is the per-pixel binary cross-entropy averaged over each mask's
pixels, Dice the soft Dice loss ``1 - (2 sum(p t) + s) / (sum p + sum t + s)`` of each mask;
both are averaged over all [SEG] masks of the batch. [REJ] slots have no mask, so they add
nothing here (their token is still learned by CE). Eqs. 7-8 write unit weights; the defaults are
LISA/GSVA's 1.0 / 2.0 / 0.5 (DESIGN.md); set ``bce_weight=1, dice_weight=1`` for the equations as printed.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from transforms.base.describe import configurable
from common.networks.llava import IGNORE_INDEX


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token CE: position i predicts label i + 1; (B, L, V) logits, (B, L) labels with -100 ignored."""
    shifted = labels[:, 1:].reshape(-1)
    if not (shifted != IGNORE_INDEX).any():
        return logits.sum() * 0.0  # no answer tokens: zero, still attached to the graph
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), shifted, ignore_index=IGNORE_INDEX)


def mask_bce_dice(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, H, W) logits and {0, 1} targets -> per-mask BCE (N,) and soft Dice loss (N,)."""
    logits, target = logits.float().flatten(1), target.float().flatten(1)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(dim=1)
    probs = logits.sigmoid()
    dice = 1.0 - (2.0 * (probs * target).sum(1) + smooth) / (probs.sum(1) + target.sum(1) + smooth)
    return bce, dice


@configurable
class LTSELoss(nn.Module):
    """``ce_weight * CE + bce_weight * BCE + dice_weight * Dice``; returns ``loss`` and the detached terms.

    Args:
        ce_weight, bce_weight, dice_weight: term weights (module doc).
        dice_smooth: s in the Dice loss (an empty target with an empty prediction costs 0).

    ``forward(outputs, target_masks)``: ``outputs`` from ``LTSE.forward`` (``lm_loss`` and ``masks``,
    a list over samples of (n_seg, H, W) logits); ``target_masks`` the matching list of (n_seg, H, W)
    ground truths (``common.data.seg_answers.seg_target_masks``). Returns ``{"loss", "ce", "bce", "dice", "num_masks"}``.
    """

    def __init__(self, ce_weight: float = 1.0, bce_weight: float = 2.0, dice_weight: float = 0.5,
                 dice_smooth: float = 1.0):
        super().__init__()
        self.ce_weight = ce_weight
        self.bce_weight = bce_weight
        self.dice_weight = dice_weight
        self.dice_smooth = dice_smooth

    def forward(self, outputs: Mapping, target_masks: Sequence[torch.Tensor] | Mapping) -> dict[str, torch.Tensor]:
        if "lm_loss" not in outputs:
            raise ValueError("LTSELoss needs the network's lm_loss: call LTSE.forward with the answer's labels")
        ce = outputs["lm_loss"]
        masks = outputs["masks"]
        if isinstance(target_masks, Mapping):  # LTSEPrepareBatch's targets
            target_masks = target_masks["seg_masks"]
        if len(masks) != len(target_masks):
            raise ValueError(f"{len(masks)} samples of predicted masks but {len(target_masks)} of targets")
        bces, dices = [], []
        for b, (pred, target) in enumerate(zip(masks, target_masks)):
            if pred.shape[0] != target.shape[0]:
                raise ValueError(f"sample {b}: {pred.shape[0]} [SEG] tokens in the answer but {target.shape[0]} "
                                 "target masks; each [SEG] needs one mask (common.data.seg_answers.seg_target_masks)")
            if pred.shape[0] == 0:
                continue
            if pred.shape[-2:] != target.shape[-2:]:
                raise ValueError(f"sample {b}: masks of size {tuple(pred.shape[-2:])} but targets of size "
                                 f"{tuple(target.shape[-2:])}; pass the targets' size as original_sizes")
            bce, dice = mask_bce_dice(pred, target.to(pred.device), self.dice_smooth)
            bces.append(bce)
            dices.append(dice)
        if bces:
            bce, dice = torch.cat(bces).mean(), torch.cat(dices).mean()
        else:  # no [SEG] in the batch: text loss only
            bce = dice = ce.new_zeros(())
        total = self.ce_weight * ce + self.bce_weight * bce + self.dice_weight * dice
        num_masks = torch.tensor(float(sum(m.shape[0] for m in masks)))
        return {"loss": total, "ce": ce.detach(), "bce": bce.detach(), "dice": dice.detach(), "num_masks": num_masks}
