"""Each bundle's configs read as one declaration: defaults said once, shared sections that agree."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import yaml
from pydoc import locate

from common.core.describe import bundle_scripts

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
    with bundle_scripts(folder):
        for path, component in _components({k: config[k] for k in ("network_def", "loss") if k in config}):
            target = component["_target_"]
            if not target.startswith("scripts."):
                continue
            klass = locate(target)
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


ENGINE = ("validation", "train", "validate", "training", "run")


def test_the_engine_sections_are_the_same_in_every_bundle():
    """Each bundle stays a standalone MONAI bundle (the model-zoo convention: no shared base file), so the
    engine sections are written out in each train.yaml; this test keeps the copies identical."""
    configs = {b: yaml.safe_load((ROOT / "bundles" / b / "configs" / "train.yaml").read_text()) for b in BUNDLES}
    reference = configs[BUNDLES[0]]
    for bundle, config in configs.items():
        for key in ENGINE:
            assert config.get(key) == reference.get(key), f"{bundle}: {key} differs from {BUNDLES[0]}'s"
    def overlay(bundle):  # the multi-GPU overlay without comments; LSMS also converts BatchNorm to SyncBatchNorm
        text = (ROOT / "bundles" / bundle / "configs" / "multi_gpu_train.yaml").read_text()
        return [l.replace("@sync_network_def", "@network_def") for l in text.splitlines()
                if l and not l.startswith("#") and not l.startswith("sync_network_def")]

    for bundle in BUNDLES:
        assert overlay(bundle) == overlay(BUNDLES[0]), bundle


@pytest.mark.parametrize("bundle", BUNDLES)
def test_metrics_are_declared_once(bundle):
    config = yaml.safe_load((ROOT / "bundles" / bundle / "configs" / "train.yaml").read_text())
    for key in ("train_metrics", "val_metrics", "extra_val_metrics"):
        assert all(isinstance(v, str) and v.startswith("%") for v in config[key].values()), key


@pytest.mark.parametrize("bundle", BUNDLES)
def test_finetuning_and_evaluation_take_the_same_settings_from_the_checkpoint(bundle):
    """finetune.yaml and evaluate.yaml both rebuild the trained network and its input settings from a
    checkpoint: the same ids with the same expressions, and every setting the checkpoint records."""
    folder = ROOT / "bundles" / bundle / "configs"
    finetune = yaml.safe_load((folder / "finetune.yaml").read_text())
    evaluate = yaml.safe_load((folder / "evaluate.yaml").read_text())
    from_checkpoint = {k for k, v in evaluate.items() if isinstance(v, str) and "@trained." in v and "#" not in k}
    from_checkpoint -= {"text_modes"}  # evaluation's own choice
    assert from_checkpoint and {k: finetune.get(k) for k in from_checkpoint} == {k: evaluate[k] for k in from_checkpoint}
    train = yaml.safe_load((folder / "train.yaml").read_text())
    settings = {v[1:] for v in _flat(train["model_settings"]) if isinstance(v, str) and v.startswith("@")}
    assert settings <= set(finetune), f"finetune.yaml leaves {settings - set(finetune)} to train.yaml"


def _flat(node):
    if isinstance(node, dict):
        for v in node.values():
            yield from _flat(v)
    else:
        yield node
