"""MONAI Label: the real server, from its own environment (.venv-label, `make label-env`), serving the five
bundles as model-zoo packages on 127.0.0.1, spoken to over HTTP as a client does.

Tiny models (the session's, trained through `python -m monai.bundle`) are packaged with scripts/package.py and
unzipped into a serving folder, as the README tells a user to do.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from bundle_runner import BUNDLES, bundle, configs, package_bundle
from common.data.puma.reader import IMAGES

ROOT = Path(__file__).resolve().parents[1]
LABEL_VENV = Path(os.environ.get("TGSEG_LABEL_VENV", ROOT / ".venv-label"))
LABEL_PY = LABEL_VENV / "bin" / "python"
PROMPTS = ("one small pink oval polyp, located in bottom right of the image",
           "one large pink oval polyp, located in top left of the image")

pytestmark = pytest.mark.bundle


# ------------------------------------------------------------------------------------------------
# HTTP, with the standard library only (the main environment has no HTTP client package)
# ------------------------------------------------------------------------------------------------
def post_form(url: str, fields: dict | None = None, files: dict | None = None, timeout: float = 120):
    """POST multipart/form-data; returns (status, headers, body bytes)."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in (fields or {}).items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, path in (files or {}).items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{Path(path).name}"\r\n'
                     f"Content-Type: application/octet-stream\r\n\r\n".encode() + Path(path).read_bytes() + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    return _send(request, timeout)


def post_json(url: str, payload: dict, timeout: float = 60):
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    return _send(request, timeout)


def get(url: str, timeout: float = 30):
    return _send(urllib.request.Request(url), timeout)


def _send(request, timeout):
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def infer(server, model: str, image: Path | None = None, output: str = "image", query: str = "", **params):
    status, headers, body = post_form(f"{server['url']}/infer/{model}?output={output}{query}",
                                      fields={"params": json.dumps(params)},
                                      files={"file": image} if image else None)
    assert status == 200, f"{model}: HTTP {status}: {body[:2000]!r}\n{server['log_tail']()}"
    return headers, body


def read_png(body: bytes, tmp: Path) -> np.ndarray:
    path = tmp / f"{uuid.uuid4().hex}.png"
    path.write_bytes(body)
    return np.asarray(Image.open(path))


# ------------------------------------------------------------------------------------------------
# trained, packaged, unzipped bundles; a datastore per kind of data
# ------------------------------------------------------------------------------------------------
def _package(name: str, model: Path, served: Path) -> Path:
    archive = package_bundle(name, model, served.parent / "dist")  # scripts/package.py, in this process
    with zipfile.ZipFile(archive) as z:
        z.extractall(served)
    return served / name


@pytest.fixture(scope="module")
def served(tiny, tmp_path_factory) -> dict:
    """Every bundle packaged and unzipped into a serving folder: the session's tiny models (tests/bundle_runner.py),
    except TMCA's, trained here a few epochs longer on more images (the text must change its mask)."""
    from common.data.synthetic.sample_datasets import write_sample_dataset

    root = tmp_path_factory.mktemp("label")
    data, bundles = {}, {}
    for name in BUNDLES:  # a bundle without test data fails here (KeyError), never silently left out
        if name == "tmca":  # a few epochs on every training image: enough for the text to change the mask
            data[name] = write_sample_dataset("kvasir", root / "data", n=48, size=64, seed=0)
            out = root / "runs" / name
            bundle("training", "--config_file", configs(name), "--dataset_dir", str(data[name]), "--output_dir",
                   str(out), "--epochs", "4", "--batch_size", "8", "--image_size", "64", "--num_workers", "0",
                   "--progress_bar", "false")
            model = out / "models" / "model.pt"
        else:
            shared = tiny(name)
            data[name], model = shared["data"], shared["model"]
        bundles[name] = _package(name, model, root / "served")
    return {"root": root, "data": data, "bundles": bundles}


