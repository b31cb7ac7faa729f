"""Readers run on real files of each public dataset layout (see tests/data/real/*/README.md for the
source repository, commit, path and licence of each file). Where the data itself is large or its
licence forbids copying, a real annotation/metadata file is used with tiny synthetic images that
carry the real file names."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.data.lvit import lvit_datalist, read_text_table

REAL = Path(__file__).parent / "data" / "real"


# ---------------------------------------------------------------- MoNuSeg as LViT ships it
_LVIT_SPLIT_FOLDER = {"Train": "Train_Folder", "Val": "Val_Folder", "Test": "Test_Folder"}
# the suffix of the images in LViT's repository (commit a9b0b41): Test_Folder/img holds .tif
_LVIT_IMAGE_SUFFIX = {"Train": ".png", "Val": ".png", "Test": ".tif"}


def _monuseg_lvit_tree(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for cap, folder in _LVIT_SPLIT_FOLDER.items():
        split_dir = root / folder
        (split_dir / "img").mkdir(parents=True)
        (split_dir / "labelcol").mkdir()
        text = REAL / "monuseg_lvit" / f"{cap}_text.xlsx"
        shutil.copy(text, split_dir / text.name)
        for name, _ in read_text_table(text):
            stem = Path(name).stem
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(
                split_dir / "img" / f"{stem}{_LVIT_IMAGE_SUFFIX[cap]}")
            Image.fromarray((rng.random((8, 8)) > 0.5).astype(np.uint8) * 255).save(
                split_dir / "labelcol" / f"{stem}.png")
    return root


def test_lvit_monuseg_real_text_rows_columns():
    sizes = {}
    for cap in _LVIT_SPLIT_FOLDER:
        rows = read_text_table(REAL / "monuseg_lvit" / f"{cap}_text.xlsx")
        assert all(name.startswith("TCGA-") and name.endswith(".png") and text for name, text in rows)
        sizes[cap] = len(rows)
    assert sizes == {"Train": 24, "Val": 6, "Test": 14}


@pytest.mark.parametrize("split,cap", [("train", "Train"), ("val", "Val"), ("test", "Test")])
def test_lvit_monuseg_real_text_rows_find_images_by_stem(tmp_path, split, cap):
    """LViT's Test_text.xlsx names *.png while its Test_Folder/img holds *.tif: the reader matches by stem."""
    root = _monuseg_lvit_tree(tmp_path / "MoNuSeg")
    rows = read_text_table(REAL / "monuseg_lvit" / f"{cap}_text.xlsx")
    records = lvit_datalist(root, split)
    assert [r["name"] for r in records] == [Path(n).stem for n, _ in rows]
    assert [r["text"] for r in records] == [t for _, t in rows]
    for r in records:
        assert Path(r["image"]).is_file() and Path(r["image"]).suffix == _LVIT_IMAGE_SUFFIX[cap]
        assert Path(r["image"]).parent.name == "img"
        assert Path(r["label"]).is_file() and Path(r["label"]).parent.name == "labelcol"
        assert Path(r["label"]).stem == r["name"]


def test_lvit_same_stem_twice_is_ambiguous(tmp_path):
    from transforms.base.errors import DatasetError

    root = _monuseg_lvit_tree(tmp_path / "MoNuSeg")
    first = read_text_table(REAL / "monuseg_lvit" / "Test_text.xlsx")[0][0]
    Image.new("RGB", (8, 8)).save(root / "Test_Folder" / "img" / f"{Path(first).stem}.jpg")
    with pytest.raises(DatasetError, match="several images share the stem"):
        lvit_datalist(root, "test")


# ---------------------------------------------------------------- BCSS (PathologyDataScience/BCSS)
def _bcss_real_roi_names(count: int) -> list[str]:
    import csv

    with open(REAL / "bcss" / "meta" / "roiBounds.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["", "xmin", "ymin", "xmax", "ymax", "mask_link"]
    assert len(rows) - 1 == 151
    return [f"{r[0]}_xmin{r[1]}_ymin{r[2]}_MPP-0.2500" for r in rows[1:1 + count]]


def test_bcss_real_code_table():
    from common.data.bcss.reader import find_code_table, read_code_table

    table = read_code_table(find_code_table(REAL / "bcss"))  # CRLF line ends, as published
    assert len(table) == 22 and sorted(table) == list(range(22))
    assert table[0] == "outside_roi" and table[1] == "tumor" and table[2] == "stroma" and table[21] == "other"


def test_bcss_reader_on_real_roi_names_and_codes(tmp_path):
    from common.data.bcss.reader import bcss_rois, find_code_table, read_code_table, read_roi

    root = tmp_path / "BCSS"
    (root / "rgbs_colorNormalized").mkdir(parents=True)
    (root / "masks").mkdir()
    shutil.copytree(REAL / "bcss" / "meta", root / "meta")
    table = read_code_table(find_code_table(root))
    rng = np.random.default_rng(0)
    names = _bcss_real_roi_names(3)
    for name in names:
        Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).save(root / "rgbs_colorNormalized" / f"{name}.png")
        Image.fromarray(rng.choice(sorted(table), (12, 16)).astype(np.uint8)).save(root / "masks" / f"{name}.png")
    rois = bcss_rois(root)
    assert [r.image.stem for r in rois] == sorted(names)
    assert rois[0].slide == "TCGA-A1-A0SK-DX1" and rois[0].mpp == 0.25
    image, mask = read_roi(rois[0], table)
    assert image.shape == (12, 16, 3) and mask.shape == (12, 16)


# ---------------------------------------------------------------- LiTS-named NIfTI volumes (referring_ct)
def _nibabel_real_volume() -> Path:
    """``anatomical.nii``, a real scan that nibabel ships as test data (nibabel: MIT licence); not committed here."""
    import nibabel

    path = Path(nibabel.__file__).parent / "tests" / "data" / "anatomical.nii"
    assert path.is_file(), f"nibabel's test data {path} is missing from this environment"
    return path


def test_referring_ct_reads_a_real_nifti_with_lits_names(tmp_path):
    """A real NIfTI-1 file (its own header, affine, scaling, dtype) named as LiTS names it
    (``volume-N.nii`` / ``segmentation-N.nii``), with a lesion label written on its grid."""
    import nibabel as nib

    from common.data.referring_ct.builder import build_case, find_pairs

    real = nib.load(str(_nibabel_real_volume()))
    shutil.copy(_nibabel_real_volume(), tmp_path / "volume-7.nii")
    labels = np.zeros(real.shape[:3], dtype=np.uint8)
    cx, cy, cz = (s // 2 for s in labels.shape)
    labels[cx - 3:cx + 3, cy - 3:cy + 3, cz] = 2
    nib.save(nib.Nifti1Image(labels, real.affine, real.header), str(tmp_path / "segmentation-7.nii"))
    pairs = find_pairs(tmp_path)
    assert pairs == [("volume-7", str(tmp_path / "volume-7.nii"), str(tmp_path / "segmentation-7.nii"))]
    records = build_case(pairs[0][1], pairs[0][2], tmp_path / "out", "volume-7", lesion_values=[2])
    assert records and {r["slice"] for r in records} == {cz}
    zooms = real.header.get_zooms()[:3]
    assert records[0]["spacing_mm"] == [round(float(s), 4) for s in zooms]
    assert (tmp_path / "out" / records[0]["image"]).is_file()
