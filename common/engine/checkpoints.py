"""Checkpoints that say what model they hold, and resuming a run without losing the best model.

A bundle checkpoint is a ``torch.save`` of plain values and tensors, loaded with ``weights_only=True``
(a checkpoint from a stranger runs no code)::

    {"model": state_dict,          # the weights; the frozen weights of pretrained parts may be left out
     "description": {
         "format": 1, "bundle": "tmca", "version": "0.2.0",
         "network": {"_target_": "scripts.network.TMCA", ...},    # plain values (transforms.base.describe)
         "settings": {"image_size": 224, "text": {"tokenizer": ..., "max_length": 24}, ...},
         "excluded": [],            # prefixes of pretrained parts whose frozen weights load from their source
                                    # (trainable weights inside them, LoRA or adapters, are kept)
         "training": {"epoch": 12, "metrics": {"val_dice": 0.91}}},
     "optimizer": ..., "lr_scheduler": ..., "trainer": ..., "best_model": ...}   # epoch checkpoints only

Evaluation, inference, export, the zoo zip and MONAI Label build the network from ``description``
(:func:`load_model`), so a model is always evaluated with the settings it was trained with.

Resuming (``--resume true``) restores the training state *and* the best-model saver's record of the
best metric so far, so the first validation after a restart replaces ``model.pt`` only if it is
better; epoch checkpoints left by the killed run are pruned to ``n_saved`` like the new ones.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import glob
import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from ignite.handlers.checkpoint import BaseSaveHandler
from monai.handlers import CheckpointSaver

from transforms.base.values import as_bool
from transforms.base.describe import (anchored_description_source, bundle_package, check_description, describe,
                                      described_class, instantiate, is_bundle_class, relocate, remote_code_requested,
                                      source_paths, typed)
from transforms.base.errors import CheckpointError, ConfigurationError, PretrainedWeightsError
from transforms.base.pretrained import anchored_source, missing_local_source

from .network import unwrap
from .run_lock import hold_output_folder, release_when_run_ends

logger = logging.getLogger(__name__)

FORMAT = 1


# ---------------------------------------------------------------------------------------------
# what a checkpoint holds
# ---------------------------------------------------------------------------------------------
def bundle_identity(bundle_root: str | Path) -> tuple[str, str]:
    """``(name, version)`` of a bundle folder: its folder name and ``configs/metadata.json``'s version."""
    root = Path(bundle_root).resolve()
    meta = root / "configs" / "metadata.json"
    version = json.loads(meta.read_text()).get("version", "") if meta.is_file() else ""
    return root.name, version


