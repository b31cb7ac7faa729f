"""SAM2 image encoder (Hiera trunk + FPN neck) from Hugging Face transformers, with LoRA and adapters.

The trunk is transformers' ``Sam2HieraDetModel`` and the neck its ``Sam2VisionNeck``, both inside
``Sam2VisionModel``; nothing of Hiera is re-implemented here. Parameter-efficient fine-tuning as in
Co-Seg (Sec. 2.4, "freeze these weights ... insert LoRA and Adapter into attention and FFN layers"):

* the pretrained trunk is frozen;
* LoRA of rank r (peft) on the query and value projections of every attention block. Hiera computes
  q, k and v with one fused Linear ``attn.qkv``; :class:`SplitQKV` replaces it by three Linears
  ``attn.qkv.q``, ``attn.qkv.k``, ``attn.qkv.v`` holding the same weights, so that peft targets
  ``blocks.<i>.attn.qkv.q`` and ``blocks.<i>.attn.qkv.v`` and leaves k alone;
* a parallel adapter beside every block's MLP (:class:`ParallelAdapter`):
  ``x + MLP(LN(x)) + 0.5 * Up(GELU(Down(LN(x))))`` with Down d -> d/4;
* the neck: frozen by default, since the paper freezes the pretrained SAM2 image encoder and names
  only LoRA and adapters as what it learns; ``train_neck=True`` trains it as the authors' code does.

LoRA's B and the adapters' up-projections start at zero, so an untrained encoder gives exactly the
pretrained SAM2 features.

Shapes for a 1024x1024 input (Hiera-L, FPN width 256): trunk stages 144x256², 288x128², 576x64²,
1152x32²; the encoder returns the neck's three finest maps, high resolution first,
``[(B, 256, 256, 256), (B, 256, 128, 128), (B, 256, 64, 64)]``: the two maps SAM2's mask decoder adds
while upsampling, and the image embedding (stride 16). Images are normalised as SAM2 was trained
(RGB in [0, 1], then ImageNet mean and std); sides must be multiples of :attr:`Sam2ImageEncoder.size_divisor`.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from transforms.base.describe import configurable
from transforms.base.errors import PretrainedWeightsError
from transforms.base.pretrained import hub_offline, resolve_hf_model

LORA_TARGETS = r"blocks\.\d+\.attn\.qkv\.(q|v)"  # module names inside Sam2HieraDetModel


def tiny_sam2_config(hidden_size: int = 8, fpn_hidden_size: int = 32) -> dict:
    """A four-stage Hiera of 5 blocks (widths ``hidden_size`` x 1, 2, 4, 8) with an FPN of width
    ``fpn_hidden_size``: a ``Sam2VisionConfig`` as plain values, for tests and CPU demos."""
    widths = [hidden_size * 2**i for i in range(4)]
    return {
        "backbone_config": {
            "model_type": "sam2_hiera_det_model",
            "hidden_size": hidden_size,
            "num_attention_heads": 1,
            "blocks_per_stage": [1, 1, 2, 1],
            "embed_dim_per_stage": widths,
            "num_attention_heads_per_stage": [1, 1, 2, 2],
            "window_size_per_stage": [4, 2, 2, 1],
            "global_attention_blocks": [3],  # a global block must not be a stage's first (pooling) block
            "window_positional_embedding_background_size": [4, 4],
        },
        "backbone_channel_list": widths[::-1],
        "fpn_hidden_size": fpn_hidden_size,
    }


def sam2_hiera_large_config() -> dict:
    """SAM2(.1) Hiera-L + FPN 256 (``sam2.1_hiera_l.yaml``) as plain values: the architecture of
    ``facebook/sam2.1-hiera-large``, for building it with random weights (sizes, FLOPs, tests)."""
    widths = [144, 288, 576, 1152]
    return {
        "backbone_config": {
            "model_type": "sam2_hiera_det_model",
            "hidden_size": 144,
            "num_attention_heads": 2,
            "blocks_per_stage": [2, 6, 36, 4],
            "embed_dim_per_stage": widths,
            "num_attention_heads_per_stage": [2, 4, 8, 16],
            "window_size_per_stage": [8, 4, 16, 8],
            "global_attention_blocks": [23, 33, 43],
            "window_positional_embedding_background_size": [7, 7],
        },
        "backbone_channel_list": widths[::-1],
        "fpn_hidden_size": 256,
    }


def architecture(config) -> dict:
    """The fields of a ``Sam2VisionConfig`` that define the network, as plain values (no ids or labels)."""
    from transformers import Sam2HieraDetConfig, Sam2VisionConfig

    backbone = {name: getattr(config.backbone_config, name) for name in Sam2HieraDetConfig.__annotations__}
    values = {name: getattr(config, name) for name in Sam2VisionConfig.__annotations__ if name != "backbone_config"}
    return {"backbone_config": {"model_type": "sam2_hiera_det_model", **backbone}, **values}


def _build_vision_model(model_config: dict):
    from transformers import Sam2VisionConfig, Sam2VisionModel

    values = {k: v for k, v in model_config.items() if k != "model_type"}
    backbone = dict(values.get("backbone_config") or {})
    backbone.setdefault("model_type", "sam2_hiera_det_model")
    return Sam2VisionModel(Sam2VisionConfig(**{**values, "backbone_config": backbone}))


def _load_vision_model(key: str, value: str):
    """The ``Sam2VisionModel`` of a SAM2 checkpoint in transformers format (hub id or local folder)."""
    from transformers import AutoModel, Sam2VisionModel

    source = resolve_hf_model(key, value)
    try:
        model = AutoModel.from_pretrained(source, local_files_only=hub_offline(), dtype=torch.float32,
                                          trust_remote_code=False)  # a description never runs a hub repo's code
    except (OSError, ValueError) as err:
        if Path(source).is_dir():
            raise PretrainedWeightsError(key, value, f"SAM2 weights in {source}", str(err).splitlines()[0]) from err
        hint = (f"HF_HUB_OFFLINE is set and '{source}' is not in the Hugging Face cache. " if hub_offline()
                else "The hub could not be reached or the id is wrong. ")
        raise PretrainedWeightsError(
            key, value, f"hub id '{source}'",
            hint + "Download it once on a machine with internet, or set the key to a local folder "
            "holding a transformers SAM2 model (config.json + model.safetensors).",
        ) from err
    vision = getattr(model, "vision_encoder", model)  # Sam2Model / Sam2VideoModel hold one
    if not isinstance(vision, Sam2VisionModel):
        raise PretrainedWeightsError(key, value, "a SAM2 model (Sam2Model, Sam2VideoModel or Sam2VisionModel)",
                                     f"{source} holds a {type(model).__name__}.")
    return vision


class SplitQKV(nn.Module):
    """A fused ``qkv`` Linear as three Linears ``q``, ``k``, ``v`` with the same weights.

    Forward: (..., in) -> (..., 3 * out), the concatenation ``[q | k | v]`` the fused layer gives.
    """

    def __init__(self, fused: nn.Linear):
        super().__init__()
        out = fused.out_features // 3
        factory = {"device": fused.weight.device, "dtype": fused.weight.dtype}
        parts = [nn.Linear(fused.in_features, out, bias=fused.bias is not None, **factory) for _ in range(3)]
        with torch.no_grad():
            for i, part in enumerate(parts):
                part.weight.copy_(fused.weight[i * out:(i + 1) * out])
                if fused.bias is not None:
                    part.bias.copy_(fused.bias[i * out:(i + 1) * out])
        self.q, self.k, self.v = parts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.q(x), self.k(x), self.v(x)], dim=-1)


class ParallelAdapter(nn.Module):
    """A block's MLP with a bottleneck adapter beside it: ``MLP(x) + scale * Up(GELU(Down(x)))``.

    Down: d -> round(d * ratio); Up starts at zero, so the block's output is unchanged until trained.
    """

    def __init__(self, mlp: nn.Module, dim: int, ratio: float = 0.25, scale: float = 0.5):
        super().__init__()
        hidden = max(1, round(dim * ratio))
        self.mlp = mlp
        self.adapter = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        nn.init.zeros_(self.adapter[2].weight)
        nn.init.zeros_(self.adapter[2].bias)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x) + self.scale * self.adapter(x)


@configurable(pretrained={"weights": None})
class Sam2ImageEncoder(nn.Module):
    """SAM2's image encoder with a frozen Hiera trunk, LoRA on q/v and parallel adapters (module doc).

    Args:
        weights: a SAM2 checkpoint in transformers format: hub id (``facebook/sam2.1-hiera-large``, the
            paper's SAM2-L) or local folder; ``Sam2Model``, ``Sam2VideoModel`` and ``Sam2VisionModel``
            checkpoints work (the vision encoder is taken). ``None``: random weights of ``model_config``
            (a checkpoint's description rebuilds the encoder this way).
        model_config: a ``Sam2VisionConfig`` as a dict (``tiny_sam2_config()``, ``sam2_hiera_large_config()``);
            only with ``weights=None``.
        lora_rank: LoRA rank r on q and v of every attention block (0: no LoRA).
        lora_alpha: LoRA scaling numerator (the update is ``alpha / r * B A x``; alpha = r adds ``B A x``
            unscaled, as the authors' code).
        adapter_ratio: adapter bottleneck width as a fraction of the block width (0: no adapters).
        adapter_scale: factor on the adapter's output.
        train_neck: train the FPN neck (the authors' code) instead of freezing it (the paper).
        config_key: the config key ``weights`` came from, for error messages.

    Forward: ``image`` (B, 3, H, W) -> ``[stride 4, stride 8, stride 16]`` maps of :attr:`embed_dim`
    channels. Attributes: ``embed_dim``, ``channels``, ``reductions``, ``size_divisor``.
    """

    def __init__(
        self,
        weights: str | None = None,
        model_config: dict | None = None,
        lora_rank: int = 4,
        lora_alpha: float = 4.0,
        adapter_ratio: float = 0.25,
        adapter_scale: float = 0.5,
        train_neck: bool = False,
        config_key: str = "image_encoder_weights",
    ):
        super().__init__()
        if (weights is None) == (model_config is None):
            raise ValueError(f"give the SAM2 image encoder either weights (config key '{config_key}': a hub id or "
                             "a local folder) or a model_config for random weights, not both or neither")
        if lora_rank < 0 or adapter_ratio < 0:
            raise ValueError(f"lora_rank and adapter_ratio must be >= 0, got {lora_rank} and {adapter_ratio}")
        if weights is not None:
            self.model = _load_vision_model(config_key, weights)
        else:
            self.model = _build_vision_model(model_config)
        self.model.requires_grad_(False)
        trunk = self.model.backbone
        for block in trunk.blocks:
            block.attn.qkv = SplitQKV(block.attn.qkv)
            if adapter_ratio > 0:
                block.mlp = ParallelAdapter(block.mlp, block.dim_out, adapter_ratio, adapter_scale)
        if lora_rank > 0:
            from peft import LoraConfig, inject_adapter_in_model

            inject_adapter_in_model(LoraConfig(r=lora_rank, lora_alpha=lora_alpha, lora_dropout=0.0,
                                               target_modules=LORA_TARGETS), trunk)
        for name, param in trunk.named_parameters():
            param.requires_grad_("lora_" in name or ".adapter." in name)
        self.model.neck.requires_grad_(train_neck)

        config = self.model.config
        backbone = config.backbone_config
        patch, pool = backbone.patch_stride[0], backbone.query_stride[0]
        self.embed_dim = int(config.fpn_hidden_size)
        self.channels = [self.embed_dim] * 3
        self.reductions = [patch, patch * pool, patch * pool**2]
        # the coarsest stage (stride patch * pool**3) and the window tiling of the positional embedding
        self.size_divisor = math.lcm(patch * pool**backbone.num_query_pool_stages,
                                     patch * backbone.window_size_per_stage[0])

    def offline_arguments(self) -> dict:
        """What rebuilds this encoder without ``weights``: its architecture."""
        return {"model_config": architecture(self.model.config)}

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        return list(self.model(pixel_values=image).fpn_hidden_states)
