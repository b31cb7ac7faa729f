"""Segment Anything (SAM, Kirillov et al. 2023) parts from the official ``segment_anything`` package.

* :class:`SamEncoder`: SAM's image encoder (ViT-H/L/B) and prompt encoder, both frozen, built
  from the official checkpoint file (``sam_vit_h_4b8939.pth``) named by one config key
  (``sam_checkpoint``), or with random weights for tests.
* :meth:`SamEncoder.new_mask_decoder`: a factory for SAM-style mask decoders (two-way
  transformer, depth 2, 8 heads, MLP 2048) that start from the checkpoint's decoder weights.
* :func:`tiny_sam_config` / :func:`sam_config`: the architecture as plain values.
* Pre/post-processing as SAM does it: :func:`sam_preprocess` (longest side -> ``image_size``,
  SAM pixel mean/std on 0-255 RGB, zero padding bottom/right) and :func:`sam_postprocess_masks`
  (decoder logits -> padded frame -> crop -> original size).

Shapes for ViT-H at 1024: image (B, 3, 1024, 1024) -> embedding (B, 256, 64, 64); dense
positional encoding (1, 256, 64, 64); a text prompt (N, 256) becomes sparse tokens (N, 1, 256)
plus the "no mask" dense embedding (N, 256, 64, 64); a decoder returns low-resolution mask
logits (N, 1, 256, 256).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from transforms.base.describe import configurable
from transforms.base.errors import PretrainedWeightsError

__all__ = ["SAM_PIXEL_MEAN", "SAM_PIXEL_STD", "SAM_VARIANTS", "sam_config", "tiny_sam_config", "preprocess_shape",
           "sam_preprocess", "sam_postprocess_masks", "load_sam_state_dict", "build_mask_decoder", "SamEncoder"]

# SAM normalises 0-255 RGB with these (the ImageNet statistics scaled by 255)
SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)

# the official builders (segment_anything.build_sam) as plain values
SAM_VARIANTS = {
    "vit_h": {"encoder_embed_dim": 1280, "encoder_depth": 32, "encoder_num_heads": 16,
              "encoder_global_attn_indexes": [7, 15, 23, 31]},
    "vit_l": {"encoder_embed_dim": 1024, "encoder_depth": 24, "encoder_num_heads": 16,
              "encoder_global_attn_indexes": [5, 11, 17, 23]},
    "vit_b": {"encoder_embed_dim": 768, "encoder_depth": 12, "encoder_num_heads": 12,
              "encoder_global_attn_indexes": [2, 5, 8, 11]},
}
_COMMON = {"image_size": 1024, "patch_size": 16, "window_size": 14, "prompt_embed_dim": 256, "mask_in_chans": 16,
           "decoder_depth": 2, "decoder_num_heads": 8, "decoder_mlp_dim": 2048, "num_multimask_outputs": 3,
           "iou_head_depth": 3, "iou_head_hidden_dim": 256}
_KEYS = set(_COMMON) | set(SAM_VARIANTS["vit_h"])
_CHECKPOINT_HINT = ("Download the official SAM checkpoint (sam_vit_h_4b8939.pth for vit_h, see the bundle's "
                    "pretrained_sources.yml) and set the key to the local file.")


def sam_config(variant: str = "vit_h") -> dict:
    """The official SAM architecture ``variant`` (``vit_h``, ``vit_l``, ``vit_b``) as a dict of plain values."""
    if variant not in SAM_VARIANTS:
        raise ValueError(f"unknown SAM variant {variant!r}; choose one of {sorted(SAM_VARIANTS)}")
    return {**_COMMON, **SAM_VARIANTS[variant]}


def tiny_sam_config(image_size: int = 64, patch_size: int = 8, embed_dim: int = 32, depth: int = 2,
                    num_heads: int = 2, window_size: int = 4, prompt_embed_dim: int = 32,
                    decoder_mlp_dim: int = 64, decoder_num_heads: int = 2) -> dict:
    """A SAM of a few hundred thousand weights for tests and demos (64-pixel input, 8x8 embedding).

    The last encoder block attends globally, the others in ``window_size`` windows, as in SAM.
    """
    return {
        "image_size": image_size, "patch_size": patch_size, "window_size": window_size,
        "encoder_embed_dim": embed_dim, "encoder_depth": depth, "encoder_num_heads": num_heads,
        "encoder_global_attn_indexes": [depth - 1], "prompt_embed_dim": prompt_embed_dim, "mask_in_chans": 8,
        "decoder_depth": 2, "decoder_num_heads": decoder_num_heads, "decoder_mlp_dim": decoder_mlp_dim,
        "num_multimask_outputs": 3, "iou_head_depth": 3, "iou_head_hidden_dim": prompt_embed_dim,
    }


def _check_config(config: Mapping) -> dict:
    missing, unknown = _KEYS - set(config), set(config) - _KEYS
    if missing or unknown:
        raise ValueError(f"SAM model_config: missing keys {sorted(missing)}, unknown keys {sorted(unknown)}; "
                         "start from sam_config(variant) or tiny_sam_config()")
    return dict(config)


# ---------------------------------------------------------------------------- pre/post-processing
def preprocess_shape(height: int, width: int, long_side: int) -> tuple[int, int]:
    """(h, w) after scaling the longest side to ``long_side`` (SAM's ``ResizeLongestSide`` rounding)."""
    scale = long_side / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def sam_preprocess(image: torch.Tensor, image_size: int = 1024) -> tuple[torch.Tensor, tuple[int, int]]:
    """SAM's input: longest side to ``image_size`` (bilinear, antialiased), pixel mean/std, zero pad.

    Args:
        image: (3, H, W) RGB in 0-255 (any dtype).
        image_size: the encoder's input size (1024 for the official models).

    Returns:
        the (3, image_size, image_size) float32 input and the (h, w) of the resized image inside
        it (the rest is padding; :func:`sam_postprocess_masks` crops it away again).
    """
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"sam_preprocess takes one (3, H, W) RGB image, got shape {tuple(image.shape)}")
    size = preprocess_shape(image.shape[1], image.shape[2], image_size)
    resized = F.interpolate(image[None].float(), size=size, mode="bilinear", align_corners=False, antialias=True)[0]
    mean = torch.tensor(SAM_PIXEL_MEAN, device=image.device).view(3, 1, 1)
    std = torch.tensor(SAM_PIXEL_STD, device=image.device).view(3, 1, 1)
    normalised = (resized - mean) / std
    return F.pad(normalised, (0, image_size - size[1], 0, image_size - size[0])), size


