"""LSMS: Language-guided Scale-aware MedSegmentor (Ouyang et al.).

A BERT-type encoder gives word features L (B, T, C_l). The language-guided vision
encoder is a stem (two 3x3 stride-2 convs, 1/4) and four stages (Table I:
3/3/5/2 blocks, 64/128/320/512 channels at 1/4 ... 1/32; stages 2-4 start with a
3x3 stride-2 conv + BN). Each block is ``F' = Norm(SVLA(V, L) + V)``,
``F = Norm(FFN(F') + F')`` (eqs. 2-3). SVLA (eqs. 4-10):

    V_pre = DWConv5x5(V)
    Att_V = sum_j ConvUnit_j(V_pre)                  1xd then dx1, d = 7, 11, 21
    Att_L = w_f(softmax(w_v1(V_pre)^T w_l1(L) / sqrt(C_l)) w_l2(L)^T) * w_v2(V_pre)
    F_att = Conv1x1(V_pre + Att_V + Att_L) * V

The full-scale decoder resizes F2..F4 to F1's size (bilinear), concatenates them
and runs a light Hamburger head (NMF matrix decomposition), then a 1x1 conv and
x4 upsampling. In training mode the network also returns the decoder's pixel
features and the projected mean text feature for the contrastive loss (eq. 14).

``use_text=False`` is the paper's "LSMS without text": no language branch, no
text encoder, no contrastive features.

Shapes for a 480x480 input: stem 64x120x120, stages 64x120², 128x60², 320x30²,
512x15²; decoder 960x120² -> Hamburger 256x120² -> logits 1x480x480.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from transforms.base.describe import configurable
from common.networks.text_encoders import masked_mean, token_inputs

from .hamburger import LightHamHead


class ConvUnit(nn.Module):
    """Depthwise 1xd then dx1 convolution (one strip pair of the visual knowledge branch)."""

    def __init__(self, channels: int, kernel: int):
        super().__init__()
        pad = kernel // 2
        self.horizontal = nn.Conv2d(channels, channels, (1, kernel), padding=(0, pad), groups=channels)
        self.vertical = nn.Conv2d(channels, channels, (kernel, 1), padding=(pad, 0), groups=channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vertical(self.horizontal(x))


class LanguageGuidedBranch(nn.Module):
    """Eqs. 5-9: pixels attend over words; the result times a projected visual map (pixel map, PM).

    ``w_v1``, ``w_v2``, ``w_f``: 1x1 conv + instance norm; ``w_l1``, ``w_l2``: 1x1 conv
    (a linear map over the word axis) to the visual width. Padding words are masked.

    Forward: ``v_pre`` (B, C, H, W), ``words`` (B, T, C_l), ``word_mask`` (B, T) -> (B, C, H, W).
    """

    def __init__(self, channels: int, text_channels: int, pixel_map: bool = True):
        super().__init__()

        def visual_projection():
            return nn.Sequential(nn.Conv2d(channels, channels, 1), nn.InstanceNorm2d(channels, affine=True))

        self.w_v1 = visual_projection()
        self.w_v2 = visual_projection() if pixel_map else None
        self.w_f = visual_projection()
        self.w_l1 = nn.Linear(text_channels, channels)
        self.w_l2 = nn.Linear(text_channels, channels)
        self.scale = 1.0 / math.sqrt(text_channels)

    def forward(self, v_pre: torch.Tensor, words: torch.Tensor, word_mask: torch.Tensor) -> torch.Tensor:
        b, c, h, w = v_pre.shape
        queries = self.w_v1(v_pre).flatten(2).transpose(1, 2)  # (B, HW, C)
        keys, values = self.w_l1(words), self.w_l2(words)  # (B, T, C)
        scores = torch.bmm(queries, keys.transpose(1, 2)) * self.scale  # (B, HW, T)
        scores = scores.masked_fill(~word_mask.bool()[:, None, :], torch.finfo(scores.dtype).min)
        attended = torch.bmm(scores.softmax(dim=-1), values)  # (B, HW, C)
        attended = self.w_f(attended.transpose(1, 2).reshape(b, c, h, w))
        return attended * self.w_v2(v_pre) if self.w_v2 is not None else attended


class SVLA(nn.Module):
    """Scale-aware Vision-Language Attention (eq. 10); ``text_channels=None`` drops the language branch."""

    def __init__(self, channels: int, text_channels: int | None, kernels: Sequence[int] = (7, 11, 21),
                 pixel_map: bool = True):
        super().__init__()
        self.pre = nn.Conv2d(channels, channels, 5, padding=2, groups=channels)
        self.units = nn.ModuleList(ConvUnit(channels, k) for k in kernels)
        self.language = LanguageGuidedBranch(channels, text_channels, pixel_map) if text_channels else None
        self.mix = nn.Conv2d(channels, channels, 1)

    def forward(self, v: torch.Tensor, words: torch.Tensor | None = None,
                word_mask: torch.Tensor | None = None) -> torch.Tensor:
        v_pre = self.pre(v)
        attention = v_pre
        for unit in self.units:
            attention = attention + unit(v_pre)
        if self.language is not None:
            attention = attention + self.language(v_pre, words, word_mask)
        return self.mix(attention) * v


class FeedForward(nn.Module):
    """1x1 expand, depthwise 3x3, GELU, 1x1 back (SegNeXt's MLP)."""

    def __init__(self, channels: int, ratio: float):
        super().__init__()
        hidden = int(channels * ratio)
        self.net = nn.Sequential(
            nn.Conv2d(channels, hidden, 1),
            nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden),
            nn.GELU(),
            nn.Conv2d(hidden, channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class EncoderBlock(nn.Module):
    """``Norm(SVLA(V, L) + V)`` then ``Norm(FFN(.) + .)`` (post-norm, eqs. 2-3).

    ``pre_norm=True`` is SegNeXt's block instead: ``x + s1 * SVLA(BN(x))``,
    ``x + s2 * FFN(BN(x))`` with layer scale 1e-2.
    """

    def __init__(self, channels: int, text_channels: int | None, mlp_ratio: float, kernels: Sequence[int],
                 pixel_map: bool = True, pre_norm: bool = False, layer_scale: float = 1e-2):
        super().__init__()
        self.svla = SVLA(channels, text_channels, kernels, pixel_map)
        self.ffn = FeedForward(channels, mlp_ratio)
        self.norm1 = nn.BatchNorm2d(channels)
        self.norm2 = nn.BatchNorm2d(channels)
        self.pre_norm = pre_norm
        if pre_norm:
            self.scale1 = nn.Parameter(torch.full((channels, 1, 1), layer_scale))
            self.scale2 = nn.Parameter(torch.full((channels, 1, 1), layer_scale))

    def forward(self, x: torch.Tensor, words=None, word_mask=None) -> torch.Tensor:
        if self.pre_norm:
            x = x + self.scale1 * self.svla(self.norm1(x), words, word_mask)
            return x + self.scale2 * self.ffn(self.norm2(x))
        x = self.norm1(self.svla(x, words, word_mask) + x)
        return self.norm2(self.ffn(x) + x)


class Stage(nn.Module):
    """A down-sampling step (3x3 stride-2 conv + BN; the stem for stage 1) and ``depth`` encoder blocks."""

    def __init__(self, down: nn.Module, blocks: Sequence[EncoderBlock]):
        super().__init__()
        self.down = down
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x, words=None, word_mask=None):
        x = self.down(x)
        for block in self.blocks:
            x = block(x, words, word_mask)
        return x


def stem(in_channels: int, channels: int) -> nn.Sequential:
    """Embedding block: two 3x3 stride-2 convs with BN (GELU between): 1/4 resolution."""
    return nn.Sequential(
        nn.Conv2d(in_channels, channels // 2, 3, stride=2, padding=1),
        nn.BatchNorm2d(channels // 2),
        nn.GELU(),
        nn.Conv2d(channels // 2, channels, 3, stride=2, padding=1),
        nn.BatchNorm2d(channels),
    )


def downsample(in_channels: int, channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, channels, 3, stride=2, padding=1), nn.BatchNorm2d(channels))


@configurable
class LSMS(nn.Module):
    """The whole model.

    Args:
        text_encoder: a module mapping ``(text_ids, text_mask)`` to (B, T, C_l) word
            features with a ``hidden_size`` attribute (:class:`common.networks.text_encoders.HFTextEncoder`);
            ignored (may be None) when ``use_text`` is False.
        in_channels, out_channels: image channels, output maps (1: lesion logit).
        depths, channels: blocks and widths of the four stages (Table I).
        mlp_ratios: FFN expansion per stage (not in the paper; 2 gives its 8.78 M image network).
        kernels: the ConvUnit strip lengths d_j (Table III(a)).
        use_text: language branch + contrastive features on (False: "LSMS without text").
        pixel_map: the PM product in the language branch (Table III(b)).
        pre_norm: SegNeXt-style pre-norm blocks with layer scale instead of the paper's post-norm.
        decoder_stages: which stage outputs the full-scale decoder concatenates (1-based; Table III(e)).
        ham_channels, decoder_channels, nmf_rank, nmf_steps_train, nmf_steps_eval: Hamburger head.
        dropout: before the final 1x1 conv.

    Forward: ``image`` (B, C, H, W), ``text_ids``/``text_mask`` (B, T) -> logits
    (B, out_channels, H, W); in training mode with text, a dict with ``pred``,
    ``pixel_features`` (B, decoder_channels, H/4, W/4) and ``text_feature`` (B, decoder_channels).
    """

    def __init__(
        self,
        text_encoder: nn.Module | None = None,
        in_channels: int = 3,
        out_channels: int = 1,
        depths: Sequence[int] = (3, 3, 5, 2),
        channels: Sequence[int] = (64, 128, 320, 512),
        mlp_ratios: Sequence[float] = (2, 2, 2, 2),
        kernels: Sequence[int] = (7, 11, 21),
        use_text: bool = True,
        pixel_map: bool = True,
        pre_norm: bool = False,
        decoder_stages: Sequence[int] = (2, 3, 4),
        ham_channels: int = 256,
        decoder_channels: int = 256,
        nmf_rank: int = 64,
        nmf_steps_train: int = 6,
        nmf_steps_eval: int = 7,
        dropout: float = 0.1,
    ):
        super().__init__()
        if not (len(depths) == len(channels) == len(mlp_ratios) == 4):
            raise ValueError("depths, channels and mlp_ratios need one value per stage (4)")
        decoder_stages = sorted({int(s) for s in decoder_stages})
        if not decoder_stages or any(s not in (1, 2, 3, 4) for s in decoder_stages):
            raise ValueError(f"decoder_stages must be a non-empty subset of 1..4, got {decoder_stages}")
        self.use_text = use_text
        if self.use_text and text_encoder is None:
            raise ValueError("use_text=True needs a text_encoder")
        self.text_encoder = text_encoder if self.use_text else None
        text_channels = int(text_encoder.hidden_size) if self.use_text else None
        self.decoder_stages = decoder_stages

        stages = []
        previous = in_channels
        for i, (depth, width, ratio) in enumerate(zip(depths, channels, mlp_ratios)):
            down = stem(previous, width) if i == 0 else downsample(previous, width)
            blocks = [EncoderBlock(width, text_channels, ratio, kernels, pixel_map, pre_norm)
                      for _ in range(depth)]
            stages.append(Stage(down, blocks))
            previous = width
        self.stages = nn.ModuleList(stages)
        self.decoder = LightHamHead(
            in_channels=sum(channels[s - 1] for s in decoder_stages),
            ham_channels=ham_channels,
            channels=decoder_channels,
            rank=nmf_rank,
            steps_train=nmf_steps_train,
            steps_eval=nmf_steps_eval,
        )
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(decoder_channels, out_channels, 1)
        self.text_projection = nn.Linear(text_channels, decoder_channels) if self.use_text else None

    def encode_text(self, text_ids, text_mask):
        if not self.use_text:
            return None, None
        if text_ids is None or text_mask is None:
            raise ValueError("LSMS with use_text=True needs text_ids and text_mask")
        return self.text_encoder(text_ids, text_mask), text_mask

    def forward(self, image: torch.Tensor, text_ids: torch.Tensor | None = None,
                text_mask: torch.Tensor | None = None):
        if min(image.shape[-2:]) < 64:
            # 1/32 of the input must leave more than one pixel for the instance norms of the last stage
            raise ValueError(f"LSMS needs images of at least 64x64 pixels, got {tuple(image.shape[-2:])}")
        if text_ids is not None:
            text_ids, text_mask = token_inputs(text_ids, text_mask, image.device)
        words, word_mask = self.encode_text(text_ids, text_mask)
        features = []
        x = image
        for stage in self.stages:
            x = stage(x, words, word_mask)
            features.append(x)
        size = features[0].shape[-2:]
        aligned = [F.interpolate(features[s - 1], size=size, mode="bilinear", align_corners=False)
                   if s > 1 else features[0] for s in self.decoder_stages]
        pixel_features = self.decoder(torch.cat(aligned, dim=1))
        logits = self.classifier(self.dropout(pixel_features))
        logits = F.interpolate(logits, size=image.shape[-2:], mode="bilinear", align_corners=False)
        if not (self.training and self.use_text):
            return logits
        text_feature = self.text_projection(masked_mean(words, word_mask).to(pixel_features.dtype))
        return {"pred": logits, "pixel_features": pixel_features, "text_feature": text_feature}