def _tmca_studies(served, folder: Path) -> dict:
    """Four endoscopy images with final labels and their prompts in texts.json."""
    src = served["data"]["tmca"]
    (folder / "labels" / "final").mkdir(parents=True)
    texts = {}
    for entry in json.loads((src / "anns" / "train.json").read_text())[:4]:
        stem = entry["img_name"].split(".")[0]
        Image.open(src / "images" / entry["img_name"]).save(folder / f"{stem}.png")
        mask = np.asarray(Image.open(src / "masks" / entry["mask_name"]).convert("L")) > 127
        Image.fromarray(mask.astype(np.uint8)).save(folder / "labels" / "final" / f"{stem}.png")
        texts[stem] = entry["prompts"]["p6"]
    (folder / "texts.json").write_text(json.dumps(texts))
    return texts


def _start(folder: Path, app_copy: Path, bundles: list[Path], log: Path):
    """The server as a user starts it, from .venv-label, on a free loopback port; waits for /info/."""
    if not LABEL_PY.is_file():
        pytest.fail(f"MONAI Label's environment {LABEL_VENV} does not exist: run `make label-env` "
                    "(`make test` does it first)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    shutil.copytree(ROOT / "scripts" / "label_app", app_copy)  # MONAI Label writes model/, logs/, bin/ into the app
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1",
               PATH=f"{LABEL_VENV / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("PYTHONPATH", None)
    handle = open(log, "w")
    proc = subprocess.Popen([str(LABEL_PY), "-m", "monailabel.main", "start_server", "--app", str(app_copy),
                             "--studies", str(folder), "--conf", "bundles", ",".join(str(b) for b in bundles),
                             "--host", "127.0.0.1", "--port", str(port)],
                            stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=folder.parent, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    server = {"url": url, "proc": proc, "log": log, "log_tail": lambda: log.read_text()[-6000:]}
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the server exited ({proc.returncode}):\n{server['log_tail']()}")
        try:
            status, _, body = get(f"{url}/info/", timeout=5)
            if status == 200:
                server["info"] = json.loads(body)
                return server, handle
        except OSError:
            pass
        time.sleep(0.5)
    _stop(server, handle)
    pytest.fail(f"no answer from {url}/info/ in 180 s:\n{server['log_tail']()}")


def _stop(server, handle) -> None:
    proc = server["proc"]
    try:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and the training processes it started
        proc.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)
    handle.close()


@pytest.fixture(scope="module")
def server(served):
    """One server for the three bundles; its datastore holds endoscopy images with prompts (TMCA's data)."""
    root = served["root"]
    studies = root / "studies"
    texts = _tmca_studies(served, studies)
    bundles = [served["bundles"][n] for n in BUNDLES]
    srv, handle = _start(studies, root / "app", bundles, root / "server.log")
    srv.update(studies=studies, texts=texts, **served)
    yield srv
    _stop(srv, handle)
    assert srv["proc"].poll() is not None  # nothing left running


# ------------------------------------------------------------------------------------------------
def test_info_lists_every_bundle_with_its_labels_and_prompt_fields(server):
    models = server["info"]["models"]
    assert set(models) == set(BUNDLES)
    assert models["tmca"]["labels"] == {"target": 1} and models["lsms"]["labels"] == {"lesion": 1}
    assert models["monch"]["labels"] == {"neoplastic": 1, "inflammatory": 2, "connective": 3, "dead": 4, "epithelial": 5}
    # fields a client shows for the person to type into (3D Slicer: the model's options table)
    assert models["tmca"]["config"]["text"] == "" and "slice" not in models["tmca"]["config"]
    assert models["lsms"]["config"]["text"] == "" and models["lsms"]["config"]["slice"] == ""
    assert "text" not in models["monch"]["config"]
    assert set(server["info"]["trainers"]) == {"tmca", "lsms", "monch"}  # Co-Seg: two annotations per ROI; LTSE
    assert models["coseg"]["labels"] == {"stroma": 1, "blood_vessel": 2, "tumor": 3, "epidermis": 4, "necrosis": 5}
    assert "text" not in models["coseg"]["config"]
    assert models["ltse"]["config"]["instruction"] == "" and "text" not in models["ltse"]["config"]
    assert models["ltse"]["labels"] == {f"segment_{k}": k for k in range(1, 11)}
    assert "ltse" not in server["info"]["trainers"]  # referring records, not one label per image
    status, _, body = post_json(f"{server['url']}/train/ltse", {"max_epochs": 1})  # refused at once, not queued
    assert status == 404 and json.loads(body)["detail"].startswith("ltse has no /train task")


def test_ltse_answers_an_instruction_with_text_and_the_masks_of_the_bundle_command(server, tmp_path):
    records = server["data"]["ltse"]
    record = json.loads(Path(records).read_text().splitlines()[0])
    image = Path(records).parent / record["image"]
    label = read_png(infer(server, "ltse", image, instruction=record["instruction"])[1], tmp_path)
    _, body = infer(server, "ltse", image, output="json", instruction=record["instruction"])
    answer = json.loads(body)
    assert answer["instruction"] == record["instruction"] and isinstance(answer["answer"], str)
    assert label.shape == np.asarray(Image.open(image)).shape[:2] and label.dtype == np.uint8
    # the same answer and masks as `monai.bundle run inferring` with the packaged bundle
    served_bundle = server["bundles"]["ltse"]
    bundle("inferring", "--config_file", str(served_bundle / "configs" / "inference.json"), "--image", str(image),
           "--instruction", record["instruction"], "--output_dir", str(tmp_path / "cli"), "--device", "cpu",
           cwd=served_bundle)
    assert (tmp_path / "cli" / f"{image.stem}_answer.txt").read_text().strip() == answer["answer"]
    segs = [np.asarray(Image.open(tmp_path / "cli" / f"{image.stem}_seg{k}.png")) > 0
            for k in range(1, len(answer["segments"]) + 1)]
    assert not (tmp_path / "cli" / f"{image.stem}_seg{len(segs) + 1}.png").exists()
    assert [s["label"] for s in answer["segments"]] == list(range(1, len(segs) + 1))
    union = np.any(segs, axis=0) if segs else np.zeros(label.shape, bool)
    assert np.array_equal(label > 0, union)
    for k, seg in enumerate(segs, start=1):  # where masks overlap the higher logit wins: inside its own mask
        assert not (label == k)[~seg].any() and answer["segments"][k - 1]["pixels"] == int((label == k).sum())
    status, _, body = post_form(f"{server['url']}/infer/ltse?output=image", fields={"params": "{}"},
                                files={"file": image})
    assert status == 422 and "ltse needs an instruction" in json.loads(body)["detail"]


def test_tmca_two_prompts_give_two_masks_and_the_same_as_the_bundle_command(server, tmp_path):
    image = server["data"]["tmca"] / "images" / "sample_test_0000.jpg"
    headers, body = infer(server, "tmca", image, text=PROMPTS[0])
    assert headers["content-type"] == "image/png"
    first = read_png(body, tmp_path)
    second = read_png(infer(server, "tmca", image, text=PROMPTS[1])[1], tmp_path)
    assert first.shape == second.shape == (64, 64) and first.dtype == np.uint8
    assert set(np.unique(first)) <= {0, 1} and set(np.unique(second)) <= {0, 1}  # label values, not 0/255
    assert first.any() and (first != second).any()  # the text reaches the network
    # the served model answers exactly as `monai.bundle run inferring` with the packaged bundle
    served_bundle = server["bundles"]["tmca"]
    bundle("inferring", "--config_file", str(served_bundle / "configs" / "inference.json"), "--image", str(image),
           "--text", PROMPTS[0], "--output_dir", str(tmp_path / "cli"), "--device", "cpu",
           cwd=served_bundle)
    cli = np.asarray(Image.open(tmp_path / "cli" / "sample_test_0000_mask.png")) > 0
    assert np.array_equal(cli, first == 1)
    _, answer = infer(server, "tmca", image, output="json", text=PROMPTS[0])
    answer = json.loads(answer)
    assert answer["pixels"] == {"target": int(first.sum())} and answer["text"] == PROMPTS[0]


def test_a_request_without_text_is_refused_and_its_upload_removed(server):
    image = server["data"]["tmca"] / "images" / "sample_test_0001.jpg"
    before = set(Path("/tmp").glob("tmp*.jpg"))
    status, _, body = post_form(f"{server['url']}/infer/tmca?output=image", fields={"params": "{}"},
                                files={"file": image})
    assert status == 422 and "tmca needs a text" in json.loads(body)["detail"]
    assert set(Path("/tmp").glob("tmp*.jpg")) <= before


def test_a_datastore_image_uses_its_stored_text(server, tmp_path):
    image_id, text = next(iter(server["texts"].items()))
    _, body = infer(server, "tmca", output="json", query=f"&image={image_id}")
    assert json.loads(body)["text"] == text


def test_lsms_writes_the_slice_into_a_label_volume_of_the_ct(server, tmp_path):
    data = server["data"]["lsms"]
    record = json.loads((data / "test.jsonl").read_text().splitlines()[0])
    volume = data / "volumes" / "ct" / f"{record['case']}.nii.gz"
    headers, body = infer(server, "lsms", volume, text=record["text"], slice=record["slice"])
    out = tmp_path / "label.nii.gz"
    out.write_bytes(body)
    label, ct = nib.load(out), nib.load(volume)
    assert label.shape == ct.shape and np.allclose(label.affine, ct.affine)
    values = np.asarray(label.dataobj)
    assert set(np.unique(values)) <= {0, 1}
    others = np.delete(values, record["slice"], axis=2)  # the sample volumes are stored RAS, axial last
    assert not others.any()
    # the same as the bundle's own command with a NIfTI mask
    served_bundle = server["bundles"]["lsms"]
    bundle("inferring", "--config_file", str(served_bundle / "configs" / "inference.json"), "--image", str(volume),
           "--slice", str(record["slice"]), "--text", record["text"], "--mask_ext", ".nii.gz", "--output_dir",
           str(tmp_path / "cli"), "--device", "cpu", cwd=served_bundle)
    cli = np.asarray(nib.load(next((tmp_path / "cli").glob("*_mask.nii.gz"))).dataobj)
    assert np.array_equal(cli, values)
    status, _, body = post_form(f"{server['url']}/infer/lsms?output=image",
                                fields={"params": json.dumps({"text": record["text"]})}, files={"file": volume})
    assert status == 422 and "slice" in json.loads(body)["detail"]


def test_monch_returns_the_class_map_and_its_class_names(server, tmp_path):
    patches = np.load(server["data"]["monch"] / "Fold 3" / "images" / "fold3" / "images.npy")
    png = tmp_path / "patch.png"
    Image.fromarray(patches[0].astype(np.uint8)).save(png)
    headers, body = infer(server, "monch", png)
    classes = read_png(body, tmp_path)
    assert classes.shape == patches[0].shape[:2] and classes.dtype == np.uint8 and classes.max() <= 5
    _, answer = infer(server, "monch", png, output="json")
    answer = json.loads(answer)
    assert answer["label_names"] == server["info"]["models"]["monch"]["labels"]
    assert sum(answer["pixels"].values()) == int((classes > 0).sum())


def test_coseg_returns_the_tissue_map_and_the_nuclei_as_the_bundle_command_writes_them(server, tmp_path):
    roi = sorted((server["data"]["coseg"] / IMAGES).glob("*.tif"))[0]
    tissue = read_png(infer(server, "coseg", roi)[1], tmp_path)
    assert tissue.shape == (64, 64) and tissue.dtype == np.uint8 and tissue.max() <= 5
    _, answer = infer(server, "coseg", roi, output="json")
    answer = json.loads(answer)
    assert sum(answer["pixels"].values()) == int((tissue > 0).sum())
    served_bundle = server["bundles"]["coseg"]
    bundle("inferring", "--config_file", str(served_bundle / "configs" / "inference.json"), "--image", str(roi),
           "--output_dir", str(tmp_path / "cli"), "--device", "cpu", cwd=served_bundle)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "cli" / f"{roi.stem}_tissue.png")), tissue)
    geojson = json.loads((tmp_path / "cli" / f"{roi.stem}_nuclei.geojson").read_text())
    assert answer["nuclei"] == geojson["features"]  # the nuclei instances, as QuPath reads them


