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

from listed_env import isolated_environ
from bundle_runner import BUNDLES, ROOT, TEST_CONFIGS, bundle, inference_config, package_bundle
from common.data.puma.reader import IMAGES
from common.engine.config_files import config_file_arg

pytestmark = pytest.mark.bundle


def _generates_text(name: str) -> bool:
    """A bundle whose network answers token by token (LTSE): no single forward pass from tensors to masks."""
    return "not_exportable = " in (ROOT / "bundles" / name / "scripts" / "network.py").read_text()


TENSOR_BUNDLES = [name for name in BUNDLES if not _generates_text(name)]
ENV = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", TRANSFORMERS_VERBOSITY="error", OMP_NUM_THREADS="1")


def python(*args, cwd=ROOT, env=None, check=True, exe=None):
    proc = subprocess.run([str(exe or sys.executable), *args], cwd=cwd, env=env or ENV, capture_output=True, text=True, timeout=600)
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
def listed_python(tmp_path_factory):
    """``listed_python(metadata) -> python``: an environment of only the packages a zip's metadata lists (and
    what pip would install with them), plus jsonschema, the zoo CI's own tool for verify_metadata."""
    from listed_env import listed_env

    folder = tmp_path_factory.mktemp("listed_envs")
    return lambda meta: listed_env(meta["required_packages_version"], extra=("jsonschema",), folder=folder)


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory):
    """Each bundle's tiny model (the session's, tests/bundle_runner.py) and an input for it:
    ``trained(bundle) -> (model.pt, inference arguments)``."""
    folder = tmp_path_factory.mktemp("zoo_inputs")

    def get(name: str):
        shared = tiny(name)
        return shared["model"], _inputs(name, shared["data"], folder)

    return get


# the zoo's published schema, the file each metadata.json's `schema` url names (MONAI-extra-test-data 0.8.1,
# Apache-2.0), kept byte for byte so that verify_metadata runs offline; its sha256 says nobody edited it
SCHEMA = ROOT / "bundles" / "meta_schema_20240725.json"
SCHEMA_SHA256 = "cd64aa8a5904426f6fc6855dabe46af8c742d5bad644b4e9cfb78ebad09ad678"


def test_the_schema_is_the_published_one_and_refuses_what_it_should(tmp_path):
    import hashlib

    assert hashlib.sha256(SCHEMA.read_bytes()).hexdigest() == SCHEMA_SHA256
    for name in BUNDLES:
        url = json.loads((ROOT / "bundles" / name / "configs" / "metadata.json").read_text())["schema"]
        assert url.rsplit("/", 1)[1] == SCHEMA.name, f"{name}'s metadata names {url}, not the vendored schema"
    meta = json.loads((ROOT / "bundles" / "tmca" / "configs" / "metadata.json").read_text())
    broken = [dict(meta), dict(meta)]
    del broken[0]["required_packages_version"]  # required by the published schema, not by the spec's text
    broken[1]["network_data_format"] = {"inputs": {"image": {"type": "image"}}, "outputs": {}}  # no format/shape
    for i, (bad, error) in enumerate(zip(broken, ("'required_packages_version' is a required property",
                                                  "is not valid under any of the given schemas"))):
        path = tmp_path / f"bad{i}.json"
        path.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=error):
            monai.bundle.verify_metadata(meta_file=str(path), filepath=str(SCHEMA))


@pytest.mark.parametrize("name", BUNDLES)
def test_metadata_verifies_offline_against_the_published_schema(name):
    # `python -m monai.bundle verify_metadata --meta_file ... --filepath bundles/meta_schema_20240725.json`, in this
    # process: it raises on a metadata.json that the schema refuses (and would download a missing schema)
    monai.bundle.verify_metadata(meta_file=str(ROOT / "bundles" / name / "configs" / "metadata.json"),
                                 filepath=str(SCHEMA))
    meta = json.loads((ROOT / "bundles" / name / "configs" / "metadata.json").read_text())
    assert "optional_packages_version" not in meta and {"pytorch-ignite", "transformers"} <= set(meta["required_packages_version"])


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


# what the model zoo's CI (ci/verify_bundle.py) runs on a bundle folder, as it runs it (the functions of
# monai.bundle), from that folder: `scripts` is the zip's own package, nothing of this repository is importable
ZOO_CI = """
import json, sys
from pathlib import Path
import torch
from monai.bundle import ConfigParser, ckpt_export, download_large_files, verify_metadata
download_large_files()  # large_files.yml: the model, from its file:// url, its sha256 checked
print("downloaded model.pt:", Path("models/model.pt").is_file())
verify_metadata(meta_file="configs/metadata.json", filepath=sys.argv[1])
print("metadata verified")
if Path("configs/ckpt_export.json").is_file():
    ckpt_export(args_file="configs/ckpt_export.json")
    args = json.loads(Path("configs/ckpt_export.json").read_text())
    parser = ConfigParser()
    parser.read_config(args["config_file"])
    parser.read_meta(args["meta_file"])
    eager = parser.get_parsed_content(args["net_id"]).eval()
    image = torch.rand(*args["input_shape"])
    with torch.no_grad():
        print("ckpt_export max difference:", float((torch.jit.load(args["filepath"])(image) - eager(image)).abs().max()))
"""


