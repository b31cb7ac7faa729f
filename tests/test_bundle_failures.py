"""Bad luck and careless commands through the real ``python -m monai.bundle run``: nothing is lost, nothing
is silently ignored (issue 9). The data-level cases are in ``test_bad_inputs.py``."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bundle_runner import ROOT, bundle, configs, copy_run, inference_config, train_args
from common.data.synthetic.sample_datasets import write_sample_dataset

pytestmark = pytest.mark.bundle


@pytest.fixture(scope="module")
def data(tiny) -> Path:
    return tiny("tmca")["data"]  # the session's TMCA test data: 20 Kvasir-layout images, 64x64


def test_a_typo_on_the_command_line_stops_the_run_before_it_starts(data, tmp_path):
    proc = bundle(*train_args("tmca", data, tmp_path / "out", "--epoch", "1"), check=False)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "--epoch is not a setting of" in last and "Did you mean --epochs?" in last and "Nothing was run" in last
    assert not (tmp_path / "out").exists()


def test_without_validation_data_the_last_model_is_the_model(tmp_path):
    qata = write_sample_dataset("qata", tmp_path / "data", n=8, size=64, seed=0)
    proc = bundle(*train_args("tmca", qata, tmp_path / "out", "--dataset_format", "qata", "--val_fraction", "0",
                              "--epochs", "2"))
    model = tmp_path / "out" / "models" / "model.pt"
    assert model.is_file()
    assert torch.load(model, map_location="cpu", weights_only=True)["description"]["training"]["epoch"] == 2
    assert "the model of the last epoch (2; no validation data)" in proc.stdout
    assert "best" not in proc.stdout.split("model file:")[1].splitlines()[0]


def test_resuming_keeps_the_best_model_unless_a_better_one_comes(data, tiny, tmp_path):
    """The saved record of the best metric is restored: a resumed run whose validation is worse than the
    best so far leaves model.pt alone (before, the first validation after a restart always replaced it)."""
    out = copy_run(tiny("tmca")["run"], tmp_path / "run")  # one epoch of train_args("tmca", data, ...)
    checkpoint = out / "models" / "checkpoint_epoch=1.pt"
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    (priority, filename), = state["best_model"]["_saved"]  # the best Dice so far, and its file
    assert 0 <= priority <= 1
    state["best_model"]["_saved"] = [(2.0, filename)]  # a best Dice no later epoch can beat
    torch.save(state, checkpoint)
    before = (out / "models" / "model.pt").read_bytes()
    bundle(*train_args("tmca", data, out, "--epochs", "2", "--resume", "true"))
    assert (out / "models" / "model.pt").read_bytes() == before
    assert sorted(p.name for p in (out / "models").iterdir()) == ["checkpoint_epoch=2.pt", "model.pt"]


def test_a_killed_run_resumes_where_it_stopped(data, tmp_path):
    out = tmp_path / "killed"
    args = train_args("tmca", data, out, "--epochs", "6", "--limit", "8")
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    first_log = tmp_path / "first.log"
    with open(first_log, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "monai.bundle", "run", *args], cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
        deadline = time.time() + 300
        # killed once epoch 2 is saved and the trainer has logged it (the checkpoint is written before the epoch's
        # log line; the validator logs its own "Epoch[2] Complete" before the trainer's, so that one is not enough)
        while not ((out / "models" / "checkpoint_epoch=2.pt").is_file()
                   and "TextGuidedTrainer - INFO - Epoch[2] Complete" in first_log.read_text()) \
                and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = max(int(m) for m in re.findall(r"checkpoint_epoch=(\d+)", " ".join(os.listdir(out / "models"))))
    best_before = torch.load(out / "models" / "model.pt", map_location="cpu", weights_only=True)["description"]["training"]
    resumed = bundle(*args, "--resume", "true")
    trainer_epochs = r"TextGuidedTrainer - INFO - Epoch\[(\d+)\] Complete"
    before = [int(e) for e in re.findall(trainer_epochs, first_log.read_text())]
    after = [int(e) for e in re.findall(trainer_epochs, resumed.stdout + resumed.stderr)]
    assert before == list(range(1, killed_at + 1)) and after == list(range(killed_at + 1, 7))  # no epoch twice
    best_after = torch.load(out / "models" / "model.pt", map_location="cpu", weights_only=True)["description"]["training"]
    assert best_after["metrics"]["val_dice"] >= best_before["metrics"]["val_dice"]
    assert sorted(p.name for p in (out / "models").iterdir()) == ["checkpoint_epoch=6.pt", "model.pt"]


def test_a_checkpoint_of_another_bundle_is_named_in_one_line(data, tiny, tmp_path):
    image = next((data / "images").iterdir())
    proc = bundle("inferring", "--config_file", inference_config("lsms"), "--checkpoint",
                  str(tiny("tmca")["model"]), "--image", str(image), "--text", "x", check=False)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]  # after the traceback, the cause in one line
    assert last.startswith("error: CheckpointError: ") and "model.pt: is a checkpoint of tmca" in last
    assert "this is the lsms bundle" in last


def test_a_batch_size_of_zero_is_named_in_the_last_line(data, tmp_path):
    proc = bundle(*train_args("tmca", data, tmp_path / "out", "--batch_size", "0"), check=False)
    assert proc.returncode != 0
    assert "batch_size" in proc.stderr.strip().splitlines()[-1]


def test_a_missing_dataset_says_which_setting_to_change_in_the_last_line(tmp_path):
    proc = bundle(*train_args("tmca", tmp_path / "no_such_dataset", tmp_path / "out"), check=False)
    last = proc.stderr.strip().splitlines()[-1]
    assert "no_such_dataset: dataset folder does not exist (set --dataset_dir" in last
