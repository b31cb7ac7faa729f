"""The LTSE bundle through `python -m monai.bundle` (subprocesses, CPU): a tiny LLaVA folder and a tiny SAM
checkpoint written in the test stand in for LLaVA-7B and SAM ViT-H, loaded by the same code paths."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bundle_runner import bundle as _bundle
from bundle_runner import configs, inference_config
from common.data.bcss.referring import build_referring_records
from common.data.bcss.synthetic import write_sample_bcss
from common.networks.llava import save_tiny_llava
from common.networks.sam import save_tiny_sam_checkpoint

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.bundle


def bundle(*args, **kwargs):
    return _bundle(*args, port=29561, **kwargs)


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ltse_data")
    records = build_referring_records(write_sample_bcss(folder, n=10, size=128, seed=0), folder / "ref",
                                      patch_size=64, seed=0, progress=False)
    return {"records": records, "llava": save_tiny_llava(folder / "llava"),
            "sam": save_tiny_sam_checkpoint(folder / "sam" / "sam_tiny.pth")}


def common_args(parts, out, train=True):
    """Data, output and machine; training also names the tiny bases (evaluation reads them from the checkpoint)."""
    bases = ["--llava_name_or_path", parts["llava"], "--sam_checkpoint", parts["sam"]] if train else []
    return ["--records_file", str(parts["records"]), "--output_dir", str(out), *bases, "--num_workers", "0",
            "--progress_bar", "false", "--limit", "6"]


@pytest.fixture(scope="module")
def trained(parts, tmp_path_factory):
    out = tmp_path_factory.mktemp("ltse_run")
    proc = bundle("training", "--config_file", configs("ltse"), *common_args(parts, out), "--epochs", "1",
                  "--batch_size", "2", "--accumulation_steps", "2", "--max_new_tokens", "12")
    assert "model file: " in proc.stdout
    return out


def test_training_saves_only_the_trained_parts_and_where_the_bases_come_from(trained, parts):
    state = torch.load(trained / "models" / "checkpoint_epoch=1.pt", map_location="cpu", weights_only=True)
    assert state["trainer"]["iteration"] == 3                    # 6 records, batch 2
    description = state["description"]
    assert description["excluded"] == ["llava.", "sam."]
    assert description["network"]["llava"]["name_or_path"] == parts["llava"]
    assert description["network"]["sam"]["checkpoint"] == parts["sam"]
    assert description["settings"] == {"max_text_tokens": 256, "max_new_tokens": 12}
    keys = list(state["model"])
    assert any("lora_A" in k for k in keys) and any("trainable_tokens" in k for k in keys)
    assert any(k.startswith("aem.gate.") for k in keys) and any(k.startswith("aem.experts.3.") for k in keys)
    frozen = [k for k in keys if k.startswith(("sam.", "llava.")) and "lora_" not in k and "trainable_tokens" not in k]
    assert frozen == []
    # the schedule: warm-up counted in optimiser steps (2 iterations each)
    assert state["lr_scheduler"]["last_epoch"] == 3


def test_evaluating_writes_table_1_and_overlays(trained, parts):
    bundle("evaluating", "--config_file", configs("ltse", "evaluate"), *common_args(parts, trained, False), "--num_overlays", "2")
    ev = trained / "eval"
    rows = (ev / "scores.csv").read_text().splitlines()
    assert rows[0] == "magnification,giou,ciou,nacc,targets,absent"
    assert rows[-1].startswith("overall,")
    summary = json.loads((ev / "summary.json").read_text())
    targets = (ev / "targets.csv").read_text().splitlines()[1:]
    assert summary["overall"]["targets"] == len(targets) > 0
    assert len(list((ev / "overlays").glob("*.png"))) == 2
    assert len((ev / "answers.csv").read_text().splitlines()) == 7   # header + the 6 test instructions


def test_inferring_and_chat_write_the_answer_and_one_mask_per_seg(trained, parts, tmp_path):
    record = json.loads(parts["records"].read_text().splitlines()[0])
    image = str(parts["records"].parent / record["image"])
    out = tmp_path / "infer"
    bundle("inferring", "--config_file", inference_config("ltse"), "--checkpoint", str(trained / "models" / "model.pt"),
           "--image", image, "--instruction", record["instruction"], "--output_dir", str(out), "--progress_bar", "false")
    index = (out / "predictions.csv").read_text().splitlines()
    assert len(index) == 2
    stem = Path(image).stem
    answer = (out / f"{stem}_answer.txt").read_text()
    assert len(list(out.glob(f"{stem}_seg*.png"))) == min(answer.count("[SEG]"), 10)
    assert (out / f"{stem}_overlay.png").is_file()
    chat = subprocess.run([sys.executable, str(ROOT / "scripts" / "chat.py"), "--checkpoint",
                           str(trained / "models" / "model.pt"), "--image", image, "--output_dir", str(tmp_path / "chat"),
                           "--instructions", "['Please segment the tumor.', 'Show me the fat.']"],
                          capture_output=True, text=True, timeout=300, env={"HF_HUB_OFFLINE": "1", "PATH": ""})
    assert chat.returncode == 0, chat.stderr[-3000:]
    assert len((tmp_path / "chat" / "predictions.csv").read_text().splitlines()) == 3


def test_an_architecture_flag_at_evaluation_is_refused(trained, parts):
    proc = bundle("evaluating", "--config_file", configs("ltse", "evaluate"), *common_args(parts, trained, False),
                  "--num_experts", "2", check=False)
    assert proc.returncode != 0 and "num_experts" in proc.stdout + proc.stderr


def test_resuming_continues_from_the_last_epoch(trained, parts):
    proc = bundle("training", "--config_file", configs("ltse"), *common_args(parts, trained), "--epochs", "2",
                  "--batch_size", "2", "--accumulation_steps", "2", "--max_new_tokens", "12", "--resume", "true",
                  "--overwrite", "false")
    assert "resuming" in (proc.stdout + proc.stderr).lower()
    state = torch.load(trained / "models" / "checkpoint_epoch=2.pt", map_location="cpu", weights_only=True)
    assert state["trainer"]["iteration"] == 6   # 3 more iterations after the first epoch's 3


def test_trains_with_two_processes(parts, tmp_path):
    out = tmp_path / "ddp"
    proc = bundle("training", "--config_file", configs("ltse", "multi_gpu_train"), *common_args(parts, out),
                  "--epochs", "1", "--batch_size", "1", "--max_new_tokens", "8", torchrun=True)
    assert proc.stdout.count("model file: ") == 1
    state = torch.load(out / "models" / "model.pt", map_location="cpu", weights_only=True)["model"]
    assert not any(k.startswith("module.") for k in state)