def _plain(value: Any) -> Any:
    """Config values as plain JSON-able values (tuples to lists, torch devices and dtypes to strings)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        return value.item()
    return str(value)


def trainable_names(network: torch.nn.Module) -> set[str]:
    return {n for n, p in unwrap(network).named_parameters() if p.requires_grad}


def is_excluded(key: str, excluded: Sequence[str], trainable: set[str]) -> bool:
    """A state-dict key left out of checkpoints: under an ``excluded`` prefix and not a trainable parameter
    (a frozen pretrained weight or buffer; LoRA and adapters inside a frozen encoder stay in)."""
    return bool(excluded) and key.startswith(tuple(excluded)) and key not in trainable


class ModelWeights:
    """The ``model`` entry of a checkpoint: the network's state dict without the frozen weights of the
    ``excluded`` parts (:func:`is_excluded`)."""

    def __init__(self, network: torch.nn.Module, excluded: Sequence[str] = ()):
        self.network, self.excluded = network, tuple(excluded)

    def state_dict(self) -> dict:
        trainable = trainable_names(self.network)
        return {k: v for k, v in unwrap(self.network).state_dict().items()
                if not is_excluded(k, self.excluded, trainable)}

    def load_state_dict(self, state: Mapping, path: str | Path | None = None) -> None:
        load_weights(unwrap(self.network), state, self.excluded, path)


class ModelDescription:
    """The ``description`` entry of a checkpoint (the module doc), as a ``save_dict`` object.

    Args:
        network: the network being trained (DDP / compile wrappers are looked through).
        bundle_root: the bundle folder; its name and metadata version are recorded.
        settings: what inference needs besides the network (input size, tokenizer and token budget,
            windowing, decoding thresholds); plain values.
        leave_out_frozen_pretrained: leave frozen parts that load from a pretrained source (a frozen
            text encoder, LLaVA's base, SAM's encoder) out of the weights; they load from their config
            key again. The default keeps every weight, so the checkpoint runs on its own.
    """

    def __init__(self, network: torch.nn.Module, bundle_root: str | Path, settings: Mapping | None = None,
                 leave_out_frozen_pretrained: bool = False):
        self.network = network
        self.bundle_root = Path(bundle_root)
        self.bundle, self.version = bundle_identity(bundle_root)
        self.settings = _plain(dict(settings or {}))
        text = self.settings.get("text")
        if isinstance(text, dict) and isinstance(text.get("tokenizer"), str):  # a local tokenizer folder: absolute,
            text["tokenizer"] = anchored_source(text["tokenizer"])              # as the network's sources
        self.leave_out = leave_out_frozen_pretrained
        self.training: dict = {}
        self.weights = ModelWeights(network, self.excluded_prefixes())

    def frozen_pretrained_parts(self) -> list[tuple[str, torch.nn.Module]]:
        """``(state-dict prefix, module)`` of the parts built from a pretrained source that hold frozen
        weights (a frozen text encoder; SAM2's trunk with LoRA inside; LLaVA's base)."""
        net = unwrap(self.network)
        parts = []
        for name, module in net.named_modules():
            if not name or any(name.startswith(p) for p, _ in parts):
                continue
            pretrained = getattr(type(module), "_pretrained_arguments", None)
            built_with = getattr(module, "_configured_with", {})
            from_source = any(built_with.get(arg) not in (None, offline) for arg, offline in (pretrained or {}).items())
            # a part with random weights (no source named) has nothing to reload them from: it stays in
            if pretrained and from_source and any(not p.requires_grad for p in module.parameters()):
                parts.append((name + ".", module))
        return parts

    def excluded_prefixes(self) -> list[str]:
        return [prefix for prefix, _ in self.frozen_pretrained_parts()] if self.leave_out else []

    def state_dict(self) -> dict:
        keep = [m for _, m in self.frozen_pretrained_parts()] if self.leave_out else []
        return {"format": FORMAT, "bundle": self.bundle, "version": self.version,
                "network": describe(unwrap(self.network), keep_pretrained=keep), "settings": self.settings,
                "excluded": self.excluded_prefixes(), "training": dict(self.training)}

    def load_state_dict(self, state: Mapping) -> None:
        """Resuming: the checkpoint must describe the network this run builds (where its pretrained parts'
        weights come from may differ: that is storage, not architecture)."""
        current = self.state_dict()
        try:
            package = bundle_package(self.bundle_root)  # where the descriptions' scripts.<module> classes live
        except ConfigurationError:
            package = None
        for key in ("bundle", "network"):
            theirs, ours = _architecture(state.get(key), package), _architecture(current[key], package)
            if theirs != ours:
                raise CheckpointError(None, f"the checkpoint to resume from was trained with {summary(state)}; this run "
                                            f"builds {summary(current)}: {_first_difference(theirs, ours)}")
        self.training = dict(state.get("training", {}))


def _architecture(config: Any, package=None) -> Any:
    """A description without what says where pretrained weights come from (the pretrained arguments of each
    part, a Hugging Face model's stored config): two runs of one architecture compare equal. ``package``: the
    bundle's package (:func:`transforms.base.describe.bundle_package`)."""
    if isinstance(config, list):
        return [_architecture(c, package) for c in config]
    if not isinstance(config, Mapping):
        return config
    klass = _described_class_or_none(config.get("_target_"), package)
    ignore = set(getattr(klass, "_pretrained_arguments", {})) | {"model_config"}
    # a source recorded relative (before sources were recorded absolute) compares as the path it names here
    return {k: _architecture(anchored_description_source(klass, k, v), package) for k, v in config.items()
            if k not in ignore}


def _described_class_or_none(target: Any, package=None) -> type | None:
    """The class a description names, or None where it names none these bundles build (nothing is imported
    outside the bundle's and the shared code; :func:`transforms.base.describe.described_class`)."""
    try:
        return described_class(target, "", package=package) if target is not None else None
    except ConfigurationError:
        return None


def summary(description: Mapping) -> str:
    """One line: bundle, version, network class and its top-level settings."""
    network = description.get("network") or {}
    target = str(network.get("_target_", "?")).rsplit(".", 1)[-1]
    settings = [f"{k}={v}" for k, v in network.items()
                if k != "_target_" and not isinstance(v, (dict, list)) and len(repr(v)) < 40]
    return f"{description.get('bundle', '?')} {description.get('version', '')} {target}({', '.join(settings[:12])})"


def _first_difference(a: Any, b: Any, path: str = "") -> str:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for key in list(a) + [k for k in b if k not in a]:
            if a.get(key) != b.get(key):
                return _first_difference(a.get(key), b.get(key), f"{path}.{key}" if path else str(key))
    return f"{path or 'value'} is {a!r} there, {b!r} here"


# ---------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------
def load_weights(network: torch.nn.Module, state: Mapping, excluded: Sequence[str] = (),
                 path: str | Path | None = None) -> None:
    """Load a state dict; keys under ``excluded`` may be missing (they came from a pretrained source).
    A mismatch is one line naming a few keys, not a several-hundred-line dump."""
    result = network.load_state_dict(dict(state), strict=False)
    trainable = trainable_names(network)
    missing = [k for k in result.missing_keys if not is_excluded(k, tuple(excluded), trainable)]
    unexpected = list(result.unexpected_keys)
    if missing or unexpected:
        shown = ", ".join(missing[:3]) + (f" (+{len(missing) - 3} more)" if len(missing) > 3 else "")
        extra = ", ".join(unexpected[:3]) + (f" (+{len(unexpected) - 3} more)" if len(unexpected) > 3 else "")
        raise CheckpointError(path, f"its weights do not fit this network: {len(missing)} missing ({shown or '-'}), "
                                    f"{len(unexpected)} unexpected ({extra or '-'})")


def keep_left_out_parts(network: torch.nn.Module, excluded: Sequence[str]) -> None:
    """Let a strict load of the checkpoint's own ``model`` weights into ``network`` succeed: the pretrained
    parts the checkpoint leaves out (frozen encoders under ``excluded``) keep the weights they were built with.
    MONAI's ``ckpt_export`` (ignite's ``Checkpoint.load_objects``) loads ``model.pt`` strictly into the
    inference config's ``network_def``, which is the network built here."""
    if not excluded:
        return

    def fill_missing(module, state_dict, prefix, *args):
        if prefix:  # called for the root module only
            return
        for key, value in module.state_dict().items():
            if key not in state_dict and key.startswith(tuple(excluded)):
                state_dict[key] = value

    network.register_load_state_dict_pre_hook(fill_missing)


class LoadedModel:
    """A network built from a checkpoint's description, with its weights loaded (eval mode)."""

    def __init__(self, network: torch.nn.Module, description: dict, path: str):
        self.network, self.description, self.path = network, description, path

    @property
    def settings(self) -> dict:
        return self.description.get("settings", {})

    def __repr__(self) -> str:
        return f"LoadedModel({self.path}: {summary(self.description)})"


def tokenizer_source(checkpoint: str | Path, settings: Mapping) -> str:
    """The tokenizer of a text model: the ``tokenizer/`` folder beside the checkpoint when there is one
    (scripts/package.py and scripts/export.py save it there, so a packaged bundle or an exported model
    tokenises offline), else the one the checkpoint names (a hub id, a folder or a packaged model)."""
    beside = Path(checkpoint).parent / "tokenizer"
    return str(beside) if (beside / "tokenizer_config.json").is_file() else settings["text"]["tokenizer"]


def trained_processor(trained, checkpoint: str | Path) -> dict:
    """What a trained model reads its inputs with (the checkpoint's ``settings``, written by train.yaml's
    ``processor``: image size, threshold, CT window, classes, tokenizer, text budget), for evaluation,
    fine-tuning and inference, which restate none of it. The tokenizer is the one saved beside the
    checkpoint where there is one (:func:`tokenizer_source`), so a packaged model tokenises offline."""
    processor = copy.deepcopy(dict(trained.settings))
    if isinstance(processor.get("text"), Mapping):
        processor["text"] = {**processor["text"], "tokenizer": tokenizer_source(checkpoint, processor)}
    return processor


@typed
def read_checkpoint(path: str | None) -> dict:
    """The checkpoint's contents (``weights_only``); errors say how to get one."""
    if path is None or not os.path.isfile(str(path)):
        raise FileNotFoundError(
            f"checkpoint {path} does not exist: train first (it is written to <output_dir>/models/model.pt), "
            "or pass --checkpoint /path/to/model.pt")
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(path, f"cannot read ({type(err).__name__}: {str(err).splitlines()[0]})") from err


REMOTE_CODE_VARIABLE = "TGSEG_TRUST_REMOTE_CODE"


def check_checkpoint(state: Any, path: str | Path | None, bundle_root: str | Path,
                     trust_remote_code: bool | None = None) -> dict:
    """A checkpoint's description, read as data, and its weights, checked before anything is built from them.

    The description must come from the bundle at ``bundle_root`` and hold plain values only: the network's
    class one of this bundle's own (``scripts.*``), every nested ``_target_`` a ``@configurable`` class of the
    bundle or the shared code, no string that MONAI's config parser would evaluate (``$``, ``@``, ``%``) and no
    other config directive (:func:`transforms.base.describe.check_description`). A description that asks for a
    pretrained model's own code (``trust_remote_code``) needs the user's consent: ``trust_remote_code`` here,
    ``--trust_remote_code true`` on the command line, or the environment variable ``TGSEG_TRUST_REMOTE_CODE=1``
    (MONAI Label). Every floating-point weight must be finite. Anything else raises a
    :class:`CheckpointError` naming the checkpoint and the key."""
    description = state.get("description") if isinstance(state, Mapping) else None
    if not isinstance(description, Mapping) or "network" not in description or "model" not in state:
        raise CheckpointError(path, "holds no model description (not written by these bundles' trainer, or by a "
                                    "version before self-describing checkpoints): train the model again with this "
                                    "version")
    bundle, _ = bundle_identity(bundle_root)
    if description.get("bundle") != bundle:
        raise CheckpointError(path, f"is a checkpoint of {summary(description)}; this is the {bundle} bundle "
                                    f"({Path(bundle_root).resolve()})")
    _check_description_data(description, path, bundle_root, trust_remote_code)
    _check_finite(state["model"], path)
    return dict(description)


def _check_description_data(description: Mapping, path: str | Path | None, bundle_root: str | Path,
                            trust_remote_code: bool | None) -> None:
    """The description part of :func:`check_checkpoint` (also for the description an export carries)."""
    network = description.get("network")
    try:
        package = bundle_package(bundle_root)  # the bundle's own package, under whatever name it runs
        if not isinstance(network, Mapping):
            raise ConfigurationError(f"network = {network!r} is not a description of a network")
        klass = described_class(network.get("_target_"), "network", roots=("scripts",), package=package)
        if not is_bundle_class(klass, package):
            raise ConfigurationError(f"network._target_ = {network.get('_target_')!r} is not a class defined by "
                                     "this bundle (it is shared code that the bundle's package imports)")
        check_description(network, "network", package=package)
        # every other entry, keys included (a top-level _target_ or _requires_ is refused too)
        check_description({k: v for k, v in description.items() if k != "network"}, "", classes=False)
    except ConfigurationError as err:
        raise CheckpointError(path, f"refused, nothing was built from it: its description must be plain data naming "
                                    f"this bundle's classes only, and {err}") from None
    if trust_remote_code is None:
        trust_remote_code = os.environ.get(REMOTE_CODE_VARIABLE, "").strip().lower() in ("1", "true", "yes")
    asked = remote_code_requested(description)
    if asked and not trust_remote_code:
        raise CheckpointError(path, f"{', '.join(asked)} is true: the model runs code shipped with its pretrained "
                                    "part, which a checkpoint cannot allow by itself. If you trust where the model "
                                    "and that part come from, pass --trust_remote_code true (MONAI Label: "
                                    f"{REMOTE_CODE_VARIABLE}=1)")


def _check_finite(weights: Any, path: str | Path | None) -> None:
    """Refuse NaN or infinite weights (a diverged run): the network would answer with an empty mask."""
    if not isinstance(weights, Mapping):
        raise CheckpointError(path, f"'model' is a {type(weights).__name__}, not a state dict of weights")
    for key, value in weights.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(path, f"weight {key!r} holds NaN or infinite values (the training diverged?): "
                                        "refused, it would predict nothing; use an earlier checkpoint")


@typed
def load_model(path: str | None, bundle_root: str, device: str | None = None,
               pretrained_sources: dict | None = None, trust_remote_code: bool | None = None) -> LoadedModel:
    """Build the network a checkpoint describes and load its weights.

    The checkpoint must come from the bundle at ``bundle_root``; another bundle's (or one without a
    description) is refused in one line that says what it is. A TorchScript (``.ts``) or ONNX (``.onnx``)
    file written by ``scripts/export.py`` is taken in place of a checkpoint: it carries the description.
    ``pretrained_sources``: where this machine keeps pretrained parts that the checkpoint leaves out
    (``{"sam.checkpoint": "/weights/sam_vit_h_4b8939.pth"}``; :func:`transforms.base.describe.relocate`).
    The checkpoint is read as data and checked before anything is built (:func:`check_checkpoint`).
    """
    if path is not None and Path(str(path)).suffix in (".ts", ".onnx"):
        return _load_exported(path, bundle_root, device, trust_remote_code)
    state = read_checkpoint(path)
    description = check_checkpoint(state, path, bundle_root, trust_remote_code)
    network_config = relocate(description["network"], pretrained_sources or {}, bundle_root)
    check_pretrained_sources(network_config, path, bundle_root, given=pretrained_sources or {})
    try:
        network = instantiate(network_config, bundle_root)
    except ConfigurationError:
        raise
    except Exception as err:
        sources = {k: v for k, v in source_paths(network_config, bundle_root).items() if isinstance(v, str)}
        failing = [k for k, v in sources.items() if v == getattr(_pretrained_error(err), "value", None)]
        hint = _sources_hint(sources, failing or list(sources)[:1]) if sources else ""
        raise CheckpointError(path, f"cannot build the network it describes ({summary(description)}): "
                                    f"{type(err).__name__}: {(str(err).splitlines() or [''])[0].rstrip('.')}.{hint}") from err
    load_weights(network, state["model"], description.get("excluded", ()), path)
    keep_left_out_parts(network, description.get("excluded", ()))
    network.eval()
    if device is not None:
        network.to(device)
    logger.info("loaded %s from %s", summary(description), path)
    return LoadedModel(network, dict(description, network=network_config), str(path))


def check_pretrained_sources(network_config: Mapping, path: str | Path | None, bundle_root: str | Path,
                             given: Mapping | None = None) -> None:
    """Before anything is built (LLaVA's 7B, SAM's ViT-H): every pretrained part that loads its weights from a
    source (:func:`transforms.base.describe.source_paths` with ``loading``) finds it on this machine. A local
    path that is not there (the model was trained on another machine, or is an old checkpoint whose relative
    paths resolved from the folder it was trained in) raises a :class:`CheckpointError` naming the checkpoint,
    each missing source's key and path, and the ``--pretrained_sources`` that says where this machine keeps
    them. ``given``: the sources the user pointed elsewhere (``pretrained_sources``)."""
    sources = {k: v for k, v in source_paths(network_config, bundle_root, loading=True).items() if isinstance(v, str)}
    missing = {key: why for key, value in sources.items() if (why := missing_local_source(value)) is not None}
    if not missing:
        return
    given = given or {}
    told = "; ".join(f"{key} = {sources[key]!r}{' (given in pretrained_sources)' if key in given else ''}: {why}"
                     for key, why in missing.items())
    relative = [key for key in missing if key not in given and not os.path.isabs(os.path.expanduser(sources[key]))]
    note = (f" A relative path is read from the current folder ({os.getcwd()}): run from the folder the model was "
            "trained in, or say where this machine keeps it." if relative else "")
    all_sources = {k: v for k, v in source_paths(network_config, bundle_root).items() if isinstance(v, str)}
    raise CheckpointError(path, f"its pretrained parts are not on this machine where it says, so nothing was built: "
                                f"{told}.{note}{_sources_hint(all_sources, list(missing))}")


def _sources_hint(sources: Mapping[str, str], keys: Sequence[str]) -> str:
    """`` Its pretrained parts load from k = v, ...; ... --pretrained_sources "{'k': '/path/on/this/machine'}"``."""
    flag = "{" + ", ".join(f"'{key}': '/path/on/this/machine'" for key in keys) + "}"
    return (" Its pretrained parts load from " + ", ".join(f"{k} = {v!r}" for k, v in sources.items()) +
            f"; where they lie elsewhere on this machine, say so: --pretrained_sources \"{flag}\"")


def _pretrained_error(err: BaseException | None) -> PretrainedWeightsError | None:
    """The :class:`PretrainedWeightsError` behind ``err`` (itself, or what it was raised from), if any."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, PretrainedWeightsError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def _load_exported(path: str, bundle_root: str, device: str | None,
                   trust_remote_code: bool | None = None) -> LoadedModel:
    from .export import exported_description, read_exported

    if not os.path.isfile(str(path)):
        raise FileNotFoundError(f"exported model {path} does not exist: write one with scripts/export.py")
    description = exported_description(path)  # read and checked before the TorchScript program is loaded
    if not isinstance(description, Mapping):
        raise CheckpointError(path, "its description is not a mapping of settings (export it with scripts/export.py)")
    bundle, _ = bundle_identity(bundle_root)
    if description.get("bundle") != bundle:
        raise CheckpointError(path, f"is an export of {summary(description)}; this is the {bundle} bundle")
    _check_description_data(description, path, bundle_root, trust_remote_code)
    network, description = read_exported(path)
    if device is not None:
        network.to(device)
    return LoadedModel(network, description, str(path))


# ---------------------------------------------------------------------------------------------
# saving and resuming
# ---------------------------------------------------------------------------------------------
def save_atomically(checkpoint: Mapping, path: Path) -> None:
    """Write ``<path>.part``, flush it to the disk and rename it to ``path``: ``path`` is the previous file or
    the complete new one, never a truncated one. A failed write (a full disk) removes the ``.part`` and says
    why, naming the file."""
    partial = path.with_name(path.name + ".part")
    try:
        with open(partial, "wb") as file:  # a file object: a failed write is an OSError saying why (torch's own
            torch.save(checkpoint, file)   # writer, given a path, says only "unexpected pos")
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
        if not isinstance(err, OSError):
            raise
        disk_full = err.errno in (errno.ENOSPC, errno.EDQUOT)
        why, fix = ("the disk is full", "free some space") if disk_full else (err.strerror or str(err), "fix that")
        raise CheckpointError(path, f"cannot be saved: {why}. The previous checkpoints are kept: {fix}, then "
                                    "continue the run with --resume true") from err


class AtomicSaver(BaseSaveHandler):
    """Writes a checkpoint atomically (:func:`save_atomically`; MONAI's saver writes in place) and removes the
    file it supersedes only once the new one is complete.

    ignite's ``Checkpoint`` calls :meth:`remove` for the superseded file *before* it saves the new one, so a
    save that failed (a full disk) would leave no resumable checkpoint; here the removal waits for the next
    successful save.
    """

    def __init__(self, dirname: str, filename: str | None = None):
        self.dirname, self.filename = Path(dirname), filename
        self.superseded: list[Path] = []

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        path = self.dirname / (self.filename or filename)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_atomically(checkpoint, path)
        for old in self.superseded:
            if old != path:  # a fixed file name (model.pt): the new file has already replaced the old one
                old.unlink(missing_ok=True)
        self.superseded = []

    def remove(self, filename: str) -> None:
        self.superseded.append(self.dirname / (self.filename or filename))


class BestModelSaver(CheckpointSaver):
    """``model.pt``: the weights and description of the best validation so far (key metric).

    Its record of the best metric is part of the training state (``state_dict``), so a resumed run
    compares against the true best instead of treating its first validation as the best.
    """

    def __init__(self, save_dir: str, description: ModelDescription, filename: str = "model.pt",
                 metric_name: str | None = None):
        self.description = description
        super().__init__(save_dir=save_dir, save_dict={"model": description.weights, "description": description},
                         save_key_metric=True, key_metric_name=metric_name, key_metric_filename=filename)
        self._key_metric_checkpoint.save_handler = AtomicSaver(save_dir, filename)

    def metrics_completed(self, engine) -> None:
        self.description.training = {"epoch": int(engine.state.epoch),
                                     "metrics": {k: _plain(v) for k, v in engine.state.metrics.items()}}
        super().metrics_completed(engine)

    def state_dict(self) -> dict:
        return self._key_metric_checkpoint.state_dict()


class EpochCheckpointSaver(CheckpointSaver):
    """``checkpoint_epoch=N.pt`` every epoch, written atomically, keeping the newest ``n_saved``; files a killed
    run left behind count towards ``n_saved`` too, so they are pruned instead of piling up."""

    def __init__(self, save_dir: str, save_dict: dict, n_saved: int = 1):
        super().__init__(save_dir=save_dir, save_dict=save_dict, save_interval=1, n_saved=n_saved, epoch_level=True)
        self._interval_checkpoint.save_handler = AtomicSaver(save_dir)

    def attach(self, engine) -> None:
        super().attach(engine)
        checkpoint = self._interval_checkpoint
        for path in sorted(glob.glob(os.path.join(self.save_dir, "checkpoint_epoch=*.pt")), key=_epoch_of):
            checkpoint._saved.append(checkpoint.Item(_epoch_of(path), os.path.basename(path)))
        # a run killed between a save and the removal it waits for left one too many: it goes like a superseded one
        while checkpoint.n_saved is not None and len(checkpoint._saved) > checkpoint.n_saved:
            checkpoint.save_handler.remove(checkpoint._saved.pop(0).filename)
        for partial in glob.glob(os.path.join(self.save_dir, "*.pt.part")):
            Path(partial).unlink(missing_ok=True)  # a save that a killed run did not finish


class LastModelSaver:
    """Without validation data there is no best model: ``model.pt`` is the last epoch's, said in the log."""

    def __init__(self, save_dir: str, description: ModelDescription, filename: str = "model.pt"):
        self.path = Path(save_dir) / filename
        self.description = description

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine) -> None:
        self.description.training = {"epoch": int(engine.state.epoch), "metrics": {}}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        AtomicSaver(self.path.parent, self.path.name)(
            {"model": self.description.weights.state_dict(), "description": self.description.state_dict()}, self.path.name)
        engine.logger.info(f"no validation data: {self.path} is the model of epoch {engine.state.epoch}")


def _epoch_of(path: str) -> int:
    match = re.search(r"epoch=(\d+)", os.path.basename(path))
    return int(match.group(1)) if match else -1


def last_checkpoint(ckpt_dir: str, pattern: str = "checkpoint_epoch=*.pt") -> str | None:
    """Path of the newest ``checkpoint_epoch=N.pt`` in ``ckpt_dir`` (highest N), or None."""
    paths = glob.glob(os.path.join(ckpt_dir, pattern))
    return max(paths, key=_epoch_of) if paths else None


@typed
def resume_path(resume: bool | str | None, ckpt_dir: str) -> str | None:
    """What to resume from for config value ``resume``: False/None nothing; True/``"last"`` the newest epoch
    checkpoint in ``ckpt_dir`` (error if none); a path that file (error if missing)."""
    if resume is None or resume is False:
        return None
    if resume is True or str(resume).lower() == "last":
        path = last_checkpoint(ckpt_dir)
        if path is None:
            raise FileNotFoundError(f"resume: no checkpoint_epoch=*.pt in {ckpt_dir} to resume from")
        return path
    if not os.path.isfile(str(resume)):
        raise FileNotFoundError(f"resume: checkpoint {resume} does not exist")
    return str(resume)


class ResumeHandler:
    """Start a run: resume it, or make sure it loses nothing.

    The run first takes its output folder (:mod:`common.engine.run_lock`): a second run into it is refused
    while this one runs, whatever it asks for, and the folder is given back when ``engine.run()`` ends.

    ``resume`` (:func:`resume_path`) attaches a ``CheckpointLoader`` for the training state: network weights,
    optimiser, scheduler, trainer (its epoch), the best-model saver's record and the description (which must
    match this run's network). A fresh run into a ``ckpt_dir`` that already holds checkpoints would replace
    another run's best model: it is refused, unless ``overwrite`` asks for exactly that (then the old
    checkpoints are removed first, so none of them is mistaken for this run's). ``overwrite: demo``
    (demo.yaml) replaces only checkpoints that a demo wrote (:func:`check_demo_may_replace`).
    """

    def __init__(self, resume, ckpt_dir: str, load_dict: dict, map_location=None, overwrite: bool | str = False):
        self.resume = resume
        self.ckpt_dir = ckpt_dir
        self.load_dict = load_dict
        self.map_location = map_location
        self.overwrite = overwrite

    def attach(self, engine) -> None:
        _check_writable(self.ckpt_dir)
        lock = hold_output_folder(self.ckpt_dir)  # None on the other DDP ranks: rank 0 holds it for the job
        try:
            self._start(engine, holds_folder=lock is not None)
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        release_when_run_ends(engine, lock)

    def _check_same_architecture(self, path: str) -> None:
        """Compare the descriptions before any weight is loaded: a setting that differs from the checkpoint's
        (``--image_encoder``) is named in one line, instead of hundreds of torch size mismatches."""
        description = self.load_dict.get("description")
        if isinstance(description, ModelDescription):
            theirs = read_checkpoint(path).get("description")
            if isinstance(theirs, Mapping):
                try:
                    description.load_state_dict(theirs)
                except CheckpointError as err:
                    raise CheckpointError(path, f"cannot be resumed by this run: {err.problem}. --resume continues a "
                                                "run with the settings it was trained with: leave out the setting "
                                                "that differs, or start a new run with --output_dir") from None

    def _start(self, engine, holds_folder: bool) -> None:
        from monai.handlers import CheckpointLoader

        overwrite = _overwrite_setting(self.overwrite)
        path = resume_path(self.resume, self.ckpt_dir)
        if path is not None:
            logger.info("resuming from %s", path)
            self._check_same_architecture(path)
            CheckpointLoader(load_path=path, load_dict=self.load_dict, map_location=self.map_location).attach(engine)
        else:
            existing = _trained_files(self.ckpt_dir)
            if overwrite == "demo":
                check_demo_may_replace(self.ckpt_dir)
            elif existing and not overwrite:
                raise CheckpointError(self.ckpt_dir, f"already holds a trained model ({_names(existing)}); "
                                                     "continue it with --resume true, write this run elsewhere with "
                                                     "--output_dir, or replace it with --overwrite true")
            for old in existing:
                Path(old).unlink(missing_ok=True)  # (other DDP ranks remove the same files)
        if not holds_folder:
            return
        if overwrite != "demo":
            _forget_demo(self.ckpt_dir)  # a real run writes here now: no demo may replace it
        elif path is None:
            _mark_written_by_demo(self.ckpt_dir)


def _overwrite_setting(value: bool | str) -> bool | str:
    """The ``overwrite`` setting: true/false, or ``"demo"`` (replace only what a demo wrote)."""
    if isinstance(value, str) and value.strip().lower() == "demo":
        return "demo"
    return as_bool(value)


def _trained_files(ckpt_dir: str) -> list[str]:
    return sorted(glob.glob(os.path.join(ckpt_dir, "checkpoint_epoch=*.pt"))
                  + glob.glob(os.path.join(ckpt_dir, "model.pt")))


def _names(paths: Sequence[str]) -> str:
    return ", ".join(map(os.path.basename, paths))


DEMO_MARKER = ".written-by-demo"


def _demo_marker(ckpt_dir: str) -> Path:
    """The note that a demo wrote the checkpoints of ``ckpt_dir``; it lies in the output folder (``ckpt_dir``'s
    parent), so that the checkpoint folder holds checkpoints only."""
    return Path(ckpt_dir).resolve().parent / DEMO_MARKER


def written_by_demo(ckpt_dir: str) -> bool:
    try:
        note = json.loads(_demo_marker(ckpt_dir).read_text())
        return note.get("checkpoints") == Path(ckpt_dir).resolve().name
    except (OSError, ValueError, AttributeError):
        return False


def _mark_written_by_demo(ckpt_dir: str) -> None:
    if not written_by_demo(ckpt_dir):
        _demo_marker(ckpt_dir).write_text(json.dumps({
            "checkpoints": Path(ckpt_dir).resolve().name,
            "note": "a demo (demo.yaml) wrote these checkpoints: the next demo into this folder replaces them"}) + "\n")


def _forget_demo(ckpt_dir: str) -> None:
    if written_by_demo(ckpt_dir):
        _demo_marker(ckpt_dir).unlink(missing_ok=True)


def check_demo_may_replace(ckpt_dir: str) -> None:
    """The demo replaces only what a demo wrote: checkpoints in ``ckpt_dir`` that no demo wrote (a real model,
    or a demo's from before this note existed) are refused."""
    existing = _trained_files(ckpt_dir)
    if existing and not written_by_demo(ckpt_dir):
        raise CheckpointError(ckpt_dir, f"holds a model that no demo wrote ({_names(existing)}); the demo replaces "
                                        "only a demo's outputs: choose another --output_dir for the demo (or delete "
                                        "the folder, if a demo of an earlier version wrote it)")


def _check_writable(folder: str) -> None:
    """Fail before training, not after the first epoch, when checkpoints cannot be written."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        # a probe of this process's own: DDP ranks check the same folder at the same time
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as err:
        raise CheckpointError(folder, f"cannot write checkpoints here ({type(err).__name__}: {err.strerror or err}); "
                                      "choose another --output_dir") from err


def report(ckpt_dir: str, log_dir: str | None = None) -> str:
    """What training left: the model file and what it is (best validation or last epoch), the newest epoch
    checkpoint, the logs; only paths that exist."""
    lines = []
    model = Path(ckpt_dir) / "model.pt"
    if model.is_file():
        training = read_checkpoint(str(model)).get("description", {}).get("training", {})
        metrics = ", ".join(f"{k} {v:.4f}" for k, v in training.get("metrics", {}).items() if isinstance(v, float))
        what = f"best validation ({metrics}) at epoch {training.get('epoch')}" if metrics else \
            f"the model of the last epoch ({training.get('epoch')}; no validation data)"
        lines.append(f"model file: {model.resolve()}: {what}")
    else:
        lines.append(f"no model.pt in {Path(ckpt_dir).resolve()} (no epoch completed)")
    last = last_checkpoint(ckpt_dir)
    if last:
        lines.append(f"resumable checkpoint: {Path(last).resolve()}")
    if log_dir and Path(log_dir).is_dir():
        lines.append(f"TensorBoard logs: {Path(log_dir).resolve()}")
    text = "\n".join(lines)
    print(text, flush=True)
    return text
