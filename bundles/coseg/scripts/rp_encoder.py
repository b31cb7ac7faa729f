"""RP-Encoder: region-aware prompts from a task's mask logits (Co-Seg, Sec. 2.2, eqs. 4-5).

    m = Conv_2(GELU(LN(Conv_1(mu))))                      eq. 4
    g = CrossAttention(SelfAttention(m), z, z)            eq. 5

``mu``: mask logits at input size (B, C_mu, H, W). ``Conv_1`` brings them to the image-embedding grid
(stride 16) as two 4x4 stride-4 convolutions, each followed by LayerNorm and GELU, through
``hidden_channels / 4`` and ``hidden_channels`` (16) channels: SAM2's mask-prompt embedding with
stride 4 instead of 2, as the authors' code (``prompt_patch_embed: official``); the paper's single 16x16
convolution, the default, is ``network.PaperMaskEmbedding``. ``Conv_2``
is a 1x1 convolution to the embedding width D, giving m (B, D, H/16, W/16).

The region-aware part is one pre-norm transformer layer on the m tokens, laid out as SAM2's memory
attention layer: self-attention with 2D axial rotary positions (RoPE), cross-attention to the image
embedding z (B, D, H/16, W/16) with RoPE on queries and keys (both on the same grid), and a
feed-forward network (D -> ffn_dim -> D, ReLU), each as ``x + Dropout(f(LayerNorm(x)))``.

Reused from transformers: ``Sam2LayerNorm``. The RoPE attention is :class:`RoPEAttention` here, with the
rotary table of :meth:`RegionAttention.rope`: the same computation as transformers' SAM2 memory attention
(``Sam2VideoRoPEAttention``, ``Sam2VideoVisionRotaryEmbedding``; tests compare them), which has no
working ONNX form (an empty "excluded keys" concatenation; a rotary table onnxruntime cannot load).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.models.sam2.modeling_sam2 import Sam2LayerNorm


def rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...): the rotation of each channel pair by 90 degrees."""
    pairs = x.unflatten(-1, (-1, 2))
    return torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)


