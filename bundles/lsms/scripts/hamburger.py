"""Light Hamburger head (Geng et al., "Is attention better than matrix decomposition?").

The "ham" is a non-negative matrix factorisation of the (C, N) feature matrix X
(N = H*W pixels) into bases D (C, R) and codes C (N, R), X ~ D C^T, found by
multiplicative updates (Lee & Seung) that run without gradient; one last code
update runs with gradient (the paper's one-step gradient). The low-rank
reconstruction is a global context of the whole image.

    squeeze: 1x1 conv (C_in -> ham_channels) + GN(32) + ReLU
    ham:     1x1 conv -> ReLU -> NMF -> 1x1 conv + GN(32) -> ReLU(x + .)
    align:   1x1 conv (ham_channels -> channels) + GN(32) + ReLU
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

EPS = 1e-6


def _group_norm(channels: int, groups: int = 32) -> nn.GroupNorm:
    groups = groups if channels % groups == 0 else 1
    return nn.GroupNorm(groups, channels)


def nmf_step_codes(x: torch.Tensor, bases: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """One multiplicative update of the codes: C <- C * (X^T D) / (C D^T D)."""
    numerator = torch.bmm(x.transpose(1, 2), bases)
    denominator = torch.bmm(codes, torch.bmm(bases.transpose(1, 2), bases))
    return codes * numerator / (denominator + EPS)


def nmf_step_bases(x: torch.Tensor, bases: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """One multiplicative update of the bases: D <- D * (X C) / (D C^T C)."""
    numerator = torch.bmm(x, codes)
    denominator = torch.bmm(bases, torch.bmm(codes.transpose(1, 2), codes))
    return bases * numerator / (denominator + EPS)


class NMF2D(nn.Module):
    """Low-rank NMF reconstruction of a non-negative (B, C, H, W) map.

    In training the bases start random each forward (uniform, unit columns), a fresh set per image.
    In eval mode every image starts from one fixed set, drawn once from ``eval_seed`` and kept as a
    buffer: a model gives the same mask for the same image wherever it sits in a batch, and a traced
    or exported graph holds the bases as a constant instead of a random draw.
    """

    def __init__(self, channels: int, rank: int = 64, steps_train: int = 6, steps_eval: int = 7,
                 inv_temperature: float = 1.0, eval_seed: int = 0):
        super().__init__()
        self.rank, self.steps_train, self.steps_eval = rank, steps_train, steps_eval
        self.inv_temperature = inv_temperature
        generator = torch.Generator().manual_seed(eval_seed)
        self.register_buffer("eval_bases", F.normalize(torch.rand(1, channels, rank, generator=generator), dim=1),
                             persistent=False)

    def _bases(self, b: int, c: int, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self.eval_bases.to(device=x.device, dtype=x.dtype).expand(b, -1, -1)
        return F.normalize(torch.rand(b, c, self.rank, device=x.device, dtype=x.dtype), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        dtype = x.dtype
        with torch.autocast(device_type=x.device.type, enabled=False):
            flat = x.float().reshape(b, c, h * w)
            bases = self._bases(b, c, flat)
            codes = torch.softmax(self.inv_temperature * torch.bmm(flat.transpose(1, 2), bases), dim=-1)
            with torch.no_grad():
                for _ in range(self.steps_train if self.training else self.steps_eval):
                    codes = nmf_step_codes(flat, bases, codes)
                    bases = nmf_step_bases(flat, bases, codes)
            codes = nmf_step_codes(flat, bases, codes)  # the one step that carries gradient
            out = torch.bmm(bases, codes.transpose(1, 2))
        return out.reshape(b, c, h, w).to(dtype)


class Hamburger(nn.Module):
    def __init__(self, channels: int, rank: int, steps_train: int, steps_eval: int):
        super().__init__()
        self.lower_bread = nn.Conv2d(channels, channels, 1)
        self.ham = NMF2D(channels, rank, steps_train, steps_eval)
        self.upper_bread = nn.Sequential(nn.Conv2d(channels, channels, 1, bias=False), _group_norm(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        enjoy = self.ham(F.relu(self.lower_bread(x)))
        return F.relu(x + self.upper_bread(enjoy))


class LightHamHead(nn.Module):
    """Squeeze the concatenated scales, run the Hamburger, align to ``channels``. (B, C_in, H, W) -> (B, channels, H, W)."""

    def __init__(self, in_channels: int, ham_channels: int = 256, channels: int = 256, rank: int = 64,
                 steps_train: int = 6, steps_eval: int = 7):
        super().__init__()
        self.squeeze = nn.Sequential(nn.Conv2d(in_channels, ham_channels, 1, bias=False),
                                     _group_norm(ham_channels), nn.ReLU(inplace=True))
        self.hamburger = Hamburger(ham_channels, rank, steps_train, steps_eval)
        self.align = nn.Sequential(nn.Conv2d(ham_channels, channels, 1, bias=False),
                                   _group_norm(channels), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.align(self.hamburger(self.squeeze(x)))
