"""open_clip image and text encoders for dense (per-pixel) vision-language networks.

* :func:`build_open_clip` makes an ``open_clip`` CLIP model from a model name and a
  ``pretrained`` value (an open_clip tag such as ``laion2b_s32b_b79k``, a local
  checkpoint file, or null for random weights), or from a config dict
  (``{"embed_dim": ..., "vision_cfg": {...}, "text_cfg": {...}}``) - the tests and
  the demo build a tiny CLIP that way, with no download.
* :class:`OpenClipBackbone` holds one such model and exposes both towers:
  :class:`OpenClipImageEncoder` returns the **spatial** token map
  ``(B, C, h, w)`` (ViT patch tokens, or the ModifiedResNet's last stage before its
  attention pool), and :class:`OpenClipTextEncoder` is a frozen text tower with the
  open_clip tokenizer (context length 77 by default) and a cache of encoded strings.

Weights that are not there offline raise :class:`~transforms.base.errors.PretrainedWeightsError`
naming the config key and what was looked for.
"""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from transforms.base.describe import configurable, typed
from transforms.base.errors import PretrainedWeightsError

__all__ = [
    "build_open_clip", "tiny_clip_config", "OpenClipBackbone", "OpenClipImageEncoder", "OpenClipTextEncoder",
    "CLIP_MEAN", "CLIP_STD",
]

# the image normalisation every OpenAI / LAION CLIP was trained with (0-1 RGB)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def tiny_clip_config(image_size: int = 64, patch_size: int = 8, width: int = 32, layers: int = 2,
                     text_width: int = 32, text_layers: int = 1, embed_dim: int = 32,
                     context_length: int = 77) -> dict:
    """A small ViT CLIP config (a few hundred thousand weights plus the 49408-token embedding) for tests and demos."""
    return {
        "embed_dim": embed_dim,
        "vision_cfg": {"image_size": image_size, "layers": layers, "width": width, "head_width": 16,
                       "patch_size": patch_size, "mlp_ratio": 2.0},
        "text_cfg": {"context_length": context_length, "vocab_size": 49408, "width": text_width, "heads": 2,
                     "layers": text_layers, "mlp_ratio": 2.0},
    }


def _hub_cache() -> str:
    return os.environ.get("HF_HOME", str(Path("~/.cache/huggingface").expanduser()))


@typed
def build_open_clip(model_name: str | None = "ViT-H-14", pretrained: str | None = None,
                    model_cfg: Mapping | None = None, image_size: int | None = None,
                    context_length: int | None = None, cache_dir: str | None = None,
                    config_key: str = "clip_pretrained") -> nn.Module:
    """An ``open_clip`` CLIP model.

    Args:
        model_name: an open_clip model name (``ViT-H-14``, ``RN50x64``, ...); ignored when ``model_cfg`` is given.
        pretrained: open_clip pretrained tag (``laion2b_s32b_b79k``), a local checkpoint file, or None
            (random initialisation).
        model_cfg: build ``open_clip.model.CLIP(**model_cfg)`` instead of a named model (no download);
            ``pretrained`` may then only be a local file.
        image_size: input size the model will see; a ViT's positional embedding is resized when it
            loads weights trained at another size (the encoder also interpolates it on the fly).
        context_length: text length (77 for CLIP).
        cache_dir: where open_clip looks for downloaded weights.
        config_key: the config key ``pretrained`` came from, for error messages.
    """
    import open_clip

    if model_cfg is not None:
        cfg = copy.deepcopy(dict(model_cfg))
        cfg["vision_cfg"] = dict(cfg.get("vision_cfg", {}))
        cfg["text_cfg"] = dict(cfg.get("text_cfg", {}))
        if image_size is not None:
            cfg["vision_cfg"]["image_size"] = int(image_size)
        if context_length is not None:
            cfg["text_cfg"]["context_length"] = int(context_length)
        model = open_clip.model.CLIP(**cfg)
        if pretrained is not None:
            path = Path(str(pretrained)).expanduser()
            if not path.is_file():
                raise PretrainedWeightsError(config_key, pretrained, f"the file {path.resolve()}",
                                             "With a model config only a local checkpoint file can be loaded.")
            open_clip.load_checkpoint(model, str(path))
        return model

    if not model_name:
        raise ValueError("give an open_clip model name (clip_model) or a model config (clip_model_cfg)")
    if model_name not in open_clip.list_models():
        raise ValueError(f"clip_model={model_name!r} is not an open_clip model; known: e.g. ViT-H-14, RN50x64, ViT-B-16")
    kwargs = dict(force_image_size=image_size, force_context_length=context_length, cache_dir=cache_dir)
    if pretrained is None:
        return open_clip.create_model(model_name, pretrained=None, **kwargs)
    path = Path(str(pretrained)).expanduser()
    is_path = path.is_file() or str(pretrained).startswith(("/", ".", "~")) or str(pretrained).endswith(
        (".pt", ".pth", ".bin", ".safetensors"))
    if is_path and not path.is_file():
        raise PretrainedWeightsError(config_key, pretrained, f"the file {path.resolve()}", "It does not exist.")
    if not is_path and str(pretrained) not in open_clip.list_pretrained_tags_by_model(model_name):
        raise PretrainedWeightsError(
            config_key, pretrained, f"an open_clip pretrained tag of {model_name}",
            f"Known tags: {open_clip.list_pretrained_tags_by_model(model_name)}, or give a local checkpoint file.")
    try:
        return open_clip.create_model(model_name, pretrained=str(path if is_path else pretrained),
                                      require_pretrained=True, **kwargs)
    except Exception as err:  # hub errors come in many types; say what was looked for either way
        if is_path:
            raise PretrainedWeightsError(config_key, pretrained, f"open_clip weights of {model_name} in {path}",
                                         str(err).splitlines()[0] if str(err) else type(err).__name__) from err
        where = cache_dir or _hub_cache()
        raise PretrainedWeightsError(
            config_key, pretrained, f"open_clip weights '{model_name}' / '{pretrained}' in the download cache ({where})",
            "They are not there and could not be downloaded (offline?). Download them once on a machine with "
            "internet, or set the key to a local checkpoint file.") from err


