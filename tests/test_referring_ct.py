"""The referring-CT record, its builder and its loader, on generated volumes; partial-text modes."""

import json
import math

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from common.data.datalist import build_datalist
from common.core.errors import DatasetError
from common.data.referring_ct.builder import build_case, build_referring_dataset, find_pairs
from common.data.referring_ct.expressions import referring_expression
from common.data.referring_ct.geometry import max_diameter_mm
from common.data.referring_ct.synthetic import write_sample_ct
from transforms.referring import LoadReferringSliced, SelectLesiond
from transforms.text import ShuffleTexts, keep_phrases

SPACING = (0.5, 0.5, 2.0)


def two_lesion_volume(tmp_path, spacing=SPACING, shape=(64, 64, 6)):
    """Body ellipse; lesion 1 (big, 11 px wide) on the patient's right (+x in RAS), lesion 2 (small) on the left."""
    x, y = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    hu = np.full(shape, -1000.0, dtype=np.float32)
    body = ((x - 31.5) / 28) ** 2 + ((y - 31.5) / 22) ** 2 <= 1
    hu[body] = 50.0
    labels = np.zeros(shape, dtype=np.int16)
    labels[44:55, 26:37, 2:4] = 1  # 11 x 11 pixels, x > midline: patient's right
    labels[10:15, 30:35, 2:5] = 2  # 5 x 5 pixels, x < midline: patient's left
    hu[labels > 0] = 0.0
    affine = np.diag([*spacing, 1.0])
    ct_path, label_path = tmp_path / "ct" / "case_a.nii.gz", tmp_path / "lab" / "case_a.nii.gz"
    ct_path.parent.mkdir(exist_ok=True)
    label_path.parent.mkdir(exist_ok=True)
    nib.save(nib.Nifti1Image(hu, affine), str(ct_path))
    nib.save(nib.Nifti1Image(labels, affine), str(label_path))
    return ct_path, label_path


def test_builder_records_by_hand(tmp_path):
    ct, lab = two_lesion_volume(tmp_path)
    records = build_case(ct, lab, tmp_path / "out", "case_a")
    by_slice = {}
    for r in records:
        by_slice.setdefault(r["slice"], []).append(r)
    assert sorted(by_slice) == [2, 3, 4]  # slices with lesions only
    assert len(by_slice[2]) == 2 and len(by_slice[4]) == 1
    big = next(r for r in by_slice[2] if r["lesion_id"] == 1)
    small = next(r for r in by_slice[2] if r["lesion_id"] == 2)
    assert big["side"] == "right" and small["side"] == "left"
    assert big["size_rank"] == 1 and small["size_rank"] == 2
    # diagonal of an 11x11-pixel square at 0.5 mm: 10*sqrt(2)*0.5 between centres + one pixel
    assert math.isclose(big["diameter_mm"], 10 * math.sqrt(2) * 0.5 + 0.5, abs_tol=0.01)
    assert big["text"] == f"the largest of 2 lesions in this slice, on the patient's right side, {big['diameter_mm']:.1f} mm in diameter"
    assert small["text"].startswith("the smallest of 2 lesions in this slice, on the patient's left side")
    assert by_slice[4][0]["text"].startswith("the only lesion in this slice, on the patient's left side")


def test_png_slices_are_windowed_and_in_radiological_orientation(tmp_path):
    ct, lab = two_lesion_volume(tmp_path)
    out = tmp_path / "out"
    records = build_case(ct, lab, out, "case_a")
    rec = next(r for r in records if r["slice"] == 2 and r["lesion_id"] == 1)
    image = np.asarray(Image.open(out / rec["image"]))
    ids = np.asarray(Image.open(out / rec["mask"]))
    assert image.dtype == np.uint8 and image.shape == (64, 64)
    assert image[0, 0] == 0  # air below the window
    assert image[32, 32] == round((50 + 160) / 400 * 255)  # soft tissue (50 HU) in the -160..240 window
    rows, cols = np.nonzero(ids == 1)
    assert cols.mean() < 32  # the patient's right lesion is on the image's left
    assert set(np.unique(ids)) == {0, 1, 2}


def test_volume_and_png_records_load_to_the_same_arrays(tmp_path):
    ct, lab = two_lesion_volume(tmp_path)
    png = build_case(ct, lab, tmp_path / "png", "case_a", output_format="png")
    vol = build_case(ct, lab, tmp_path / "vol", "case_a", output_format="volume")
    assert [r["text"] for r in png] == [r["text"] for r in vol]
    load, select = LoadReferringSliced(), SelectLesiond()
    for p, v in zip(png, vol):
        a = select(load({"image": str(tmp_path / "png" / p["image"]), "label": str(tmp_path / "png" / p["mask"]),
                         "slice": p["slice"], "lesion_id": p["lesion_id"]}))
        b = select(load({"image": v["image"], "label": v["mask"], "slice": v["slice"], "lesion_id": v["lesion_id"]}))
        assert a["image"].shape == b["image"].shape == (1, 64, 64)
        assert torch.allclose(a["image"].float(), b["image"].float().round(), atol=1.0)
        assert torch.equal(a["label"], b["label"]) and a["label"].sum() > 0


def test_dataset_split_by_case_and_read_back(tmp_path):
    volumes = write_sample_ct(tmp_path / "vol", n_cases=5, size=64, depth=8, seed=1)
    counts = build_referring_dataset(find_pairs(volumes / "ct", volumes / "labels"), tmp_path / "ds", progress=False)
    assert all(counts[s] > 0 for s in ("train", "val", "test"))
    cases = {}
    for split in ("train", "val", "test"):
        records = build_datalist("refct", tmp_path / "ds", split)
        assert len(records) == counts[split]
        assert all(r["label"] == r["mask"] and r["text"] for r in records)
        for r in records:
            cases.setdefault(r["case"], set()).add(split)
    assert all(len(s) == 1 for s in cases.values())  # no case in two splits
    summary = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    assert summary["counts"] == counts


