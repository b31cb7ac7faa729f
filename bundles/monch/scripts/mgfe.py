"""MONCH's multi-grained visual feature extraction (MGFE, paper Sec. 3.2, Fig. 1).

From the image encoder's spatial map ``F^m`` (B, C, h, w):

* ``F^f = up(F^m)`` (B, C, 2h, 2w) and ``F^c = down(F^m)`` (B, C, h/2, w/2)  (eq. 1);
* ``F^h = IFFT(H(FFT(F^f))) + F^f``: an ideal high-pass filter in the Fourier domain plus a
  residual (eqs. 2-4), :class:`HighFrequencyModule`;
* ``F^v = conv(F^m)``: a 3x3 convolution block;
* ``F^t = F^k + F^c``: dilated-KNN topology on a channel-halved ``F^c`` (eqs. 5-6),
  :class:`TopologyModule`.

Choices the paper leaves open are constructor arguments (see the model card):
``highpass_cutoff`` (a radius in units of the Nyquist frequency of ``F^f``'s grid),
``knn_k``, ``knn_dilation`` and ``topology_aggregation`` (how the k neighbours become one
feature vector per position).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

AGGREGATIONS = ("max_relative", "mean", "edge")


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with 8 groups where the channels divide (batch-size independent, DDP friendly)."""
    groups = 8 if channels % 8 == 0 else (4 if channels % 4 == 0 else 1)
    return nn.GroupNorm(groups, channels)


class ConvBlock(nn.Sequential):
    """3x3 conv -> GroupNorm -> GELU (the paper's "Conv3*3" block)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False),
            group_norm(out_channels),
            nn.GELU(),
        )


class UpScale(nn.Sequential):
    """``G_us``: 2x transposed convolution, then a conv block: (B, C, h, w) -> (B, C, 2h, 2w)."""

    def __init__(self, channels: int):
        super().__init__(nn.ConvTranspose2d(channels, channels, 2, stride=2), group_norm(channels), nn.GELU(),
                         ConvBlock(channels, channels))


class DownScale(nn.Sequential):
    """``G_ds``: stride-2 3x3 conv block: (B, C, h, w) -> (B, C, ceil(h/2), ceil(w/2))."""

    def __init__(self, channels: int):
        super().__init__(ConvBlock(channels, channels, stride=2))


def _frequencies(n: int, device=None) -> torch.Tensor:
    """The DFT bin frequencies of an ``n``-point axis in cycles per pixel, ``torch.fft.fftfreq`` order
    (0, 1/n, ..., then the negative ones), from ``arange`` so that a traced or exported graph holds no
    ``fftfreq``."""
    k = torch.arange(n, device=device, dtype=torch.float32)
    return torch.where(k < (n + 1) // 2, k, k - n) / n


def high_pass_mask(height: int, width: int, cutoff: float, device=None) -> torch.Tensor:
    """(H, W) boolean mask of the DFT bins (``torch.fft.fft2`` order) that an ideal high-pass keeps.

    A bin is kept when its radial frequency, measured in units of the Nyquist frequency
    (0.5 cycles/pixel on each axis), is at least ``cutoff``: 0 keeps everything, 1 keeps only the
    corners beyond Nyquist on both axes' radius. The cut-off is thus relative to the grid's resolution.
    """
    fy = _frequencies(height, device).abs() / 0.5
    fx = _frequencies(width, device).abs() / 0.5
    radius = torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)
    return radius >= cutoff


def _dft(n: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Real and imaginary parts (cos, -sin) of the orthonormal ``n``-point DFT matrix (symmetric)."""
    k = torch.arange(n, device=device, dtype=torch.float32)
    angle = 2 * math.pi * torch.outer(k, k) / n
    return torch.cos(angle) / math.sqrt(n), -torch.sin(angle) / math.sqrt(n)


