"""Image backbones that return a feature pyramid."""

from __future__ import annotations

import logging
from typing import Sequence

import torch
from torch import nn

from transforms.base.describe import configurable
from transforms.base.errors import PretrainedWeightsError
from transforms.base.pretrained import hub_offline, resolve_checkpoint_file

logger = logging.getLogger(__name__)


def timm_pretrained_name(name: str) -> str:
    """The tagged timm name whose weights ``timm.create_model(name, pretrained=True)`` loads: ``name`` itself when
    it carries a tag (``convnext_tiny.fb_in1k``), else ``name`` with the tag timm loads by default for it (its
    ``pretrained_cfg``: ``convnext_tiny.in12k_ft_in1k`` in timm 1.0)."""
    from timm.models import get_pretrained_cfg, split_model_name_tag

    base, tag = split_model_name_tag(name)
    if tag:
        return name
    cfg = get_pretrained_cfg(base)
    default = getattr(cfg, "tag", None) if cfg is not None else None
    return f"{base}.{default}" if default else name


@configurable(pretrained={"weights": None}, source_names={"weights": ("timm",)})
class TimmFeatureEncoder(nn.Module):
    """A timm backbone (ConvNeXt by default) returning its stage outputs.

    Args:
        name: timm model name, optionally with a pretrained tag: ``convnext_tiny`` (the paper's),
            ``convnext_tiny.fb_in1k`` (its ImageNet-1k weights, as the Ariadne code uses), or
            ``convnext_atto`` (a 3.4 M-parameter ConvNeXt used by the CPU demo).
        weights: ``None`` for random initialisation, ``"timm"`` for timm's pretrained weights
            of ``name`` (fetched from the hub unless cached), or the path of a local checkpoint file
            (``.pth``/``.safetensors`` of the classification model, as timm saves it). With ``"timm"`` a
            ``name`` without a tag resolves to timm's default tag, which depends on the timm version
            (``convnext_tiny`` -> ``convnext_tiny.in12k_ft_in1k`` in timm 1.0, not the ImageNet-1k
            ``fb_in1k``); :func:`timm_pretrained_name` names it and a warning says so: name the tag.
        out_indices: which stages to return.
        in_chans: input channels.
        config_key: the config key ``weights`` came from, for error messages.

    Attributes ``channels`` and ``reductions`` describe the returned maps; ``timm_name`` is the name
    given to ``timm.create_model`` (with its tag when the weights are timm's).
    """

    def __init__(
        self,
        name: str = "convnext_tiny",
        weights: str | None = None,
        out_indices: Sequence[int] = (0, 1, 2, 3),
        in_chans: int = 3,
        config_key: str = "image_encoder_weights",
    ):
        super().__init__()
        import timm

        from timm.models import split_model_name_tag

        base, tag = split_model_name_tag(name)
        if base not in timm.list_models():
            raise ValueError(f"unknown timm model '{name}' (config key 'image_encoder')")
        if tag and name not in timm.list_pretrained(f"{base}.*"):
            raise ValueError(f"unknown timm model '{name}' (config key 'image_encoder'): the pretrained tags of "
                             f"{base} are {[t.split('.', 1)[1] for t in timm.list_pretrained(f'{base}.*')]}")
        kwargs = dict(features_only=True, out_indices=tuple(out_indices), in_chans=in_chans)
        self.timm_name = name
        if weights is None:
            self.body = timm.create_model(name, pretrained=False, **kwargs)
        elif str(weights) == "timm":
            self.timm_name = timm_pretrained_name(name)
            if self.timm_name != name:
                logger.warning("%s: timm resolves '%s' to its default pretrained tag '%s'; name the tag in the "
                               "config (image_encoder: %s) to be sure which weights load", config_key, name,
                               self.timm_name, self.timm_name)
            try:
                self.body = timm.create_model(self.timm_name, pretrained=True, **kwargs)
            except Exception as err:  # timm raises a variety of hub/network errors
                hint = "HF_HUB_OFFLINE is set and the weights are not cached. " if hub_offline() else ""
                raise PretrainedWeightsError(
                    config_key, weights, f"timm's pretrained weights for '{self.timm_name}'",
                    hint + "Download them once, or set the key to a local checkpoint file.",
                ) from err
        else:
            path = resolve_checkpoint_file(config_key, weights)
            self.body = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs)
        self.channels = list(self.body.feature_info.channels())
        self.reductions = list(self.body.feature_info.reduction())

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.body(x))
