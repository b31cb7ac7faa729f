"""Each bundle's configs read as one declaration: defaults said once, shared sections that agree."""

from __future__ import annotations

import inspect
import sys
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


ENGINE_DIR = ROOT / "common" / "engine"


def _ids_referenced(node) -> set[str]:
    import re

    if isinstance(node, dict):
        return set().union(set(), *(_ids_referenced(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(set(), *(_ids_referenced(v) for v in node))
    if isinstance(node, str):
        return {m.split("#")[0] for m in re.findall(r"@([A-Za-z_][\w#]*)", node)}
    return set()


def test_the_engine_is_written_once():
    """The engine (trainer, handlers, checkpoints, levers) is common/engine/train.yaml, merged after a bundle's
    train.yaml: a bundle that defined one of its ids would have it replaced without a word, and a bundle's
    own multi_gpu_train.yaml would be a second copy. Every id the engine uses and does not define is one that
    each bundle defines (the bundle's side of the contract)."""
    engine = yaml.safe_load((ENGINE_DIR / "train.yaml").read_text())
    multi_gpu = yaml.safe_load((ENGINE_DIR / "multi_gpu_train.yaml").read_text())
    needed = (_ids_referenced(engine) | _ids_referenced(multi_gpu)) - set(engine) - set(multi_gpu) - {"_meta_"}
    assert {"network_def", "loss", "optimizer", "train_transforms", "model_description"} <= needed
    for bundle in BUNDLES:
        configs = ROOT / "bundles" / bundle / "configs"
        own = yaml.safe_load((configs / "train.yaml").read_text())
        assert not set(own) & set(engine), f"{bundle}'s train.yaml redefines engine ids {sorted(set(own) & set(engine))}"
        assert not (configs / "multi_gpu_train.yaml").exists(), bundle
        assert needed <= set(own), f"{bundle}'s train.yaml lacks {sorted(needed - set(own))}, which the engine uses"
        assert len((configs / "train.yaml").read_text().splitlines()) < 230, bundle


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