def high_pass(x: torch.Tensor, cutoff: float) -> torch.Tensor:
    """Ideal high-pass of the last two (spatial) axes of ``x``: ``IDFT(mask * DFT(x))``, real part, float32.

    The 2-D DFT is written as products with the real and imaginary parts of the DFT matrices, the same
    numbers as ``torch.fft.fft2(..., norm="ortho")``: real matrix products only, so the module traces and
    exports to ONNX (which has no complex FFT); the feature maps it filters are small (F^f, 36x36 for a
    ViT-H at 256x256).
    """
    dtype = x.dtype
    with torch.autocast(device_type=x.device.type, enabled=False):
        x = x.float()
        h, w = x.shape[-2:]
        ah, bh = _dft(h, x.device)
        aw, bw = _dft(w, x.device)
        mask = high_pass_mask(h, w, cutoff, device=x.device).to(x.dtype)
        # X = F_H x F_W (F = A + iB), kept at the high-pass bins
        real = mask * (ah @ x @ aw - bh @ x @ bw)
        imag = mask * (ah @ x @ bw + bh @ x @ aw)
        # x' = Re(conj(F_H) X conj(F_W))
        z_real = ah @ real + bh @ imag
        z_imag = ah @ imag - bh @ real
        return (z_real @ aw + z_imag @ bw).to(dtype)


class HighFrequencyModule(nn.Module):
    """HF²EM, eqs. 2-4: ``F^h = IFFT(H(FFT(F^f))) + F^f`` (no weights of its own)."""

    def __init__(self, cutoff: float = 0.25):
        super().__init__()
        if not 0.0 <= float(cutoff) <= 1.5:
            raise ValueError(f"highpass_cutoff is a fraction of the Nyquist frequency (0..~1.41), got {cutoff}")
        self.cutoff = float(cutoff)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return high_pass(x, self.cutoff) + x


def pairwise_sq_distances(x: torch.Tensor) -> torch.Tensor:
    """Eq. 5 on (B, N, C) node features: ``D - 2 X X^T + D^T`` with ``D = ||x||^2`` -> (B, N, N), float32.

    Autocast is switched off here: in bf16 the difference of large squares loses the neighbour order.
    """
    with torch.autocast(device_type=x.device.type, enabled=False):
        x = x.float()
        sq = (x * x).sum(dim=-1, keepdim=True)
        return sq - 2 * x @ x.transpose(1, 2) + sq.transpose(1, 2)


