"""Sharing a bundle: the metadata and network checks of ``monai.bundle`` pass offline, a packaged zip runs on its
own from any folder, and exported TorchScript/ONNX files give the eager model's output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import monai.bundle
import numpy as np
import pytest
from PIL import Image

from bundle_runner import BUNDLES, ROOT, TEST_CONFIGS, bundle, inference_config, package_bundle
from common.data.puma.reader import IMAGES
from common.engine.config_files import config_file_arg

pytestmark = pytest.mark.bundle


def _generates_text(name: str) -> bool:
    """A bundle whose network answers token by token (LTSE): no single forward pass from tensors to masks."""
    return "not_exportable = " in (ROOT / "bundles" / name / "scripts" / "network.py").read_text()


TENSOR_BUNDLES = [name for name in BUNDLES if not _generates_text(name)]
ENV = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", TRANSFORMERS_VERBOSITY="error", OMP_NUM_THREADS="1")


def python(*args, cwd=ROOT, env=None, check=True):
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=env or ENV, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def _inputs(name: str, data: Path, folder: Path) -> list:
    """The inference arguments of one test input of bundle ``name`` (its test data in ``data``)."""
    if name == "tmca":
        return ["--image", str(sorted((data / "images").iterdir())[0]), "--text", "one small polyp"]
    if name == "lsms":
        record = json.loads((data / "test.jsonl").read_text().splitlines()[0])
        return ["--image", str(data / record["image"]), "--text", record["text"]]
    if name == "monch":
        patch = folder / "patch.png"
        Image.fromarray(np.load(data / "Fold 3" / "images" / "fold3" / "images.npy")[0].astype(np.uint8)).save(patch)
        return ["--image", str(patch)]
    if name == "coseg":
        return ["--image", str(sorted((data / IMAGES).glob("*.tif"))[0])]
    if name == "ltse":
        question = json.loads(Path(data).read_text().splitlines()[0])
        return ["--image", str(Path(data).parent / question["image"]), "--instruction", question["instruction"]]
    raise KeyError(f"no test input for bundle {name!r}")


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory):
    """Each bundle's tiny model (the session's, tests/bundle_runner.py) and an input for it:
    ``trained(bundle) -> (model.pt, inference arguments)``."""
    folder = tmp_path_factory.mktemp("zoo_inputs")

    def get(name: str):
        shared = tiny(name)
        return shared["model"], _inputs(name, shared["data"], folder)

    return get


@pytest.mark.parametrize("name", BUNDLES)
def test_metadata_verifies_offline_against_the_schema_copy(name):
    # `python -m monai.bundle verify_metadata --meta_file ... --filepath bundles/meta_schema.json`, in this
    # process: it raises on a metadata.json that the schema refuses (and would download a missing schema)
    schema = ROOT / "bundles" / "meta_schema.json"
    assert schema.is_file()
    monai.bundle.verify_metadata(meta_file=str(ROOT / "bundles" / name / "configs" / "metadata.json"),
                                 filepath=str(schema))
    meta = json.loads((ROOT / "bundles" / name / "configs" / "metadata.json").read_text())
    assert "optional_packages_version" not in meta and {"pytorch-ignite", "transformers"} <= set(meta["required_packages_version"])


@pytest.mark.parametrize("name", TENSOR_BUNDLES)
def test_net_in_out_verifies_with_the_documented_command(name):
    """The README's command: the network gets its text inputs from network_data_format, not from a hand-written call."""
    env = dict(ENV, PYTHONPATH=f"bundles/{name}")
    proc = python("-m", "monai.bundle", "verify_net_in_out", "verification_network", "--meta_file",
                  f"bundles/{name}/configs/metadata.json", "--config_file",
                  config_file_arg(ROOT / "bundles" / name, *TEST_CONFIGS, relative_to=ROOT), "--device", "cpu", env=env)
    assert "data shape of network is verified with no error" in proc.stdout + proc.stderr


