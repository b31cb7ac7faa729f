"""BCSS as published (github.com/PathologyDataScience/BCSS; images and masks from its Google Drive folder).

Layout::

    <root>/rgbs_colorNormalized/TCGA-A1-A0SK-DX1_xmin45749_ymin25055_MPP-0.2500.png   RGB ROI (or images/)
    <root>/masks/TCGA-A1-A0SK-DX1_xmin45749_ymin25055_MPP-0.2500.png                 integer-coded mask
    <root>/meta/gtruth_codes.tsv                                                       label<TAB>GT_code

One ROI per whole-slide image (151 in all), at 0.25 micron per pixel (40x). Mask pixel values are the
``GT_code`` of ``gtruth_codes.tsv`` (0 = outside_roi, 1 = tumor, 2 = stroma, ...; 22 rows). The table is
also accepted as ``<root>/gtruth_codes.tsv`` or ``<root>/gt_codes.tsv``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from transforms.base.errors import DatasetError
from common.data.file_reading import read_image

IMAGE_FOLDERS = ("rgbs_colorNormalized", "images")
MASK_FOLDER = "masks"
CODE_TABLES = ("meta/gtruth_codes.tsv", "gtruth_codes.tsv", "gt_codes.tsv")
# codes that are not tissue a user would ask for: never a referring target
NOT_TISSUE = ("outside_roi", "exclude", "undetermined", "other")
# how a class name reads in an instruction (default: underscores become spaces)
PHRASES = {"lymphocytic_infiltrate": "lymphocytic infiltrate", "necrosis_or_debris": "necrosis or debris",
           "metaplasia_NOS": "metaplasia", "normal_acinus_or_duct": "normal acinus or duct",
           "dcis": "ductal carcinoma in situ", "skin_adnexa": "skin adnexa"}
_NAME = re.compile(r"^(?P<slide>.+?)_xmin(?P<x>\d+)_ymin(?P<y>\d+)_MPP-(?P<mpp>[0-9.]+)$")


def phrase(name: str) -> str:
    """The words an instruction uses for class ``name``."""
    return PHRASES.get(name, name.replace("_", " "))


def find_code_table(root: str | Path) -> Path:
    root = Path(root)
    for name in CODE_TABLES:
        if (root / name).is_file():
            return root / name
    raise DatasetError(root, f"no class table; looked for {', '.join(CODE_TABLES)} (BCSS's meta/gtruth_codes.tsv)")


def read_code_table(path: str | Path) -> dict[int, str]:
    """``gtruth_codes.tsv`` -> {GT_code: label}; a malformed row raises naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(path, "class table not found")
    lines = [l for l in path.read_text().splitlines() if l.strip()]
    if not lines or [c.strip() for c in lines[0].split("\t")] != ["label", "GT_code"]:
        raise DatasetError(path, f"the first line must be 'label<TAB>GT_code' (BCSS's gtruth_codes.tsv), "
                                 f"got {lines[0] if lines else 'an empty file'!r}")
    table: dict[int, str] = {}
    for number, line in enumerate(lines[1:], start=2):
        cells = [c.strip() for c in line.split("\t")]
        if len(cells) != 2 or not cells[1].lstrip("-").isdigit():
            raise DatasetError(path, f"line {number}: expected '<label><TAB><integer code>', got {line!r}")
        code = int(cells[1])
        if code in table or cells[0] in table.values():
            raise DatasetError(path, f"line {number}: {cells[0]!r} / code {code} appears twice")
        table[code] = cells[0]
    return table


@dataclass(frozen=True)
class Roi:
    """One BCSS region of interest: its slide, files and resolution (microns per pixel)."""

    slide: str
    image: Path
    mask: Path
    mpp: float


def bcss_rois(root: str | Path) -> list[Roi]:
    """Every ROI of a BCSS folder with its mask, sorted by name; a ROI without a mask raises naming both."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(root, "BCSS folder not found")
    images = next((root / f for f in IMAGE_FOLDERS if (root / f).is_dir()), None)
    if images is None:
        raise DatasetError(root, f"no image folder; looked for {', '.join(IMAGE_FOLDERS)}")
    if not (root / MASK_FOLDER).is_dir():
        raise DatasetError(root, f"no '{MASK_FOLDER}' folder")
    rois = []
    for image in sorted(images.glob("*.png")):
        mask = root / MASK_FOLDER / image.name
        if not mask.is_file():
            raise DatasetError(image, f"has no mask; expected {mask}")
        match = _NAME.match(image.stem)
        slide = match["slide"] if match else image.stem
        mpp = float(match["mpp"]) if match else 0.25
        rois.append(Roi(slide, image, mask, mpp))
    if not rois:
        raise DatasetError(images, "holds no .png ROI images")
    return rois


def read_roi(roi: Roi, table: dict[int, str]) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 image and (H, W) int mask; sizes must agree and every code must be in the table."""
    image = np.asarray(read_image(roi.image, "RGB"))
    mask = np.asarray(read_image(roi.mask)).astype(np.int64)
    if mask.ndim != 2:
        raise DatasetError(roi.mask, f"a BCSS mask is one channel of class codes, got shape {mask.shape}")
    if mask.shape != image.shape[:2]:
        raise DatasetError(roi.mask, f"mask is {mask.shape[1]}x{mask.shape[0]} but its image {roi.image.name} is "
                                     f"{image.shape[1]}x{image.shape[0]}")
    unknown = sorted(set(np.unique(mask).tolist()) - set(table))
    if unknown:
        raise DatasetError(roi.mask, f"class codes {unknown} are not in the class table (codes {sorted(table)})")
    return image, mask