def test_training_fine_tunes_the_served_model_and_inference_reloads_it(server, tmp_path):
    served_bundle = server["bundles"]["tmca"]
    model = served_bundle / "models" / "model.pt"
    before = torch.load(model, map_location="cpu", weights_only=True)["description"]
    # promote: always -- the new model is served whatever its score (the rule: tests/test_bad_inputs_serving.py)
    status, _, body = post_json(f"{server['url']}/train/tmca", {"max_epochs": 1, "val_split": 0.25, "device": "cpu",
                                                                "batch_size": 2, "promote": "always"})
    assert status == 200, body
    deadline, task = time.time() + 400, {}
    while time.time() < deadline:
        task = json.loads(get(f"{server['url']}/train/")[2])
        if task.get("status") in ("DONE", "ERROR"):
            break
        time.sleep(2)
    assert task.get("status") == "DONE", f"{task}\n{server['log_tail']()}"
    after = torch.load(model, map_location="cpu", weights_only=True)["description"]
    assert after["network"] == before["network"] and after["settings"] == before["settings"]
    assert after["training"]["epoch"] == 1 and after["training"]["metrics"]  # this run's record
    run = served_bundle / "runs" / "monailabel"
    assert (run / "models" / "checkpoint_epoch=1.pt").is_file() and any((run / "logs").iterdir())
    assert not list((served_bundle / "configs").glob("monailabel_train*"))  # the bundle's configs are untouched
    details = "\n".join(task.get("details", []))
    assert '"train_records": 3' in details and '"val_records": 1' in details and '"promoted": true' in details
    backups = list((served_bundle / "models" / "previous").glob("model_*.pt"))  # the model served before
    assert len(backups) == 1 and torch.load(backups[0], map_location="cpu", weights_only=True)["description"] == before
    image = server["data"]["tmca"] / "images" / "sample_test_0000.jpg"
    infer(server, "tmca", image, text=PROMPTS[0])
    assert "changed since it was last loaded" in server["log"].read_text()


