"""Checkpoints that say what model they hold, and resuming a run without losing the best model.

A bundle checkpoint is a ``torch.save`` of plain values and tensors, loaded with ``weights_only=True``
(a checkpoint from a stranger runs no code)::

    {"model": state_dict,          # the weights; the frozen weights of pretrained parts may be left out
     "description": {
         "format": 1, "bundle": "tmca", "version": "0.2.0",
         "network": {"_target_": "scripts.network.TMCA", ...},    # plain values (common.core.describe)
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

from common.core.config import as_bool
from common.core.describe import describe, instantiate, relocate, source_paths, typed
from common.core.errors import CheckpointError, ConfigurationError

from .network import unwrap

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
        self.bundle, self.version = bundle_identity(bundle_root)
        self.settings = _plain(dict(settings or {}))
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
        for key in ("bundle", "network"):
            theirs, ours = _architecture(state.get(key)), _architecture(current[key])
            if theirs != ours:
                raise CheckpointError(None, f"the checkpoint to resume from was trained with {summary(state)}; this run "
                                            f"builds {summary(current)}: {_first_difference(theirs, ours)}")
        self.training = dict(state.get("training", {}))


def _architecture(config: Any) -> Any:
    """A description without what says where pretrained weights come from (the pretrained arguments of each
    part, a Hugging Face model's stored config): two runs of one architecture compare equal."""
    from pydoc import locate

    if isinstance(config, list):
        return [_architecture(c) for c in config]
    if not isinstance(config, Mapping):
        return config
    klass = locate(str(config["_target_"])) if "_target_" in config else None
    ignore = set(getattr(klass, "_pretrained_arguments", {})) | {"model_config"}
    return {k: _architecture(v) for k, v in config.items() if k not in ignore}


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


@typed
def load_model(path: str | None, bundle_root: str, device: str | None = None,
               pretrained_sources: dict | None = None) -> LoadedModel:
    """Build the network a checkpoint describes and load its weights.

    The checkpoint must come from the bundle at ``bundle_root``; another bundle's (or one without a
    description) is refused in one line that says what it is. A TorchScript (``.ts``) or ONNX (``.onnx``)
    file written by ``scripts/export.py`` is taken in place of a checkpoint: it carries the description.
    ``pretrained_sources``: where this machine keeps pretrained parts that the checkpoint leaves out
    (``{"sam.checkpoint": "/weights/sam_vit_h_4b8939.pth"}``; :func:`common.core.describe.relocate`).
    """
    if path is not None and Path(str(path)).suffix in (".ts", ".onnx"):
        return _load_exported(path, bundle_root, device)
    state = read_checkpoint(path)
    description = state.get("description") if isinstance(state, Mapping) else None
    if not isinstance(description, Mapping) or "network" not in description or "model" not in state:
        raise CheckpointError(path, "holds no model description (not written by these bundles' trainer, or by a "
                                    "version before self-describing checkpoints): train the model again with this "
                                    "version")
    bundle, _ = bundle_identity(bundle_root)
    if description.get("bundle") != bundle:
        raise CheckpointError(path, f"is a checkpoint of {summary(description)}; this is the {bundle} bundle "
                                    f"({Path(bundle_root).resolve()})")
    network_config = relocate(description["network"], pretrained_sources or {}, bundle_root)
    try:
        network = instantiate(network_config, bundle_root)
    except ConfigurationError:
        raise
    except Exception as err:
        sources = {k: v for k, v in source_paths(network_config, bundle_root).items() if isinstance(v, str)}
        hint = (" Its pretrained parts load from " + ", ".join(f"{k} = {v!r}" for k, v in sources.items()) +
                "; where they lie elsewhere on this machine, say so: --pretrained_sources \"{'" +
                next(iter(sources)) + "': '/path/on/this/machine'}\"") if sources else ""
        raise CheckpointError(path, f"cannot build the network it describes ({summary(description)}): "
                                    f"{type(err).__name__}: {str(err).splitlines()[0]}.{hint}") from err
    load_weights(network, state["model"], description.get("excluded", ()), path)
    network.eval()
    if device is not None:
        network.to(device)
    logger.info("loaded %s from %s", summary(description), path)
    return LoadedModel(network, dict(description, network=network_config), str(path))


def _load_exported(path: str, bundle_root: str, device: str | None) -> LoadedModel:
    from .export import read_exported

    if not os.path.isfile(str(path)):
        raise FileNotFoundError(f"exported model {path} does not exist: write one with scripts/export.py")
    network, description = read_exported(path)
    bundle, _ = bundle_identity(bundle_root)
    if description.get("bundle") != bundle:
        raise CheckpointError(path, f"is an export of {summary(description)}; this is the {bundle} bundle")
    if device is not None:
        network.to(device)
    return LoadedModel(network, description, str(path))


# ---------------------------------------------------------------------------------------------
# saving and resuming
# ---------------------------------------------------------------------------------------------
class AtomicSaver(BaseSaveHandler):
    """Writes a checkpoint to ``<name>.part`` and renames it into place: a run killed while saving leaves the
    previous checkpoint, never a truncated one that a resume cannot read. (MONAI's saver writes in place.)"""

    def __init__(self, dirname: str, filename: str | None = None):
        self.dirname, self.filename = Path(dirname), filename

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        path = self.dirname / (self.filename or filename)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".part")
        torch.save(checkpoint, partial)
        os.replace(partial, path)

    def remove(self, filename: str) -> None:
        (self.dirname / (self.filename or filename)).unlink(missing_ok=True)


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

    ``resume`` (:func:`resume_path`) attaches a ``CheckpointLoader`` for the training state: network weights,
    optimiser, scheduler, trainer (its epoch), the best-model saver's record and the description (which must
    match this run's network). A fresh run into a ``ckpt_dir`` that already holds checkpoints would replace
    another run's best model: it is refused, unless ``overwrite`` asks for exactly that (then the old
    checkpoints are removed first, so none of them is mistaken for this run's).
    """

    def __init__(self, resume, ckpt_dir: str, load_dict: dict, map_location=None, overwrite: bool = False):
        self.resume = resume
        self.ckpt_dir = ckpt_dir
        self.load_dict = load_dict
        self.map_location = map_location
        self.overwrite = overwrite

    def attach(self, engine) -> None:
        from monai.handlers import CheckpointLoader

        _check_writable(self.ckpt_dir)
        path = resume_path(self.resume, self.ckpt_dir)
        if path is not None:
            logger.info("resuming from %s", path)
            CheckpointLoader(load_path=path, load_dict=self.load_dict, map_location=self.map_location).attach(engine)
            return
        existing = sorted(glob.glob(os.path.join(self.ckpt_dir, "checkpoint_epoch=*.pt"))
                          + glob.glob(os.path.join(self.ckpt_dir, "model.pt")))
        if existing and not as_bool(self.overwrite):
            raise CheckpointError(self.ckpt_dir, f"already holds a trained model ({', '.join(map(os.path.basename, existing))}); "
                                                 "continue it with --resume true, write this run elsewhere with "
                                                 "--output_dir, or replace it with --overwrite true")
        for old in existing:
            Path(old).unlink(missing_ok=True)  # (other DDP ranks remove the same files)


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
