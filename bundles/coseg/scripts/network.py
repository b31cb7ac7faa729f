"""Co-Seg: mutual prompt-guided collaborative tissue and nuclei segmentation (Xu et al., MICCAI 2025).

A SAM2 image encoder (Hiera trunk frozen, LoRA + adapters; :mod:`common.networks.sam2`) gives the
image embedding z (stride 16) and two high-resolution maps (strides 4 and 8). Co-segmentation
(Secs. 2.1 and 2.4, eq. 1) decodes twice with the same two task decoders (:mod:`.decoders`):

1. without prompts: the tissue decoder predicts tissue class logits, the nuclei decoder the nuclei
   logit, the horizontal/vertical distance maps and (with types) nucleus-type logits;
2. each task's pass-1 logits become the *other* task's region prompt through an RP-Encoder
   (:mod:`.rp_encoder`): tissue logits prompt the nuclei decoder, the nuclei logit prompts the tissue
   decoder (cross-guidance, eqs. 6-7), and both decoders run again. The prompts are not detached, so
   each task's loss also trains the other task's first pass (eq. 2).

Ablation switches, each a removal from the full model (Table 4 adds P, D and C cumulatively to the
baseline without saying how P or D run without C); a switched-off part is not built:

* ``rp_encoder=False``: prompts are the convolutional mask embedding only (eq. 4, as SAM2 embeds a mask
  prompt), without the region-aware attention to the image embedding (eq. 5).
* ``cross_guidance=False``: each task's pass-1 logits prompt its own decoder (self-refinement) instead
  of the other task's. The prompt encoders are named by route (``<source>_to_<decoder>``), so the
  cross routes ``tissue_to_nuclei`` and ``nuclei_to_tissue`` are absent.
* ``co_segmentation=False``: Table 4's baseline, two independent task networks on the shared encoder:
  one pass, no prompt encoders, so the other two switches have nothing to act on.
* ``prompt_gradients=False``: the region prompts are detached, so a task's pass-2 loss no longer trains
  the other task's first pass (no gradient between the tasks: eqs. 2-3 of the co-segmentation
  paradigm switched off). It changes the gradients, not the outputs.

Table 4's cumulative rows (baseline, +P, +P+D, +P+D+C) are these switches in combination:
:data:`TABLE4_ROWS` (train.yaml: ``table4_row``).

The RP-Encoder's Conv_1 (eq. 4) is one 16x16 stride-16 convolution as the paper writes
(``prompt_patch_embed="paper"``, :class:`PaperMaskEmbedding`); ``"official"`` keeps the authors' two 4x4
stride-4 convolutions (:class:`.rp_encoder.MaskEmbedding`).

Shapes for a 1024x1024 input, D = 256: features (B, 256, 256²), (B, 256, 128²), (B, 256, 64²); decoder
outputs at 256² are upsampled (bilinear) to 1024². Outputs: ``tissue`` (B, n_tissue, H, W) logits,
``nuclei`` (B, 1, H, W) logit, ``hv`` (B, 2, H, W), ``nuclei_type`` (B, n_types, H, W) logits when
``num_nuclei_types > 0``; in training mode also ``pass1``, the same dict from the first pass (absent
with ``co_segmentation=False``, which has one pass).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.sam2.modeling_sam2 import Sam2LayerNorm

from transforms.base.describe import configurable

from .decoders import TaskDecoder
from .rp_encoder import RPEncoder

TASKS = ("tissue", "nuclei")
PATCH_EMBEDS = ("paper", "official")

# Table 4 as cumulative rows (baseline, +P, +P+D, +P+D+C). A region prompt needs a first pass's mask logits,
# so P and D already decode twice; what C adds is eqs. 2-3: gradient between the tasks through the prompts.
#   baseline: one pass, two task decoders on the shared encoder, no prompt encoders
#   +P:       two passes; each task's pass-1 logits prompt its own decoder through an RP-Encoder, detached
#   +P+D:     the MP-Decoder's cross-guidance (each task prompted by the other's logits), prompts detached
#   +P+D+C:   the full model: cross-guidance with prompts that carry gradient between the tasks
TABLE4_ROWS: dict[str, dict[str, bool]] = {
    "baseline": dict(rp_encoder=True, cross_guidance=True, co_segmentation=False, prompt_gradients=True),
    "+P": dict(rp_encoder=True, cross_guidance=False, co_segmentation=True, prompt_gradients=False),
    "+P+D": dict(rp_encoder=True, cross_guidance=True, co_segmentation=True, prompt_gradients=False),
    "+P+D+C": dict(rp_encoder=True, cross_guidance=True, co_segmentation=True, prompt_gradients=True),
}


def table4_switches(row: str | None, **switches) -> dict[str, bool]:
    """The network switches of a Table 4 row (``row`` None or "": ``switches`` as given, e.g. one removal)."""
    if row in (None, "", "none", "null"):
        return switches
    if row not in TABLE4_ROWS:
        raise ValueError(f"table4_row must be one of {list(TABLE4_ROWS)} (or null), got {row!r}")
    return dict(TABLE4_ROWS[row])


class PaperMaskEmbedding(nn.Sequential):
    """Eq. 4 as the paper writes it: Conv_1 one 16x16 stride-16 convolution to ``hidden_channels``, LayerNorm,
    GELU, Conv_2 a 1x1 convolution to ``dim``: (B, C_mu, H, W) -> (B, dim, H/16, W/16). (The authors' code,
    :class:`.rp_encoder.MaskEmbedding`, uses two 4x4 stride-4 convolutions: ``prompt_patch_embed="official"``.)"""

    def __init__(self, in_channels: int, dim: int, hidden_channels: int = 16):
        super().__init__(
            nn.Conv2d(in_channels, hidden_channels, kernel_size=16, stride=16),
            Sam2LayerNorm(hidden_channels, data_format="channels_first"),
            nn.GELU(),
            nn.Conv2d(hidden_channels, dim, kernel_size=1),
        )


@configurable
class CoSeg(nn.Module):
    """The whole model (module doc).

    Args:
        image_encoder: the shared encoder (:class:`common.networks.sam2.Sam2ImageEncoder`): an image to
            ``[stride 4, stride 8, stride 16]`` maps of ``embed_dim`` channels, with ``size_divisor``.
        num_tissue_classes: tissue classes, background included (softmax over them).
        num_nuclei_types: nucleus types (no background channel); 0: no type output.
        decoder_depth, decoder_heads, decoder_mlp_dim: the two-way transformer of each task decoder.
        prompt_hidden_channels: channels of the RP-Encoder's strided convolutions (16).
        prompt_heads, prompt_ffn_dim, prompt_dropout, rope_theta: the RP-Encoder's attention layer
            (1 head, FFN 2048, dropout 0.1, RoPE base 10000: SAM2's memory-attention layer, as the authors).
        rp_encoder, cross_guidance, co_segmentation, prompt_gradients: the Table 4 switches (module doc).
        prompt_patch_embed: the RP-Encoder's Conv_1 (eq. 4): "paper" one 16x16 stride-16 convolution
            (:class:`PaperMaskEmbedding`), or "official" two 4x4 stride-4 convolutions (the authors' code).

    Forward: ``image`` (B, 3, H, W), H and W multiples of the encoder's ``size_divisor`` -> dict (module doc).
    """

    def __init__(
        self,
        image_encoder: nn.Module,
        num_tissue_classes: int = 6,
        num_nuclei_types: int = 0,
        decoder_depth: int = 2,
        decoder_heads: int = 8,
        decoder_mlp_dim: int = 2048,
        prompt_hidden_channels: int = 16,
        prompt_heads: int = 1,
        prompt_ffn_dim: int = 2048,
        prompt_dropout: float = 0.1,
        rope_theta: float = 10000.0,
        rp_encoder: bool = True,
        cross_guidance: bool = True,
        co_segmentation: bool = True,
        prompt_patch_embed: str = "paper",
        prompt_gradients: bool = True,
    ):
        super().__init__()
        if prompt_patch_embed not in PATCH_EMBEDS:
            raise ValueError(f"prompt_patch_embed must be one of {PATCH_EMBEDS}, got {prompt_patch_embed!r}")
        if num_tissue_classes < 2 or num_nuclei_types < 0:
            raise ValueError(f"num_tissue_classes must be >= 2 (background included) and num_nuclei_types >= 0, "
                             f"got {num_tissue_classes} and {num_nuclei_types}")
        self.image_encoder = image_encoder
        dim = int(image_encoder.embed_dim)
        self.co_segmentation = co_segmentation
        self.cross_guidance = cross_guidance
        self.prompt_gradients = prompt_gradients
        decoder = dict(dim=dim, depth=decoder_depth, heads=decoder_heads, mlp_dim=decoder_mlp_dim)
        self.decoders = nn.ModuleDict({
            "tissue": TaskDecoder({"tissue": num_tissue_classes}, **decoder),
            "nuclei": TaskDecoder({"nuclei": 1, "hv": 2, "nuclei_type": num_nuclei_types}, **decoder),
        })
        if co_segmentation:
            prompt_channels = {"tissue": num_tissue_classes, "nuclei": 1}  # the nuclei logit prompts, not HV or types
            self.prompt_encoders = nn.ModuleDict({
                self.route(target): RPEncoder(prompt_channels[self.source(target)], dim, prompt_hidden_channels,
                                              rp_encoder, prompt_heads, prompt_ffn_dim, prompt_dropout, rope_theta)
                for target in TASKS
            })
            if prompt_patch_embed == "paper":
                for target, encoder in self.prompt_encoders.items():
                    encoder.embed = PaperMaskEmbedding(prompt_channels[target.split("_to_")[0]], dim,
                                                       prompt_hidden_channels)

    # True: eval-mode outputs come packed in one tensor (:meth:`pack`), as MONAI's zoo tools call a network
    # (set on the inference config's network_def by common.engine.export.one_tensor; the weights keep their names)
    packed_output = False
    # checkpoints written before prompt_patch_embed existed hold the authors' two 4x4 convolutions
    described_before = {"prompt_patch_embed": "official"}

    @property
    def output_channels(self) -> dict[str, int]:
        """The eval-mode outputs and their channels, in the order :meth:`pack` concatenates them."""
        return {name: c for decoder in self.decoders.values() for name, c in decoder.outputs.items()}

    def pack(self, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The eval-mode outputs as one (B, channels, H, W) tensor (:attr:`output_channels` order): the form
        an exported model returns and ``metadata.json`` describes."""
        return torch.cat([outputs[name] for name in self.output_channels], dim=1)

    @staticmethod
    def unpack(packed: torch.Tensor, output_channels: dict[str, int]) -> dict[str, torch.Tensor]:
        return dict(zip(output_channels, packed.split(list(output_channels.values()), dim=1)))

    def source(self, target: str) -> str:
        """The task whose pass-1 logits prompt ``target``'s decoder."""
        return TASKS[1 - TASKS.index(target)] if self.cross_guidance else target

    def route(self, target: str) -> str:
        return f"{self.source(target)}_to_{target}"

    def decode(self, features: list[torch.Tensor], size: tuple[int, int],
               previous: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """One pass of both task decoders; ``previous`` (a pass's outputs) supplies the region prompts."""
        *high_resolution, embedding = features
        outputs = {}
        for task, decoder in self.decoders.items():
            prompt = None
            if previous is not None:
                prompt = self.prompt_encoders[self.route(task)](previous[self.source(task)], embedding)
            for name, logits in decoder(embedding, high_resolution, prompt).items():
                outputs[name] = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return outputs

    def forward(self, image: torch.Tensor) -> dict:
        divisor = self.image_encoder.size_divisor
        size = tuple(image.shape[-2:])
        if size[0] % divisor or size[1] % divisor:
            raise ValueError(f"Co-Seg needs image sides that are multiples of {divisor}, got {size}; "
                             "resize or pad the image")
        features = self.image_encoder(image)
        final = self.decode(features, size)
        if self.co_segmentation:
            prompts = final if self.prompt_gradients else {k: v.detach() for k, v in final.items()}
            first, final = final, self.decode(features, size, previous=prompts)
            if self.training:
                final["pass1"] = first
        return self.pack(final) if self.packed_output and not self.training else final