LABEL_ENV_TRAINING = r'''
import json, sys
sys.path.insert(0, sys.argv[1])  # the app folder, as MONAI Label puts it on the path
from monailabel.config import settings
from monailabel.datastore.local import LocalDatastore
from lib.serving import read_serving
from lib.train import FinetuneBundleTrainTask

bundle, studies, request = sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
task = FinetuneBundleTrainTask(read_serving(bundle), {}, studies, "texts.json")
print("RESULT " + json.dumps(task(request, LocalDatastore(studies, extensions=settings.MONAI_LABEL_DATASTORE_FILE_EXT))))
'''


def _train_in_label_env(served, name: str, studies: Path, request: dict) -> dict:
    """A bundle's training task on a datastore of its own kind of data, in .venv-label (no HTTP)."""
    if not LABEL_PY.is_file():
        pytest.fail(f"{LABEL_VENV} does not exist: run `make label-env`")
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([str(LABEL_PY), "-c", LABEL_ENV_TRAINING, str(ROOT / "scripts" / "label_app"),
                           str(served["bundles"][name]), str(studies), json.dumps(request)],
                          capture_output=True, text=True, env=env, timeout=600, cwd=studies.parent)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return json.loads(lines[-1][len("RESULT "):])


def test_lsms_trains_on_ct_volumes_with_slice_and_lesion_records(served):
    """The records of a volume (slice, lesion id, text) reach the bundle's referring-CT loader."""
    data, studies = served["data"]["lsms"], served["root"] / "studies_ct"
    (studies / "labels" / "final").mkdir(parents=True)
    texts = {}
    for line in (data / "train.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r["case"] not in texts and len(texts) == 2:
            continue
        texts.setdefault(r["case"], []).append({k: r[k] for k in ("slice", "lesion_id", "text")})
    for case in texts:
        shutil.copy(data / "volumes" / "ct" / f"{case}.nii.gz", studies / f"{case}.nii.gz")
        shutil.copy(data / "volumes" / "labels" / f"{case}.nii.gz", studies / "labels" / "final" / f"{case}.nii.gz")
    (studies / "texts.json").write_text(json.dumps(texts))
    result = _train_in_label_env(served, "lsms", studies, {"max_epochs": 1, "val_split": 0.0, "device": "cpu",
                                                           "batch_size": 4, "promote": "always"})
    assert result["train_records"] == sum(len(v) for v in texts.values()) and result["val_records"] == 0
    assert result["promoted"]  # without validation only when asked: nothing shows the new model is better
    state = torch.load(served["bundles"]["lsms"] / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert state["description"]["training"]["epoch"] == 1


def test_monch_trains_with_two_processes_on_monai_labels_datalist(served):
    """force_multi_gpu without CUDA: two gloo processes through multi_gpu_train, each with its share of the
    datastore's records (not the bundle's own PanNuke datalist)."""
    from common.data.pannuke.reader import pannuke_datalist
    from transforms.pannuke import LoadPanNukePatchd

    studies = served["root"] / "studies_patches"
    (studies / "labels" / "final").mkdir(parents=True)
    for record in pannuke_datalist(served["data"]["monch"], "train", {"train": [1, 2], "val": [], "test": [3]}):
        patch = LoadPanNukePatchd()(record)
        Image.fromarray(patch["image"].numpy().transpose(1, 2, 0).astype(np.uint8)).save(studies / f"{record['name']}.png")
        Image.fromarray(patch["label"].numpy()[0].astype(np.uint8)).save(studies / "labels" / "final" / f"{record['name']}.png")
    result = _train_in_label_env(served, "monch", studies, {"max_epochs": 1, "val_split": 0.25, "device": "cpu",
                                                            "batch_size": 2, "force_multi_gpu": True, "processes": 2})
    assert result["train_records"] == 6 and result["val_records"] == 2
    run = Path(result["run_folder"])
    request = json.loads((run / "monailabel_request.json").read_text())  # what the processes merged last
    assert len(request["train_datalist"]) == 6
    assert all(Path(r["image"]).parent == studies and "label" in r for r in request["train_datalist"])
    state = torch.load(run / "models" / "checkpoint_epoch=1.pt", map_location="cpu", weights_only=True)
    assert state["trainer"]["iteration"] == 1  # 6 records, 3 per process, batches of 2 (drop_last)


LABEL_ENV_ANSWER = r'''
import json, sys
import numpy as np, torch
sys.path.insert(0, sys.argv[1])
from lib.answer import AnswerInferTask
from lib.serving import read_serving


class Answering(torch.nn.Module):
    """Answers every instruction alike: two masks that overlap, one rejected target."""
    def generate(self, image, instruction, max_new_tokens=64, threshold=0.0):
        h, w = image.shape[-2:]
        a, b = torch.full((h, w), -4.0), torch.full((h, w), -4.0)
        a[:, : w // 2 + 2] = 1.0
        b[:, w // 2 - 2:] = 2.0
        return {"answer": "Sure, tumor [SEG], necrosis [REJ], the stroma [SEG].", "tokens": ["[SEG]", "[REJ]", "[SEG]"],
                "masks": [a > threshold, b > threshold], "mask_logits": [a, b]}


task = AnswerInferTask(read_serving(sys.argv[2]), {})
task._model = lambda device: (Answering(), {"max_new_tokens": 8})
label, answer = task({"image": sys.argv[3], "instruction": "Please segment the tumor, necrosis and stroma.", "device": "cpu"})
print("RESULT " + json.dumps({"label": np.asarray(__import__("PIL.Image").Image.open(label)).tolist(), "answer": answer}))
'''


def test_ltse_answer_json_names_each_segment_and_the_rejected_targets(tmp_path):
    """The answer task's writer in MONAI Label's environment, on a network whose answer is known: value k is
    the k-th [SEG] (the higher logit where two overlap), the words before each [SEG] / [REJ] come back."""
    if not LABEL_PY.is_file():
        pytest.fail(f"{LABEL_VENV} does not exist: run `make label-env`")
    image = tmp_path / "patch.png"
    Image.fromarray(np.zeros((4, 10, 3), np.uint8)).save(image)
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([str(LABEL_PY), "-c", LABEL_ENV_ANSWER, str(ROOT / "scripts" / "label_app"),
                           str(ROOT / "bundles" / "ltse"), str(image)], capture_output=True, text=True, env=env,
                          timeout=300, cwd=tmp_path)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    result = json.loads(lines[-1][len("RESULT "):])
    assert result["label"] == [[1, 1, 1, 2, 2, 2, 2, 2, 2, 2]] * 4
    answer = result["answer"]
    assert answer["segments"] == [{"label": 1, "phrase": "tumor", "pixels": 12}, {"label": 2, "phrase": "stroma", "pixels": 28}]
    assert answer["rejected"] == ["necrosis"] and answer["answer"].startswith("Sure, tumor [SEG]")
