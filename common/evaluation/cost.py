"""What a network costs: parameters and forward FLOPs.

FLOPs come from ``torch.utils.flop_counter`` (one multiply-add counts as two). The count runs with
``nn.MultiheadAttention``'s fused fast path switched off (in eval mode without gradients that path
calls one fused kernel the counter does not see, so the input and output projections of every
attention block went uncounted, and self-attention, where q = k = v, read as 0) and with
scaled-dot-product attention on its math backend (the fused CPU kernel is not counted either). For scale:
the ViT-H-14 image tower MONCH runs on a 256x256 patch (padded to 266x266, 19x19 tokens) counts 477.5
GFLOPs this way.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn


@contextlib.contextmanager
def attention_fast_path(enabled: bool):
    """Switch ``nn.MultiheadAttention``'s fused eval-mode kernel on or off while the block runs."""
    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(enabled)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)


def forward_flops(module: nn.Module, *inputs, **kwargs) -> tuple[int, dict[str, int]]:
    """FLOPs of one forward of ``module`` (in its current train/eval mode, without gradients) and the
    FLOPs per submodule name (``FlopCounterMode.get_flop_counts()``, summed over operators)."""
    from torch.utils.flop_counter import FlopCounterMode

    from torch.nn.attention import SDPBackend, sdpa_kernel

    with attention_fast_path(False), sdpa_kernel(SDPBackend.MATH), torch.no_grad(), \
            FlopCounterMode(display=False) as counter:
        module(*inputs, **kwargs)
    per_module = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    return counter.get_total_flops(), per_module


def parameter_counts(module: nn.Module) -> dict[str, int]:
    """``total`` and ``trainable`` parameter counts."""
    params = list(module.parameters())
    return {"total": sum(p.numel() for p in params), "trainable": sum(p.numel() for p in params if p.requires_grad)}
