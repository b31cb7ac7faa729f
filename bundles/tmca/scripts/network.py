"""TMCA: Target-informed Multi-level Contrastive Alignment (Li, Meng et al.).

ConvNeXt feature pyramid I1..I4 (+ pooled I_g) and text features T (mean of the
last three hidden layers of a BERT-type encoder) feed three guided decoder
blocks (self-attention on image tokens, cross-attention image -> text, U-Net
up-block with skip). Before each block the block input and the text are
projected for a contrastive alignment level (TSDM-32/16/8, plus TSDM-G on
I_g); after each block a language-guided enhancement map (LTEM) computed from
the block input gates the block output. The alignment losses themselves are in
``losses.py``: in training mode the network returns the embeddings they need.

Shapes for a 224x224 input and ConvNeXt-Tiny (channels 96/192/384/768):
    I4 768x7x7 -> block1 -> 384x14x14 -> block2 -> 192x28x28 -> block3 -> 96x56x56
    -> sub-pixel x4 -> 24x224x224 -> 1x1 conv -> out_channels x 224 x 224
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import SubpixelUpsample, UnetOutBlock, UnetrUpBlock
from torch import nn

from transforms.base.describe import configurable
from common.networks.text_encoders import masked_mean, token_inputs

ALIGNMENT_LEVELS = ("global", "32", "16", "8")


def sincos_1d(length: int, dim: int, device=None, dtype=None) -> torch.Tensor:
    """Sinusoidal position encoding of shape (length, dim)."""
    half = dim // 2
    freq = torch.exp(-math.log(10000.0) * torch.arange(half, device=device, dtype=torch.float32) / max(half, 1))
    pos = torch.arange(length, device=device, dtype=torch.float32)[:, None] * freq[None, :]
    enc = torch.cat([pos.sin(), pos.cos()], dim=1)
    if enc.shape[1] < dim:
        enc = F.pad(enc, (0, dim - enc.shape[1]))
    return enc.to(dtype) if dtype is not None else enc


def sincos_2d(height: int, width: int, dim: int, device=None, dtype=None) -> torch.Tensor:
    """2-D sinusoidal position encoding of shape (height*width, dim): half the channels per axis."""
    dim_h = dim // 2
    enc_h = sincos_1d(height, dim_h, device)[:, None, :].expand(height, width, dim_h)
    enc_w = sincos_1d(width, dim - dim_h, device)[None, :, :].expand(height, width, dim - dim_h)
    enc = torch.cat([enc_h, enc_w], dim=-1).reshape(height * width, dim)
    return enc.to(dtype) if dtype is not None else enc


class GuidedDecoderBlock(nn.Module):
    """Self-attention over image tokens, cross-attention to text, U-Net up-block with skip.

    Forward: ``x`` (B, C, H, W), ``text`` (B, L, C) already projected to C,
    ``text_mask`` (B, L), ``skip`` (B, C_skip, 2H, 2W) -> (B, C_skip, 2H, 2W).
    """

    def __init__(self, in_channels: int, out_channels: int, num_heads_self: int = 1, num_heads_cross: int = 4):
        super().__init__()
        self.norm_self = nn.LayerNorm(in_channels)
        self.self_attn = nn.MultiheadAttention(in_channels, num_heads_self, batch_first=True)
        self.norm_cross = nn.LayerNorm(in_channels)
        self.norm_text = nn.LayerNorm(in_channels)
        self.cross_attn = nn.MultiheadAttention(in_channels, num_heads_cross, batch_first=True)
        self.up = UnetrUpBlock(
            spatial_dims=2,
            in_channels=in_channels,
            out_channels=out_channels,
            kernel_size=3,
            upsample_kernel_size=2,
            norm_name="batch",
            res_block=True,
        )

    def forward(self, x: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (B, HW, C)
        pos = sincos_2d(h, w, c, device=x.device, dtype=tokens.dtype)[None]
        q = self.norm_self(tokens)
        tokens = tokens + self.self_attn(q + pos, q + pos, q, need_weights=False)[0]
        text_pos = sincos_1d(text.shape[1], c, device=x.device, dtype=text.dtype)[None]
        kv = self.norm_text(text)
        q = self.norm_cross(tokens)
        attended = self.cross_attn(
            q + pos, kv + text_pos, kv, key_padding_mask=text_mask == 0, need_weights=False
        )[0]
        tokens = tokens + attended
        x = tokens.transpose(1, 2).reshape(b, c, h, w)
        return self.up(x, skip)


def language_enhancement_map(
    image: torch.Tensor, text_global: torch.Tensor, temperature: float, mean_one: bool = True, scale_factor: int = 2
) -> torch.Tensor:
    """LTEM (eq. 2): softmax over positions of cos(I_i, T_g) / τ3, upsampled x2.

    Args:
        image: (B, C, H, W) high-level image features (the decoder block's input).
        text_global: (B, C) pooled text projected to C.
        temperature: τ3.
        mean_one: multiply the softmax map by H*W so that it averages 1 and a
            uniform map leaves the gated features unchanged (our choice; the paper
            multiplies by the softmax map itself, ``mean_one=False``).
        scale_factor: bilinear upsampling to the decoder block's output size.
    Returns:
        (B, 1, 2H, 2W) enhancement map (for ``scale_factor=2``).
    """
    b, c, h, w = image.shape
    sim = torch.einsum("bcn,bc->bn", F.normalize(image.flatten(2), dim=1), F.normalize(text_global, dim=1))
    weights = torch.softmax(sim.float() / temperature, dim=1).to(image.dtype)
    if mean_one:
        weights = weights * (h * w)
    weights = weights.reshape(b, 1, h, w)
    if scale_factor == 1:
        return weights
    return F.interpolate(weights, scale_factor=scale_factor, mode="bilinear", align_corners=False)


@configurable
class TMCA(nn.Module):
    """The TMCA segmentation network.

    Args:
        image_encoder: module returning 4 feature maps at strides 4/8/16/32 and
            exposing ``channels`` (e.g. :class:`common.networks.image_encoders.TimmFeatureEncoder`).
        text_encoder: module mapping ``(text_ids, text_mask)`` to (B, L, D) features
            and exposing ``hidden_size`` (e.g. :class:`common.networks.text_encoders.HFTextEncoder`).
        out_channels: 1 (sigmoid) or more (softmax) output maps.
        alignment_levels: which TSDM levels give embeddings for the alignment
            loss, any of ``global``, ``32``, ``16``, ``8`` (MCAS uses all four;
            ``[]`` is the baseline of Tables 2-3).
        use_ltem: gate each decoder block's output with the LTEM map.
        ltem_temperature: τ3.
        ltem_mean_one: see :func:`language_enhancement_map`.
        num_heads_self, num_heads_cross: attention heads in the decoder blocks.
        head_channels: channels after the x4 sub-pixel upsampling.

    Forward: ``image`` (B, 3, H, W) with H, W multiples of 32, ``text_ids`` and
    ``text_mask`` (B, L). Returns logits (B, out_channels, H, W) in eval mode; in
    training mode a dict with ``pred`` (the logits) and ``alignment``: a dict
    level -> (image embedding, text embedding), both (B, C_level).
    """

    def __init__(
        self,
        image_encoder: nn.Module,
        text_encoder: nn.Module,
        out_channels: int = 1,
        alignment_levels: Sequence[str] = ALIGNMENT_LEVELS,
        use_ltem: bool = True,
        ltem_temperature: float = 0.1,
        ltem_mean_one: bool = True,
        num_heads_self: int = 1,
        num_heads_cross: int = 4,
        head_channels: int = 24,
    ):
        super().__init__()
        levels = [str(level) for level in alignment_levels]
        unknown = set(levels) - set(ALIGNMENT_LEVELS)
        if unknown:
            raise ValueError(f"unknown alignment levels {sorted(unknown)}; choose from {ALIGNMENT_LEVELS}")
        channels = list(image_encoder.channels)
        if len(channels) != 4:
            raise ValueError(f"the image encoder must return 4 feature maps, it declares {len(channels)}")
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.alignment_levels = [level for level in ALIGNMENT_LEVELS if level in levels]
        self.use_ltem = use_ltem
        self.ltem_temperature = ltem_temperature
        self.ltem_mean_one = ltem_mean_one
        text_dim = int(text_encoder.hidden_size)
        c1, c2, c3, c4 = channels
        # one text projection per decoder level (shared by cross-attention, TSDM and LTEM)
        self.text_proj = nn.ModuleDict(
            {"32": nn.Linear(text_dim, c4), "16": nn.Linear(text_dim, c3), "8": nn.Linear(text_dim, c2)}
        )
        if "global" in self.alignment_levels:
            self.global_norm = nn.LayerNorm(c4)
            self.global_text_proj = nn.Linear(text_dim, c4)
        self.blocks = nn.ModuleDict(
            {
                "32": GuidedDecoderBlock(c4, c3, num_heads_self, num_heads_cross),
                "16": GuidedDecoderBlock(c3, c2, num_heads_self, num_heads_cross),
                "8": GuidedDecoderBlock(c2, c1, num_heads_self, num_heads_cross),
            }
        )
        self.upsample = SubpixelUpsample(spatial_dims=2, in_channels=c1, out_channels=head_channels, scale_factor=4)
        self.head = UnetOutBlock(spatial_dims=2, in_channels=head_channels, out_channels=out_channels)

    def forward(self, image: torch.Tensor, text_ids: torch.Tensor, text_mask: torch.Tensor):
        if image.shape[-1] % 32 or image.shape[-2] % 32:
            raise ValueError(f"TMCA needs image sizes divisible by 32, got {tuple(image.shape[-2:])}")
        text_ids, text_mask = token_inputs(text_ids, text_mask, image.device)
        i1, i2, i3, i4 = self.image_encoder(image)
        text = self.text_encoder(text_ids, text_mask)
        alignment: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        if "global" in self.alignment_levels:
            image_global = self.global_norm(i4.mean(dim=(2, 3)))
            alignment["global"] = (image_global, self.global_text_proj(masked_mean(text, text_mask)))

        x = i4
        for level, skip in (("32", i3), ("16", i2), ("8", i1)):
            text_level = self.text_proj[level](text)
            text_global = masked_mean(text_level, text_mask)
            if level in self.alignment_levels:
                alignment[level] = (x.mean(dim=(2, 3)), text_global)
            out = self.blocks[level](x, text_level, text_mask, skip)
            if self.use_ltem:
                out = out * language_enhancement_map(x, text_global, self.ltem_temperature, self.ltem_mean_one)
            x = out

        logits = self.head(self.upsample(x))
        if self.training:
            return {"pred": logits, "alignment": alignment}
        return logits