DRIVER = """
import sys
for name in ("common", "transforms", "bundles"):  # nothing of the repository may be imported
    sys.modules[name] = None
zoo, name, out = sys.argv[1], sys.argv[2], sys.argv[3]
bundle_dir = f"{zoo}/{name}"
sys.path.insert(1, bundle_dir)
import monai.bundle
net = monai.bundle.load(name, bundle_dir=zoo, workflow_type="inference", key_in_ckpt="model", device="cpu")
print("network from", sys.modules[type(net).__module__].__file__)
args = dict(zip(sys.argv[4::2], sys.argv[5::2]))
monai.bundle.run("inferring", config_file=f"{bundle_dir}/configs/inference.json", output_dir=out, **args)
print("shared code from", sys.modules["scripts.tgseg.common"].__file__)
"""


@pytest.mark.parametrize("name", BUNDLES)
def test_the_zip_runs_on_its_own_from_any_folder(name, trained, tmp_path):
    model, inputs = trained(name)
    package_bundle(name, model, tmp_path / "dist")
    version = json.loads((ROOT / "bundles" / name / "configs" / "metadata.json").read_text())["version"]
    archive = tmp_path / "dist" / f"{name}_v{version}.zip"
    assert archive.is_file() and archive.stat().st_size < 25 * 2**20
    monai.bundle.download(name=name, version=version, bundle_dir=str(tmp_path / "zoo"), url=f"file://{archive}",
                          progress=False)  # `python -m monai.bundle download ...`, in this process
    unpacked = tmp_path / "zoo" / name
    assert (unpacked / "configs" / "inference.json").is_file() and (unpacked / "models" / "model.pt").is_file()
    assert not (unpacked / "configs" / "train.yaml").exists() and not (unpacked / "common").exists()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "driver.py").write_text(DRIVER)
    proc = python("driver.py", str(tmp_path / "zoo"), name, str(elsewhere / "out"),
                  *[a.lstrip("-") if i % 2 == 0 else a for i, a in enumerate(inputs)], cwd=elsewhere)
    assert f"network from {unpacked}/scripts/network.py" in proc.stdout
    assert f"shared code from {unpacked}/scripts/tgseg/common/__init__.py" in proc.stdout
    assert any((elsewhere / "out").glob("*.png"))
    meta = json.loads((unpacked / "configs" / "metadata.json").read_text())
    assert "optional_packages_version" not in meta and meta["required_packages_version"]
    # a stranger's model.pt in the unpacked zip: its description is read as data, the payload never runs
    import torch

    state = torch.load(unpacked / "models" / "model.pt", map_location="cpu", weights_only=True)
    marker = tmp_path / "PWNED"
    state["description"]["network"]["payload"] = f"$__import__('pathlib').Path({str(marker)!r}).write_text('x')"
    torch.save(state, unpacked / "models" / "model.pt")
    proc = python("driver.py", str(tmp_path / "zoo"), name, str(elsewhere / "out2"),
                  *[a.lstrip("-") if i % 2 == 0 else a for i, a in enumerate(inputs)], cwd=elsewhere, check=False)
    assert proc.returncode != 0 and "network.payload = " in proc.stderr and "refused, nothing was built" in proc.stderr
    assert not marker.exists()


@pytest.mark.parametrize("name", TENSOR_BUNDLES)
def test_exported_models_give_the_eager_output_and_serve_inference(name, trained, tmp_path):
    model, inputs = trained(name)
    proc = python("scripts/export.py", "--bundle", name, "--checkpoint", str(model), "--out_dir", str(tmp_path),
                  "--json_out", str(tmp_path / "export.json"))
    rows = {r["form"]: r for r in json.loads((tmp_path / "export.json").read_text())}
    assert rows["torchscript"]["max_difference"] < 1e-3 and rows["onnx"]["max_difference"] < 1e-3
    assert "| onnx |" in proc.stdout
    for form in ("model.ts", "model.onnx"):
        bundle("inferring", "--config_file", inference_config(name),
               "--checkpoint", str(tmp_path / form), "--output_dir", str(tmp_path / form.replace(".", "_")), *inputs)
        assert any((tmp_path / form.replace(".", "_")).glob("*.png"))


