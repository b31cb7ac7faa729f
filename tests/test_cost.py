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


def test_parameter_counts():
    net = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    net[0].requires_grad_(False)
    assert parameter_counts(net) == {"total": 16 + 10, "trainable": 10}
