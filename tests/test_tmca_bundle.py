"""The TMCA bundle through `python -m monai.bundle`, as a user runs it (subprocesses, CPU)."""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from common.engine.config_files import config_file_arg
from bundle_runner import bundle, configs, copy_run, eval_args, inference_config, train_args

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "bundles" / "tmca" / "configs"

pytestmark = pytest.mark.bundle


@pytest.fixture(scope="module")
def data(tiny) -> Path:
    return tiny("tmca")["data"]  # 20 Kvasir-layout images, 64x64


@pytest.fixture(scope="module")
def trained(tiny) -> Path:
    return tiny("tmca")["run"]  # the session's tiny TMCA: one epoch, one iteration


def test_one_training_iteration_writes_checkpoints_and_logs(trained):
    models = trained / "models"
    state = torch.load(models / "checkpoint_epoch=1.pt", map_location="cpu", weights_only=True)
    assert set(state) == {"model", "description", "best_model", "optimizer", "lr_scheduler", "trainer"}
    assert state["trainer"]["iteration"] == 1 and state["trainer"]["epoch_length"] == 1  # one iteration
    best = torch.load(models / "model.pt", map_location="cpu", weights_only=True)  # plain values and tensors only
    description = best["description"]
    assert description["bundle"] == "tmca" and description["network"]["_target_"] == "scripts.network.TMCA"
    assert description["network"]["image_encoder"]["name"] == "convnext_atto"
    assert description["network"]["image_encoder"]["weights"] is None  # the checkpoint has them: no download
    assert description["settings"]["image_size"] == 64 and description["settings"]["text"]["max_length"] == 24
    assert description["training"]["epoch"] == 1 and "val_dice" in description["training"]["metrics"]
    assert any((trained / "logs").iterdir())  # TensorBoard events


def test_resume_continues_from_the_last_epoch(data, trained, tmp_path):
    out = copy_run(trained, tmp_path / "resumed")
    proc = bundle(*train_args("tmca", data, out, "--epochs", "2", "--resume", "true"))
    log = proc.stdout + proc.stderr
    assert "resuming from" in log and "epoch 1 until 2 epochs" in log
    state = torch.load(out / "models" / "checkpoint_epoch=2.pt", map_location="cpu", weights_only=True)
    assert state["trainer"]["iteration"] == 2 and state["trainer"]["max_epochs"] == 2
    assert sorted(p.name for p in (out / "models").iterdir()) == ["checkpoint_epoch=2.pt", "model.pt"]  # pruned
    nothing = bundle(*train_args("tmca", data, tmp_path / "fresh", "--resume", "last"), check=False)
    assert nothing.returncode != 0 and "no checkpoint_epoch=*.pt" in nothing.stderr


def test_a_fresh_run_does_not_replace_another_runs_model(data, trained):
    proc = bundle(*train_args("tmca", data, trained, "--overwrite", "false"), check=False)  # demo.yaml says true
    assert proc.returncode != 0
    assert "already holds a trained model (checkpoint_epoch=1.pt, model.pt)" in proc.stderr
    assert "--resume true" in proc.stderr and "--overwrite true" in proc.stderr


