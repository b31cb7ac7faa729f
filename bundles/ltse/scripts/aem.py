"""Adaptive Expert Mixture (AEM, Sec. 2.2, Fig. 2): n SAM mask decoders mixed by a top-k gate.

    m_i = F_Ei(f_img, f_prom)                    eq. 4, each expert a SAM mask decoder
    w   = F_G(f_img, f_prom)                     eq. 5, the gate network of Fig. 2
    y   = sum_i w_i * m_i                        eq. 6

Gate F_G (Fig. 2): self-attention on the prompt tokens f_prom (all [SEG]s of one instruction attend to each
other; SAM gives one sparse token per [SEG], so per [SEG] alone the attention would be a no-op), then two cross-attention layers
(prompt queries; image keys = f_img + SAM's positional encoding, values = f_img), each attention
followed by add & LayerNorm; mean over the prompt tokens; MLP (Linear, ReLU, Linear); a linear
layer to n logits; softmax; the top k weights are kept, the rest set to 0, and the kept ones
renormalised to sum to 1.

Shapes for one image with N prompts: f_img (1, C, h, w), positional encoding (1, C, h, w), sparse
prompt tokens (N, T, C), dense prompt (N, C, h, w) -> gate weights (N, n) and mixed mask logits
(N, 1, 4h, 4w). Every expert runs (the unselected ones with weight 0), so all parameters take
part in every step and data-parallel training needs no unused-parameter search.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


def top_k_weights(probs: torch.Tensor, k: int) -> torch.Tensor:
    """(N, n) gate probabilities -> (N, n) weights: the k largest renormalised to sum 1, the rest 0."""
    values, index = probs.topk(k, dim=-1)
    return torch.zeros_like(probs).scatter(-1, index, values / values.sum(dim=-1, keepdim=True))


def run_decoder(decoder: nn.Module, image_embedding: torch.Tensor, image_pe: torch.Tensor, sparse: torch.Tensor,
                dense: torch.Tensor) -> torch.Tensor:
    """One SAM mask decoder, single-mask output: (N, 1, 4h, 4w) logits."""
    masks, _ = decoder(image_embeddings=image_embedding, image_pe=image_pe, sparse_prompt_embeddings=sparse,
                       dense_prompt_embeddings=dense, multimask_output=False)
    return masks


class ExpertGate(nn.Module):
    """F_G (Fig. 2): prompt self-attention, two prompt-to-image cross-attentions, MLP, linear, softmax, top-k."""

    def __init__(self, dim: int, num_experts: int, top_k: int, num_heads: int = 8, mlp_dim: int = 1024):
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k must be between 1 and num_experts={num_experts}, got {top_k}")
        self.top_k = top_k
        self.self_attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.cross_attn = nn.ModuleList(nn.MultiheadAttention(dim, num_heads, batch_first=True) for _ in range(2))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(3))
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.ReLU(), nn.Linear(mlp_dim, dim))
        self.head = nn.Linear(dim, num_experts)

    def forward(self, prompts: torch.Tensor, image_embedding: torch.Tensor,
                image_pe: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """prompts (N, T, C), image (1, C, h, w), positional encoding (1, C, h, w) -> weights, probabilities (N, n)."""
        n = prompts.shape[0]
        values = image_embedding.flatten(2).transpose(1, 2).expand(n, -1, -1)  # (N, hw, C)
        keys = values + image_pe.flatten(2).transpose(1, 2)
        # self-attention over all prompt tokens of the instruction together (its N [SEG]s x T tokens each):
        # per [SEG] alone it would attend over SAM's single sparse token, a no-op
        joint = prompts.reshape(1, -1, prompts.shape[-1])
        x = self.norms[0](prompts + self.self_attn(joint, joint, joint, need_weights=False)[0].reshape(prompts.shape))
        for attn, norm in zip(self.cross_attn, self.norms[1:]):
            x = norm(x + attn(x, keys, values, need_weights=False)[0])
        probs = self.head(self.mlp(x.mean(dim=1))).softmax(dim=-1)
        return top_k_weights(probs, self.top_k), probs


class AdaptiveExpertMixture(nn.Module):
    """n expert mask decoders (eq. 4) mixed by :class:`ExpertGate` weights (eqs. 5-6).

    Args:
        experts: the n SAM mask decoders (``SamEncoder.new_mask_decoder()``).
        dim: prompt / image embedding width C (256 for SAM).
        top_k: experts kept per prompt.
        gate_heads, gate_mlp_dim: attention heads and MLP width of the gate.
    """

    def __init__(self, experts: Sequence[nn.Module], dim: int, top_k: int = 2, gate_heads: int = 8,
                 gate_mlp_dim: int = 1024):
        super().__init__()
        if len(experts) < 2:
            raise ValueError(f"an expert mixture needs at least 2 experts, got {len(experts)}; "
                             "for one decoder set use_aem=false")
        self.experts = nn.ModuleList(experts)
        self.gate = ExpertGate(dim, len(experts), top_k, gate_heads, gate_mlp_dim)

    def forward(self, image_embedding: torch.Tensor, image_pe: torch.Tensor, sparse: torch.Tensor,
                dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> mixed mask logits (N, 1, 4h, 4w) and gate weights (N, n)."""
        weights, _ = self.gate(sparse, image_embedding, image_pe)
        masks = torch.stack([run_decoder(e, image_embedding, image_pe, sparse, dense) for e in self.experts], dim=1)
        return torch.einsum("ne,nechw->nchw", weights, masks), weights
