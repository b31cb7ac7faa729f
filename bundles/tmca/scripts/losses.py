"""TMCA training loss: Dice + CE on the logits plus the multi-level alignment loss."""

from __future__ import annotations

import torch
from monai.losses import DiceCELoss
from torch import nn

from transforms.base.describe import configurable
from common.networks.contrastive import pairwise_dice, soft_contrastive_loss


@configurable
class TMCALoss(nn.Module):
    """``L = Dice + CE + alignment_weight * mean_levels(L_TSDM)``.

    Args:
        alignment_weight: weight of the alignment term (0 disables it).
        target_informed: TSDM on (targets from the Dice between ground-truth
            masks, softmax with τ1) or off (one-to-one CLIP targets), Table 2.
        target_temperature: τ1.
        logit_temperature: τ2.
        sigmoid: single-channel logits with sigmoid (True) or multi-channel softmax.

    Forward: ``outputs`` is the network's training output (a dict with ``pred``
    and ``alignment``, or a plain logits tensor), ``target`` the (B, 1, H, W)
    mask. Returns a dict with ``loss`` (the total) and its terms ``seg`` and ``align``.
    """

    def __init__(
        self,
        alignment_weight: float = 1.0,
        target_informed: bool = True,
        target_temperature: float = 0.1,
        logit_temperature: float = 0.07,
        sigmoid: bool = True,
    ):
        super().__init__()
        self.alignment_weight = alignment_weight
        self.target_informed = target_informed
        self.target_temperature = target_temperature
        self.logit_temperature = logit_temperature
        self.seg_loss = DiceCELoss(sigmoid=sigmoid, softmax=not sigmoid, to_onehot_y=not sigmoid)

    def alignment_loss(self, alignment: dict, target: torch.Tensor) -> torch.Tensor:
        if not alignment:
            return target.new_zeros(())
        foreground = target if target.shape[1] == 1 else target.argmax(dim=1, keepdim=True) > 0
        similarity = pairwise_dice(foreground.float()) if self.target_informed else None
        losses = [
            soft_contrastive_loss(img, txt, similarity, self.target_temperature, self.logit_temperature)
            for img, txt in alignment.values()
        ]
        return torch.stack(losses).mean()

    def forward(self, outputs, target: torch.Tensor) -> dict[str, torch.Tensor]:
        if isinstance(outputs, dict):
            logits, alignment = outputs["pred"], outputs.get("alignment", {})
        else:
            logits, alignment = outputs, {}
        target = target.float()
        seg = self.seg_loss(logits.float(), target)
        align = self.alignment_loss(alignment, target) if self.alignment_weight else logits.new_zeros(())
        return {"loss": seg + self.alignment_weight * align, "seg": seg.detach(), "align": align.detach()}
