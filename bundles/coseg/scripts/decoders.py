"""MP-Decoder: SAM2-style mask decoders for tissue and nuclei (Co-Seg, Sec. 2.3, eqs. 6-7).

Each task decoder holds query embeddings q (one learned token per output channel) and runs SAM2's
two-way transformer (depth 2, 8 heads, MLP 2048, attention width halved) on the image embedding z
plus a dense prompt g:

    q' = MLP(CrossAttention(SelfAttention(q), z + g, z + g))       eq. 6 (per layer)
    h  = CrossAttention(z + g, q', q')                              eq. 7

g is the other task's region prompt in the second pass (RP-Encoder) and a learned "no prompt"
embedding in the first, as SAM's decoder without a mask prompt. As in SAM2, h is upsampled x4 by two
transposed convolutions that add the encoder's stride-8 and stride-4 maps (each through a 1x1
convolution), and every output channel is the dot product of that map with an MLP of its token.

Reused from transformers (the maintained SAM2 code): ``Sam2TwoWayTransformer`` (eqs. 6-7 as they
stand), ``Sam2FeedForward`` (the token MLPs), ``Sam2LayerNorm``, and ``Sam2PositionalEmbedding`` (SAM's
random-Fourier positions for the embedding grid). ``Sam2MaskDecoder`` itself is not: its forward
always adds IoU and object-score tokens whose heads Co-Seg never reads (parameters without gradient,
which DDP rejects), returns either token 0's mask or tokens 1..N's (not N dense channels), and in eval
mode may swap outputs by its stability rule. The layer names follow ``Sam2MaskDecoder``'s.

Shapes for a 1024 input (D = 256): z (B, 256, 64, 64), high-resolution maps (B, 256, 256, 256) and
(B, 256, 128, 128) -> each output (B, C, 256, 256).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn
from transformers import Sam2MaskDecoderConfig, Sam2PromptEncoderConfig
from transformers.models.sam2.modeling_sam2 import (
    Sam2FeedForward,
    Sam2LayerNorm,
    Sam2PositionalEmbedding,
    Sam2TwoWayTransformer,
)


class TaskDecoder(nn.Module):
    """One task's SAM2-style mask decoder with named output heads.

    Args:
        outputs: head name -> channels, in channel order, e.g. ``{"tissue": 6}`` or
            ``{"nuclei": 1, "hv": 2, "nuclei_type": 3}``; one query token per channel.
        dim: embedding width D (a multiple of 8).
        depth, heads, mlp_dim: the two-way transformer's layers, attention heads and MLP width.

    Forward: ``image_embedding`` (B, D, h, w), ``high_resolution`` [(B, D, 4h, 4w), (B, D, 2h, 2w)],
    ``prompt`` (B, D, h, w) or None -> {name: (B, channels, 4h, 4w)}.
    """

    def __init__(self, outputs: Mapping[str, int], dim: int = 256, depth: int = 2, heads: int = 8,
                 mlp_dim: int = 2048):
        super().__init__()
        if dim % 8:
            raise ValueError(f"the decoder width must be a multiple of 8, got {dim}")
        self.outputs = {name: int(c) for name, c in outputs.items() if c > 0}
        tokens = sum(self.outputs.values())
        config = Sam2MaskDecoderConfig(hidden_size=dim, mlp_dim=mlp_dim, num_hidden_layers=depth,
                                       num_attention_heads=heads, attention_downsample_rate=2)
        config._attn_implementation = "sdpa"
        self.mask_tokens = nn.Embedding(tokens, dim)
        self.no_prompt = nn.Embedding(1, dim)
        self.positional_embedding = Sam2PositionalEmbedding(Sam2PromptEncoderConfig(hidden_size=dim))
        self.transformer = Sam2TwoWayTransformer(config)
        self.conv_s0 = nn.Conv2d(dim, dim // 8, kernel_size=1)
        self.conv_s1 = nn.Conv2d(dim, dim // 4, kernel_size=1)
        self.upscale_conv1 = nn.ConvTranspose2d(dim, dim // 4, kernel_size=2, stride=2)
        self.upscale_layer_norm = Sam2LayerNorm(dim // 4, data_format="channels_first")
        self.upscale_conv2 = nn.ConvTranspose2d(dim // 4, dim // 8, kernel_size=2, stride=2)
        self.activation = nn.GELU()
        self.output_hypernetworks_mlps = nn.ModuleList(Sam2FeedForward(dim, dim, dim // 8, 3) for _ in range(tokens))

    def grid_positions(self, h: int, w: int, like: torch.Tensor) -> torch.Tensor:
        """SAM's dense positional encoding of an h x w grid of cell centres: (1, D, h, w)."""
        y = (torch.arange(h, device=like.device, dtype=torch.float32) + 0.5) / h
        x = (torch.arange(w, device=like.device, dtype=torch.float32) + 0.5) / w
        grid = torch.stack(torch.meshgrid(x, y, indexing="xy"), dim=-1)  # (h, w, 2) as (x, y)
        return self.positional_embedding(grid).permute(2, 0, 1).unsqueeze(0)

    def forward(self, image_embedding: torch.Tensor, high_resolution: Sequence[torch.Tensor],
                prompt: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        b, d, h, w = image_embedding.shape
        dense = self.no_prompt.weight.reshape(1, d, 1, 1) if prompt is None else prompt
        # (B, point batch 1, tokens, D); a copy, not a view of the weight: torch's module tracker (FLOP
        # counting) cannot hook a no-grad view of a parameter
        queries = self.mask_tokens.weight.repeat(b, 1, 1, 1)
        positions = self.grid_positions(h, w, image_embedding).to(image_embedding.dtype).expand(b, -1, -1, -1)
        queries, keys = self.transformer(point_embeddings=queries, image_embeddings=image_embedding + dense,
                                         image_positional_embeddings=positions, attention_similarity=None)
        refined = keys.squeeze(1).transpose(1, 2).reshape(b, d, h, w)
        fine, middle = high_resolution
        upscaled = self.activation(self.upscale_layer_norm(self.upscale_conv1(refined) + self.conv_s1(middle)))
        upscaled = self.activation(self.upscale_conv2(upscaled) + self.conv_s0(fine))
        tokens = queries.squeeze(1)
        hyper = torch.stack([mlp(tokens[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1)
        masks = (hyper @ upscaled.flatten(2)).reshape(b, -1, *upscaled.shape[-2:])
        return dict(zip(self.outputs, masks.split(list(self.outputs.values()), dim=1)))