def test_monais_own_ckpt_export_works_for_the_image_only_bundle(trained, tmp_path):
    """``python -m monai.bundle ckpt_export`` traces a single image input: it works for MONCH (its prompts are
    inside the network); the text-guided bundles take three inputs, which scripts/export.py handles."""
    model, _ = trained("monch")
    env = dict(ENV, PYTHONPATH="bundles/monch")
    python("-m", "monai.bundle", "ckpt_export", "network_def", "--filepath", str(tmp_path / "model.ts"),
           "--ckpt_file", str(model), "--meta_file", "bundles/monch/configs/metadata.json", "--config_file",
           "['bundles/monch/configs/train.yaml','bundles/monch/configs/inference.yaml']", "--key_in_ckpt", "model", "--use_trace", "True",
           "--input_shape", "[1,3,32,32]", "--checkpoint", str(model), env=env)
    import torch

    from common.engine.checkpoints import load_model

    eager = load_model(str(model), str(ROOT / "bundles" / "monch")).network
    image = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(torch.jit.load(str(tmp_path / "model.ts"))(image), eager(image), atol=1e-4)


def test_the_ltse_zip_carries_only_what_training_changed_and_export_says_why_not(trained, tmp_path):
    """LLaVA's and SAM's frozen weights stay where the checkpoint's description names them (hub id, folder,
    file); the zip holds LoRA, the new tokens' rows, the projector and the experts. TorchScript/ONNX export
    of a model that generates its answer is refused before anything is built, saying why."""
    model, _ = trained("ltse")
    package_bundle("ltse", model, tmp_path)
    import zipfile

    import torch

    with zipfile.ZipFile(next(tmp_path.glob("ltse_v*.zip"))) as zf:
        names = zf.namelist()
        zf.extract("ltse/models/model.pt", tmp_path)
    assert not any("tokenizer" in n or n.endswith((".safetensors", ".pth")) for n in names)
    state = torch.load(tmp_path / "ltse" / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert state["description"]["excluded"] == ["llava.", "sam."]
    frozen = [k for k in state["model"] if k.startswith(("llava.", "sam.")) and "lora_" not in k
              and "trainable_tokens" not in k]
    assert frozen == [] and any(k.startswith("aem.experts.") for k in state["model"])
    proc = python("scripts/export.py", "--bundle", "ltse", "--checkpoint", str(model), "--out_dir", str(tmp_path / "x"),
                  check=False)
    assert proc.returncode != 0 and "ltse: no TorchScript/ONNX export: its answer is generated token by token" in proc.stderr
    assert not (tmp_path / "x").exists()


def test_the_ltse_zip_loads_its_bases_from_where_this_machine_keeps_them(trained, tmp_path):
    """The zip's checkpoint names the SAM file and LLaVA folder of the training machine; the zip's own
    (vendored) loader takes --pretrained_sources, and a wrong one fails naming the path it was given."""
    import shutil

    import torch

    model, inputs = trained("ltse")
    archive = package_bundle("ltse", model, tmp_path / "dist")
    version = archive.stem.split("_v")[1]
    monai.bundle.download(name="ltse", version=version, bundle_dir=str(tmp_path / "zoo"), url=f"file://{archive}",
                          progress=False)
    network = torch.load(model, map_location="cpu", weights_only=True)["description"]["network"]
    here = tmp_path / "bases_here"
    shutil.copytree(network["llava"]["name_or_path"], here / "llava")
    shutil.copy(network["sam"]["checkpoint"], here / "sam.pth")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "driver.py").write_text(DRIVER)
    args = [a.lstrip("-") if i % 2 == 0 else a for i, a in enumerate(inputs)]
    wrong = python("driver.py", str(tmp_path / "zoo"), "ltse", str(elsewhere / "out"), *args, "pretrained_sources",
                   str({"sam.checkpoint": str(here / "no_such_sam.pth")}), cwd=elsewhere, check=False)
    assert wrong.returncode != 0 and "no_such_sam.pth" in wrong.stderr
    python("driver.py", str(tmp_path / "zoo"), "ltse", str(elsewhere / "out"), *args, "pretrained_sources",
           str({"sam.checkpoint": str(here / "sam.pth"), "llava.name_or_path": str(here / "llava")}), cwd=elsewhere)
    assert any((elsewhere / "out").glob("*_seg*.png")) or any((elsewhere / "out").glob("*_overlay.png"))
