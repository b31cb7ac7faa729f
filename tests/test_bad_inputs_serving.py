"""Bad inputs and faults of serving, chat and failed runs (issue 22, "Trust a stranger's files"): each case
with what a user sees. To be merged into tests/test_bad_inputs.py.

* MONAI Label ``/train`` promotes a model only when it scores better, keeps the served one, splits
  validation by volume, and refuses a model without a training task at once (scripts/label_app);
* ``scripts/chat.py``: a bad or missing image is named and the session goes on; nothing answered is lost;
* a data error while MONAI's ``CacheDataset`` loads in threads ends the run with exit status 1 and the error
  that names the file as the last line (it aborted with 134, "terminate called without an active exception").
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from common.engine.config_files import config_file_arg
from PIL import Image

from transforms.base.errors import DatasetError

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "scripts" / "label_app"
LABEL_PY = Path(os.environ.get("TGSEG_LABEL_VENV", ROOT / ".venv-label")) / "bin" / "python"


def _module(name: str, path: Path):
    """A module of the label app or of scripts/ by its file (they are not packages of the project)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # (dataclasses look their module up)
    spec.loader.exec_module(module)
    return module


serving = _module("label_app_serving", APP / "lib" / "serving.py")


@pytest.fixture(scope="module")
def promotion():
    return _module("label_app_promotion", APP / "lib" / "promotion.py")


# ---------------------------------------------------------------------------------------------
# MONAI Label /train: promote only a better model, keep the served one (issue 22, item 6)
# ---------------------------------------------------------------------------------------------
def _checkpoint(path: Path, metrics: dict, marker: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": {"w": torch.tensor([marker])}, "description": {"bundle": "tmca", "training":
                                                                         {"epoch": 1, "metrics": metrics}}}, path)
    return path


def _marker(path: Path) -> float:
    return float(torch.load(path, weights_only=True)["model"]["w"])


def test_train_promotes_a_better_model_and_keeps_the_served_one(promotion, tmp_path):
    served = _checkpoint(tmp_path / "bundle" / "models" / "model.pt", {"val_dice": 0.6}, marker=1.0)
    trained = _checkpoint(tmp_path / "run" / "models" / "model.pt", {"val_dice": 0.8}, marker=2.0)
    result = promotion.promote_if_better(trained, served, "val_dice")
    assert result["promoted"] and result["promotion"] == "val_dice 0.8000 beats the served model's 0.6000"
    assert _marker(served) == 2.0
    backups = list((served.parent / "previous").glob("model_*.pt"))
    assert [str(b) for b in backups] == [result["backup"]] and _marker(backups[0]) == 1.0
    assert not list(served.parent.glob(".*incoming"))  # nothing half-written left behind


@pytest.mark.parametrize("served_score, trained_metrics, reason", [
    (0.9, {"val_dice": 0.7}, r"val_dice 0.7000 does not beat the served model's 0.9000"),
    (0.9, {"val_dice": 0.9}, r"val_dice 0.9000 does not beat the served model's 0.9000"),
    (0.1, {}, r"the run recorded no val_dice \(no validation data: val_split 0\?\).*promote: always"),
])
def test_train_keeps_the_served_model_unless_the_new_one_scores_better(promotion, tmp_path, served_score,
                                                                      trained_metrics, reason):
    served = _checkpoint(tmp_path / "bundle" / "models" / "model.pt", {"val_dice": served_score}, marker=1.0)
    trained = _checkpoint(tmp_path / "run" / "models" / "model.pt", trained_metrics, marker=2.0)
    before = served.read_bytes()
    result = promotion.promote_if_better(trained, served, "val_dice")
    assert not result["promoted"] and result["backup"] is None
    assert re.fullmatch(reason, result["promotion"]), result["promotion"]
    assert served.read_bytes() == before and not (served.parent / "previous").exists()
    # asked for explicitly, the new model is served whatever the scores; the old one is still kept
    forced = promotion.promote_if_better(trained, served, "val_dice", "always")
    assert forced["promoted"] and _marker(served) == 2.0 and Path(forced["backup"]).read_bytes() == before


