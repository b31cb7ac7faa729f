"""Co-Seg training loss (Sec. 2.4, eq. 8; Sec. 3.1).

    L = lambda_1 L_sem(pass 1) + lambda_2 L_ins(pass 1) + L_sem(final) + L_ins(final)       eq. 8

The pass-1 terms are the paper's "prior constraint loss" (lambda_1 = 2, lambda_2 = 1); without a
first pass (``co_segmentation=False``) only the final terms remain. The HV terms (MSE, MSGE) are in
both passes' L_ins (eq. 8, the paper: ``hv_passes="both"``); the authors' code puts them on the final
pass only (``hv_passes="final"``).

* L_sem (tissue): cross-entropy + Dice over the tissue classes (softmax).
* L_ins (nuclei), HoVer-Net's loss (Graham et al. 2019) as the paper says: Focal + Dice on the
  nuclei logit (sigmoid), ``mse_weight * MSE(HV) + msge_weight * MSGE(HV)`` (10 and 2.5 as the authors' code; the paper gives
  no weights, HoVer-Net uses 1 and 1), and, when the
  network predicts nucleus types, ``type_weight * (CE + Dice)`` over the types on typed nuclei pixels.
  MSE is over all pixels (the HV target is 0 outside nuclei); MSGE is the mean squared error of
  the HV maps' gradients on nuclei pixels: d/dx of the horizontal map and d/dy of the vertical map,
  taken with HoVer-Net's 5x5 Sobel-type kernels ``dx / (dx² + dy²)`` (unnormalised: a unit ramp has
  gradient 12 away from the border).

Targets (a mapping): ``tissue`` (B, 1, H, W) class ids; ``nuclei`` (B, 1, H, W) nuclei mask (any
value > 0.5 is a nucleus, so an instance map works too); ``hv`` (B, 2, H, W) horizontal and vertical
distance maps in [-1, 1]; ``nuclei_type`` (B, 1, H, W) type ids 1..n (0: background or untyped),
needed only when the network predicts types.
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss, FocalLoss
from torch import nn

from transforms.base.describe import configurable


def sobel_kernels(size: int = 5, dtype: torch.dtype = torch.float32, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """HoVer-Net's size x size gradient kernels ``dx / (dx² + dy²)`` and ``dy / (dx² + dy²)`` (0 at the centre)."""
    if size < 3 or size % 2 == 0:
        raise ValueError(f"the HV gradient kernel size must be odd and >= 3, got {size}")
    offsets = torch.arange(size, dtype=dtype, device=device) - size // 2
    dy, dx = torch.meshgrid(offsets, offsets, indexing="ij")
    radius = (dx * dx + dy * dy).clamp_min(1.0)  # the centre has dx = dy = 0
    return dx / radius, dy / radius


def hv_gradients(hv: torch.Tensor, size: int = 5) -> torch.Tensor:
    """(B, 2, H, W) HV maps -> (B, 2, H, W): d/dx of the horizontal map, d/dy of the vertical map (zero padding)."""
    kx, ky = sobel_kernels(size, hv.dtype, hv.device)
    pad = size // 2
    return torch.cat([F.conv2d(hv[:, :1], kx[None, None], padding=pad),
                      F.conv2d(hv[:, 1:2], ky[None, None], padding=pad)], dim=1)


def msge_loss(pred: torch.Tensor, target: torch.Tensor, focus: torch.Tensor, size: int = 5) -> torch.Tensor:
    """Mean squared gradient error of (B, 2, H, W) HV maps over the pixels where ``focus`` (B, 1, H, W) is 1."""
    focus = focus.to(pred.dtype).expand_as(pred)
    error = (hv_gradients(pred, size) - hv_gradients(target, size)) ** 2
    return (focus * error).sum() / (focus.sum() + 1e-8)


