"""FLOP counting against hand counts (the benchmark's GFLOPs columns come from here)."""

import torch
from torch import nn

from common.evaluation.cost import forward_flops, parameter_counts


def test_one_attention_block_counts_its_projections():
    """nn.MultiheadAttention(E=64), 10 queries, 7 keys: q/k/v/out projections and the two matrix products."""
    e, l, s = 64, 10, 7
    attn = nn.MultiheadAttention(e, num_heads=4, batch_first=True).eval()
    q, kv = torch.randn(1, l, e), torch.randn(1, s, e)
    by_hand = 2 * e * e * (l + s + s + l) + 2 * l * s * e + 2 * l * s * e
    total, per_module = forward_flops(attn, q, kv, kv, need_weights=False)
    assert total == by_hand  # under no_grad + eval the fused fast path hid the projections (only 2*l*s*e*2 counted)
    assert per_module["Global"] == by_hand


def test_self_attention_block_counts_its_projections_and_products():
    """Self-attention (q = k = v, the ViT's case): eval mode without gradients is exactly when PyTorch takes its fused
    fast path, which a plain FlopCounterMode sees as 0 FLOPs. E=64, 10 tokens, by hand: the packed q/k/v projection
    2*L*E*3E, q.k^T 2*L*L*E, attention.v 2*L*L*E, the output projection 2*L*E*E."""
    from torch.utils.flop_counter import FlopCounterMode

    e, l = 64, 10
    attn = nn.MultiheadAttention(e, num_heads=4, batch_first=True).eval()
    x = torch.randn(1, l, e)
    by_hand = 2 * l * e * 3 * e + 2 * l * l * e + 2 * l * l * e + 2 * l * e * e
    assert by_hand == 353280
    with torch.no_grad(), FlopCounterMode(display=False) as plain:
        attn(x, x, x, need_weights=False)
    assert plain.get_total_flops() == 0  # the case this test is about: the fused kernel is invisible to the counter
    total, per_module = forward_flops(attn, x, x, x, need_weights=False)
    assert total == by_hand
    assert per_module["Global"] == by_hand


def test_parameter_counts():
    net = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    net[0].requires_grad_(False)
    assert parameter_counts(net) == {"total": 16 + 10, "trainable": 10}
