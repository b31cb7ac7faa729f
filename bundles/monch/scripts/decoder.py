"""MONCH's fusion, progressive prompt decoder (PPD) and text-conditioned dynamic head.

* :class:`FPNFusion`: FPN-like top-down fusion of three maps (coarse, middle, fine) into
  one "blended" map at the fine resolution (Fig. 1).
* :class:`QueryStage`: one pre-norm multi-head cross-attention step, ``query`` attending to
  ``context`` (eq. 7), with a residual and an optional feed-forward block.
* :class:`ProgressivePromptDecoder`: ``F^h`` queries ``F^v``, the result queries ``F^t``, then the
  class-prompt text features ``F^T``, then the blended map; a final merge (conv on the
  concatenation with the blended map) (Fig. 2). Each stage can be switched off (Table 5): its
  query is then carried over unchanged to the next stage.
* :class:`DynamicHead`: eq. 8 - visual convs ``G_v``, a linear map of each class's text
  embedding to 1x1 (or kxk) kernel weights, and one grouped convolution over the batch
  (the batch folded into channels, ``groups = B``), giving one logit map per class.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .mgfe import ConvBlock, group_norm

KERNEL_CONTEXTS = ("text", "text+image")


def resize_to(x: torch.Tensor, size) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def sincos_2d(height: int, width: int, dim: int, device=None, dtype=torch.float32, reference: int = 64) -> torch.Tensor:
    """Fixed 2-D sine-cosine position code (H*W, dim); half the channels for rows, half for columns.

    Positions are pixel centres normalised to the image, ``(i + 0.5) / H``, times ``reference``: a
    place in the image gets the same code on every grid, so a fine query and its coarse keys agree
    about where things are (integer indices would not: cell 1 of a 3-grid is cell 4 of a 9-grid).
    ``reference`` sets the frequency scale (as integer indices on a ``reference``-wide grid).
    """
    quarter = max(1, dim // 4)
    omega = 1.0 / (10000 ** (torch.arange(quarter, device=device, dtype=torch.float32) / quarter))
    ys = ((torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height * reference)[:, None] * omega[None]
    xs = ((torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width * reference)[:, None] * omega[None]
    ys = torch.cat([ys.sin(), ys.cos()], dim=1)[:, None, :].expand(height, width, -1)
    xs = torch.cat([xs.sin(), xs.cos()], dim=1)[None, :, :].expand(height, width, -1)
    code = torch.cat([ys, xs], dim=-1).reshape(height * width, -1)
    if code.shape[1] < dim:
        code = F.pad(code, (0, dim - code.shape[1]))
    return code[:, :dim].to(dtype)


def to_tokens(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).transpose(1, 2)


def to_map(tokens: torch.Tensor, size) -> torch.Tensor:
    b, _, c = tokens.shape
    return tokens.transpose(1, 2).reshape(b, c, *size)


class FPNFusion(nn.Module):
    """Top-down FPN over (coarse, middle, fine) maps of C channels -> one C-channel map at the fine size."""

    def __init__(self, channels: int):
        super().__init__()
        self.lateral = nn.ModuleList([nn.Conv2d(channels, channels, 1) for _ in range(3)])
        self.smooth = nn.ModuleList([ConvBlock(channels, channels) for _ in range(3)])
        self.fuse = nn.Sequential(nn.Conv2d(3 * channels, channels, 1, bias=False), group_norm(channels), nn.GELU())

    def forward(self, coarse: torch.Tensor, middle: torch.Tensor, fine: torch.Tensor) -> torch.Tensor:
        p_c = self.lateral[0](coarse)
        p_m = self.lateral[1](middle) + resize_to(p_c, middle.shape[-2:])
        p_f = self.lateral[2](fine) + resize_to(p_m, fine.shape[-2:])
        levels = [resize_to(s(p), fine.shape[-2:]) for s, p in zip(self.smooth, (p_c, p_m, p_f))]
        return self.fuse(torch.cat(levels, dim=1))


class QueryStage(nn.Module):
    """``q + MHA(LN(q), LN(kv))`` (eq. 7), then ``+ FFN(LN(.))`` when ``ffn_ratio > 0``."""

    def __init__(self, dim: int, num_heads: int = 8, ffn_ratio: float = 2.0, dropout: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention_heads={num_heads} must divide feature_channels={dim}")
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        hidden = int(dim * ffn_ratio)
        self.ffn = None
        if hidden > 0:
            self.norm_ffn = nn.LayerNorm(dim)
            self.ffn = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, query: torch.Tensor, context: torch.Tensor, query_pos: torch.Tensor | None = None,
                context_pos: torch.Tensor | None = None) -> torch.Tensor:
        q = self.norm_q(query)
        kv = self.norm_kv(context)
        k = kv if context_pos is None else kv + context_pos
        q_in = q if query_pos is None else q + query_pos
        out = query + self.attn(q_in, k, kv, need_weights=False)[0]
        if self.ffn is not None:
            out = out + self.ffn(self.norm_ffn(out))
        return out


class ProgressivePromptDecoder(nn.Module):
    """Fig. 2: ``F^h -> F^v -> F^t -> F^T -> blended``, then merge.

    Args:
        channels: C (token width).
        num_heads: heads of every attention stage.
        stages: which of the four query stages run, in the paper's names
            ``(q_h, q_v, q_t, q_T)``: ``q_h`` = ``F^h`` queries ``F^v``; ``q_v`` = the result queries
            ``F^t``; ``q_t`` = it queries the text ``F^T``; ``q_T`` = it queries the blended map.
        ffn_ratio: width of each stage's feed-forward block (0: none).
        pos_encoding: add 2-D sine-cosine positions to image queries and keys.

    Forward: ``fh`` (B,C,Hf,Wf), ``fv`` (B,C,Hm,Wm), ``ft`` (B,C,Hc,Wc), ``text`` (B,T,C),
    ``blended`` (B,C,Hf,Wf) -> merged (B,C,Hf,Wf).
    """

    def __init__(self, channels: int, num_heads: int = 8, stages=(True, True, True, True), ffn_ratio: float = 2.0,
                 pos_encoding: bool = True):
        super().__init__()
        if len(stages) != 4:
            raise ValueError(f"the decoder has four query stages (q_h, q_v, q_t, q_T), got {stages}")
        self.enabled = [bool(s) for s in stages]
        self.stages = nn.ModuleList(
            [QueryStage(channels, num_heads, ffn_ratio) if on else nn.Identity() for on in self.enabled])
        self.pos_encoding = pos_encoding
        self.merge = ConvBlock(2 * channels, channels)

    def _pos(self, x: torch.Tensor) -> torch.Tensor | None:
        if not self.pos_encoding:
            return None
        return sincos_2d(x.shape[-2], x.shape[-1], x.shape[1], device=x.device, dtype=x.dtype)[None]

    def forward(self, fh, fv, ft, text, blended) -> torch.Tensor:
        size = fh.shape[-2:]
        query, query_pos = to_tokens(fh), self._pos(fh)
        contexts = [(to_tokens(fv), self._pos(fv)), (to_tokens(ft), self._pos(ft)), (text, None),
                    (to_tokens(blended), self._pos(blended))]
        for on, stage, (context, context_pos) in zip(self.enabled, self.stages, contexts):
            if on:  # off: the query is carried over to the next stage (Table 5 "×")
                query = stage(query, context, query_pos, context_pos)
        return self.merge(torch.cat([to_map(query, size), blended], dim=1))


class DynamicHead(nn.Module):
    """Eq. 8: text -> linear -> per-class conv kernels, applied to ``G_v(F)`` by one grouped conv.

    Args:
        in_channels: C of the merged feature.
        text_dim: width of the class text embeddings.
        hidden_channels: channels after ``G_v`` (the kernels' input channels).
        upsample: number of 2x transposed-conv stages inside ``G_v`` (resolution of the logits before
            the final bilinear resize to the input size).
        kernel_size: size of the dynamic kernels.
        kernel_context: ``text`` (eq. 8, the same kernels for every image) or ``text+image`` (each
            class's text concatenated with the image's pooled feature, so kernels differ per image).

    Forward: ``x`` (B, C, H, W), ``text`` (K, D) or (B, K, D) -> logits (B, K, H', W').
    """

    def __init__(self, in_channels: int, text_dim: int, hidden_channels: int = 32, upsample: int = 2,
                 kernel_size: int = 1, kernel_context: str = "text"):
        super().__init__()
        if kernel_context not in KERNEL_CONTEXTS:
            raise ValueError(f"kernel_context must be one of {KERNEL_CONTEXTS}, got {kernel_context!r}")
        layers: list[nn.Module] = [ConvBlock(in_channels, hidden_channels)]
        for _ in range(int(upsample)):
            layers += [nn.ConvTranspose2d(hidden_channels, hidden_channels, 2, stride=2), group_norm(hidden_channels),
                       nn.GELU()]
        layers.append(ConvBlock(hidden_channels, hidden_channels))
        self.visual = nn.Sequential(*layers)  # G_v
        self.kernel_context = kernel_context
        self.kernel_size = int(kernel_size)
        self.hidden_channels = hidden_channels
        context_dim = text_dim + (in_channels if kernel_context == "text+image" else 0)
        n_weights = hidden_channels * self.kernel_size ** 2
        self.controller = nn.Linear(context_dim, n_weights + 1)  # G_linear; G_weight reshapes its output
        nn.init.normal_(self.controller.weight, std=1.0 / math.sqrt(context_dim * hidden_channels))
        nn.init.zeros_(self.controller.bias)

    def kernels(self, x: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = x.shape[0]
        if text.ndim == 2:
            text = text.unsqueeze(0).expand(b, -1, -1)
        if self.kernel_context == "text+image":
            pooled = x.mean(dim=(2, 3))[:, None, :].expand(-1, text.shape[1], -1)
            text = torch.cat([text, pooled], dim=-1)
        params = self.controller(text.to(x.dtype))  # (B, K, Ch*k*k + 1)
        k = self.kernel_size
        weight = params[..., :-1].reshape(b * text.shape[1], self.hidden_channels, k, k)
        return weight, params[..., -1].reshape(-1)

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        feat = self.visual(x)
        b, c, h, w = feat.shape
        weight, bias = self.kernels(x, text)
        num_classes = weight.shape[0] // b
        if self.kernel_size == 1:
            # a 1x1 dynamic kernel is a per-image matrix product: the same numbers as the grouped convolution
            # below, and a graph whose shapes do not depend on the batch (ONNX exports it)
            out = torch.einsum("bkc,bchw->bkhw", weight.reshape(b, num_classes, c), feat)
            return out + bias.reshape(b, num_classes, 1, 1)
        # G_reshape: (B, C, H, W) -> (1, B*C, H, W); one group per image
        out = F.conv2d(feat.reshape(1, b * c, h, w), weight, bias, padding=self.kernel_size // 2, groups=b)
        return out.reshape(b, num_classes, h, w)
