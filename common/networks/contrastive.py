"""Image-text contrastive losses with soft (target-informed) pairing."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pairwise_dice(masks: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Dice coefficient between every pair of binary masks in a batch.

    Args:
        masks: (B, ...) tensor; values > 0.5 are foreground.
    Returns:
        (B, B) matrix ``D[p, q] = 2|M_p ∩ M_q| / (|M_p| + |M_q|)``. Two empty
        masks are identical targets and get 1; an empty and a non-empty mask get 0.
    """
    flat = (masks.reshape(masks.shape[0], -1) > 0.5).float()
    inter = flat @ flat.T
    sizes = flat.sum(dim=1)
    return (2.0 * inter + eps) / (sizes[:, None] + sizes[None, :] + eps)


def soft_targets(similarity: torch.Tensor, temperature: float) -> torch.Tensor:
    """Row-wise softmax of a (B, B) similarity matrix with temperature τ1 (rows sum to 1)."""
    return torch.softmax(similarity.float() / temperature, dim=1)


def soft_contrastive_loss(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    pair_similarity: torch.Tensor | None = None,
    target_temperature: float = 0.1,
    temperature: float = 0.07,
) -> torch.Tensor:
    """Bidirectional cross-entropy between softmax(cos/τ2) and soft pairing targets.

    ``L = -1/B Σ_p Σ_q d_pq log s_pq`` (TMCA eq. 1), where ``s_pq`` is the
    softmax over q of the cosine similarity of image p and text q (temperature
    τ2) and ``d_pq`` the softmax over q of ``pair_similarity[p, q]`` (temperature
    τ1), e.g. the Dice between the ground truths of samples p and q (TSDM). The
    text→image direction uses the transposed matrices; the two are averaged.
    With ``pair_similarity=None`` the targets are one-to-one (CLIP/InfoNCE),
    i.e. TSDM switched off.

    Args:
        image_emb, text_emb: (B, D) paired embeddings (row p of each belongs to sample p).
        pair_similarity: (B, B) semantic similarity of sample p and sample q, or None.
        target_temperature: τ1.
        temperature: τ2.
    """
    if image_emb.shape != text_emb.shape or image_emb.ndim != 2:
        raise ValueError(
            f"expected two (B, D) tensors of equal shape, got {tuple(image_emb.shape)} and {tuple(text_emb.shape)}"
        )
    batch = image_emb.shape[0]
    if pair_similarity is None:
        eye = torch.eye(batch, device=image_emb.device)
        target_i2t, target_t2i = eye, eye
    else:
        if pair_similarity.shape != (batch, batch):
            raise ValueError(f"pair_similarity must be ({batch}, {batch}), got {tuple(pair_similarity.shape)}")
        target_i2t = soft_targets(pair_similarity, target_temperature)
        target_t2i = soft_targets(pair_similarity.T, target_temperature)
    logits = F.normalize(image_emb.float(), dim=-1) @ F.normalize(text_emb.float(), dim=-1).T / temperature
    loss_i2t = -(target_i2t * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    loss_t2i = -(target_t2i * F.log_softmax(logits.T, dim=1)).sum(dim=1).mean()
    return 0.5 * (loss_i2t + loss_t2i)
