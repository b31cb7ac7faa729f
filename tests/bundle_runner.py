"""Run ``python -m monai.bundle run ...`` as a user would, for the bundle tests (CPU, offline).

Shared by the bundle test modules: the runner, the config-file lists, the arguments of a quick training
run and the ``trained`` fixture (one tiny model per test module, trained through ``monai.bundle``).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from common.engine.config_files import config_file_arg

ROOT = Path(__file__).resolve().parents[1]


def bundle(*args, cwd=ROOT, check=True, torchrun=False, port=29533, timeout=600):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", TRANSFORMERS_VERBOSITY="error", OMP_NUM_THREADS="1")
    if torchrun:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
               "-m", "monai.bundle", "run", *args]
    else:
        cmd = [sys.executable, "-m", "monai.bundle", "run", *args]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def configs(name: str, *files: str) -> str:
    """The ``--config_file`` value for a bundle's ``train.yaml`` (with the engine) + ``demo.yaml`` + ``files``."""
    return config_file_arg(ROOT / "bundles" / name, "train", "demo", *files)


def inference_config(name: str) -> str:
    return str(ROOT / "bundles" / name / "configs" / "inference.yaml")


def train_args(name: str, data, out, *extra) -> list:
    """``training`` arguments for one quick epoch on at most 4 records of ``data``, 64x64, CPU-friendly."""
    return ["training", "--config_file", configs(name), "--dataset_dir", str(data), "--output_dir", str(out),
            "--epochs", "1", "--batch_size", "4", "--limit", "4", "--num_workers", "0", "--progress_bar", "false",
            "--image_size", "64", *extra]


def eval_args(name: str, data, out, *extra) -> list:
    """``evaluating`` arguments for the model trained into ``out``; its settings come from the checkpoint."""
    return ["evaluating", "--config_file", configs(name, "evaluate"), "--dataset_dir", str(data), "--output_dir",
            str(out), "--batch_size", "2", "--num_workers", "0", "--progress_bar", "false", *extra]


def trained_model(name: str, *extra: str, port: int = 29533):
    """A module-scoped fixture: one tiny model of bundle ``name`` trained on the module's ``data`` fixture
    (``extra``: more training arguments, e.g. a smaller network than the demo's)."""

    @pytest.fixture(scope="module")
    def trained(data, tmp_path_factory) -> Path:
        out = tmp_path_factory.mktemp(f"{name}_run")
        proc = bundle(*train_args(name, data, out, *extra), port=port)
        assert "model file: " in proc.stdout and (out / "models" / "model.pt").is_file()
        return out

    return trained
