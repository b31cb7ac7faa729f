"""The demo: sample data -> train a bundle -> evaluate (with the text ablation) -> one inference.

    python scripts/demo.py                       # what `make demo` runs (TMCA)
    python scripts/demo.py --bundle lsms         # any bundle with a configs/demo.yaml
    python scripts/demo.py --epochs 5            # shorter

A bundle's demo trains its ``tiny`` model size (``configs/tiny.yaml``: the small network, which the tests use
too) with its ``configs/demo.yaml``: the sample data (written on first use), the schedule, and ``demo_record``,
the test record inference runs on (train + engine + tiny + demo). Every step is the
bundle command a user would type; each is printed before it runs.
"""

import _repo  # noqa: F401  (puts the repository root on sys.path)

import os
import subprocess
import sys
import time

from _repo import ROOT, bundle_names, read_bundle_config

from transforms.base.describe import typed
from common.core.flags import did_you_mean
from common.engine.checkpoints import check_demo_may_replace
from common.engine.config_files import config_file_arg


DEMO_CONFIGS = ("train", "tiny", "demo")  # the engine is merged after train.yaml (config_files)


def _configs(bundle: str, *extra: str) -> str:
    return config_file_arg(ROOT / "bundles" / bundle, *DEMO_CONFIGS, *extra, relative_to=ROOT)


def _run(args: list[str]) -> None:
    print("\n$ " + " ".join(a if " " not in a and "[" not in a else repr(a) for a in args), flush=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    subprocess.run(args, cwd=ROOT, env=env, check=True)


def inference_arguments(record: dict) -> list[str]:
    """The ``inferring`` arguments for a datalist record: its image and whichever of text, slice, index it has."""
    args = ["--image", str(record["image"])]
    text = record.get("text")
    if isinstance(text, (list, tuple)):
        text = text[0]
    if text:
        args += ["--text", str(text)]
    if record.get("instruction"):  # LTSE answers an instruction
        args += ["--instruction", str(record["instruction"])]
    for key in ("slice", "index"):
        if record.get(key) is not None:
            args += [f"--{key}", str(record[key])]
    return args


@typed  # fire hands over '--flag false' as the text 'false': read it as the annotation says
def main(bundle: str = "tmca", epochs: int | None = None, dataset_dir: str | None = None,
         output_dir: str | None = None, progress_bar: bool = False) -> None:
    """Train, evaluate and run a bundle on synthetic data (CPU: a few minutes)."""
    names = bundle_names(with_demo=True)
    if bundle not in names:
        raise ValueError(f"no demo for {bundle!r};{did_you_mean(str(bundle), names)} bundles with a configs/demo.yaml: "
                         f"{names}")
    start = time.time()
    output_dir = output_dir or f"runs/{bundle}_demo"
    check_demo_may_replace(str(ROOT / output_dir / "models"))  # before anything runs: a real model is never replaced
    py = [sys.executable, "-m", "monai.bundle", "run"]
    common = ["--output_dir", output_dir, "--progress_bar", str(progress_bar)]
    if dataset_dir:
        common += ["--dataset_dir", dataset_dir]
    epochs_arg = ["--epochs", str(epochs)] if epochs else []  # default: the bundle's demo.yaml
    _run(py + ["training", "--config_file", _configs(bundle)] + epochs_arg + common)
    _run(py + ["evaluating", "--config_file", _configs(bundle, "evaluate")] + common)
    overrides = {"dataset_dir": dataset_dir} if dataset_dir else {}
    demo = read_bundle_config(bundle, DEMO_CONFIGS, overrides)
    record = demo.get_parsed_content("demo_record")
    # settings of inference.yaml the demo's data needs (e.g. Co-Seg's post-processing at its small scale)
    extra = demo.get_parsed_content("inference_overrides") if "inference_overrides" in demo else {}
    _run(py + ["inferring", "--config_file", config_file_arg(ROOT / "bundles" / bundle, "inference", relative_to=ROOT),
               "--checkpoint", f"{output_dir}/models/model.pt", "--output_dir", f"{output_dir}/infer",
               *inference_arguments(record), *[a for k, v in extra.items() for a in (f"--{k}", str(v))]])
    out = ROOT / output_dir
    print(f"\nDemo finished in {(time.time() - start) / 60:.1f} min. Outputs:")
    print(f"  evaluation         {out / 'eval'} (tables: *.md and *.csv; overlays/)")
    print(f"  inference          {out / 'infer'}")
    print(f"  checkpoints        {out / 'models'} (model.pt describes the network it holds)")
    print(f"  TensorBoard        tensorboard --logdir {out / 'logs'}")


if __name__ == "__main__":
    _repo.run_cli(main)