def test_train_refuses_an_unknown_promote_value_before_training(promotion):
    with pytest.raises(ValueError, match=r"promote must be one of \['better', 'always'\], got 'sometimes'"):
        promotion.promote_mode({"promote": "sometimes"})


# ---------------------------------------------------------------------------------------------
# MONAI Label /train: the validation split keeps a CT volume on one side (issue 22, item 6)
# ---------------------------------------------------------------------------------------------
def test_train_validation_split_keeps_every_slice_of_a_volume_on_one_side():
    lsms = serving.read_serving(ROOT / "bundles" / "lsms")
    texts = {f"case_{c}": [{"text": f"lesion {k} of case {c}", "slice": 10 + k, "lesion_id": 1} for k in range(3)]
             for c in range(4)}
    labelled = [(case, f"/studies/{case}.nii.gz", f"/studies/labels/final/{case}.nii.gz", None) for case in texts]
    records, _ = serving.training_records(labelled, texts, lsms)
    train, val = serving.partition_by_image(records, 0.25)
    assert len(train) == 9 and len(val) == 3  # one volume of four, all three of its slices
    assert not {r["image"] for r in train} & {r["image"] for r in val}
    assert serving.partition_by_image(records, 0.0) == (records, [])


# ---------------------------------------------------------------------------------------------
# MONAI Label /train on a bundle without a training task: 404 at once (issue 22, item 6)
# ---------------------------------------------------------------------------------------------
TRAIN_REQUESTS = r'''
import json, sys
sys.path.insert(0, sys.argv[1])  # the app folder, as MONAI Label puts it on the path
from fastapi.testclient import TestClient
import monailabel.app as server
import monailabel.endpoints.train as train
from monailabel.config import settings
from monailabel.interfaces.utils import app as instances
from lib.serving import read_serving
from main import TextGuidedSegmentationApp

app = object.__new__(TextGuidedSegmentationApp)  # the app's request handling, without loading models
app.servings = {name: read_serving(f"{sys.argv[2]}/{name}") for name in ("tmca", "ltse")}
app._trainers = {"tmca": "its training task"}
instances.apps[f"{settings.MONAI_LABEL_APP_DIR}{settings.MONAI_LABEL_STUDIES}"] = app
app.server_mode(True)  # what the server does at start
train.run_model = lambda model, params, run_sync, enqueue: {"queued": model, "params": params}  # no background task
client = TestClient(server.app)
answers = {m: client.post(f"/train/{m}", json={"max_epochs": 1}) for m in ("ltse", "nothing", "tmca")}
print("RESULT " + json.dumps({m: [r.status_code, r.json()] for m, r in answers.items()}))
'''


@pytest.mark.bundle
def test_train_of_a_bundle_without_a_training_task_is_refused_at_once(tmp_path):
    if not LABEL_PY.is_file():
        pytest.fail(f"{LABEL_PY.parents[1]} does not exist: run `make label-env`")
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([str(LABEL_PY), "-c", TRAIN_REQUESTS, str(APP), str(ROOT / "bundles")], capture_output=True,
                          text=True, env=env, timeout=300, cwd=tmp_path)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    answers = json.loads(lines[-1][len("RESULT "):])
    status, body = answers["ltse"]
    assert status == 404 and body["detail"].startswith("ltse has no /train task (LTSE learns from referring records")
    assert body["detail"].endswith("; models trained from here: tmca")
    assert answers["nothing"] == [404, {"detail": "no model 'nothing' is served; models trained from here: tmca"}]
    assert answers["tmca"] == [200, {"queued": "tmca", "params": {"max_epochs": 1}}]  # MONAI Label's own route


