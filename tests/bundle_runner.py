"""Run ``python -m monai.bundle run ...`` as a user would, for the bundle tests (CPU, offline).

Shared by the bundle test modules: the runner, the config-file lists (train + engine + ``tiny`` + ``demo``:
every test runs the bundle's named ``tiny`` model size, ``configs/tiny.yaml``, as the demo does), the
arguments of a quick training run, the tests' sample data of each bundle and its trained tiny model
(:func:`tiny_run`, trained once per test session and shared by every module that needs a trained model).
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from common.engine.config_files import config_file_arg, config_files

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = sorted(p.parent.parent.name for p in ROOT.glob("bundles/*/configs/train.yaml"))
# the tests' configs: the bundle's train.yaml, the engine, its tiny model size, its demo (schedule, sample data)
TEST_CONFIGS = ("train", "tiny", "demo")
# the side of the tests' sample images (an input setting, not a model size: every tiny network takes any size)
IMAGE_SIZE = {"monch": 32}
COUNT_FILE = "TGSEG_COUNT_PYTHON"  # a file: every Python process the tests start adds a line (tests/conftest.py)


def bundle(*args, cwd=ROOT, check=True, torchrun=False, port=29533, timeout=600):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", TRANSFORMERS_VERBOSITY="error", OMP_NUM_THREADS="1")
    if torchrun:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
               "-m", "monai.bundle", "run", *args]
    else:
        cmd = [sys.executable, "-m", "monai.bundle", "run", *args]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        # every process's one-line cause (each rank of a torchrun job prints its own `error: ...` line), then the tails
        causes = [line for line in (proc.stdout + proc.stderr).splitlines() if "error: " in line and "]" in line[:12]
                  or line.startswith("error: ")]
        raise AssertionError(f"{' '.join(cmd)} failed:\n" + "\n".join(causes) +
                             f"\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def configs(name: str, *files: str) -> str:
    """The ``--config_file`` value: the bundle's ``train.yaml`` (with the engine) + ``tiny.yaml`` + ``demo.yaml``
    + ``files``."""
    return config_file_arg(ROOT / "bundles" / name, *TEST_CONFIGS, *files)


def tiny_overrides(name: str) -> dict:
    """Bundle ``name``'s tiny model size (``configs/tiny.yaml``) as a dict of overrides (for a tool that takes
    ``--override`` rather than config files, e.g. scripts/benchmark.py)."""
    import yaml

    return yaml.safe_load((ROOT / "bundles" / name / "configs" / "tiny.yaml").read_text())


def bundle_parser(folder: Path, *names: str, overrides: dict | None = None):
    """A bundle's merged configs (``config_files(folder, *names)`` + ``overrides``) in a MONAI ConfigParser that
    builds that bundle's classes (its ``scripts`` names rewritten to the bundle's own package: no module of
    another bundle is touched, so several bundles parse in one test process)."""
    from monai.bundle import ConfigParser

    from transforms.base.describe import bundle_config

    parser = ConfigParser()
    parser.read_config([str(f) for f in config_files(folder, *names)])
    parser.update(overrides or {})
    parser.set(bundle_config(parser.get(), folder))
    return parser


def package_bundle(name: str, model: Path | None, out_dir: Path, **options) -> Path:
    """``python scripts/package.py --bundle name --model model --out_dir out_dir [--max_zip_mb ...]``, run in this
    process (the same ``main``; the zip it writes is what the tests check): returns the zip."""
    if str(ROOT / "scripts") not in sys.path:
        sys.path.insert(0, str(ROOT / "scripts"))
    import package

    return Path(package.main(bundle=name, model=str(model) if model else None, out_dir=str(out_dir), **options))


def inference_config(name: str) -> str:
    """The ``--config_file`` value of ``inferring``: the bundle's train.yaml (its transforms) + inference.yaml."""
    return config_file_arg(ROOT / "bundles" / name, "inference")


def train_args(name: str, data, out, *extra) -> list:
    """``training`` arguments for one quick epoch on at most 4 records of ``data`` (the tests' small images),
    CPU-friendly, the tiny model size."""
    return ["training", "--config_file", configs(name), "--dataset_dir", str(data), "--output_dir", str(out),
            "--epochs", "1", "--batch_size", "4", "--limit", "4", "--num_workers", "0", "--progress_bar", "false",
            "--image_size", str(IMAGE_SIZE.get(name, 64)), *extra]