def test_connected_components_split_a_binary_lesion_label(tmp_path):
    ct, lab = two_lesion_volume(tmp_path)
    binary = (nib.load(str(lab)).get_fdata() > 0).astype(np.int16) * 2  # LiTS-style: one value for all tumour
    nib.save(nib.Nifti1Image(binary, np.diag([*SPACING, 1.0])), str(lab))
    records = build_case(ct, lab, tmp_path / "out", "case_a", lesion_values=[2], connected_components=True)
    assert len([r for r in records if r["slice"] == 2]) == 2


def test_bad_inputs_name_the_file(tmp_path):
    ct, lab = two_lesion_volume(tmp_path)
    data = nib.load(str(ct)).get_fdata().astype(np.float32)
    # label volume of another shape
    other = tmp_path / "other.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((32, 32, 6), np.int16), np.diag([*SPACING, 1.0])), str(other))
    with pytest.raises(DatasetError, match="other.nii.gz.*differs from the CT"):
        build_case(ct, other, tmp_path / "o", "x")
    # non-finite voxels
    nan_ct = tmp_path / "nan.nii.gz"
    bad = data.copy()
    bad[0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(bad, np.diag([*SPACING, 1.0])), str(nan_ct))
    with pytest.raises(DatasetError, match="nan.nii.gz.*non-finite"):
        build_case(nan_ct, lab, tmp_path / "o", "x")
    # no spacing in the header
    flat = tmp_path / "nospacing.nii.gz"
    img = nib.Nifti1Image(data, np.diag([*SPACING, 1.0]))
    img.header["pixdim"][1:4] = 0
    img.set_sform(None, code=0)
    img.set_qform(None, code=0)
    nib.save(img, str(flat))
    with pytest.raises(DatasetError, match="nospacing.nii.gz.*spacing"):
        build_case(flat, lab, tmp_path / "o", "x")
    # a 2-D image is not a volume
    png = tmp_path / "slice.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(png)
    with pytest.raises(DatasetError, match="slice.png"):
        build_case(png, lab, tmp_path / "o", "x")


def test_a_slice_without_the_referenced_lesion_raises(tmp_path):
    ct, lab = two_lesion_volume(tmp_path)
    record = {"image": str(ct), "label": str(lab), "slice": 0, "lesion_id": 1}  # slice 0 has no lesion
    with pytest.raises(DatasetError, match="case_a.nii.gz.*lesion 1 is not in this slice 0"):
        SelectLesiond()(LoadReferringSliced()(record))
    with pytest.raises(DatasetError, match="outside the volume"):
        LoadReferringSliced()({**record, "slice": 99})
    with pytest.raises(DatasetError, match="no 'slice'"):
        LoadReferringSliced()({**record, "slice": None})


def test_reader_rejects_incomplete_records(tmp_path):
    (tmp_path / "train.jsonl").write_text(json.dumps({"image": "a.png", "mask": "b.png", "text": "x"}) + "\n")
    with pytest.raises(DatasetError, match=r"train.jsonl.*lesion_id"):
        build_datalist("refct", tmp_path, "train")
    (tmp_path / "train.jsonl").write_text(json.dumps({"image": "a.png", "mask": "b.png", "text": "x", "lesion_id": 1}) + "\n")
    with pytest.raises(DatasetError, match="a.png does not exist"):
        build_datalist("refct", tmp_path, "train")
    with pytest.raises(DatasetError, match="val.jsonl"):
        build_datalist("refct", tmp_path, "val")


def test_max_diameter_and_expression_by_hand():
    mask = np.zeros((10, 10), bool)
    mask[2, 1:8] = True  # a 7-pixel line
    assert math.isclose(max_diameter_mm(mask, (1.0, 2.0)), 6 * 2.0 + 1.5)
    text = referring_expression({"count": 3, "rank": 1, "side": "left", "diameter_mm": 12.34})
    assert text == "the second largest of 3 lesions in this slice, on the patient's left side, 12.3 mm in diameter"


def test_partial_text_keeps_the_first_phrases():
    text = "the largest of 3 lesions in this slice, on the patient's right side, 27.5 mm in diameter"
    assert keep_phrases(text, 0.25) == "the largest of 3 lesions in this slice"
    assert keep_phrases(text, 0.5) == "the largest of 3 lesions in this slice, on the patient's right side"
    assert keep_phrases(text, 1.0) == text
    four = "a, b, c, d"
    assert keep_phrases(four, 0.25) == "a" and keep_phrases(four, 0.5) == "a, b"
    assert keep_phrases("one phrase only", 0.25) == "one phrase only"
    records = [{"text": four}, {"text": ["x, y", "p, q, r, s"]}]
    assert ShuffleTexts("half")(records) == [{"text": "a, b"}, {"text": ["x", "p, q"]}]
    assert records[0]["text"] == four  # the datalist itself is not changed


def test_volume_records_of_one_case_read_the_volume_once(tmp_path, monkeypatch):
    import transforms.referring as referring

    ct, lab = two_lesion_volume(tmp_path)
    records = build_case(ct, lab, tmp_path / "vol", "case_a", output_format="volume")
    calls = []
    real = referring.load_volume
    monkeypatch.setattr(referring, "load_volume", lambda path, kind: calls.append(path) or real(path, kind))
    load = LoadReferringSliced()
    for r in records:
        load({"image": r["image"], "label": r["mask"], "slice": r["slice"], "lesion_id": r["lesion_id"]})
    assert len(records) == 5 and len(calls) == 2  # the CT and the label volume, once each