# ---------------------------------------------------------------------------------------------
# scripts/chat.py: a bad image is named, the session goes on, nothing is lost (issue 22, item 11)
# ---------------------------------------------------------------------------------------------
class _Answering(torch.nn.Module):
    """Answers every instruction with one mask over the left half; fails at call ``fail_at`` (1-based)."""

    def __init__(self, fail_at: int | None = None):
        super().__init__()
        self.calls, self.fail_at = 0, fail_at

    def generate(self, image, instruction, max_new_tokens=64, threshold=0.0):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("the model failed")
        mask = torch.zeros(image.shape[-2:], dtype=torch.bool)
        mask[:, : image.shape[-1] // 2] = True
        return {"answer": "Sure, tumor [SEG].", "tokens": ["[SEG]"], "masks": [mask], "cut": False}


@pytest.fixture
def chat(monkeypatch):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        module = _module("chat_under_test", ROOT / "scripts" / "chat.py")
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    network = _Answering()
    loaded = []

    def load(checkpoint, bundle, device, pretrained_sources=None):
        loaded.append(checkpoint)
        return type("Trained", (), {"settings": {"max_new_tokens": 8}})(), network

    monkeypatch.setattr(module, "_load", load)
    module.network, module.loaded = network, loaded
    return module


def _patch(path: Path) -> str:
    Image.fromarray(np.full((16, 24, 3), 120, np.uint8)).save(path)
    return str(path)


def _index(folder: Path) -> list[dict]:
    with open(folder / "predictions.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_chat_names_a_bad_or_missing_image_and_the_session_goes_on(chat, tmp_path, monkeypatch, capsys):
    good = _patch(tmp_path / "patch.png")
    (tmp_path / "broken.png").write_bytes(Path(good).read_bytes()[:40])  # cut: opens, does not decode
    lines = ["Please segment the tumor.", f":image {tmp_path / 'broken.png'}", f":image {tmp_path / 'gone.png'}",
             ":image", "Show me the stroma.", ":quit"]
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(lines) + "\n"))
    chat.main(checkpoint="model.pt", image=good, output_dir=str(tmp_path / "chat"))
    err = capsys.readouterr().err
    assert f"error: {tmp_path / 'broken.png'}: cannot read image (" in err
    assert f"error: {tmp_path / 'gone.png'}: does not exist" in err
    assert "error: no image given: type ':image PATH'" in err
    rows = _index(tmp_path / "chat")
    assert [(r["image"], r["instruction"]) for r in rows] == [(good, "Please segment the tumor."),
                                                             (good, "Show me the stroma.")]


def test_chat_keeps_the_index_of_every_answer_when_the_session_ends_badly(chat, tmp_path, monkeypatch):
    good = _patch(tmp_path / "patch.png")
    chat.network.fail_at = 2
    monkeypatch.setattr(sys, "stdin", io.StringIO("Please segment the tumor.\nShow me the stroma.\n"))
    with pytest.raises(RuntimeError, match="the model failed"):
        chat.main(checkpoint="model.pt", image=good, output_dir=str(tmp_path / "chat"))
    assert [r["instruction"] for r in _index(tmp_path / "chat")] == ["Please segment the tumor."]
    assert (tmp_path / "chat" / "patch_seg1.png").is_file()


def test_chat_without_a_readable_image_stops_before_loading_the_model(chat, tmp_path):
    with pytest.raises(DatasetError, match=rf"{tmp_path / 'gone.png'}: does not exist"):
        chat.main(checkpoint="model.pt", image=str(tmp_path / "gone.png"), output_dir=str(tmp_path / "chat"))
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(DatasetError, match=rf"broken.png: cannot read image \(UnidentifiedImageError"):
        chat.main(checkpoint="model.pt", image=str(tmp_path / "broken.png"), output_dir=str(tmp_path / "chat"))
    with pytest.raises(DatasetError, match=r"--instructions answers questions about --image PATH: give one"):
        chat.main(checkpoint="model.pt", instructions=["Please segment the tumor."], output_dir=str(tmp_path / "chat"))
    assert chat.loaded == [] and not (tmp_path / "chat").exists()


