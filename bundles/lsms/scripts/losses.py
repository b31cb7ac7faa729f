"""LSMS training loss (Sec. III.E): ``L = alpha * L_Con + L_Seg``.

``L_Seg = focal(M, M_gt) + Dice_W(M, M_gt)`` (eq. 13), where the Dice term weighs
each pixel by ``W = lambda`` on the boundary band ``E = dilate(gt) - erode(gt)``
and 1 elsewhere.

``L_Con`` (eq. 14) pulls the decoder features of lesion pixels towards the
projected mean text feature and away from the features of background pixels:
for each positive pixel p_i,

    prob_i = exp(p_i.L/tau) / (exp(p_i.L/tau) + sum_j exp(p_i.n_j/tau))

Eq. 14 taken literally, ``-mean_i prob_i`` (here ``1 - mean_i prob_i``: same gradient,
never negative in the logs, ``use_log=False``), gives almost no gradient: with hundreds
of negatives per lesion pixel and non-negative (post-ReLU) decoder features, ``prob_i``
starts near 1e-4 and so does its gradient (the term sat at 0.9999 with feature gradients
near 1e-7 in training). The default is the InfoNCE form ``-mean_i log prob_i``
(``use_log=True``), whose gradient is ``1 - prob`` times the similarity gradient: the same
optimum, a gradient that actually moves the features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import FocalLoss
from torch import nn

from transforms.base.describe import configurable


def boundary_band(mask: torch.Tensor, kernel_size: int = 5) -> torch.Tensor:
    """``dilate(mask) - erode(mask)`` with a square ``kernel_size`` structuring element; (B, 1, H, W) in {0, 1}.

    Outside the image counts as neither object nor background, so an object
    touching the border has no band along the border.
    """
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"boundary kernel_size must be odd and positive, got {kernel_size}")
    mask = (mask > 0.5).float()
    pad = kernel_size // 2
    dilated = F.max_pool2d(mask, kernel_size, stride=1, padding=pad)
    eroded = -F.max_pool2d(-mask, kernel_size, stride=1, padding=pad)
    return dilated - eroded


def boundary_weights(mask: torch.Tensor, weight: float = 1.2, kernel_size: int = 5) -> torch.Tensor:
    """``W = weight * E + (1 - E)`` (eq. 13)."""
    band = boundary_band(mask, kernel_size)
    return weight * band + (1.0 - band)


def weighted_dice_loss(probs: torch.Tensor, target: torch.Tensor, weights: torch.Tensor,
                       smooth: float = 1e-5) -> torch.Tensor:
    """Per-image soft Dice loss with per-pixel weights, averaged over the batch: (B, 1, H, W) inputs."""
    dims = tuple(range(1, probs.ndim))
    intersection = (weights * probs * target).sum(dims)
    total = (weights * probs).sum(dims) + (weights * target).sum(dims)
    return (1.0 - (2.0 * intersection + smooth) / (total + smooth)).mean()


def pixel_text_contrastive_loss(
    pixel_features: torch.Tensor,
    text_feature: torch.Tensor,
    target: torch.Tensor,
    temperature: float = 0.1,
    max_pixels: int | None = 1024,
    normalize: bool = True,
    use_log: bool = True,
) -> torch.Tensor:
    """Eq. 14 over a batch.

    Args:
        pixel_features: (B, C, h, w) decoder features.
        text_feature: (B, C) projected mean text feature L_avg.
        target: (B, 1, H, W) ground truth; reduced to (h, w) by area averaging,
            a feature pixel is positive when more than half of it is lesion.
        temperature: tau.
        max_pixels: at most this many positive and this many negative pixels per
            image (random subset); None uses all.
        normalize: compare L2-normalised features (cosine similarity).
        use_log: InfoNCE form (default) instead of eq. 14's probability.

    Images without positive or without negative pixels do not contribute; a
    batch with none gives 0 (still attached to the graph).
    """
    b, c, h, w = pixel_features.shape
    feats = pixel_features.float()
    text = text_feature.float()
    if normalize:
        feats = F.normalize(feats, dim=1)
        text = F.normalize(text, dim=-1)
    positive = F.adaptive_avg_pool2d(target.float(), (h, w)).reshape(b, h * w) > 0.5
    feats = feats.reshape(b, c, h * w)
    losses = []
    for i in range(b):
        pos, neg = feats[i][:, positive[i]], feats[i][:, ~positive[i]]  # (C, P), (C, N)
        if pos.shape[1] == 0 or neg.shape[1] == 0:
            continue
        if max_pixels:
            if pos.shape[1] > max_pixels:
                pos = pos[:, torch.randperm(pos.shape[1], device=pos.device)[:max_pixels]]
            if neg.shape[1] > max_pixels:
                neg = neg[:, torch.randperm(neg.shape[1], device=neg.device)[:max_pixels]]
        to_text = (pos.t() @ text[i]).unsqueeze(1)  # (P, 1)
        to_negatives = pos.t() @ neg  # (P, N)
        log_prob = torch.log_softmax(torch.cat([to_text, to_negatives], dim=1) / temperature, dim=1)[:, 0]
        losses.append(-log_prob.mean() if use_log else 1.0 - log_prob.exp().mean())
    if not losses:
        return 0.0 * (pixel_features.sum() + text_feature.sum())
    return torch.stack(losses).mean()


@configurable
class LSMSLoss(nn.Module):
    """``alpha * L_Con + focal + boundary-weighted Dice``; returns ``loss`` and the terms ``focal``, ``dice``, ``con``.

    Args:
        alpha: weight of L_Con (paper: 0.125; 0 or a network output without
            features disables it, as for "LSMS without text").
        boundary_weight: lambda (1.2).
        boundary_kernel: size of the dilation/erosion element that makes the band.
        temperature: tau (0.1).
        focal_gamma, focal_alpha: focal loss settings (MONAI ``FocalLoss``).
        max_pixels, normalize, use_log: see :func:`pixel_text_contrastive_loss`.
    """

    def __init__(
        self,
        alpha: float = 0.125,
        boundary_weight: float = 1.2,
        boundary_kernel: int = 5,
        temperature: float = 0.1,
        focal_gamma: float = 2.0,
        focal_alpha: float | None = None,
        max_pixels: int | None = 1024,
        normalize: bool = True,
        use_log: bool = True,
    ):
        super().__init__()
        self.alpha = alpha
        self.boundary_weight = boundary_weight
        self.boundary_kernel = boundary_kernel
        self.temperature = temperature
        self.max_pixels = max_pixels
        self.normalize = normalize
        self.use_log = use_log
        self.focal = FocalLoss(gamma=focal_gamma, alpha=focal_alpha, use_softmax=False)

    def forward(self, outputs, target: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = outputs["pred"] if isinstance(outputs, dict) else outputs
        logits, target = logits.float(), (target > 0.5).float()
        focal = self.focal(logits, target)
        weights = boundary_weights(target, self.boundary_weight, self.boundary_kernel)
        dice = weighted_dice_loss(torch.sigmoid(logits), target, weights)
        total = focal + dice
        con = logits.new_zeros(())
        if self.alpha and isinstance(outputs, dict) and "pixel_features" in outputs:
            con = pixel_text_contrastive_loss(
                outputs["pixel_features"], outputs["text_feature"], target, self.temperature,
                self.max_pixels, self.normalize, self.use_log,
            )
            total = total + self.alpha * con
        return {"loss": total, "focal": focal.detach(), "dice": dice.detach(), "con": con.detach()}