@pytest.mark.parametrize("name", BUNDLES)
def test_the_zoo_ci_accepts_the_unpacked_zip_in_an_environment_of_its_listed_packages(name, trained, tmp_path,
                                                                                      listed_python, capsys):
    """Item by item what the zoo's CI and a zoo user run, on the unpacked zip, from its own folder, in an
    environment holding only the packages its metadata lists (tests/listed_env.py): the model stays out of
    the zip and comes through large_files.yml (file:// url, sha256); metadata.json verifies against the schema
    and describes the model inside; verify_net_in_out passes with the zip's argument file (text inputs
    included); ckpt_export gives the eager output where MONAI's exporter can trace the network and the
    metadata says why not elsewhere; `python -m monai.bundle run inferring` runs."""
    import torch

    model, inputs = trained(name)
    published = tmp_path / "published" / "model.pt"
    published.parent.mkdir()
    published.write_bytes(model.read_bytes())
    archive = package_bundle(name, model, tmp_path / "dist", max_zip_mb=0.01, model_url=f"file://{published}")
    assert f"stays out of the zip; its large_files.yml says to download it from file://{published}" in capsys.readouterr().out
    monai.bundle.download(name=name, version=archive.stem.split("_v")[1], bundle_dir=str(tmp_path / "zoo"),
                          url=f"file://{archive}", progress=False)
    folder = tmp_path / "zoo" / name
    assert not (folder / "models" / "model.pt").exists()
    meta = json.loads((folder / "configs" / "metadata.json").read_text())
    description = torch.load(model, map_location="cpu", weights_only=True)["description"]

    # the metadata describes the model in the zip, not the paper's
    assert meta["description"].startswith(f"The model in this package ({name} ")
    for part in ("name", "name_or_path"):
        for value in (v.get(part) for v in description["network"].values() if isinstance(v, dict)):
            assert value is None or str(value) in meta["description"]
    settings, fmt = description["settings"], meta["network_data_format"]
    if "clip_image_size" in settings:  # LTSE: the tiny towers' sizes, not LLaVA-1.5's 336 and SAM's 1024
        assert fmt["inputs"]["image"]["spatial_shape"] == [settings["clip_image_size"]] * 2 == [32, 32]
        assert f"longest side {settings['sam_image_size']}" in meta["image_classes"]
    if "image_size" in settings:
        size = [settings["image_size"]] * 2
        assert fmt["inputs"]["image"]["spatial_shape"] == size and fmt["outputs"]["pred"]["spatial_shape"] == size
        assert len(fmt["outputs"]["pred"]["channel_def"]) == fmt["outputs"]["pred"]["num_channels"]
    if settings.get("text"):
        assert fmt["inputs"]["text_ids"]["spatial_shape"] == [settings["text"]["max_length"]]
    assert meta["eval_metrics"] == {k: round(v, 4) for k, v in description["training"]["metrics"].items()}

    python_ = listed_python(meta)
    env = isolated_environ(OMP_NUM_THREADS="1")  # nothing added to the listed environment's path
    ci = python("-c", ZOO_CI, str(SCHEMA), cwd=folder, env=env, exe=python_)
    assert "downloaded model.pt: True" in ci.stdout and "metadata verified" in ci.stdout
    tools = meta["zoo_tools"]
    if name in ("monch", "coseg"):  # one image in: MONAI's exporter traces them
        difference = float(ci.stdout.split("ckpt_export max difference:")[1].split()[0])
        assert difference < 1e-4 and (folder / "models" / "model.ts").is_file()
        assert tools["ckpt_export"].endswith("--args_file configs/ckpt_export.json")
    else:  # text inputs (TMCA, LSMS) or a generated answer (LTSE): the metadata says why and names the route
        assert not (folder / "configs" / "ckpt_export.json").exists()
        assert tools["ckpt_export"].startswith(("not supported: ", "not applicable: "))
    if name in TENSOR_BUNDLES:
        proc = python("-m", "monai.bundle", "verify_net_in_out", "network_def", "--meta_file", "configs/metadata.json",
                      "--config_file", "configs/inference.json", "--args_file", "configs/verify_net_in_out.json",
                      "--device", "cpu", cwd=folder, env=env, exe=python_)
        assert "data shape of network is verified with no error" in proc.stdout + proc.stderr
    else:
        assert not (folder / "configs" / "verify_net_in_out.json").exists()
        assert tools["verify_net_in_out"].startswith("not applicable: its answer is generated token by token")
    python("-m", "monai.bundle", "run", "inferring", "--config_file", "configs/inference.json", "--output_dir",
           str(tmp_path / "out"), *inputs, cwd=folder, env=env, exe=python_)
    assert any((tmp_path / "out").glob("*.png"))


def test_only_the_bundles_own_files_are_packed_and_a_large_model_needs_its_url(trained, tmp_path, capsys):
    """A sample_data/ or runs/ left in a bundle folder stays out of the zip (and is named); a model over
    --max_zip_mb without --model_url is refused before anything is written."""
    import shutil
    import sys

    sys.path.insert(0, str(ROOT / "scripts"))
    import package

    copy = tmp_path / "tmca"
    shutil.copytree(ROOT / "bundles" / "tmca", copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "sample_data").mkdir()
    (copy / "sample_data" / "x.png").write_bytes(b"x")
    (copy / "runs" / "tmca").mkdir(parents=True)
    (copy / "notes.txt").write_text("mine")
    left_out = package.copy_bundle_files(copy, tmp_path / "staged")
    assert left_out == ["notes.txt", "runs/", "sample_data/"]
    assert sorted(p.name for p in (tmp_path / "staged").iterdir()) == ["LICENSE", "docs", "pretrained_sources.yml",
                                                                        "scripts"]
    model, _ = trained("tmca")
    with pytest.raises(ValueError, match="give --model_url"):
        package_bundle("tmca", model, tmp_path / "dist", max_zip_mb=0.01)
    assert not (tmp_path / "dist").exists()


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
