"""The catalogue of bad inputs the project knows, each with the error a user sees.

Every case here names the file (or the config key) and says what is wrong. The README's
"Troubleshooting" section lists the same cases for users. Bundle-level cases (a typo on the command
line, resuming, a checkpoint of another bundle) run the real ``python -m monai.bundle`` commands in
``tests/test_bundle_failures.py``.

The catalogue is this file and its sections ``tests/test_bad_inputs_<area>.py`` (one file of ~1,600 lines
would be read by nobody). Issue 22's items, each failing on the code before it:

==========================  =====================================================================
item                        cases
==========================  =====================================================================
1 a checkpoint runs code    ``_checkpoints``: crafted descriptions (expression, ``_target_``, reference, macro,
                            directive, nested, settings) in every bundle and entry point (load, export,
                            package, inferring, evaluating, fine-tuning; the zoo zip in test_zoo.py)
2 disk full                 ``_engine``: a failed save keeps the previous checkpoint and says why
3 two runs, one folder      ``_engine``: the output-folder lock (second run, dead holder, torchrun ranks)
4 demo over a real model    ``_engine``: the demo replaces only what a demo wrote
5 builders' outputs         ``_scripts``: reruns refused, failed runs leave nothing half-written
6 MONAI Label /train        ``_serving``: promotion by score, backup, split by volume, 404 without a train task
7 RGBA masks                ``_data``: alpha never counts
8 NaN weights / pixels      ``_checkpoints`` (weights), ``_data`` (pixels)
9 mistyped script flags     ``_scripts``: every script through one flag check with did-you-mean
10 the last error line      ``_serving``: the summary line names the file, also from a worker's error
11 smaller ones             ``_data`` (CSV separators), ``_scripts`` (0/2 masks, truncated images, ranges,
                            JSON lines), ``_serving`` (chat, Co-Seg rc 134), ``_checkpoints`` (resume with
                            another setting)
==========================  =====================================================================
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from transforms.base.errors import DatasetError, PretrainedWeightsError
from common.data.datalist import build_datalist, check_records, file_datalist
from common.data.pannuke.reader import pannuke_datalist
from common.data.pannuke.synthetic import write_sample_pannuke
from common.data.synthetic.sample_datasets import write_sample_dataset
from transforms import LoadImageSafed

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# security: nothing runs from a data file
# ---------------------------------------------------------------------------------------------
class _Payload:
    """Unpickling this object writes a file: the proof that a pickle was loaded."""

    marker: Path

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code ran"))


def test_a_pickled_types_file_is_refused_without_being_loaded(tmp_path):
    root = write_sample_pannuke(tmp_path, n_per_fold=4, size=16)
    types = root / "Fold 1" / "images" / "fold1" / "types.npy"
    payload = _Payload()
    payload.marker = tmp_path / "pwned.txt"
    np.save(types, np.array([payload] * 4, dtype=object), allow_pickle=True)
    with pytest.raises(DatasetError, match=r"types.npy.*Python objects.*never loads.*astype\(str\)"):
        pannuke_datalist(root, "train")
    assert not payload.marker.exists()  # the pickle was never unpickled


# ---------------------------------------------------------------------------------------------
# PanNuke values: finiteness and range, named by fold and patch (issue 9, item 9)
# ---------------------------------------------------------------------------------------------
def _fold(root: Path, name: str) -> Path:
    return root / "Fold 1" / ("masks" if name == "masks.npy" else "images") / "fold1" / name


@pytest.mark.parametrize("case, message", [
    ("nan_image", r"images.npy: fold 1 patch 2 has non-finite pixel values"),
    ("nan_mask", r"masks.npy: fold 1 patch 3 has non-finite or negative instance ids"),
    ("unit_images", r"images.npy: fold 1 looks scaled to 0-1 \(largest value 1\)"),
    ("too_bright", r"images.npy: fold 1 patch 1 has values outside 0-255"),
])
def test_pannuke_values_are_checked_per_patch(tmp_path, case, message):
    root = write_sample_pannuke(tmp_path, n_per_fold=6, size=16)
    images, masks = np.load(_fold(root, "images.npy")), np.load(_fold(root, "masks.npy"))
    if case == "nan_image":
        images[2, 5, 5, 1] = np.nan
    elif case == "nan_mask":
        masks[3, 0, 0, 0] = np.nan
    elif case == "unit_images":
        images = images / 255.0
    else:
        images[1, 0, 0, 0] = 300.0
    np.save(_fold(root, "images.npy"), images)
    np.save(_fold(root, "masks.npy"), masks)
    with pytest.raises(DatasetError, match=message):
        pannuke_datalist(root, "train")


# ---------------------------------------------------------------------------------------------
# datalists (issue 9, item 12)
# ---------------------------------------------------------------------------------------------
def test_a_datalist_without_labels_names_the_file_and_the_column(tmp_path):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "train.csv").write_text("image,text\na.png,one polyp\n")
    with pytest.raises(DatasetError, match=r"train.csv: record 0 has no 'label' \(columns: image, text\)"):
        build_datalist("datalist", tmp_path, "train")
    assert file_datalist(tmp_path / "train.csv")[0]["text"] == "one polyp"  # inference needs no label


# ---------------------------------------------------------------------------------------------
# images that open but do not decode (issue 9, item 10)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_a_truncated_image_is_named_before_training_starts(tmp_path, suffix):
    """The header check opened the file and passed; decoding then aborted a loader worker (exit 134)."""
    root = write_sample_dataset("kvasir", tmp_path, n=6, size=64, seed=0)
    record = build_datalist("kvasir", root, "train", check_files=False)[0]
    image = Path(record["image"])
    if suffix == ".png":  # the same picture as a PNG, then cut
        png = image.with_suffix(".png")
        Image.open(image).save(png)
        image.unlink()
        image = png
        prompts = root / "anns" / "train.json"
        entries = json.loads(prompts.read_text())
        entries[0]["img_name"] = png.name
        prompts.write_text(json.dumps(entries))
    data = image.read_bytes()
    image.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match=rf"{image.name}: cannot decode image \(.*truncated"):
        build_datalist("kvasir", root, "train", check_files=True)
    with pytest.raises(DatasetError, match=rf"{image.name}: cannot read image file"):
        LoadImageSafed(keys="image")({"image": str(image)})  # and in the loading transform, in case it was skipped


# ---------------------------------------------------------------------------------------------
# sample data never lands in a real dataset (issue 9, item 3)
# ---------------------------------------------------------------------------------------------
def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_sample_writers_refuse_a_real_dataset_and_change_nothing(tmp_path):
    real = tmp_path / "Kvasir-SEG"
    (real / "images").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(real / "images" / "cju0qkwl35piu0993l0dewei2.jpg")
    (real / "kavsir_bboxes.json").write_text('{"cju0qkwl35piu0993l0dewei2": {}}')
    before = _snapshot(real)
    with pytest.raises(DatasetError, match=r"Kvasir-SEG: holds files that the sample-data writer did not make"):
        write_sample_dataset("kvasir", tmp_path, n=6, size=32)
    from common.data.synthetic.sample_datasets import ensure_sample_dataset

    with pytest.raises(DatasetError, match="did not make"):
        ensure_sample_dataset("kvasir", tmp_path, n=6, size=32)
    (tmp_path / "PanNuke").mkdir()
    (tmp_path / "PanNuke" / "README.txt").write_text("real data")
    with pytest.raises(DatasetError, match="PanNuke: holds files"):
        write_sample_pannuke(tmp_path, n_per_fold=4, size=16)
    assert _snapshot(real) == before
    # its own folder it may write again
    ours = write_sample_dataset("kvasir", tmp_path / "own", n=6, size=32)
    assert write_sample_dataset("kvasir", tmp_path / "own", n=6, size=32, seed=1) == ours


def test_two_prompt_locations_are_refused_not_one_silently_chosen(tmp_path):
    root = write_sample_dataset("kvasir", tmp_path, n=6, size=32)
    (root / "prompts").mkdir()
    shutil.copy(root / "anns" / "train.json", root / "prompts" / "train.json")
    with pytest.raises(DatasetError, match=r"prompt JSONs for the train split in two places, .*anns/train.json and "
                                           r".*prompts/train.json"):
        build_datalist("kvasir", root, "train")


# ---------------------------------------------------------------------------------------------
# inference outputs never overwrite each other (issue 9, item 4)
# ---------------------------------------------------------------------------------------------
def test_predictions_of_same_named_images_and_of_one_slice_get_their_own_files(tmp_path):
    from types import SimpleNamespace

    from monai.data import MetaTensor

    from common.engine.inference import PredictionWriter

    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / folder / "img.png")
    items, batch = [], []
    sources = [tmp_path / "a" / "img.png", tmp_path / "b" / "img.png"] + [tmp_path / "a" / "img.png"] * 3
    texts = ["one polyp", "one polyp", "the largest lesion", "the smallest lesion", "the lesion on the left"]
    for i, (source, text) in enumerate(zip(sources, texts)):
        pred = torch.zeros(1, 8, 8)
        pred[0, i, i] = 1
        items.append({"image": MetaTensor(torch.zeros(1, 8, 8), meta={"filename_or_obj": str(source)}), "pred": pred})
        batch.append({"text": text})
    writer = PredictionWriter(str(tmp_path / "out"))
    writer(SimpleNamespace(state=SimpleNamespace(batch=batch, output=items)))
    writer.report(None)
    masks = sorted((tmp_path / "out").glob("*_mask.png"))
    assert [m.name for m in masks] == ["img_2_mask.png", "img_3_mask.png", "img_4_mask.png", "img_5_mask.png",
                                       "img_mask.png"]
    rows = (tmp_path / "out" / "predictions.csv").read_text().splitlines()
    assert len(rows) == 1 + 5 and "the smallest lesion" in rows[4]
    assert len({np.asarray(Image.open(m)).argmax() for m in masks}) == 5  # five different masks kept


# ---------------------------------------------------------------------------------------------
# the standing catalogue: every other kind of bad input the project knows, with its error
# (more, tested where their code lives: test_datasets.py, test_referring_ct.py, test_monch_data_metrics.py,
# test_transforms.py, test_pretrained.py, test_bundle_failures.py and the bundle tests)
# ---------------------------------------------------------------------------------------------
def _kvasir(tmp_path):
    return write_sample_dataset("kvasir", tmp_path / "data", n=6, size=32, seed=0)


def _first(root, split="train"):
    return json.loads((root / "anns" / f"{split}.json").read_text())[0]


def _zero_byte(root):
    (root / "images" / _first(root)["img_name"]).write_bytes(b"")


def _not_an_image(root):
    (root / "images" / _first(root)["img_name"]).write_bytes(b"this is not a JPEG")


def _size_mismatch(root):
    name = _first(root)["mask_name"]
    Image.open(root / "masks" / name).resize((16, 16)).save(root / "masks" / name)


def _missing_image(root):
    (root / "images" / _first(root)["img_name"]).unlink()


def _missing_prompt_level(root):
    entries = json.loads((root / "anns" / "train.json").read_text())
    del entries[0]["prompts"]["p6"]
    (root / "anns" / "train.json").write_text(json.dumps(entries))


def _malformed_json(root):
    (root / "anns" / "train.json").write_text('[{"img_name": ')


def _empty_prompt(root):
    entries = json.loads((root / "anns" / "train.json").read_text())
    entries[0]["prompts"]["p6"] = "  "
    (root / "anns" / "train.json").write_text(json.dumps(entries))


@pytest.mark.parametrize("damage, message", [
    (_zero_byte, r"sample_train_0000.jpg: cannot read image"),
    (_not_an_image, r"sample_train_0000.jpg: cannot read image"),
    (_size_mismatch, r"sample_train_0000.jpg: mask size \(16, 16\) differs from image size \(32, 32\)"),
    (_missing_image, r"train.json: record 0: image .*sample_train_0000.jpg does not exist"),
    (_missing_prompt_level, r"train.json: record 0 \(sample_train_0000.jpg\) has no prompt 'p6'"),
    (_malformed_json, r"train.json: cannot parse prompt JSON"),
    (_empty_prompt, r"train.json: record 0 \(sample_train_0000.jpg\) has an empty prompt 'p6'"),
], ids=lambda v: getattr(v, "__name__", "")[1:] if callable(v) else "")
def test_dataset_files_that_are_wrong_are_named(tmp_path, damage, message):
    root = _kvasir(tmp_path)
    damage(root)
    with pytest.raises(DatasetError, match=message):
        build_datalist("kvasir", root, "train", check_files=True)


@pytest.mark.parametrize("call, error, message", [
    (lambda p: build_datalist("kvasir", p / "nowhere", "train"), DatasetError, r"nowhere: dataset folder does not exist"),
    (lambda p: build_datalist("nifti", p, "train"), ValueError, r"dataset_format must be one of"),
    (lambda p: build_datalist("qata", _qata_without_columns(p), "train"), DatasetError,
     r"train.csv: text file needs columns 'Image' and 'Description'"),
], ids=["missing-dataset-folder", "unknown-format", "text-csv-without-columns"])
def test_dataset_level_mistakes(tmp_path, call, error, message):
    with pytest.raises(error, match=message):
        call(tmp_path)


def _qata_without_columns(tmp_path):
    root = write_sample_dataset("qata", tmp_path / "data", n=6, size=32, seed=0)
    (root / "prompt" / "train.csv").write_text("file,report\nmask_a.png,one lesion\n")
    return root


def test_an_output_folder_that_cannot_be_written_is_refused_before_training(tmp_path):
    from transforms.base.errors import CheckpointError
    from common.engine.checkpoints import ResumeHandler

    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(CheckpointError, match=r"a_file/models: cannot write checkpoints here .*choose another --output_dir"):
        ResumeHandler(False, str(blocker / "models"), {}).attach(None)


def test_cuda_asked_for_on_a_machine_without_it(monkeypatch):
    from transforms.base.errors import ConfigurationError
    from common.engine.network import prepare_network

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigurationError, match=r"--device cuda asks for a CUDA GPU, but this machine has none"):
        prepare_network(torch.nn.Linear(2, 2), "cuda")


def test_an_image_size_the_network_cannot_take(text_encoder):
    from bundles.tmca.scripts.network import TMCA
    from common.networks.image_encoders import TimmFeatureEncoder

    net = TMCA(TimmFeatureEncoder("convnext_atto"), text_encoder).eval()
    ids = torch.ones(1, 8, dtype=torch.long)
    with pytest.raises(ValueError, match=r"TMCA needs image sizes divisible by 32, got \(100, 100\)"):
        net(torch.randn(1, 3, 100, 100), ids, ids)


@pytest.mark.parametrize("damage, message", [
    ("nan", r"bad.nii.gz: 1 non-finite voxels \(NaN/inf\) in the CT"),
    ("no_spacing", r"bad.nii.gz: CT has no valid voxel spacing"),
    ("four_d", r"bad.nii.gz: CT must be a single-channel 3-D volume"),
])
def test_ct_volumes_that_are_wrong_are_named(tmp_path, damage, message):
    from common.data.referring_ct.builder import build_case

    data = np.zeros((16, 16, 4), np.float32)
    labels = np.zeros((16, 16, 4), np.int16)
    labels[4:8, 4:8, 1] = 1
    affine = np.diag([0.5, 0.5, 2.0, 1.0])
    if damage == "nan":
        data[0, 0, 0] = np.nan
    img = nib.Nifti1Image(data[..., None].repeat(2, -1) if damage == "four_d" else data, affine)
    if damage == "no_spacing":
        img.header["pixdim"][1:4] = 0
        img.set_sform(None, code=0)
        img.set_qform(None, code=0)
    nib.save(img, str(tmp_path / "bad.nii.gz"))
    nib.save(nib.Nifti1Image(labels, affine), str(tmp_path / "lab.nii.gz"))
    with pytest.raises(DatasetError, match=message):
        build_case(tmp_path / "bad.nii.gz", tmp_path / "lab.nii.gz", tmp_path / "out", "x", lesion_values="all")


def test_a_pannuke_fold_with_the_wrong_channel_count(tmp_path):
    root = write_sample_pannuke(tmp_path, n_per_fold=4, size=16)
    masks = np.load(_fold(root, "masks.npy"))
    np.save(_fold(root, "masks.npy"), masks[..., :4])
    with pytest.raises(DatasetError, match=r"masks.npy: masks have 4 channels; PanNuke has 6"):
        pannuke_datalist(root, "train")


def test_ddp_ranks_checking_the_same_output_folder_at_once_do_not_trip_each_other(tmp_path):
    """Every rank checks that the checkpoint folder is writable; with one shared probe file name one rank
    removed the other's probe and stopped with 'cannot write checkpoints here' (a flaky two-process run)."""
    import threading

    from common.engine.checkpoints import _check_writable

    errors = []

    def check():
        for _ in range(300):
            try:
                _check_writable(str(tmp_path / "models"))
            except Exception as err:  # noqa: BLE001 - what the rank would have died of
                errors.append(err)

    threads = [threading.Thread(target=check) for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors, errors[0]
    assert not list((tmp_path / "models").iterdir())  # no probe left behind