class OpenClipImageEncoder(nn.Module):
    """The image tower of an open_clip CLIP, returning its spatial feature map.

    ViT: patch tokens of the last block (after ``ln_post`` when ``final_norm``), reshaped to
    ``(B, width, H/patch, W/patch)``; the positional embedding is interpolated (bicubic) when
    the input grid differs from the one it was trained for. ModifiedResNet (``RN50x64``...):
    the output of ``layer4`` (stride 32, ``width * 32`` channels). Other towers are rejected.
    """

    def __init__(self, visual: nn.Module, final_norm: bool = True):
        super().__init__()
        from open_clip.modified_resnet import ModifiedResNet
        from open_clip.transformer import VisionTransformer

        if isinstance(visual, VisionTransformer):
            self.kind = "vit"
            self.out_channels = int(visual.conv1.out_channels)
            self.stride = int(visual.conv1.stride[0])
        elif isinstance(visual, ModifiedResNet):
            self.kind = "resnet"
            self.out_channels = int(visual.attnpool.k_proj.in_features)
            self.stride = 32
        else:
            raise TypeError(f"spatial features are implemented for open_clip ViT and ModifiedResNet towers, "
                            f"not {type(visual).__name__}")
        # the pooled-embedding head is not used for dense features; drop it (no unused weights under DDP)
        if self.kind == "vit":
            visual.proj = None
            if getattr(visual, "attn_pool", None) is not None:
                raise TypeError("open_clip ViTs with an attentional pooler (CoCa) are not supported for spatial features")
        else:
            visual.attnpool = nn.Identity()
        self.visual = visual
        self.final_norm = final_norm

    def _pos_embed(self, gh: int, gw: int) -> torch.Tensor:
        pos = self.visual.positional_embedding  # (1 + n*n, D)
        cls_pos, grid_pos = pos[:1], pos[1:]
        n = int(round(math.sqrt(grid_pos.shape[0])))
        if (n, n) == (gh, gw):
            return pos
        grid = grid_pos.reshape(1, n, n, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid.float(), size=(gh, gw), mode="bicubic", align_corners=False).to(pos.dtype)
        return torch.cat([cls_pos, grid.permute(0, 2, 3, 1).reshape(gh * gw, -1)], dim=0)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, C, ceil(H/stride), ceil(W/stride)): the image is padded at the bottom and
        right to a multiple of the stride (zeros: the mean colour after CLIP normalisation), so every
        pixel is seen and token (i, j) covers pixels ``[i*stride, (i+1)*stride)`` exactly."""
        v = self.visual
        pad_h, pad_w = (-image.shape[-2]) % self.stride, (-image.shape[-1]) % self.stride
        if pad_h or pad_w:
            image = F.pad(image, (0, pad_w, 0, pad_h))
        if self.kind == "resnet":
            x = v.stem(image.to(v.conv1.weight.dtype))
            return v.layer4(v.layer3(v.layer2(v.layer1(x))))
        x = v.conv1(image)  # (B, D, gh, gw)
        b, d, gh, gw = x.shape
        x = x.flatten(2).transpose(1, 2)
        cls = v.class_embedding.to(x.dtype).reshape(1, 1, -1).expand(b, -1, -1)
        x = torch.cat([cls, x], dim=1) + self._pos_embed(gh, gw).to(x.dtype)
        x = v.patch_dropout(x)
        x = v.ln_pre(x)
        x = v.transformer(x)
        if self.final_norm:
            x = v.ln_post(x)
        return x[:, 1:].transpose(1, 2).reshape(b, d, gh, gw)


class OpenClipTextEncoder(nn.Module):
    """A frozen open_clip text tower with its tokenizer and a cache of encoded strings.

    ``encode(["a sentence", ...])`` -> ``(N, embed_dim)`` pooled, projected text features
    (L2-normalised when ``normalize``). Each distinct string is encoded once per process;
    loading new weights clears the cache.
    """

    def __init__(self, clip: nn.Module, model_name: str | None = None, context_length: int = 77,
                 normalize: bool = True):
        super().__init__()
        import open_clip

        self.clip = clip  # shares the model with the image tower; only the text parts are used here
        self.context_length = int(context_length)
        self.normalize = normalize
        if model_name and model_name in open_clip.list_models():
            self.tokenizer = open_clip.get_tokenizer(model_name, context_length=self.context_length)
        else:
            self.tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=self.context_length)
        self.embed_dim = int(self._probe_dim())
        self._cache: dict[str, torch.Tensor] = {}

    def _probe_dim(self) -> int:
        proj = getattr(self.clip, "text_projection", None)
        if isinstance(proj, nn.Linear):
            return proj.out_features
        if isinstance(proj, torch.Tensor):
            return proj.shape[1]
        return self.clip.transformer.width

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self.tokenizer(list(texts))

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        texts = [str(t) for t in texts]
        missing = sorted({t for t in texts if t not in self._cache})
        if missing and self.clip is None:
            raise RuntimeError(f"the text tower was released; cannot encode {missing[:2]}...")
        if missing:
            device = next(self.clip.parameters()).device
            was_training = self.clip.training
            self.clip.eval()
            feats = self.clip.encode_text(self.tokenize(missing).to(device), normalize=self.normalize)
            self.clip.train(was_training)
            for t, f in zip(missing, feats.float().cpu()):
                self._cache[t] = f.clone()  # its own storage: a row view would keep the whole batch alive
        return torch.stack([self._cache[t] for t in texts], dim=0)

    def clear_cache(self) -> None:
        self._cache.clear()

    def _load_from_state_dict(self, *args, **kwargs):
        self.clear_cache()
        super()._load_from_state_dict(*args, **kwargs)


@configurable(pretrained={"pretrained": None})
class OpenClipBackbone(nn.Module):
    """One open_clip CLIP, both towers: ``.image_encoder`` (trainable) and ``.text_encoder`` (frozen).

    Args:
        model_name: open_clip model name; the default ``ViT-H-14`` has a 1024-wide text embedding.
        pretrained: open_clip tag, local checkpoint file, or None (config key ``clip_pretrained``).
        model_cfg: a config dict instead of a named model (tests/demo: :func:`tiny_clip_config`).
        image_size: the training input size.
        context_length: text length (77).
        normalize_text: L2-normalise the text features.
        final_norm: apply the ViT's ``ln_post`` to the patch tokens.
        train_image_encoder: fine-tune the image tower (MONCH) or freeze it.
        config_key: the config key of ``pretrained`` (error messages).
    """

    def __init__(self, model_name: str | None = "ViT-H-14", pretrained: str | None = None,
                 model_cfg: Mapping | None = None, image_size: int | None = None, context_length: int = 77,
                 normalize_text: bool = True, final_norm: bool = True, train_image_encoder: bool = True,
                 cache_dir: str | None = None, config_key: str = "clip_pretrained"):
        super().__init__()
        clip = build_open_clip(model_name, pretrained, model_cfg, image_size, context_length, cache_dir, config_key)
        self.model_name = None if model_cfg is not None else model_name
        self.image_encoder = OpenClipImageEncoder(clip.visual, final_norm=final_norm)
        clip.visual = nn.Identity()  # the image tower lives in image_encoder
        self.text_encoder = OpenClipTextEncoder(clip, self.model_name, context_length, normalize_text)
        self.text_encoder.requires_grad_(False)
        self.image_encoder.requires_grad_(train_image_encoder)

    def train(self, mode: bool = True):
        super().train(mode)
        self.text_encoder.eval()  # frozen: no dropout, no statistics updates
        return self

    def release_text_tower(self) -> None:
        """Free the text tower's weights; strings already encoded stay in the cache."""
        self.text_encoder.clip = None
