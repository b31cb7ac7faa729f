"""The LTSE bundle through `python -m monai.bundle` (subprocesses, CPU): the tiny LLaVA folder and tiny SAM
checkpoint of tiny.yaml, written into the test's folder, stand in for LLaVA-7B and SAM ViT-H, loaded by the same
code paths."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bundle_runner import bundle as _bundle
from bundle_runner import configs, copy_run, inference_config, ltse_args

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.bundle


def bundle(*args, **kwargs):
    return _bundle(*args, port=29561, **kwargs)


@pytest.fixture(scope="module")
def parts(tiny):
    """The session's LTSE test data: ``records`` (BCSS referring records, 10 ROIs of 128x128, 64-pixel patches),
    ``bases`` (where the tiny "pretrained" LLaVA and SAM of tiny.yaml are written), ``run`` (its tiny model)."""
    shared = tiny("ltse")
    return {"records": shared["data"], "bases": shared["bases"], "run": shared["run"], "data": shared["data"],
            "llava": str(shared["bases"]) + "/tiny_llava", "sam": str(shared["bases"]) + "/tiny_sam/sam_tiny.pth"}


def common_args(parts, out, train=True):
    """Data, output and machine; training also names where the tiny bases are (evaluation reads them from the
    checkpoint)."""
    return ltse_args(parts, out, train)


@pytest.fixture(scope="module")
def trained(parts):
    """The session's tiny LTSE: one epoch on 6 records, batch 2, 2 accumulation steps, 12 new tokens at most."""
    return parts["run"]


def test_training_saves_only_the_trained_parts_and_where_the_bases_come_from(trained, parts):
    state = torch.load(trained / "models" / "checkpoint_epoch=1.pt", map_location="cpu", weights_only=True)
    assert state["trainer"]["iteration"] == 3                    # 6 records, batch 2
    description = state["description"]
    assert description["excluded"] == ["llava.", "sam."]
    assert description["network"]["llava"]["name_or_path"] == parts["llava"]
    assert description["network"]["sam"]["checkpoint"] == parts["sam"]
    assert description["settings"] == {"max_text_tokens": 256, "max_new_tokens": 12,
                                       "clip_image_size": 32, "sam_image_size": 64}  # the tiny towers
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
    assert rows[0] == "protocol,magnification,giou,ciou,nacc,targets,absent"
    # GSVA's teacher-forced protocol first, then the generated answers'
    assert rows[1].startswith("gsva,") and rows[-1].startswith("generated,overall,")
    summary = json.loads((ev / "summary.json").read_text())
    targets = (ev / "targets.csv").read_text().splitlines()[1:]
    assert summary["gsva"]["overall"]["targets"] == summary["generated"]["overall"]["targets"] == len(targets) / 2 > 0
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


def test_resuming_continues_from_the_last_epoch(trained, parts, tmp_path):
    resumed = copy_run(trained, tmp_path / "resumed")  # the shared run stays as it was trained
    proc = bundle("training", "--config_file", configs("ltse"), *common_args(parts, resumed), "--epochs", "2",
                  "--batch_size", "2", "--accumulation_steps", "2", "--max_new_tokens", "12", "--resume", "true",
                  "--overwrite", "false")
    assert "resuming" in (proc.stdout + proc.stderr).lower()
    state = torch.load(resumed / "models" / "checkpoint_epoch=2.pt", map_location="cpu", weights_only=True)
    assert state["trainer"]["iteration"] == 6   # 3 more iterations after the first epoch's 3


def test_trains_with_two_processes(parts, tmp_path):
    out = tmp_path / "ddp"
    proc = bundle("training", "--config_file", configs("ltse", "multi_gpu_train"), *common_args(parts, out),
                  "--epochs", "1", "--batch_size", "1", "--max_new_tokens", "8", torchrun=True)
    assert proc.stdout.count("model file: ") == 1
    state = torch.load(out / "models" / "model.pt", map_location="cpu", weights_only=True)["model"]
    assert not any(k.startswith("module.") for k in state)
