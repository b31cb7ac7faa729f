"""The MONCH bundle through `python -m monai.bundle`, as a user runs it (subprocesses, CPU, tiny CLIP)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from bundle_runner import bundle as _bundle
from bundle_runner import configs, eval_args, inference_config, train_args

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "bundles" / "monch" / "configs"

pytestmark = pytest.mark.bundle


def bundle(*args, **kwargs):
    return _bundle(*args, port=29541, **kwargs)


@pytest.fixture(scope="module")
def data(tiny) -> Path:
    return tiny("monch")["data"]  # 3 PanNuke-layout folds of 4 patches, 32x32


@pytest.fixture(scope="module")
def trained(tiny) -> Path:
    return tiny("monch")["run"]  # the session's tiny MONCH at 32x32: one epoch, batch 2


def test_one_epoch_writes_checkpoints_and_logs(trained):
    models = trained / "models"
    assert (models / "model.pt").is_file()
    state = torch.load(models / "checkpoint_epoch=1.pt", map_location="cpu", weights_only=True)
    assert set(state) == {"model", "description", "best_model", "optimizer", "lr_scheduler", "trainer"}
    assert state["trainer"]["iteration"] == 2  # 4 patches, batch 2
    assert state["model"]["class_text"].shape == (6, 3, 64)  # the encoded prompts travel with the weights (tiny: 64-wide)
    network = state["description"]["network"]
    assert network["backbone"]["pretrained"] is None and network["backbone"]["model_cfg"]["vision_cfg"]["patch_size"] == 4
    assert network["backbone"]["model_cfg"]["vision_cfg"]["image_size"] == 32  # tiny.yaml's CLIP follows image_size
    assert set(network["prompts"]) == {"background", "neoplastic", "inflammatory", "connective", "dead", "epithelial"}
    assert state["lr_scheduler"]["base_lrs"] == [3.0e-3] and state["lr_scheduler"]["gamma"] == 0.1
    assert any((trained / "logs").iterdir())


def test_evaluating_writes_paper_tables_chart_and_overlays(data, trained):
    proc = bundle(*eval_args("monch", data, trained, "--num_overlays", "2"))
    ev = trained / "eval"
    header = (ev / "per_class.csv").read_text().splitlines()
    assert header[0] == "class,iou,precision,f1,pixels"
    assert [line.split(",")[0] for line in header[1:]] == ["neoplastic", "inflammatory", "connective", "dead",
                                                            "epithelial", "mean (cells)"]
    organs = set(np.load(data / "Fold 3" / "images" / "fold3" / "types.npy"))
    organ_rows = (ev / "per_organ.csv").read_text().splitlines()
    assert {r.split(",")[0] for r in organ_rows[1:]} == organs | {"Average", "STD"}
    assert "Pixel accuracy" in (ev / "per_class.md").read_text() and "Per organ" in proc.stdout
    assert Image.open(ev / "organ_f1.png").size[0] > 100
    assert len(list((ev / "overlays").glob("*.png"))) == 2
    summary = json.loads((ev / "summary.json").read_text())
    assert np.asarray(summary["confusion_matrix"]).sum() == 4 * 32 * 32  # every pixel of the 4 test patches


def test_inferring_png_and_patch_stack_from_the_bundle_folder(data, trained, tmp_path):
    patches = np.load(data / "Fold 3" / "images" / "fold3" / "images.npy")
    png = tmp_path / "patch.png"
    Image.fromarray(patches[0].astype(np.uint8)).resize((40, 48)).save(png)  # another size than the model's
    stack = tmp_path / "stack.npy"
    np.save(stack, patches[:2].astype(np.uint8))
    out = tmp_path / "infer"
    ckpt = str(trained / "models" / "model.pt")
    proc = bundle("inferring", "--config_file", "['configs/train.yaml','configs/inference.yaml']", "--checkpoint", ckpt, "--image", str(png),
                  "--output_dir", str(out), cwd=ROOT / "bundles" / "monch")
    assert "wrote 1 class map" in proc.stdout
    classes = np.asarray(Image.open(out / "patch_classes.png"))
    assert classes.shape == (48, 40) and classes.max() <= 5
    assert (out / "patch_overlay.png").is_file()
    bundle("inferring", "--config_file", inference_config("monch"), "--checkpoint", ckpt, "--image", str(stack),
           "--output_dir", str(out))
    assert np.asarray(Image.open(out / "stack_0001_classes.png")).shape == (32, 32)
    bundle("inferring", "--config_file", inference_config("monch"), "--checkpoint", ckpt, "--image", str(stack),
           "--index", "1", "--output_dir", str(tmp_path / "one"))
    assert [p.name for p in (tmp_path / "one").glob("*_classes.png")] == ["stack_0001_classes.png"]
    missing = bundle("inferring", "--config_file", inference_config("monch"), "--checkpoint",
                     str(tmp_path / "none.pt"), "--image", str(png), check=False)
    assert missing.returncode != 0 and "none.pt does not exist" in missing.stderr


def test_bad_dataset_fails_naming_the_file(data, tmp_path):
    import shutil

    broken = tmp_path / "PanNuke"
    shutil.copytree(data, broken)
    (broken / "Fold 1" / "images" / "fold1" / "types.npy").unlink()
    proc = bundle(*train_args("monch", broken, tmp_path / "out"), check=False)
    assert proc.returncode != 0 and "types.npy" in proc.stderr and "no types.npy" in proc.stderr


def test_two_process_gloo_ddp(data, tmp_path):
    out = tmp_path / "ddp"
    proc = bundle("training", "--config_file", configs("monch", "multi_gpu_train"), "--epochs", "1", "--limit", "4",
                  "--dataset_dir", str(data), "--output_dir", str(out), "--batch_size", "2", "--num_workers", "0",
                  "--progress_bar", "false", "--image_size", "32", torchrun=True)
    assert proc.stdout.count("model file: ") == 1  # rank 0 only
    state = torch.load(out / "models" / "model.pt", map_location="cpu", weights_only=True)["model"]
    assert "image_encoder.visual.conv1.weight" in state  # saved unwrapped (no "module.")


def test_inference_config_holds_no_architecture_and_metadata_is_complete():
    train = yaml.safe_load((CONFIGS / "train.yaml").read_text())
    infer = yaml.safe_load((CONFIGS / "inference.yaml").read_text())
    architecture = {v[1:] for part in (train["network_def"], train["backbone"]) for v in part.values()
                    if isinstance(v, str) and v.startswith("@")}
    assert architecture and not architecture & set(infer)
    assert train["epochs"] == 40 and train["learning_rate"] == 5.0e-5 and train["lr_decay_factor"] == 0.1
    assert train["image_size"] == 256 and train["text_length"] == 77 and train["optimizer"]["_target_"] == "torch.optim.Adam"
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    for key in ("version", "changelog", "monai_version", "pytorch_version", "numpy_version", "task", "description",
                "authors", "copyright", "network_data_format"):
        assert key in meta, key
    assert meta["version"] in meta["changelog"]
    assert meta["network_data_format"]["outputs"]["pred"]["num_channels"] == 6


def test_trains_and_evaluates_from_a_png_datalist(data, tmp_path):
    """`dataset_format: datalist`: RGB patches and class-map PNGs (0 background, 1..5 the cell classes)
    listed in train/val/test.json; an optional `organ` field groups the per-organ table."""
    from common.data.pannuke.reader import pannuke_datalist
    from transforms.pannuke import LoadPanNukePatchd

    root = tmp_path / "pngs"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for split, folds in (("train", [1]), ("val", [2]), ("test", [3])):
        rows = []
        for record in pannuke_datalist(data, split, {"train": [1], "val": [2], "test": [3]}):
            patch = LoadPanNukePatchd()(record)
            name = record["name"]
            Image.fromarray(patch["image"].numpy().transpose(1, 2, 0).astype(np.uint8)).save(root / "images" / f"{name}.png")
            Image.fromarray(patch["label"].numpy()[0].astype(np.uint8)).save(root / "labels" / f"{name}.png")
            rows.append({"image": f"images/{name}.png", "label": f"labels/{name}.png", "organ": record["organ"]})
        (root / f"{split}.json").write_text(json.dumps(rows))
    out = tmp_path / "out"
    bundle(*train_args("monch", root, out, "--batch_size", "2", "--dataset_format", "datalist"))
    assert (out / "models" / "model.pt").is_file()
    bundle(*eval_args("monch", root, out, "--dataset_format", "datalist", "--num_overlays", "0"))
    summary = json.loads((out / "eval" / "summary.json").read_text())
    assert np.asarray(summary["confusion_matrix"]).sum() == 4 * 32 * 32
    organs = {r["organ"] for r in json.loads((root / "test.json").read_text())}
    rows = (out / "eval" / "per_organ.csv").read_text().splitlines()
    assert {r.split(",")[0] for r in rows[1:]} == organs | {"Average", "STD"}