class RoPEAttention(nn.Module):
    """Multi-head attention with 2D rotary positions on queries and keys (keys on the queries' grid).

    Forward: ``query`` (B, Nq, dim), ``key``/``value`` (B, Nq, dim), ``position_embeddings`` (cos, sin) of
    shape (1, Nq, head_dim) -> (B, Nq, dim).
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, query, key, value, position_embeddings) -> torch.Tensor:
        split = lambda x: x.unflatten(-1, (self.heads, -1)).transpose(1, 2)  # (B, heads, N, head_dim)
        q, k, v = split(self.q_proj(query)), split(self.k_proj(key)), split(self.v_proj(value))
        cos, sin = (t.unsqueeze(1) for t in position_embeddings)
        q = (q.float() * cos + rotate_pairs(q.float()) * sin).type_as(v)  # rotation in float32, as SAM2
        k = (k.float() * cos + rotate_pairs(k.float()) * sin).type_as(v)
        out = nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.o_proj(out.transpose(1, 2).flatten(2))


class MaskEmbedding(nn.Sequential):
    """Eq. 4: (B, C_mu, H, W) logits -> (B, dim, H/16, W/16)."""

    def __init__(self, in_channels: int, dim: int, hidden_channels: int = 16):
        if hidden_channels % 4:
            raise ValueError(f"the RP-Encoder's hidden_channels must be a multiple of 4, got {hidden_channels}")
        narrow = hidden_channels // 4
        super().__init__(
            nn.Conv2d(in_channels, narrow, kernel_size=4, stride=4),
            Sam2LayerNorm(narrow, data_format="channels_first"),
            nn.GELU(),
            nn.Conv2d(narrow, hidden_channels, kernel_size=4, stride=4),
            Sam2LayerNorm(hidden_channels, data_format="channels_first"),
            nn.GELU(),
            nn.Conv2d(hidden_channels, dim, kernel_size=1),
        )


class RegionAttention(nn.Module):
    """Eq. 5 as one pre-norm layer: RoPE self-attention, RoPE cross-attention to z, FFN.

    Forward: ``prompt`` m and ``image_embedding`` z, both (B, dim, h, w) -> (B, dim, h, w).
    """

    def __init__(self, dim: int, heads: int = 1, ffn_dim: int = 2048, dropout: float = 0.1,
                 rope_theta: float = 10000.0):
        super().__init__()
        if dim % heads or (dim // heads) % 4:
            raise ValueError(f"RP-Encoder attention: width {dim} must split into {heads} heads of a multiple of 4 "
                             "channels (2D rotary positions)")
        # SAM2's axial RoPE: head_dim / 4 frequencies, applied to x (first half) and y (second half)
        quarter = torch.arange(0, dim // heads // 2, 2, dtype=torch.float32) / (dim // heads // 2)
        self.register_buffer("inv_freq", 1.0 / rope_theta ** quarter, persistent=False)
        self.self_attn = RoPEAttention(dim, heads, dropout)
        self.cross_attn = RoPEAttention(dim, heads, dropout)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ffn_dim, dim))
        self.dropout1, self.dropout2, self.dropout3 = nn.Dropout(dropout), nn.Dropout(dropout), nn.Dropout(dropout)

    def rope(self, h: int, w: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin of the axial rotary angles of an h x w grid, (1, h*w, head_dim) each: per token the
        column angles then the row angles, each angle for a pair of channels (SAM2's layout)."""
        rows, cols = torch.meshgrid(torch.arange(h, device=like.device), torch.arange(w, device=like.device),
                                    indexing="ij")
        inv_freq = self.inv_freq.to(like.device)
        angles = torch.cat([cols.reshape(-1, 1).float() * inv_freq, rows.reshape(-1, 1).float() * inv_freq], dim=-1)
        angles = torch.stack([angles, angles], dim=-1).flatten(-2)[None]  # each angle for a channel pair
        return angles.cos(), angles.sin()

    def forward(self, prompt: torch.Tensor, image_embedding: torch.Tensor) -> torch.Tensor:
        b, d, h, w = prompt.shape
        x = prompt.flatten(2).transpose(1, 2)  # (B, hw, D)
        z = image_embedding.flatten(2).transpose(1, 2)
        positions = self.rope(h, w, x)
        q = self.norm1(x)
        x = x + self.dropout1(self.self_attn(q, q, q, positions))
        q = self.norm2(x)
        x = x + self.dropout2(self.cross_attn(q, z, z, positions))
        x = x + self.dropout3(self.ffn(self.norm3(x)))
        return x.transpose(1, 2).reshape(b, d, h, w)


class RPEncoder(nn.Module):
    """Mask logits -> a dense prompt g for a task decoder (eqs. 4-5).

    Args:
        in_channels: channels of the logits it reads (tissue classes, or 1 for the nuclei logit).
        dim: embedding width D (the image encoder's FPN width).
        hidden_channels: channels after the second strided convolution (SAM2: 16).
        region_attention: the region-aware layer of eq. 5; False leaves the convolutional mask
            embedding of eq. 4 alone, as SAM2 embeds a mask prompt ("without RP-Encoder", Table 4).
        heads, ffn_dim, dropout, rope_theta: that layer's attention heads, FFN width, dropout and RoPE base.

    Forward: ``logits`` (B, C_mu, H, W), ``image_embedding`` (B, D, H/16, W/16) -> (B, D, H/16, W/16).
    """

    def __init__(self, in_channels: int, dim: int, hidden_channels: int = 16, region_attention: bool = True,
                 heads: int = 1, ffn_dim: int = 2048, dropout: float = 0.1, rope_theta: float = 10000.0):
        super().__init__()
        self.embed = MaskEmbedding(in_channels, dim, hidden_channels)
        self.region_attention = RegionAttention(dim, heads, ffn_dim, dropout, rope_theta) if region_attention else None

    def forward(self, logits: torch.Tensor, image_embedding: torch.Tensor) -> torch.Tensor:
        prompt = self.embed(logits)
        if prompt.shape[-2:] != image_embedding.shape[-2:]:
            raise ValueError(f"mask logits of size {tuple(logits.shape[-2:])} give a {tuple(prompt.shape[-2:])} "
                             f"prompt, but the image embedding is {tuple(image_embedding.shape[-2:])}: pass logits "
                             "at the input image's size (16x the embedding)")
        if self.region_attention is None:
            return prompt
        return self.region_attention(prompt, image_embedding)