@configurable
class CoSegLoss(nn.Module):
    """Eq. 8 with HoVer-Net's nuclei terms (module doc); returns ``loss`` and detached named terms.

    Args:
        lambda_tissue, lambda_nuclei: lambda_1 and lambda_2, the weights of the pass-1 terms (2 and 1).
        mse_weight, msge_weight: weights of MSE(HV) and MSGE(HV) (10 and 2.5).
        type_weight: weight of the nucleus-type CE + Dice.
        focal: Focal loss on the nuclei logit (the paper); False: binary cross-entropy (the authors' code).
        focal_gamma: the focal loss's gamma.
        gradient_kernel: size of the Sobel-type kernels of MSGE (HoVer-Net: 5).
        hv_passes: "both" (eq. 8: the HV terms in pass 1's L_ins too) or "final" (the authors' code: pass 2 only).

    Forward: the network's output dict (optionally with ``pass1``) and the target mapping -> dict with
    ``loss`` and, for the final pass, ``tissue_ce``, ``tissue_dice``, ``nuclei_focal`` (or ``nuclei_bce``),
    ``nuclei_dice``, ``hv_mse``, ``hv_msge``, ``nuclei_type`` (with types), plus ``prior``: the weighted
    pass-1 total.
    """

    def __init__(
        self,
        lambda_tissue: float = 2.0,
        lambda_nuclei: float = 1.0,
        mse_weight: float = 10.0,
        msge_weight: float = 2.5,
        type_weight: float = 1.0,
        focal: bool = True,
        focal_gamma: float = 2.0,
        gradient_kernel: int = 5,
        hv_passes: str = "both",
    ):
        super().__init__()
        if hv_passes not in ("both", "final"):
            raise ValueError(f"hv_passes must be 'both' (the paper) or 'final' (the authors' code), got {hv_passes!r}")
        self.hv_passes = hv_passes
        sobel_kernels(gradient_kernel)  # validates the size
        self.lambda_tissue = lambda_tissue
        self.lambda_nuclei = lambda_nuclei
        self.mse_weight = mse_weight
        self.msge_weight = msge_weight
        self.type_weight = type_weight
        self.gradient_kernel = gradient_kernel
        self.nuclei_term = "nuclei_focal" if focal else "nuclei_bce"
        self.focal = FocalLoss(gamma=focal_gamma, use_softmax=False) if focal else None
        self.tissue_dice = DiceLoss(to_onehot_y=True, softmax=True)
        self.nuclei_dice = DiceLoss(sigmoid=True)
        self.type_dice = DiceLoss()

    def tissue_terms(self, logits: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = logits.float()
        return {"tissue_ce": F.cross_entropy(logits, target[:, 0]), "tissue_dice": self.tissue_dice(logits, target)}

    def nuclei_terms(self, outputs: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]) -> dict:
        logit, hv = outputs["nuclei"].float(), outputs["hv"].float()
        mask = (target["nuclei"] > 0.5).float()
        hv_target = target["hv"].float()
        cls = self.focal(logit, mask) if self.focal else F.binary_cross_entropy_with_logits(logit, mask)
        terms = {
            self.nuclei_term: cls,
            "nuclei_dice": self.nuclei_dice(logit, mask),
            "hv_mse": F.mse_loss(hv, hv_target),
            "hv_msge": msge_loss(hv, hv_target, mask, self.gradient_kernel),
        }
        if "nuclei_type" in outputs:
            terms["nuclei_type"] = self.type_terms(outputs["nuclei_type"].float(), target)
        return terms

    def type_terms(self, logits: torch.Tensor, target: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if "nuclei_type" not in target:
            raise KeyError("the network predicts nucleus types but the target has no 'nuclei_type' map; "
                           "add it to the labels or build the network with num_nuclei_types: 0")
        types = target["nuclei_type"].long()
        typed = (types > 0).float()  # (B, 1, H, W)
        index = (types - 1).clamp_min(0)
        ce = (F.cross_entropy(logits, index[:, 0], reduction="none") * typed[:, 0]).sum() / typed.sum().clamp_min(1.0)
        one_hot = F.one_hot(index[:, 0], logits.shape[1]).permute(0, 3, 1, 2).float()
        dice = self.type_dice(logits.softmax(dim=1) * typed, one_hot * typed)
        return ce + dice

    def pass_loss(self, outputs: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], hv: bool = True):
        """(L_sem, L_ins, terms) for one pass; ``hv=False`` leaves the HV terms out of L_ins."""
        tissue = self.tissue_terms(outputs["tissue"], target["tissue"])
        nuclei = self.nuclei_terms(outputs, target)
        sem = tissue["tissue_ce"] + tissue["tissue_dice"]
        ins = nuclei[self.nuclei_term] + nuclei["nuclei_dice"] + self.type_weight * nuclei.get("nuclei_type", 0.0)
        if hv:
            ins = ins + self.mse_weight * nuclei["hv_mse"] + self.msge_weight * nuclei["hv_msge"]
        return sem, ins, {**tissue, **nuclei}

    def forward(self, outputs: Mapping, target: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        missing = [k for k in ("tissue", "nuclei", "hv") if k not in target]
        if missing:
            raise KeyError(f"Co-Seg targets need 'tissue', 'nuclei' and 'hv' maps; missing {missing}")
        target = {**target, "tissue": _channel_map(target["tissue"]).long(), "nuclei": _channel_map(target["nuclei"])}
        if "nuclei_type" in target:
            target["nuclei_type"] = _channel_map(target["nuclei_type"])
        sem, ins, terms = self.pass_loss(outputs, target)
        total = sem + ins
        prior = total.new_zeros(())
        if "pass1" in outputs:
            sem1, ins1, _ = self.pass_loss(outputs["pass1"], target, hv=self.hv_passes == "both")
            prior = self.lambda_tissue * sem1 + self.lambda_nuclei * ins1
            total = total + prior
        return {"loss": total, **{k: v.detach() for k, v in terms.items()}, "prior": prior.detach()}


def _channel_map(x: torch.Tensor) -> torch.Tensor:
    """A (B, H, W) map as (B, 1, H, W)."""
    return x.unsqueeze(1) if x.ndim == 3 else x


def example_targets(batch: int, size: int, num_tissue_classes: int, num_nuclei_types: int = 0,
                    generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Random targets of the shapes the loss reads (``scripts/benchmark.py`` times a training step on them):
    a tissue class map, a nuclei mask, HV maps in [-1, 1] and, with types, a type map."""
    g = generator or torch.Generator().manual_seed(0)
    targets = {
        "tissue": torch.randint(0, num_tissue_classes, (batch, 1, size, size), generator=g),
        "nuclei": (torch.rand(batch, 1, size, size, generator=g) > 0.7).float(),
        "hv": torch.rand(batch, 2, size, size, generator=g) * 2 - 1,
    }
    if num_nuclei_types:
        targets["nuclei_type"] = torch.randint(0, num_nuclei_types + 1, (batch, 1, size, size), generator=g)
    return targets