def dilated_knn(x: torch.Tensor, k: int, dilation: int = 1) -> torch.Tensor:
    """Indices (B, N, k) of the dilated k nearest neighbours of each node of (B, N, C) features.

    The ``k * dilation`` nearest nodes (the node itself first, at distance 0) are sorted by distance
    and every ``dilation``-th is kept. On small graphs ``k`` and ``dilation`` shrink to fit ``N``.
    """
    n = x.shape[1]
    k = min(int(k), n)
    dilation = max(1, min(int(dilation), n // k))
    dist = pairwise_sq_distances(x)
    idx = dist.topk(k * dilation, dim=-1, largest=False, sorted=True).indices
    return idx[..., ::dilation]


def gather_neighbours(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """(B, N, C) features and (B, N, k) indices -> (B, N, k, C) neighbour features."""
    b, n, c = x.shape
    k = idx.shape[-1]
    flat = idx.reshape(b, n * k, 1).expand(-1, -1, c)
    return x.gather(1, flat).reshape(b, n, k, c)


class TopologyModule(nn.Module):
    """TSEM, eqs. 5-6: dilated-KNN graph feature ``F^k`` of the channel-halved ``F^c``, plus ``F^c``.

    ``F^c`` (B, C, h, w) -> 1x1 conv + GroupNorm to C/2 channels (``F^{c'}``) -> each of the h*w
    positions is a node; its ``k`` dilated nearest neighbours in feature space (eq. 5) are
    aggregated into one vector (``aggregation``):

    * ``max_relative`` (default): ``[x_i, max_j (x_j - x_i)]`` (max-relative graph convolution);
    * ``mean``: ``[x_i, mean_j x_j]``;
    * ``edge``: ``max_j MLP([x_i, x_j - x_i])`` (edge convolution).

    A 1x1 conv + GroupNorm + GELU maps that back to C channels (``F^k``); ``F^t = F^k + F^c``.
    """

    def __init__(self, channels: int, k: int = 9, dilation: int = 2, aggregation: str = "max_relative"):
        super().__init__()
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"topology_aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
        if k < 1 or dilation < 1:
            raise ValueError(f"knn_k and knn_dilation must be >= 1, got {k}, {dilation}")
        half = max(1, channels // 2)
        self.k, self.dilation, self.aggregation = int(k), int(dilation), aggregation
        self.reduce = nn.Sequential(nn.Conv2d(channels, half, 1, bias=False), group_norm(half))
        if aggregation == "edge":
            self.edge = nn.Sequential(nn.Linear(2 * half, half), nn.GELU())
            in_proj = half
        else:
            in_proj = 2 * half
        self.project = nn.Sequential(nn.Conv2d(in_proj, channels, 1, bias=False), group_norm(channels), nn.GELU())

    def graph_feature(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C/2, h, w) reduced features -> (B, C', h, w) aggregated neighbourhood features."""
        b, c, h, w = x.shape
        nodes = x.flatten(2).transpose(1, 2)  # (B, N, C/2)
        idx = dilated_knn(nodes, self.k, self.dilation)
        neigh = gather_neighbours(nodes, idx)  # (B, N, k, C/2)
        centre = nodes.unsqueeze(2)
        if self.aggregation == "max_relative":
            agg = torch.cat([nodes, (neigh - centre).amax(dim=2)], dim=-1)
        elif self.aggregation == "mean":
            agg = torch.cat([nodes, neigh.mean(dim=2)], dim=-1)
        else:
            pair = torch.cat([centre.expand_as(neigh), neigh - centre], dim=-1)
            agg = self.edge(pair).amax(dim=2)
        return agg.transpose(1, 2).reshape(b, -1, h, w)

    def forward(self, fc: torch.Tensor) -> torch.Tensor:
        return self.project(self.graph_feature(self.reduce(fc))) + fc


class MGFE(nn.Module):
    """The three MGFE branches, each switchable (paper Tables 3 and 4).

    Args:
        channels: C.
        use_mgfe: False reproduces Table 3's "MGFE ×": the decoder gets ``F^f, F^m, F^c`` unchanged.
        use_highpass, use_conv, use_topology: Table 4. A disabled high-pass or topology branch is
            replaced by a conv block (the paper's "×"); a disabled conv branch passes ``F^m`` on.
        highpass_cutoff, knn_k, knn_dilation, topology_aggregation: see the module docstring.

    Forward: ``(F^f, F^m, F^c)`` -> ``(F^h, F^v, F^t)`` with the same shapes.
    """

    def __init__(self, channels: int, use_mgfe: bool = True, use_highpass: bool = True, use_conv: bool = True,
                 use_topology: bool = True, highpass_cutoff: float = 0.25, knn_k: int = 9, knn_dilation: int = 2,
                 topology_aggregation: str = "max_relative"):
        super().__init__()
        self.use_mgfe = use_mgfe
        if not use_mgfe:
            self.high, self.conv, self.topo = nn.Identity(), nn.Identity(), nn.Identity()
            return
        self.high = HighFrequencyModule(highpass_cutoff) if use_highpass else ConvBlock(channels, channels)
        self.conv = ConvBlock(channels, channels) if use_conv else nn.Identity()
        self.topo = (TopologyModule(channels, knn_k, knn_dilation, topology_aggregation) if use_topology
                     else ConvBlock(channels, channels))

    def forward(self, ff: torch.Tensor, fm: torch.Tensor, fc: torch.Tensor):
        return self.high(ff), self.conv(fm), self.topo(fc)
