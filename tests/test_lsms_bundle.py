"""The LSMS bundle through `python -m monai.bundle` on generated referring-CT data (subprocesses, CPU)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from bundle_runner import bundle, configs, eval_args, inference_config, train_args

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "bundles" / "lsms" / "configs"

pytestmark = pytest.mark.bundle


@pytest.fixture(scope="module")
def data(tiny) -> Path:
    return tiny("lsms")["data"]  # 4 synthetic CT cases, 64x64x8


@pytest.fixture(scope="module")
def trained(tiny) -> Path:
    return tiny("lsms")["run"]  # the session's tiny LSMS: one epoch, one iteration


def test_one_training_iteration_logs_every_loss_term(trained):
    state = torch.load(trained / "models" / "checkpoint_epoch=1.pt", map_location="cpu", weights_only=True)
    assert state["trainer"]["iteration"] == 1
    assert state["description"]["excluded"] == ["text_encoder."]  # the demo's frozen MiniLM loads from its package
    assert not any(k.startswith("text_encoder.") for k in state["model"])
    settings = state["description"]["settings"]
    assert settings["window_hu"] == [-160, 240] and settings["text"]["max_length"] >= 24  # the whole expression
    assert any(".language.w_l1." in k for k in state["model"])
    assert (trained / "models" / "model.pt").is_file()
    events = list((trained / "logs").iterdir())
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for e in events:
        acc = EventAccumulator(str(e))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    assert {"loss", "loss_focal", "loss_dice", "loss_con"} <= {t.split("/")[-1] for t in tags}, tags


def test_text_free_training_has_no_language_weights(data, tmp_path):
    bundle(*train_args("lsms", data, tmp_path / "notext", "--use_text", "false"))
    state = torch.load(tmp_path / "notext" / "models" / "model.pt", map_location="cpu", weights_only=True)["model"]
    assert not any(k.startswith("text_encoder.") or ".language." in k or k.startswith("text_projection") for k in state)
    # evaluated and run from the checkpoint alone: no --use_text needed, one text mode
    bundle(*eval_args("lsms", data, tmp_path / "notext", "--limit", "2"))
    summary = (tmp_path / "notext" / "eval" / "summary.md").read_text()
    assert "its own" in summary and "shuffled" not in summary
    record = json.loads((data / "test.jsonl").read_text().splitlines()[0])
    proc = bundle("inferring", "--config_file", inference_config("lsms"), "--checkpoint",
                  str(tmp_path / "notext" / "models" / "model.pt"), "--image", str(data / record["image"]), "--text",
                  "unused", "--output_dir", str(tmp_path / "notext_infer"))
    assert "wrote 1 mask(s)" in proc.stdout


def test_evaluating_with_partial_text(data, trained):
    proc = bundle(*eval_args("lsms", data, trained, "--num_overlays", "1", "--limit", "3"))
    ev = trained / "eval"
    rows = list(__import__("csv").DictReader(open(ev / "per_image.csv")))
    modes = [r["mode"] for r in rows]
    assert modes == ["own"] * 3 + ["half"] * 3 + ["quarter"] * 3 + ["shuffled"] * 3 + ["empty"] * 3
    own, half, quarter = rows[0]["text"], rows[3]["text"], rows[6]["text"]
    # whole attributes dropped: (1/2) keeps size rank and side, (1/4) the side
    assert own.startswith(half + ", ") and own.endswith(" mm in diameter") and "mm" not in half
    assert quarter.startswith("a lesion in this slice, on the patient's ") and quarter.endswith(" side")
    summary = (ev / "summary.md").read_text()
    assert summary in proc.stdout
    assert ("whole attributes dropped: half keeps the size rank and side; quarter keeps the side (of size rank, "
            "side, diameter)") in proc.stdout
    assert len(list((ev / "overlays" / "quarter").glob("*.png"))) == 1


def test_inferring_a_png_slice_and_a_volume_slice(data, trained, tmp_path):
    record = json.loads((data / "test.jsonl").read_text().splitlines()[0])
    out = tmp_path / "infer"
    ckpt = str(trained / "models" / "model.pt")
    bundle("inferring", "--config_file", "['configs/train.yaml','configs/inference.yaml']", "--checkpoint", ckpt, "--image",
           str(data / record["image"]), "--text", record["text"], "--output_dir", str(out),
           cwd=ROOT / "bundles" / "lsms")
    stem = Path(record["image"]).stem
    mask = np.asarray(Image.open(out / f"{stem}_mask.png"))
    assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 255}
    volume = data / "volumes" / "ct" / f"{record['case']}.nii.gz"
    bundle("inferring", "--config_file", inference_config("lsms"), "--checkpoint", ckpt, "--image", str(volume),
           "--slice", str(record["slice"]), "--text", record["text"], "--output_dir", str(tmp_path / "vol"))
    from_volume = np.asarray(Image.open(tmp_path / "vol" / f"{record['case']}_z{record['slice']:03d}_mask.png"))
    assert np.array_equal(from_volume, mask)  # the same slice, windowed and oriented the same way
    # NIfTI: a volume of the CT's geometry with the predicted slice in place, the rest empty
    bundle("inferring", "--config_file", inference_config("lsms"), "--checkpoint", ckpt, "--image", str(volume),
           "--slice", str(record["slice"]), "--text", record["text"], "--output_dir", str(tmp_path / "nii"),
           "--mask_ext", ".nii.gz")
    import nibabel as nib

    from transforms.volumes import from_display

    written, source = nib.load(str(tmp_path / "nii" / f"{record['case']}_z{record['slice']:03d}_mask.nii.gz")), nib.load(str(volume))
    assert written.shape == source.shape and np.allclose(written.affine, source.affine)
    array = np.asarray(written.dataobj)  # the synthetic volumes are stored in RAS order
    assert np.array_equal(array[:, :, record["slice"]], from_display(mask > 0))
    assert array.sum() == (mask > 0).sum()
    no_slice = bundle("inferring", "--config_file", inference_config("lsms"), "--checkpoint", ckpt, "--image",
                      str(volume), "--text", "x", check=False)
    assert no_slice.returncode != 0 and "no 'slice' index" in no_slice.stderr


def test_one_iteration_on_mosmed_text_augmented_data(tmp_path):
    from common.data.synthetic.sample_datasets import write_sample_dataset

    mosmed = write_sample_dataset("mosmed", tmp_path / "data", n=12, size=64, seed=0)
    proc = bundle(*train_args("lsms", mosmed, tmp_path / "out", "--dataset_format", "mosmed"))
    assert "model file: " in proc.stdout
    assert (tmp_path / "out" / "models" / "model.pt").is_file()


def test_training_on_a_record_without_its_lesion_names_the_file(data, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    record = json.loads((data / "train.jsonl").read_text().splitlines()[0])
    record.update(image=str(data / record["image"]), mask=str(data / record["mask"]), lesion_id=99)
    for split in ("train", "val"):
        (bad / f"{split}.jsonl").write_text(json.dumps(record) + "\n")
    proc = bundle(*train_args("lsms", bad, tmp_path / "out"), check=False)
    assert proc.returncode != 0
    assert "lesion 99 is not in this slice" in proc.stderr and Path(record["mask"]).name in proc.stderr


def test_two_process_gloo_ddp(data, tmp_path):
    out = tmp_path / "ddp"
    proc = bundle("training", "--config_file", configs("lsms", "multi_gpu_train"), "--dataset_dir", str(data),
                  "--output_dir", str(out), "--epochs", "1", "--batch_size", "2", "--limit", "8", "--num_workers", "0",
                  "--progress_bar", "false", "--image_size", "64", torchrun=True, port=29534)
    assert proc.stdout.count("model file: ") == 1
    state = torch.load(out / "models" / "model.pt", map_location="cpu", weights_only=True)["model"]
    assert "stages.0.down.0.weight" in state  # saved without the DDP prefix



def test_two_process_gloo_ddp_with_the_text_encoder_trained(data, tmp_path):
    # the paper's default (BERT fine-tuned); MiniLM is a BERT with a pooler too, which no loss reaches
    out = tmp_path / "ddp_text"
    proc = bundle("training", "--config_file", configs("lsms", "multi_gpu_train"), "--dataset_dir", str(data),
                  "--output_dir", str(out), "--epochs", "1", "--batch_size", "2", "--limit", "8", "--num_workers", "0",
                  "--progress_bar", "false", "--image_size", "64", "--freeze_text_encoder", "false",
                  torchrun=True, port=29536)
    assert proc.stdout.count("model file: ") == 1
    state = torch.load(out / "models" / "model.pt", map_location="cpu", weights_only=True)["model"]
    trained = [k for k in state if k.startswith("text_encoder.model.")]
    assert trained and not [k for k in trained if ".pooler." in k]

def test_inference_config_holds_no_architecture_and_metadata_is_complete():
    train = yaml.safe_load((CONFIGS / "train.yaml").read_text())
    infer = yaml.safe_load((CONFIGS / "inference.yaml").read_text())
    architecture = {v[1:] for v in train["network_def"].values() if isinstance(v, str) and v.startswith("@")}
    assert architecture and not architecture & set(infer)
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    for key in ("version", "changelog", "monai_version", "pytorch_version", "numpy_version", "task", "description",
                "authors", "copyright", "network_data_format"):
        assert key in meta, key
    assert meta["version"] in meta["changelog"]
    assert meta["network_data_format"]["inputs"]["image"]["spatial_shape"] == [train["image_size"]] * 2