def sam_postprocess_masks(masks: torch.Tensor, image_size: int, resize_size: Sequence[int] | None = None,
                          original_size: Sequence[int] | None = None) -> torch.Tensor:
    """Decoder logits (N, C, h, w) -> (N, C, H, W) at ``original_size`` (SAM's ``postprocess_masks``).

    The logits are upsampled to the padded ``image_size`` frame, cropped to ``resize_size`` (the
    unpadded part, see :func:`sam_preprocess`) and resized to ``original_size``. Without
    ``resize_size`` the whole frame is kept; without ``original_size`` the crop is returned as is.
    """
    masks = F.interpolate(masks, (image_size, image_size), mode="bilinear", align_corners=False)
    if resize_size is not None:
        masks = masks[..., : int(resize_size[0]), : int(resize_size[1])]
    if original_size is not None and tuple(masks.shape[-2:]) != tuple(int(s) for s in original_size):
        masks = F.interpolate(masks, [int(s) for s in original_size], mode="bilinear", align_corners=False)
    return masks


# ---------------------------------------------------------------------------- building
def load_sam_state_dict(key: str, path: str) -> dict[str, torch.Tensor]:
    """The state dict of an official SAM checkpoint file (``image_encoder.*``, ``prompt_encoder.*``,
    ``mask_decoder.*``), loaded with ``weights_only=True``."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise PretrainedWeightsError(key, path, f"the file {file.resolve()}", "It does not exist. " + _CHECKPOINT_HINT)
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling raises many types; say which file could not be read
        raise PretrainedWeightsError(key, path, f"a SAM state dict in {file}", f"It could not be read: {err}") from err
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not any(k.startswith("image_encoder.") for k in state):
        raise PretrainedWeightsError(key, path, f"'image_encoder.*' weights in {file}", _CHECKPOINT_HINT)
    return state


def _part(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _load_part(module: nn.Module, state: Mapping[str, torch.Tensor], prefix: str, key: str, path: str) -> None:
    try:
        module.load_state_dict(_part(state, prefix))
    except RuntimeError as err:
        raise PretrainedWeightsError(
            key, path, f"'{prefix}*' weights matching the configured SAM architecture",
            f"The checkpoint is another SAM variant or not a SAM checkpoint: {str(err).splitlines()[0]}") from err


def build_mask_decoder(config: Mapping) -> nn.Module:
    """A SAM mask decoder (two-way transformer + hypernetwork mask head) of architecture ``config``.

    Forward (``segment_anything.modeling.MaskDecoder``): image embedding (1, C, h, w), positional
    encoding (1, C, h, w), sparse prompts (N, T, C), dense prompts (N, C, h, w) ->
    mask logits (N, 1, 4h, 4w) with ``multimask_output=False``, and IoU predictions (N, 1).
    """
    from segment_anything.modeling import MaskDecoder, TwoWayTransformer

    dim = config["prompt_embed_dim"]
    return MaskDecoder(
        transformer_dim=dim,
        transformer=TwoWayTransformer(depth=config["decoder_depth"], embedding_dim=dim,
                                      num_heads=config["decoder_num_heads"], mlp_dim=config["decoder_mlp_dim"]),
        num_multimask_outputs=config["num_multimask_outputs"],
        iou_head_depth=config["iou_head_depth"],
        iou_head_hidden_dim=config["iou_head_hidden_dim"],
    )


def _torch_dtype(name: str) -> torch.dtype:
    if name not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"SAM image encoder dtype must be float32, bfloat16 or float16, got {name!r}")
    return getattr(torch, name)


@configurable(pretrained={"checkpoint": None})
class SamEncoder(nn.Module):
    """SAM's image encoder F_v and prompt encoder F_p, frozen (no gradients, always in eval mode).

    Args:
        variant: ``vit_h`` (the paper's), ``vit_l`` or ``vit_b``; ignored when ``model_config`` is given.
        checkpoint: the official SAM checkpoint file of that variant, or None (random weights: tests).
        model_config: the architecture as a dict (:func:`sam_config`, :func:`tiny_sam_config`).
        dtype: dtype of the frozen image encoder's weights (``bfloat16`` halves ViT-H's 2.5 GB;
            ``float32`` on CPU); the prompt encoder stays float32 and every output is float32.
        config_key: the config key ``checkpoint`` came from, for error messages.
    """

    def __init__(self, variant: str = "vit_h", checkpoint: str | None = None, model_config: dict | None = None,
                 dtype: str = "bfloat16", config_key: str = "sam_checkpoint"):
        super().__init__()
        from segment_anything.modeling import ImageEncoderViT, PromptEncoder

        self.config = _check_config(model_config) if model_config is not None else sam_config(variant)
        c = self.config
        self.image_size = int(c["image_size"])
        self.embed_dim = int(c["prompt_embed_dim"])
        grid = self.image_size // int(c["patch_size"])
        self.image_encoder = ImageEncoderViT(
            img_size=self.image_size, patch_size=c["patch_size"], embed_dim=c["encoder_embed_dim"],
            depth=c["encoder_depth"], num_heads=c["encoder_num_heads"], mlp_ratio=4,
            norm_layer=partial(nn.LayerNorm, eps=1e-6), qkv_bias=True, use_rel_pos=True,
            global_attn_indexes=tuple(c["encoder_global_attn_indexes"]), window_size=c["window_size"],
            out_chans=self.embed_dim,
        )
        self.prompt_encoder = PromptEncoder(embed_dim=self.embed_dim, image_embedding_size=(grid, grid),
                                            input_image_size=(self.image_size, self.image_size),
                                            mask_in_chans=c["mask_in_chans"])
        # the checkpoint's decoder weights, kept (not a module, not in state_dict) to start new decoders from
        self._decoder_state: dict[str, torch.Tensor] | None = None
        if checkpoint is not None:
            state = load_sam_state_dict(config_key, checkpoint)
            _load_part(self.image_encoder, state, "image_encoder.", config_key, checkpoint)
            _load_part(self.prompt_encoder, state, "prompt_encoder.", config_key, checkpoint)
            self._decoder_state = _part(state, "mask_decoder.")
        self.checkpoint = checkpoint
        self.config_key = config_key
        self.image_encoder.to(_torch_dtype(dtype))
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):
        return super().train(False)  # frozen: always eval

    def new_mask_decoder(self) -> nn.Module:
        """A trainable SAM mask decoder; starts from the checkpoint's decoder when there is one."""
        decoder = build_mask_decoder(self.config)
        if self._decoder_state is not None:
            _load_part(decoder, self._decoder_state, "", self.config_key, str(self.checkpoint))
        return decoder

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Eq. 2, f_img = F_v(x_img): (B, 3, S, S) preprocessed images -> (B, C, S/16, S/16) float32."""
        if images.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"SAM takes {self.image_size}x{self.image_size} inputs (sam_preprocess), "
                             f"got {tuple(images.shape[-2:])}")
        weight = self.image_encoder.patch_embed.proj.weight
        return self.image_encoder(images.to(weight.dtype)).float()

    def dense_positional_encoding(self) -> torch.Tensor:
        """SAM's positional encoding of the embedding grid: (1, C, h, w)."""
        return self.prompt_encoder.get_dense_pe()

    def encode_text_prompts(self, text_embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 3, f_prom = F_p(h_seg): (N, C) text embeddings -> sparse (N, 1, C), dense (N, C, h, w).

        The text embedding is the single sparse prompt token (no points, no boxes); the dense
        prompt is SAM's learned "no mask" embedding. Gradients flow through to ``text_embeddings``.
        """
        sparse, dense = self.prompt_encoder(points=None, boxes=None, masks=None)  # (1, 0, C), (1, C, h, w)
        n = text_embeddings.shape[0]
        sparse = torch.cat([sparse.expand(n, -1, -1).to(text_embeddings), text_embeddings[:, None]], dim=1)
        return sparse, dense.expand(n, -1, -1, -1)


def save_tiny_sam_checkpoint(path: str | Path, seed: int = 0, **config_kwargs) -> str:
    """Write a random-weight SAM of :func:`tiny_sam_config` (``config_kwargs``) as a file in the official
    checkpoint's layout (``image_encoder.*``, ``prompt_encoder.*``, ``mask_decoder.*``): demos and tests load
    it through the same code path as ``sam_vit_h_4b8939.pth``. Returns the path."""
    config = tiny_sam_config(**config_kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder, decoder = SamEncoder(model_config=config, dtype="float32"), build_mask_decoder(config)
    state = {f"image_encoder.{k}": v for k, v in encoder.image_encoder.state_dict().items()}
    state |= {f"prompt_encoder.{k}": v for k, v in encoder.prompt_encoder.state_dict().items()}
    state |= {f"mask_decoder.{k}": v for k, v in decoder.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return str(path)


def ensure_tiny_sam_checkpoint(path: str | Path = "sample_data/tiny_sam/sam_tiny.pth", seed: int = 0) -> str:
    """The tiny SAM checkpoint of the demo, written first if missing (demo.yaml)."""
    return str(path) if Path(path).is_file() else save_tiny_sam_checkpoint(path, seed)
