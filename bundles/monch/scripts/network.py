"""MONCH: multi-organ multi-class cell semantic segmentation with a single branch (Zhang et al.).

Pipeline (paper Fig. 1, eqs. 1-8)::

    image --CLIP image encoder--> spatial map --1x1 conv--> F^m (B, C, h, w)
    F^f = up(F^m), F^c = down(F^m)                               # multi-grained features, eq. 1
    F^h, F^v, F^t = MGFE(F^f, F^m, F^c)                          # high-pass / conv / KNN topology
    blended = FPN(F^c, F^m, F^f)
    F^T = text_proj(frozen CLIP text features of 3 prompts x 6 classes)   # encoded once, cached
    merged = PPD(F^h -> F^v -> F^t -> F^T -> blended) + merge      # Fig. 2
    logits = DynamicHead(merged, class text)                      # eq. 8, one map per class
    logits -> bilinear to the input size                          # (B, 6, H, W), class 0 background

``MONCH(image)`` returns the logits in train and eval mode alike; the loss is
:class:`scripts.losses.MONCHLoss` (per-class BCE, eq. 9).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from transforms.base.describe import configurable

from .decoder import DynamicHead, FPNFusion, ProgressivePromptDecoder
from .mgfe import MGFE, ConvBlock, DownScale, UpScale, group_norm

# label order: 0 background, then PanNuke's masks.npy channel order (see common/pannuke.py)
CLASS_NAMES = ("background", "neoplastic", "inflammatory", "connective", "dead", "epithelial")
DEFAULT_PROMPTS = Path(__file__).resolve().parents[1] / "prompts" / "cell_prompts.json"


def load_prompts(prompts: str | Path | Mapping | None, class_names: Sequence[str] = CLASS_NAMES) -> list[list[str]]:
    """The prompt sentences per class, in ``class_names`` order, from a JSON file or a dict.

    ``None`` means the bundle's ``prompts/cell_prompts.json``. Every class needs the same number
    of non-empty sentences (three in the paper).
    """
    source = str(DEFAULT_PROMPTS if prompts is None else prompts)
    if not isinstance(prompts, Mapping):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"prompts_file {path} does not exist")
        prompts = json.loads(path.read_text(encoding="utf-8"))
    missing = [c for c in class_names if c not in prompts]
    if missing:
        raise ValueError(f"{source}: no prompts for classes {missing}")
    out = [[str(s) for s in prompts[c]] for c in class_names]
    counts = {len(s) for s in out}
    if len(counts) != 1 or 0 in counts or any(not s.strip() for c in out for s in c):
        raise ValueError(f"{source}: every class needs the same number of non-empty sentences, got "
                         f"{dict(zip(class_names, (len(s) for s in out)))}")
    return out


@configurable
class MONCH(nn.Module):
    """MONCH network.

    Args:
        backbone: :class:`common.networks.clip_encoders.OpenClipBackbone` (image tower fine-tuned, text tower
            frozen). Its text tower encodes the prompts once here and is then dropped: the cached
            embeddings are a buffer (``class_text``) saved with the checkpoint.
        prompts: JSON file or dict ``{class name: [sentences]}``; None = the bundle's
            ``prompts/cell_prompts.json``.
        class_names: label order (class 0 = background).
        feature_channels: C of all decoder features.
        use_mgfe, use_highpass, use_conv, use_topology: MGFE switches (Tables 3, 4).
        highpass_cutoff: radius of the ideal high-pass in units of ``F^f``'s Nyquist frequency.
        knn_k, knn_dilation, topology_aggregation: TSEM (eqs. 5-6).
        use_ppd: False = Table 3's "PPD ×": ``(F^t, F^v, F^h)`` fused by an FPN block and merged with
            the blended map, no attention.
        query_stages: ``[q_h, q_v, q_t, q_T]`` switches of the decoder's stages (Table 5).
        attention_heads, attention_ffn_ratio, attention_pos_encoding: decoder attention settings.
        head_channels, head_upsample, kernel_size, kernel_context: the dynamic head (eq. 8).
        release_text_encoder: free the text tower's weights once the prompts are encoded.

    Forward: ``image`` (B, 3, H, W), CLIP-normalised -> logits (B, num_classes, H, W).
    """

    def __init__(
        self,
        backbone: nn.Module,
        prompts: str | Path | Mapping | None = None,
        class_names: Sequence[str] = CLASS_NAMES,
        feature_channels: int = 256,
        use_mgfe: bool = True,
        use_highpass: bool = True,
        use_conv: bool = True,
        use_topology: bool = True,
        highpass_cutoff: float = 0.25,
        knn_k: int = 9,
        knn_dilation: int = 2,
        topology_aggregation: str = "max_relative",
        use_ppd: bool = True,
        query_stages: Sequence[bool] = (True, True, True, True),
        attention_heads: int = 8,
        attention_ffn_ratio: float = 2.0,
        attention_pos_encoding: bool = True,
        head_channels: int = 32,
        head_upsample: int = 2,
        kernel_size: int = 1,
        kernel_context: str = "text",
        release_text_encoder: bool = True,
    ):
        super().__init__()
        c = feature_channels
        self.class_names = tuple(class_names)
        self.num_classes = len(self.class_names)
        sentences = load_prompts(prompts, self.class_names)
        self.prompts = dict(zip(self.class_names, sentences))
        self.sentences_per_class = len(sentences[0])
        flat = [s for per_class in sentences for s in per_class]
        text = backbone.text_encoder.encode(flat)  # frozen, cached; (K*S, D)
        self.register_buffer("class_text", text.reshape(self.num_classes, self.sentences_per_class, -1).clone())
        text_dim = text.shape[-1]
        if release_text_encoder and hasattr(backbone, "release_text_tower"):
            backbone.release_text_tower()  # the embeddings are all MONCH needs from it

        self.image_encoder = backbone.image_encoder
        self.neck = nn.Sequential(nn.Conv2d(self.image_encoder.out_channels, c, 1, bias=False), group_norm(c))
        self.up = UpScale(c)
        self.down = DownScale(c)
        self.mgfe = MGFE(c, use_mgfe, use_highpass, use_conv, use_topology, highpass_cutoff, knn_k, knn_dilation,
                         topology_aggregation)
        self.fusion = FPNFusion(c)
        self.use_ppd = use_ppd
        # F^T: the class-prompt text features, queried only by the decoder's q_t stage
        self.text_proj = nn.Sequential(nn.Linear(text_dim, c), nn.LayerNorm(c)) if use_ppd and query_stages[2] else None
        if self.use_ppd:
            self.decoder = ProgressivePromptDecoder(c, attention_heads, query_stages, attention_ffn_ratio,
                                                    attention_pos_encoding)
        else:
            self.enhanced_fusion = FPNFusion(c)
            self.merge = ConvBlock(2 * c, c)
        self.head = DynamicHead(c, text_dim, head_channels, head_upsample, kernel_size, kernel_context)

    def offline_arguments(self) -> dict:
        """The prompt sentences themselves, so that a checkpoint does not depend on the prompts file."""
        return {"prompts": self.prompts}

    def features(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every intermediate map by its paper name (F^m, F^f, F^c, F^h, F^v, F^t, blended, merged)."""
        fm = self.neck(self.image_encoder(image))
        ff, fc = self.up(fm), self.down(fm)
        fh, fv, ft = self.mgfe(ff, fm, fc)
        blended = self.fusion(fc, fm, ff)
        if self.use_ppd:
            text = None
            if self.text_proj is not None:
                text = self.text_proj(self.class_text.flatten(0, 1).to(fm.dtype))  # (K*S, C): F^T
                text = text.unsqueeze(0).expand(fm.shape[0], -1, -1)
            merged = self.decoder(fh, fv, ft, text, blended)
        else:
            merged = self.merge(torch.cat([self.enhanced_fusion(ft, fv, fh), blended], dim=1))
        return {"F^m": fm, "F^f": ff, "F^c": fc, "F^h": fh, "F^v": fv, "F^t": ft, "blended": blended, "merged": merged}

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        merged = self.features(image)["merged"]
        logits = self.head(merged, self.class_text.mean(dim=1))
        return to_image_grid(logits, image.shape[-2:], self.image_encoder.stride)


def to_image_grid(logits: torch.Tensor, size, stride: int) -> torch.Tensor:
    """Logits over the token grid -> the input's pixels.

    The image encoder saw the image padded to a multiple of ``stride`` (token i covers pixels
    ``[i*stride, (i+1)*stride)``), so the logits are resized to that padded size and cropped, rather
    than stretched over the unpadded image (which would shift them by up to a patch at the far edge).
    """
    h, w = int(size[0]), int(size[1])
    padded = (-(-h // stride) * stride, -(-w // stride) * stride)
    logits = F.interpolate(logits, size=padded, mode="bilinear", align_corners=False)
    return logits[..., :h, :w]
