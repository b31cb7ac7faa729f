"""Each bundle's configs read as one declaration: defaults said once, shared sections that agree."""

from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path

import pytest
import yaml
from pydoc import locate

from transforms.base.describe import bundle_package

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = sorted(p.parent.parent.name for p in ROOT.glob("bundles/*/configs/train.yaml"))


def _components(node, path=""):
    """Every ``{_target_: ...}`` dict under ``node`` with its path."""
    if isinstance(node, dict):
        if "_target_" in node:
            yield path, node
        for key, value in node.items():
            yield from _components(value, f"{path}#{key}" if path else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _components(value, f"{path}#{i}")


@pytest.mark.parametrize("bundle", BUNDLES)
def test_a_class_default_and_its_config_value_are_the_same(bundle):
    """Where train.yaml passes ``@key`` to an argument of the bundle's own network or loss that has a
    default, the top-level value equals the default: the class used outside the config builds the
    method the card describes. (Shared encoders keep generic defaults, e.g. random weights.)"""
    folder = ROOT / "bundles" / bundle
    config = yaml.safe_load((folder / "configs" / "train.yaml").read_text())
    checked = 0
    package = bundle_package(folder)
    for path, component in _components({k: config[k] for k in ("network_def", "loss") if k in config}):
        target = component["_target_"]
        if not target.startswith("scripts."):
            continue
        klass = locate(package.__name__ + target[len("scripts"):])
        params = inspect.signature(klass.__init__).parameters
        for arg, value in component.items():
            if not (isinstance(value, str) and value.startswith("@")) or arg not in params:
                continue
            key = value[1:]
            top = config.get(key)
            default = params[arg].default
            if default is inspect.Parameter.empty or isinstance(top, dict) or isinstance(top, str) and top.startswith("$"):
                continue
            default = list(default) if isinstance(default, tuple) else default
            assert top == default, f"{bundle}: {key}: {top!r} in train.yaml, {target}({arg}={default!r})"
            checked += 1
    assert checked > 3


ENGINE_DIR = ROOT / "common" / "engine"


def _ids_referenced(node) -> set[str]:
    from common.core.config_ids import references

    return {r.split("#")[0] for r in references(node)}


def test_the_engine_is_written_once():
    """The engine (trainer, handlers, checkpoints, levers) is common/engine/train.yaml, merged after a bundle's
    train.yaml, and its DDP part common/engine/multi_gpu_train.yaml: a bundle that defined one of their ids would
    have it replaced without a word. A bundle's own multi_gpu_train.yaml (merged after the engine's) holds only
    its DDP settings, no copy of the engine's. Every id the engine uses and does not define is one that each
    bundle defines (the bundle's side of the contract)."""
    engine = yaml.safe_load((ENGINE_DIR / "train.yaml").read_text())
    multi_gpu = yaml.safe_load((ENGINE_DIR / "multi_gpu_train.yaml").read_text())
    needed = _ids_referenced(engine) - set(engine) - {"_meta_"}
    needed_ddp = _ids_referenced(multi_gpu) - set(multi_gpu) - set(engine) - needed - {"_meta_"}
    assert {"network_def", "loss", "optimizer", "train_transforms", "model_description"} <= needed
    assert needed_ddp == {"find_unused_parameters"}
    for bundle in BUNDLES:
        configs = ROOT / "bundles" / bundle / "configs"
        own = yaml.safe_load((configs / "train.yaml").read_text())
        ddp = yaml.safe_load((configs / "multi_gpu_train.yaml").read_text())
        assert not set(own) & set(engine), f"{bundle}'s train.yaml redefines engine ids {sorted(set(own) & set(engine))}"
        assert set(ddp) == needed_ddp, f"{bundle}'s multi_gpu_train.yaml holds {sorted(ddp)}, not only its DDP settings"
        assert needed <= set(own), f"{bundle}'s train.yaml lacks {sorted(needed - set(own))}, which the engine uses"
        assert len((configs / "train.yaml").read_text().splitlines()) < 240, bundle  # (was 345-391 with the engine)


@pytest.mark.parametrize("bundle", BUNDLES)
def test_a_bundle_and_the_engine_parse_as_one_config(bundle):
    """The merged config (as ``--config_file "['bundles/<b>/configs/train.yaml','common/engine/train.yaml']"``
    reads it) builds the bundle's network through the engine's ``network`` and holds the engine's trainer."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from _repo import read_bundle_config

    config = read_bundle_config(bundle, ("train", "demo"), {"device": "cpu"})
    assert config["train"]["trainer"]["_target_"] == "common.engine.trainer.TextGuidedTrainer"
    assert config["network_def"]["_target_"].startswith("scripts.")


@pytest.mark.parametrize("bundle", BUNDLES)
def test_metrics_are_declared_once(bundle):
    config = yaml.safe_load((ROOT / "bundles" / bundle / "configs" / "train.yaml").read_text())
    for key in ("train_metrics", "val_metrics", "extra_val_metrics"):
        assert all(isinstance(v, str) and v.startswith("%") for v in config[key].values()), key


PROCESSOR = "$common.engine.checkpoints.trained_processor(@trained, @checkpoint)"


@pytest.mark.parametrize("bundle", BUNDLES)
def test_evaluation_finetuning_and_inference_take_the_processor_from_the_checkpoint(bundle):
    """train.yaml's ``processor`` (image size, threshold, tokenizer, text budget, ...) is written into every
    checkpoint; evaluate.yaml, finetune.yaml and inference.yaml take it whole from there and restate none
    of its settings, and the transforms read the processor rather than the ids behind it (which a
    checkpoint-driven run does not set)."""
    folder = ROOT / "bundles" / bundle / "configs"
    train = yaml.safe_load((folder / "train.yaml").read_text())
    settings = {v[1:] for v in _flat(train["processor"]) if isinstance(v, str) and v.startswith("@")}
    # the processor whole; Co-Seg adds what only training knows (the side of the ROIs it read)
    assert settings and train["model_description"]["settings"] in (
        "@processor", "$dict(@processor, roi_size=common.data.puma.reader.roi_side(@train_datalist))")
    for name in ("evaluate", "finetune", "inference"):
        config = yaml.safe_load((folder / f"{name}.yaml").read_text())
        assert config["processor"] == PROCESSOR, name
        assert not any(isinstance(v, str) and "@trained.settings" in v
                       for k, v in config.items() if k != "model_description#settings"), name
        assert not settings & set(config), f"{name}.yaml restates {sorted(settings & set(config))}"
        if name == "finetune":  # the fine-tuned model records the processor as trained (a tokenizer by its name,
            # not the folder beside the checkpoint that trained_processor reads it from)
            # (Co-Seg: after warning when the new ROIs have another side than the trained roi_size)
            assert config["model_description#settings"] in (
                "$@trained.settings", "$common.data.puma.reader.fine_tuning_settings(@trained.settings, @train_datalist)")
    readers = {k: v for k, v in train.items() if k not in ("processor", "network_def", "text_tokens", "loss")
               and not isinstance(train["network_def"], str)}
    for key, node in readers.items():
        for value in _flat(node):
            for setting in settings:
                assert not (isinstance(value, str) and re.search(rf"@{setting}\b", value) and key.endswith(
                    ("transforms", "postprocessing", "inferer", "transform"))), f"{key} reads @{setting}, not the processor"


def _flat(node):
    if isinstance(node, dict):
        for v in node.values():
            yield from _flat(v)
    else:
        yield node


# ---------------------------------------------------------------------------------------------
# what a run reads (common.core.config_ids): overrides that would be ignored, the packaged inference.json
# ---------------------------------------------------------------------------------------------
def test_reachable_ids_follow_references_macros_and_paths():
    from common.core.config_ids import is_read, reachable_ids, standalone

    config = {"imports": ["$import os"], "run": ["$@engine.run()"], "engine": {"net": "@net#body", "size": "@size"},
              "net": {"body": {"_target_": "X", "w": "$@width * 2"}, "head": "@unused"}, "width": None, "size": 3,
              "metric": {"_target_": "M"}, "copy": "%metric", "other": 1, "unused": 2, "_meta_": {}}
    reached = reachable_ids(config, ["run"])
    assert {"run", "engine", "net#body", "width", "size", "imports"} <= reached  # a null value is still read
    assert "unused" not in reached and "other" not in reached and "net#head" not in reached
    assert is_read("width", reached) and is_read("net", reached) and is_read("net#body#w", reached)
    assert not is_read("net#head", reached) and not is_read("other", reached)
    assert "metric" in reachable_ids({**config, "run": "%copy"}, ["run"])
    assert set(standalone(config, ["run"])) == {"imports", "run", "engine", "net", "width", "size", "_meta_"}


@pytest.mark.parametrize("bundle", BUNDLES)
def test_an_override_that_a_run_does_not_read_is_found(bundle):
    """Inference merges the bundle's train.yaml for its transforms, and evaluation takes the processor from the
    checkpoint: an image size or an epoch count on their command line would be ignored, and is refused."""
    from common.core.config_ids import unread_overrides
    from common.engine.config_files import config_files

    folder = ROOT / "bundles" / bundle
    infer = config_files(folder, "inference")
    assert [f.name for f in infer] == ["train.yaml", "inference.yaml"]
    assert "epochs" in unread_overrides(infer, "inferring", ["epochs", "checkpoint", "output_dir", "device", "image"])
    assert unread_overrides(infer, "inferring", ["checkpoint", "output_dir", "device", "image"]) == []
    evaluate = config_files(folder, "train", "demo", "evaluate")
    assert "epochs" in unread_overrides(evaluate, "evaluating", ["epochs", "dataset_dir", "output_dir", "num_workers"])
    assert unread_overrides(evaluate, "evaluating", ["dataset_dir", "output_dir", "num_workers", "checkpoint"]) == []
    train = config_files(folder, "train", "demo")
    read = ["epochs", "batch_size", "limit", "dataset_dir", "output_dir", "resume", "overwrite", "seed", "device",
            "precision", "compile", "num_workers", "time_budget_s", "keep_checkpoints", "val_interval"]
    assert unread_overrides(train, "training", read) == []
    if "image_size" in yaml.safe_load((folder / "configs" / "train.yaml").read_text()):
        assert "image_size" in unread_overrides(infer, "inferring", ["image_size"])
        assert "image_size" in unread_overrides(evaluate, "evaluating", ["image_size"])
        assert unread_overrides(train, "training", ["image_size"]) == []


def test_inference_configs_restate_no_transform_of_train_yaml():
    """inference.yaml builds its preprocessing from train.yaml's transform lists (the processor's transforms),
    so no transform class that train.yaml configures for the image is written again in inference.yaml."""
    for bundle in BUNDLES:
        folder = ROOT / "bundles" / bundle / "configs"
        infer = yaml.safe_load((folder / "inference.yaml").read_text())
        preprocessing = infer.get("preprocessing")
        if preprocessing is None:  # LTSE: the model reads the image itself (scripts/inference.py)
            continue
        train = yaml.safe_load((folder / "train.yaml").read_text())
        lists = re.findall(r"@(\w+)\b(?!\[)", preprocessing["transforms"]) if isinstance(preprocessing["transforms"], str) else []
        assert lists and all(isinstance(train.get(name), list) for name in lists), \
            f"{bundle}: inference.yaml's preprocessing is not built from train.yaml's transform lists: {lists}"
        restated = {c["_target_"] for _, c in _components(preprocessing)} - {"Compose"}
        assert not restated, f"{bundle}: inference.yaml restates {restated}"
