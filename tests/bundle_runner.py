"""Run ``python -m monai.bundle run ...`` as a user would, for the bundle tests (CPU, offline)."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def bundle(*args, cwd=ROOT, check=True, torchrun=False, port=29533):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", TRANSFORMERS_VERBOSITY="error", OMP_NUM_THREADS="1")
    if torchrun:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
               "-m", "monai.bundle", "run", *args]
    else:
        cmd = [sys.executable, "-m", "monai.bundle", "run", *args]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def train_args(configs: str, data, out, *extra) -> list:
    """``training`` arguments for one quick epoch on at most 4 records of ``data``, 64x64, CPU-friendly."""
    return ["training", "--config_file", configs, "--dataset_dir", str(data), "--output_dir", str(out),
            "--epochs", "1", "--batch_size", "4", "--limit", "4", "--num_workers", "0", "--progress_bar", "false",
            "--image_size", "64", *extra]