def test_finetuning_starts_from_the_checkpoint_and_keeps_its_network(data, trained, tmp_path):
    """finetune.yaml: the network, weights and input settings come from --checkpoint, not from train.yaml."""
    out = tmp_path / "tuned"
    args = ["training", "--config_file", configs("tmca", "finetune"), "--checkpoint", str(trained / "models" / "model.pt"),
            "--dataset_dir", str(data), "--output_dir", str(out), "--epochs", "1", "--batch_size", "4", "--limit", "4",
            "--num_workers", "0", "--progress_bar", "false", "--learning_rate", "0.0"]
    bundle(*args)
    before = torch.load(trained / "models" / "model.pt", map_location="cpu", weights_only=True)
    after = torch.load(out / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert after["description"]["network"] == before["description"]["network"]
    assert after["description"]["settings"] == before["description"]["settings"]  # 64 px, 24 tokens: not the demo's 128
    # learning rate 0: the weights are the checkpoint's (a fresh network would differ everywhere)
    assert after["model"].keys() == before["model"].keys()
    moved = {k for k in before["model"] if not torch.equal(after["model"][k], before["model"][k])}
    assert moved and all(k.rsplit(".", 1)[-1] in ("running_mean", "running_var", "num_batches_tracked") for k in moved)
    refused = bundle(*args[:-2], "--image_encoder", "convnext_tiny", check=False)
    assert refused.returncode != 0 and "--image_encoder" in refused.stderr and "checkpoint" in refused.stderr


def test_seeded_runs_repeat_exactly(data, trained, tmp_path):
    bundle(*train_args("tmca", data, tmp_path / "again"))
    a = torch.load(trained / "models" / "checkpoint_epoch=1.pt", map_location="cpu", weights_only=True)["model"]
    b = torch.load(tmp_path / "again" / "models" / "checkpoint_epoch=1.pt", map_location="cpu", weights_only=True)["model"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    bundle(*train_args("tmca", data, tmp_path / "other_seed", "--seed", "1"))
    c = torch.load(tmp_path / "other_seed" / "models" / "checkpoint_epoch=1.pt", map_location="cpu", weights_only=True)["model"]
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_speed_levers_change_where_work_happens_not_the_result(data, trained, tmp_path):
    """data_on_device (the cache on the device, batches from the main process) with a deferred loss check gives
    the very weights of the default run; the fused optimiser agrees to float rounding."""
    def weights(folder):
        return torch.load(folder / "models" / "checkpoint_epoch=1.pt", map_location="cpu", weights_only=True)["model"]

    bundle(*train_args("tmca", data, tmp_path / "levers", "--data_on_device", "true", "--finite_check_interval", "3"))
    a, b = weights(trained), weights(tmp_path / "levers")
    assert all(torch.equal(a[k], b[k]) for k in a)
    bundle(*train_args("tmca", data, tmp_path / "fused", "--fused_optimizer", "true"))
    c = weights(tmp_path / "fused")
    assert all(torch.allclose(a[k].float(), c[k].float(), atol=1e-5) for k in a)


def test_the_kvasir_budget_recipe_stops_at_its_budget_with_a_validated_model(data, tmp_path):
    """kvasir_budget.yaml (every lever, GPU-style augmentation with prompt-aware flips, a wall-clock budget)
    resolves and trains on CPU at a small size; the epoch the budget ends in is validated and the run stops."""
    out = tmp_path / "budget"
    proc = bundle("training", "--config_file", config_file_arg(ROOT / "bundles" / "tmca", "train", "tiny", "kvasir_budget"),
                  "--dataset_dir", str(data), "--output_dir", str(out), "--image_size", "64", "--batch_size", "4",
                  "--compile", "false", "--precision", "fp32", "--channels_last", "false", "--time_budget_s", "4",
                  "--val_interval", "1")
    import re

    log = proc.stdout + proc.stderr
    stopped = int(re.search(r"time budget of 4 s reached at epoch (\d+)", log).group(1))
    assert f"Epoch[{stopped}] Metrics -- val_dice" in log  # the cut epoch is validated
    state = torch.load(out / "models" / f"checkpoint_epoch={stopped}.pt", map_location="cpu", weights_only=True)
    assert state["trainer"]["max_epochs"] == stopped < 120 and (out / "models" / "model.pt").is_file()
    assert not (out / "models" / f"checkpoint_epoch={stopped + 1}.pt").exists()


def test_evaluating_writes_tables_overlays_and_text_ablation(data, trained):
    proc = bundle(*eval_args("tmca", data, trained, "--num_overlays", "2"))
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
    # architecture settings come from the checkpoint: overriding one is refused, naming it
    refused = bundle(*eval_args("tmca", data, trained, "--use_ltem", "false"), check=False)
    assert refused.returncode != 0 and "--use_ltem: evaluating builds the network from the checkpoint" in refused.stderr


def test_inferring_png_and_nifti_from_the_bundle_folder(data, trained, tmp_path):
    test = json.loads((data / "anns" / "test.json").read_text())[0]
    image = data / "images" / test["img_name"]
    out = tmp_path / "infer"
    proc = bundle("inferring", "--config_file", "['configs/train.yaml','configs/inference.yaml']", "--checkpoint", str(trained / "models" / "model.pt"),
                  "--image", str(image), "--text", test["prompts"]["p6"], "--output_dir", str(out),
                  cwd=ROOT / "bundles" / "tmca")
    assert "wrote 1 mask(s) for 1 prediction(s)" in proc.stdout
    mask = np.asarray(Image.open(out / f"{image.stem}_mask.png"))
    assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 255}
    assert (out / f"{image.stem}_overlay.png").is_file() and (out / "predictions.csv").is_file()

    # a NIfTI slice in, a NIfTI mask with the same affine out
    grey = np.asarray(Image.open(image).convert("L"), dtype=np.float32)
    affine = np.diag([0.7, 0.7, 1.0, 1.0])
    nii = tmp_path / "slice.nii.gz"
    nib.save(nib.Nifti1Image(grey, affine), str(nii))
    bundle("inferring", "--config_file", inference_config("tmca"), "--checkpoint", str(trained / "models" / "model.pt"),
           "--image", str(nii), "--text", "one polyp", "--output_dir", str(out), "--mask_ext", ".nii.gz")
    written = nib.load(str(out / "slice_mask.nii.gz"))
    assert written.shape == (64, 64) and np.allclose(written.affine, affine)


def test_inferring_bad_input(trained, data, tmp_path):
    image = next((data / "images").iterdir())
    ckpt = str(trained / "models" / "model.pt")
    empty = bundle("inferring", "--config_file", inference_config("tmca"), "--checkpoint", ckpt,
                   "--image", str(image), "--text", " ", check=False)
    assert empty.returncode != 0 and "--text is empty" in empty.stderr
    missing = bundle("inferring", "--config_file", inference_config("tmca"), "--checkpoint", str(tmp_path / "none.pt"),
                     "--image", str(image), "--text", "one polyp", check=False)
    assert missing.returncode != 0 and "none.pt does not exist" in missing.stderr
    setting = bundle("inferring", "--config_file", inference_config("tmca"), "--checkpoint", ckpt,
                     "--image", str(image), "--text", "one polyp", "--image_size", "128", check=False)
    assert setting.returncode != 0 and "--image_size is a training setting" in setting.stderr


def test_two_process_gloo_ddp(data, tmp_path):
    out = tmp_path / "ddp"
    proc = bundle("training", "--config_file", configs("tmca", "multi_gpu_train"), "--dataset_dir", str(data),
                  "--output_dir", str(out), "--epochs", "1", "--batch_size", "2", "--limit", "8", "--num_workers", "0",
                  "--progress_bar", "false", "--image_size", "64", torchrun=True)
    assert proc.stdout.count("model file: ") == 1  # rank 0 only
    state = torch.load(out / "models" / "model.pt", map_location="cpu", weights_only=True)["model"]
    assert "image_encoder.body.stem_0.weight" in state  # saved unwrapped (no "module."): loads without DDP


def test_inference_config_holds_no_architecture_and_metadata_is_complete():
    train = yaml.safe_load((CONFIGS / "train.yaml").read_text())
    infer = yaml.safe_load((CONFIGS / "inference.yaml").read_text())
    architecture = {v[1:] for v in train["network_def"].values() if isinstance(v, str) and v.startswith("@")}
    assert architecture and not architecture & set(infer)
    for key in ("dataset_dir", "output_dir", "epochs", "batch_size", "learning_rate"):
        assert key in train, key
    engine = yaml.safe_load((ROOT / "common" / "engine" / "train.yaml").read_text())
    assert "training" in engine and "run" in engine and not {"training", "run"} & set(train)
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    for key in ("version", "changelog", "monai_version", "pytorch_version", "numpy_version", "task", "description",
                "authors", "copyright", "network_data_format"):
        assert key in meta, key
    assert meta["version"] in meta["changelog"]
