"""Bad inputs of masks, images and datalist files (issue 22): each read right, or refused with the file named.

To be merged into ``tests/test_bad_inputs.py``.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import Compose
from PIL import Image

from transforms.base.errors import DatasetError
from common.data.datalist import build_datalist
from common.data.lvit import read_text_table
from transforms import BinarizeMaskd, LoadImageSafed
from bundle_runner import bundle_parser

ROOT = Path(__file__).resolve().parents[1]
SIZE = 16


def _tmca_load_transforms() -> Compose:
    """The transforms TMCA's train.yaml loads an image and its mask with, for a ``datalist``."""
    folder = ROOT / "bundles" / "tmca"
    # text_tokens: the processor (which load_transforms reads) would otherwise measure the training texts
    parser = bundle_parser(folder, "train", overrides={"dataset_format": "datalist", "image_size": SIZE, "text_tokens": 24})
    return Compose(parser.get_parsed_content("load_transforms", lazy=False))


def _rgba_mask(path: Path, foreground: tuple[slice, slice], alpha: np.ndarray | int = 255, colour=(255, 0, 0)):
    pixels = np.zeros((SIZE, SIZE, 4), np.uint8)
    pixels[..., 3] = alpha
    pixels[foreground] = (*colour, 255)
    Image.fromarray(pixels, mode="RGBA").save(path)


# ---------------------------------------------------------------------------------------------
# masks: alpha never counts (item 7)
# ---------------------------------------------------------------------------------------------
def test_an_opaque_rgba_mask_gives_its_coloured_region_not_an_all_foreground_target(tmp_path):
    Image.fromarray(np.full((SIZE, SIZE, 3), 90, np.uint8)).save(tmp_path / "a.png")
    region = (slice(3, 9), slice(5, 12))
    _rgba_mask(tmp_path / "a_mask.png", region)
    (tmp_path / "train.csv").write_text("image,label,text\na.png,a_mask.png,one polyp\n")
    record = build_datalist("datalist", tmp_path, "train")[0]
    target = _tmca_load_transforms()(record)["label"]
    expected = torch.zeros(1, SIZE, SIZE)
    expected[(0, *region)] = 1
    assert torch.equal(torch.as_tensor(target), expected)


def test_a_mask_drawn_only_in_its_alpha_channel_is_refused(tmp_path):
    alpha = np.zeros((SIZE, SIZE), np.uint8)
    _rgba_mask(tmp_path / "m.png", (slice(2, 6), slice(2, 6)), alpha=alpha, colour=(0, 0, 0))
    data = LoadImageSafed(keys="label")({"label": str(tmp_path / "m.png")})
    with pytest.raises(DatasetError, match=r"m.png: mask is drawn only in its alpha channel .*alpha never counts"):
        BinarizeMaskd(keys="label", threshold=0)(data)


# ---------------------------------------------------------------------------------------------
# images: non-finite pixels (item 8)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["patch.tif", "patch.nii.gz"])
def test_an_image_with_nan_pixels_is_refused_naming_the_file(tmp_path, name):
    pixels = np.full((SIZE, SIZE), 100.0, np.float32)
    pixels[4, 7] = np.nan
    if name.endswith(".tif"):
        Image.fromarray(pixels, mode="F").save(tmp_path / name)
    else:
        nib.save(nib.Nifti1Image(pixels[..., None], np.eye(4)), tmp_path / name)
    with pytest.raises(DatasetError, match=rf"{name}: image has non-finite pixel values \(NaN or inf\): 1 of 256"):
        LoadImageSafed(keys="image")({"image": str(tmp_path / name)})


# ---------------------------------------------------------------------------------------------
# CSV datalists: the separator (item 11)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("separator", [";", "\t"])
def test_a_semicolon_or_tab_separated_datalist_is_read(tmp_path, separator):
    """It crashed inside the error message (TypeError): the text's comma made an extra, unnamed field."""
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a.png")
    rows = [["image", "label", "text"], ["a.png", "a.png", "one polyp, small"]]
    (tmp_path / "train.csv").write_text("".join(separator.join(row) + "\n" for row in rows))
    records = build_datalist("datalist", tmp_path, "train")
    assert [(Path(r["image"]).name, Path(r["label"]).name, r["text"]) for r in records] == [
        ("a.png", "a.png", "one polyp, small")]


def test_a_csv_row_with_more_fields_than_the_header_is_refused_not_cut(tmp_path):
    """An unquoted comma in a text lost the rest of the text."""
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "train.csv").write_text("image,label,text\na.png,a.png,one polyp, small\n")
    with pytest.raises(DatasetError, match=r"train.csv: row 2 has 4 fields but the header has 3 \(image, label, "
                                           r"text\); put a text that holds the separator in double quotes"):
        build_datalist("datalist", tmp_path, "train")
    (tmp_path / "train.csv").write_text("image,label,text\na.png,a.png,one polyp,,\n")  # empty extras lose nothing
    assert build_datalist("datalist", tmp_path, "train")[0]["text"] == "one polyp"


def test_a_semicolon_separated_qata_text_file_is_read(tmp_path):
    (tmp_path / "train.csv").write_text('Image;Description\nmask_a.png;"Bilateral infection; two areas"\n')
    assert read_text_table(tmp_path / "train.csv") == [("mask_a.png", "Bilateral infection; two areas")]