# ---------------------------------------------------------------------------------------------
# a data error while the cache loads in threads: exit 1, the file named last (issue 22, item 11)
# ---------------------------------------------------------------------------------------------
def test_the_summary_line_names_the_file_not_what_the_error_wraps():
    from common.core.config import summary_line

    try:
        try:
            json.loads("not json")
        except json.JSONDecodeError as err:
            raise DatasetError("nuclei.geojson", f"is not JSON ({err})") from err
    except DatasetError as err:
        wrapped = RuntimeError("applying transform <LoadPumaROId>")
        wrapped.__cause__ = err
    expected = "DatasetError: nuclei.geojson: is not JSON (Expecting value: line 1 column 1 (char 0))"
    assert summary_line(wrapped) == expected  # not the JSONDecodeError it wraps
    worker = RuntimeError("Caught RuntimeError in DataLoader worker process 1.\nOriginal Traceback (most recent call "
                          "last):\n  ...\ncommon.core.errors.DatasetError: roi_001_nuclei.geojson: is not JSON (x)\n\n"
                          "The above exception was the direct cause of the following exception:\n\n  ...\n"
                          "RuntimeError: applying transform <transforms.puma.LoadPumaROId object at 0x7f>\n")
    assert summary_line(worker) == "DatasetError: roi_001_nuclei.geojson: is not JSON (x)"


CACHE_ERROR = r'''
import time
import torch
from monai.data import CacheDataset
from monai.transforms import Transform
from common.core.config import install_error_summary
from transforms.base.errors import DatasetError


class Load(Transform):
    """The first item is broken; meanwhile the other thread is still loading (inside torch)."""

    def __call__(self, item):
        if item == "bad.tif":
            time.sleep(0.2)
            raise DatasetError(item, "cannot read image") from ValueError("the decoder's own words")
        end = time.time() + 3
        while time.time() < end:
            torch.eye(2000)  # torch lets go of the GIL inside and takes it back on return
        return item


install_error_summary()  # as `monai.bundle run` does (common.core.config.check_command_line)
CacheDataset(["bad.tif", "slow.tif"], transform=Load(), num_workers=2, progress=False)
'''


@pytest.mark.bundle
def test_a_data_error_while_the_cache_loads_exits_1_with_the_file_last(tmp_path):
    proc = subprocess.run([sys.executable, "-c", CACHE_ERROR], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert "terminate called" not in proc.stderr
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == "error: DatasetError: bad.tif: cannot read image"


@pytest.mark.bundle
def test_coseg_training_on_a_broken_geojson_exits_1_naming_it(tmp_path):
    from common.data.puma.reader import NUCLEI
    from common.data.puma.synthetic import write_sample_puma

    data = write_sample_puma(tmp_path / "data", n=10, size=64, seed=0)
    broken = sorted((data / NUCLEI).glob("*.geojson"))
    for path in broken:  # whichever ROIs the split and --limit pick, the first one loaded is broken
        path.write_text("not json")
    configs = config_file_arg(ROOT / "bundles" / "coseg", "train", "tiny", "demo")
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", configs,
           "--dataset_dir", str(data), "--output_dir", str(tmp_path / "run"), "--epochs", "1", "--batch_size", "2",
           "--limit", "4", "--num_workers", "2", "--progress_bar", "false", "--image_size", "64", "--nuclei_classes", "track1"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 1 and "terminate called" not in proc.stderr, proc.stderr[-3000:]
    assert last.startswith(f"error: DatasetError: {data / NUCLEI}/") and last.endswith(
        "_nuclei.geojson: is not JSON (Expecting value: line 1 column 1 (char 0))"), last