def eval_args(name: str, data, out, *extra) -> list:
    """``evaluating`` arguments for the model trained into ``out``; its settings come from the checkpoint."""
    # Co-Seg and LTSE evaluate one ROI / patch at a time (their evaluate.yaml), so --batch_size would be refused
    batch = [] if name in ("coseg", "ltse") else ["--batch_size", "2"]
    return ["evaluating", "--config_file", configs(name, "evaluate"), "--dataset_dir", str(data), "--output_dir",
            str(out), *batch, "--num_workers", "0", "--progress_bar", "false", *extra]


# ------------------------------------------------------------------------------------------------
# each bundle's test data and its trained tiny model, once per session
# ------------------------------------------------------------------------------------------------
def write_data(name: str, folder: Path) -> dict:
    """The tests' sample data of bundle ``name`` under ``folder``: ``{"data": dataset folder or records file,
    ...}`` (LTSE: also ``bases``, the folder of its tiny "pretrained" LLaVA and SAM)."""
    if name == "tmca":
        from common.data.synthetic.sample_datasets import write_sample_dataset

        return {"data": write_sample_dataset("kvasir", folder, n=20, size=64, seed=0)}
    if name == "lsms":
        from common.data.referring_ct.synthetic import ensure_sample_referring_ct

        return {"data": Path(ensure_sample_referring_ct(folder, n_cases=4, size=64, depth=8, seed=0))}
    if name == "monch":
        from common.data.pannuke.synthetic import write_sample_pannuke

        return {"data": write_sample_pannuke(folder, n_per_fold=4, size=32, seed=0)}
    if name == "coseg":
        from common.data.puma.synthetic import write_sample_puma

        return {"data": write_sample_puma(folder, n=10, size=64, seed=0)}
    if name == "ltse":
        from common.data.bcss.referring import build_referring_records
        from common.data.bcss.synthetic import write_sample_bcss

        records = build_referring_records(write_sample_bcss(folder / "bcss", n=10, size=128, seed=0), folder / "ref",
                                          patch_size=64, seed=0, progress=False)
        return {"data": Path(records), "bases": folder / "bases"}
    raise KeyError(f"no test data for bundle {name!r}: add it to tests/bundle_runner.py write_data")


def ltse_args(parts: dict, out, train: bool = True) -> list:
    """LTSE's data, output and machine arguments; training also names where the tiny bases are written
    (evaluation reads them from the checkpoint)."""
    bases = ["--tiny_bases_dir", str(parts["bases"])] if train else []
    return ["--records_file", str(parts["data"]), "--output_dir", str(out), *bases, "--num_workers", "0",
            "--progress_bar", "false", "--limit", "6"]


def tiny_training_args(name: str, parts: dict, out: Path) -> list:
    """The training of the shared tiny model: one epoch on a few records."""
    if name == "ltse":
        return ["training", "--config_file", configs("ltse"), *ltse_args(parts, out), "--epochs", "1",
                "--batch_size", "2", "--accumulation_steps", "2", "--max_new_tokens", "12"]
    extra = {"monch": ["--batch_size", "2"], "coseg": ["--batch_size", "2", "--nuclei_classes", "track1"]}
    return train_args(name, parts["data"], out, *extra.get(name, []))


def tiny_run(name: str, folder: Path) -> dict:
    """Bundle ``name``'s test data and its tiny model trained on it, under ``folder`` (shared by the test
    processes of one session through a file lock): ``{"data", "run" (the output folder), "model"
    (run/models/model.pt), "bases" (LTSE)}``. A test that writes into ``run`` writes what a test of the
    same module reads (``eval/``); one that changes the checkpoints works on a copy."""
    from filelock import FileLock

    folder.mkdir(parents=True, exist_ok=True)
    done = folder / f"{name}.json"
    with FileLock(str(folder / f"{name}.lock")):
        if not done.is_file():
            parts = write_data(name, folder / name / "data")
            run = folder / name / "run"
            if run.exists():  # a run that did not finish
                shutil.rmtree(run)
            proc = bundle(*tiny_training_args(name, parts, run))
            assert "model file: " in proc.stdout and (run / "models" / "model.pt").is_file()
            parts.update(run=run, model=run / "models" / "model.pt")
            done.write_text(json.dumps({k: str(v) for k, v in parts.items()}))
    return {k: Path(v) for k, v in json.loads(done.read_text()).items()}


def copy_run(run: Path, to: Path) -> Path:
    """A copy of a run's checkpoints (``models/``) for a test that trains on from them."""
    (to / "models").mkdir(parents=True)
    for f in (run / "models").iterdir():
        shutil.copy2(f, to / "models" / f.name)
    return to
