"""Each bundle's ``tiny`` model size is named once, in ``bundles/<b>/configs/tiny.yaml`` (as segment-anything's
``sam_model_registry`` names its variants): the demo and the tests use it; no test restates one of its ids on a
command line."""

import re
from pathlib import Path

import pytest
import yaml

from bundle_runner import BUNDLES, TEST_CONFIGS

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
# (test file, flag): why that test passes a model-size id of tiny.yaml; the flag is the point of the test
ALLOWED = {
    ("test_tmca_bundle.py", "--image_encoder"): "finetuning refuses another encoder than the checkpoint's",
    ("bundle_runner.py", "--tiny_bases_dir"): "a folder (where LTSE's tiny bases are written), not a size",
    ("test_lsms_bundle.py", "--freeze_text_encoder"): "two-process DDP with the text encoder trained, as the paper "
                                                      "trains it (its pooler would get no gradient)",
}


def tiny_ids(name: str) -> set:
    return set(yaml.safe_load((ROOT / "bundles" / name / "configs" / "tiny.yaml").read_text()))


@pytest.mark.parametrize("name", BUNDLES)
def test_every_bundle_names_a_tiny_size_that_its_demo_trains(name):
    configs = ROOT / "bundles" / name / "configs"
    ids = tiny_ids(name)
    assert ids, f"{name}/configs/tiny.yaml names no model-size id"
    demo = yaml.safe_load((configs / "demo.yaml").read_text())
    assert not ids & set(demo), f"{name}/configs/demo.yaml restates {sorted(ids & set(demo))} of tiny.yaml"
    assert f"'bundles/{name}/configs/tiny.yaml','bundles/{name}/configs/demo.yaml'" in (configs / "demo.yaml").read_text()
    assert TEST_CONFIGS == ("train", "tiny", "demo")
    import sys

    sys.path.insert(0, str(ROOT / "scripts"))
    import demo as demo_script  # scripts/demo.py

    assert demo_script.DEMO_CONFIGS == TEST_CONFIGS


def test_no_test_restates_a_tiny_model_size_on_a_command_line():
    ids = {i for name in BUNDLES for i in tiny_ids(name)}
    found = []
    for path in sorted(set(TESTS.glob("*.py")) - {Path(__file__).resolve()}):
        text = path.read_text()
        for i in sorted(ids):
            flag = f"--{i}"
            if re.search(rf"[\"']{re.escape(flag)}[\"']", text) and (path.name, flag) not in ALLOWED:
                found.append(f"{path.name}: {flag}")
    assert not found, ("a test restates a model size of a tiny.yaml (use the tiny size, or list the test in ALLOWED "
                       f"with the reason the flag is its point): {found}")
    for (file, flag), reason in ALLOWED.items():
        assert reason and f'"{flag}"' in (TESTS / file).read_text(), f"ALLOWED lists {file} {flag}, which it no longer passes"
