"""The Co-Seg bundle through `python -m monai.bundle` on synthetic PUMA ROIs (subprocesses, CPU, tiny Hiera)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from bundle_runner import bundle as _bundle
from bundle_runner import configs, eval_args, inference_config, train_args
from common.data.puma.reader import IMAGES, NUCLEI
from common.data.puma.synthetic import write_sample_puma

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "bundles" / "coseg" / "configs"

pytestmark = pytest.mark.bundle


def bundle(*args, **kwargs):
    return _bundle(*args, port=29547, **kwargs)


@pytest.fixture(scope="module")
def data(tiny) -> Path:
    return tiny("coseg")["data"]  # 10 PUMA-layout ROIs, 64x64


@pytest.fixture(scope="module")
def trained(tiny) -> Path:
    return tiny("coseg")["run"]  # the session's tiny Co-Seg: one epoch, batch 2, track1 nuclei classes


def test_one_epoch_writes_a_self_describing_checkpoint_and_the_split(trained):
    state = torch.load(trained / "models" / "checkpoint_epoch=1.pt", map_location="cpu", weights_only=True)
    assert set(state) == {"model", "description", "best_model", "optimizer", "lr_scheduler", "trainer"}
    assert state["trainer"]["iteration"] == 2  # 7 training ROIs, --limit 4, batch 2
    description = state["description"]
    assert description["network"]["_target_"] == "scripts.network.CoSeg"
    assert description["network"]["num_nuclei_types"] == 3  # track1: tumour, TIL, other
    assert description["network"]["image_encoder"]["weights"] is None  # random tiny Hiera: rebuilt from its config
    assert description["settings"] == {"image_size": 64, "nuclei_classes": "track1", "roi_size": 64}
    assert any(".lora_A." in k for k in state["model"]) and any("prompt_encoders.tissue_to_nuclei" in k for k in state["model"])
    assert state["lr_scheduler"]["gamma"] == pytest.approx(0.97)
    split = json.loads((trained / "puma_split.json").read_text())
    assert [len(split[k]) for k in ("train", "val", "test")] == [7, 1, 2]


def test_evaluating_writes_the_papers_tables_pictures_and_overlays(data, trained):
    proc = bundle(*eval_args("coseg", data, trained, "--num_overlays", "1"))
    ev = trained / "eval"
    tissue = (ev / "tissue.csv").read_text().splitlines()
    assert tissue[0] == "class,dice,iou,hd,pq,dq,sq,images"
    assert [r.split(",")[0] for r in tissue[1:]] == ["stroma", "blood_vessel", "tumor", "epidermis", "necrosis", "mean"]
    nuclei = (ev / "nuclei.csv").read_text().splitlines()
    assert nuclei[0] == "nuclei,f1,precision,recall,aji,pq,dq,sq,true,predicted"
    assert [r.split(",")[0] for r in nuclei[1:]] == ["all", "tumor", "TIL", "other"]
    summary = json.loads((ev / "summary.json").read_text())
    assert summary["images"] == 2 and np.asarray(summary["tissue_confusion_matrix"]).sum() == 2 * 64 * 64
    true_nuclei = summary["nuclei"][0]["true"]
    assert true_nuclei == sum(int(r.split(",")[4]) for r in (ev / "per_image.csv").read_text().splitlines()[1:])
    assert Image.open(ev / "tissue_confusion.png").size[0] > 200
    assert len(list((ev / "overlays").glob("*.png"))) == 1
    assert "Tissue" in proc.stdout and "F1 = DQ" in proc.stdout


def test_inferring_writes_tissue_map_nuclei_instances_and_geojson(data, trained, tmp_path):
    roi = next((data / IMAGES).glob("*.tif"))
    bundle("inferring", "--config_file", inference_config("coseg"), "--checkpoint", str(trained / "models" / "model.pt"),
           "--image", str(roi), "--output_dir", str(tmp_path), "--nuclei_threshold", "0.3")
    stem = roi.stem
    tissue = np.asarray(Image.open(tmp_path / f"{stem}_tissue.png"))
    assert tissue.shape == (64, 64) and tissue.dtype == np.uint8 and tissue.max() <= 5
    nuclei = np.asarray(Image.open(tmp_path / f"{stem}_nuclei.png"))
    assert nuclei.shape == (64, 64) and nuclei.dtype in (np.uint16, np.int32)
    geo = json.loads((tmp_path / f"{stem}_nuclei.geojson").read_text())
    assert geo["type"] == "FeatureCollection"
    assert len(geo["features"]) <= len(np.unique(nuclei)) - 1
    for f in geo["features"]:
        ring = f["geometry"]["coordinates"][0]
        assert ring[0] == ring[-1] and f["properties"]["classification"]["name"] in ("nuclei_tumor", "nuclei_lymphocyte", "nuclei_other")
    row = (tmp_path / "predictions.csv").read_text().splitlines()
    assert row[0].startswith("image,tissue_map,nuclei_map,geojson,overlay,nuclei_count")
    assert Image.open(tmp_path / f"{stem}_overlay.png").size[0] >= 2 * 64


def test_a_broken_annotation_stops_training_naming_the_file_and_feature(data, tmp_path):
    import shutil

    broken = tmp_path / "PUMA"
    shutil.copytree(data, broken)
    victim = sorted((broken / NUCLEI).glob("*.geojson"))[0]
    content = json.loads(victim.read_text())
    content["features"][2]["properties"]["classification"]["name"] = "nuclei_unicorn"
    victim.write_text(json.dumps(content))
    proc = bundle(*train_args("coseg", broken, tmp_path / "out", "--limit", "0"), check=False)
    assert proc.returncode != 0 and victim.name in proc.stderr and "feature 2 has class 'nuclei_unicorn'" in proc.stderr


def test_two_process_gloo_ddp(tmp_path):
    data = write_sample_puma(tmp_path / "data", n=20, size=64, seed=1)  # 2 validation ROIs: one per process
    out = tmp_path / "ddp"
    proc = bundle("training", "--config_file", configs("coseg", "multi_gpu_train"), "--epochs", "1", "--limit", "4",
                  "--dataset_dir", str(data), "--output_dir", str(out), "--batch_size", "1", "--num_workers", "0",
                  "--progress_bar", "false", "--image_size", "64", torchrun=True)
    assert proc.stdout.count("model file: ") == 1
    state = torch.load(out / "models" / "model.pt", map_location="cpu", weights_only=True)["model"]
    assert not any(k.startswith("module.") for k in state)


def test_inference_config_holds_no_architecture_and_metadata_is_complete():
    train = yaml.safe_load((CONFIGS / "train.yaml").read_text())
    infer = yaml.safe_load((CONFIGS / "inference.yaml").read_text())
    architecture = {v[1:] for part in (train["network_def"], train["image_encoder"]) for v in part.values()
                    if isinstance(v, str) and v.startswith("@")}
    assert architecture and not architecture & set(infer)
    assert train["learning_rate"] == 1.0e-4 and train["lr_decay"] == 0.98 and train["batch_size"] == 16
    assert train["epochs"] == 300 and train["image_size"] == 1024 and train["lora_rank"] == 4
    assert train["lambda_tissue"] == 2.0 and train["lambda_nuclei"] == 1.0
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    assert meta["network_data_format"]["outputs"]["pred"]["num_channels"] == 9
