"""Build referring-lesion records from any CT + lesion-label volume pair (``scripts/build_referring_ct.py``).

The builder reads each pair of volume files through MONAI (nibabel for NIfTI, ITK for MHA/NRRD; a
DICOM series, a folder of slice files, is not read: convert it to NIfTI first, e.g. with dcm2niix), reorients both
to RAS, finds the axial slices that contain lesions, and writes one record per lesion in each
such slice (:mod:`.records`) with a referring expression made of three comma-separated attribute
phrases (:mod:`.expressions`): its size rank among the slice's lesions, its side (patient
left/right of the body's midline in that slice) and its largest in-plane diameter in mm; ``text_half`` and
``text_quarter`` hold it with whole attributes dropped (LSMS's partial-text rows).
"""

from __future__ import annotations

import json
import logging
import random
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from transforms.base.describe import typed
from transforms.base.errors import ConfigurationError, DatasetError
from common.core.flags import NOTHING_RUN, check_choice, check_range
from common.data.output_folder import staged_folder
from transforms.volumes import ABDOMINAL_WINDOW, load_volume, to_display, window

from .expressions import partial_expressions, referring_expression
from .geometry import slice_lesions

logger = logging.getLogger(__name__)

AFFINE_TOLERANCE_MM = 1e-3
OUTPUT_FORMATS = ("png", "volume")
DATASET_FILE = "dataset.json"  # written last: a folder holding it is a complete earlier output


def match_label_grid(ct, labels, ct_path: Path, label_path: Path, resample: bool = False):
    """The label volume on the CT's voxel grid: the same one (shape and affine within 1 µm), or resampled
    onto it with nearest neighbour when ``resample`` is asked for; anything else raises naming both files."""
    same_shape = tuple(ct.shape) == tuple(labels.shape)
    same_affine = np.allclose(np.asarray(ct.affine), np.asarray(labels.affine), rtol=0, atol=AFFINE_TOLERANCE_MM)
    if same_shape and same_affine:
        return labels
    if resample:
        from monai.transforms import ResampleToMatch

        logger.warning("%s: resampling the label volume onto the CT grid of %s (nearest neighbour)", label_path, ct_path)
        return ResampleToMatch(mode="nearest", padding_mode="zeros")(labels, ct)
    if not same_shape:
        raise DatasetError(label_path, f"label volume shape {tuple(labels.shape[1:])} differs from the CT's "
                                       f"{tuple(ct.shape[1:])} ({ct_path}); resample_labels=True puts it on the CT grid")
    raise DatasetError(label_path, "label volume affine differs from the CT's, so its masks would not lie on the CT's "
                                   f"voxels ({ct_path}):\nlabel\n{np.asarray(labels.affine).round(4)}\nCT\n"
                                   f"{np.asarray(ct.affine).round(4)}\nFix the header, or pass resample_labels=True "
                                   "to resample the labels onto the CT grid (nearest neighbour)")


def check_finite(ct, labels, ct_path: Path, label_path: Path) -> None:
    bad = int((~np.isfinite(np.asarray(ct))).sum())
    if bad:
        raise DatasetError(ct_path, f"{bad} non-finite voxels (NaN/inf) in the CT")
    bad = int((~np.isfinite(np.asarray(labels))).sum())
    if bad:
        raise DatasetError(label_path, f"{bad} non-finite voxels (NaN/inf) in the label volume")


def lesion_value_list(lesion_values: Sequence[int] | str | None, labels: np.ndarray, label_path: Path) -> list[int]:
    """Which label values are lesions: ``"all"`` (every non-zero value is one lesion: a lesion-instance map)
    or a list of values. There is no default: in LiTS and KiTS labels the organ is 1 and would count as a lesion."""
    found = [int(v) for v in np.unique(labels) if v > 0]
    if isinstance(lesion_values, str) and lesion_values.strip().lower() == "all":
        return found
    if lesion_values is None or isinstance(lesion_values, str):
        raise DatasetError(label_path, f"say which label values are lesions (lesion_values / --lesion_values): 'all' "
                                       "when every non-zero value is one lesion (a lesion-instance map), or a list "
                                       f"such as [2] for LiTS/KiTS (1 is the organ); values in {label_path}: {found}")
    return [int(v) for v in lesion_values]


def _instance_labels(labels: np.ndarray, values: Sequence[int], connected_components: bool) -> np.ndarray:
    """Lesion-instance ids from a label volume (values, or 3-D connected components of the lesion values)."""
    from scipy import ndimage

    lesion = np.isin(labels, values)
    if connected_components:
        instances, _ = ndimage.label(lesion, structure=np.ones((3, 3, 3)))
        return instances.astype(np.int32)
    return np.where(lesion, labels, 0).astype(np.int32)


def separate_lesions_in_one_value(labels: np.ndarray, values: Sequence[int]) -> dict[int, int]:
    """``{value: number of separate 3-D components}`` for the lesion values that hold more than one."""
    from scipy import ndimage

    found = {}
    boxes = ndimage.find_objects(labels.astype(np.int64))  # box i: value i + 1 (None where absent)
    for value in values:
        box = boxes[value - 1] if 0 < value <= len(boxes) else None
        if box is None:
            continue
        _, n = ndimage.label(labels[box] == value, structure=np.ones((3, 3, 3)))
        if n > 1:
            found[int(value)] = int(n)
    return found


def warn_separate_lesions(labels: np.ndarray, values: Sequence[int], label_path: Path) -> dict[int, int]:
    """Without connected components, each lesion value is one lesion: say so when a value holds separate
    tumours (LiTS/KiTS give every tumour one value), whose records would merge them (one size, one side)."""
    found = separate_lesions_in_one_value(labels, values)
    if found:
        parts = ", ".join(f"value {v}: {n} separate components" for v, n in found.items())
        logger.warning("%s: %s, each referred to as ONE lesion (one diameter across them, one size rank); if that "
                       "value marks several lesions (LiTS/KiTS tumour labels), pass connected_components=True "
                       "(--connected_components true) to make each component its own lesion", label_path, parts)
    return found


def _save_png(path: Path, array: np.ndarray, dtype) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array).round().astype(dtype)).save(path)


def build_case(ct_path: str | Path, label_path: str | Path, out_dir: str | Path, case: str,
               output_format: str = "png", lesion_values: Sequence[int] | str | None = None,
               connected_components: bool = False, window_hu: Sequence[float] = ABDOMINAL_WINDOW,
               min_lesion_pixels: int = 4, body_threshold_hu: float = -500.0,
               resample_labels: bool = False) -> list[dict]:
    """Records (paths relative to ``out_dir``) for one CT + lesion-label pair; slice files are written for ``png``.

    ``lesion_values``: ``"all"`` or a list (:func:`lesion_value_list`). ``resample_labels``: put a label
    volume whose grid differs from the CT's onto the CT grid (nearest neighbour) instead of refusing it.
    """
    import nibabel as nib

    ct_path, label_path, out_dir = Path(ct_path), Path(label_path), Path(out_dir)
    ct = load_volume(ct_path, "CT")
    stored_labels = load_volume(label_path, "label")
    labels = match_label_grid(ct, stored_labels, ct_path, label_path, resample_labels)
    check_finite(ct, labels, ct_path, label_path)
    spacing = ct.meta["checked_spacing"]
    hu = np.asarray(ct[0], dtype=np.float32)
    raw_labels = np.asarray(labels[0])
    if np.any(raw_labels < 0) or np.any(raw_labels != np.round(raw_labels)):
        raise DatasetError(label_path, "label volume must hold non-negative integer labels")
    values = lesion_value_list(lesion_values, raw_labels, label_path)
    if not connected_components:
        warn_separate_lesions(raw_labels, values, label_path)
    instances = _instance_labels(raw_labels.astype(np.int64), values, connected_components)

    mask_ref = str(label_path.resolve())
    if output_format == "volume":
        # the ids exist only in our instance map when it is not the stored label volume itself
        if connected_components or not isinstance(lesion_values, str) or labels is not stored_labels:
            mask_ref = f"labels/{case}_lesions.nii.gz"  # relative to the records, which may yet move with out_dir
            (out_dir / mask_ref).parent.mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(instances.astype(np.int16), np.asarray(ct.affine)), str(out_dir / mask_ref))
    else:
        check_choice("output_format", output_format, OUTPUT_FORMATS, "an output format")

    records, skipped = [], 0
    for z in range(instances.shape[2]):
        labels_xy = instances[:, :, z].copy()
        for lesion_id in np.unique(labels_xy):
            if lesion_id > 0 and (labels_xy == lesion_id).sum() < min_lesion_pixels:
                labels_xy[labels_xy == lesion_id] = 0  # too small to refer to in this slice
                skipped += 1
        lesions = slice_lesions(labels_xy, hu[:, :, z] > body_threshold_hu, spacing[:2])
        if not lesions:
            continue
        if output_format == "png":
            image_rel = Path("images") / f"{case}_z{z:03d}.png"
            mask_rel = Path("labels") / f"{case}_z{z:03d}.png"
            _save_png(out_dir / image_rel, to_display(window(hu[:, :, z], window_hu)), np.uint8)
            ids = to_display(labels_xy)
            _save_png(out_dir / mask_rel, ids, np.uint8 if ids.max() < 256 else np.uint16)
            image_ref, slice_ref, mask_path = str(image_rel), z, str(mask_rel)
        else:
            image_ref, slice_ref, mask_path = str(ct_path.resolve()), z, mask_ref
        for lesion in lesions:
            records.append({
                "image": image_ref, "slice": slice_ref, "mask": mask_path, "lesion_id": lesion["lesion_id"],
                "text": referring_expression(lesion), **partial_expressions(lesion), "case": case, "side": lesion["side"],
                "size_rank": lesion["rank"] + 1, "lesions_in_slice": lesion["count"],
                "diameter_mm": round(lesion["diameter_mm"], 2), "spacing_mm": [round(s, 4) for s in spacing],
            })
    if skipped:
        logger.warning("%s: %d lesion cross-sections smaller than %d pixels get no record", case, skipped,
                       min_lesion_pixels)
    return records


def split_cases(cases: Sequence[str], val_fraction: float, test_fraction: float, seed: int) -> dict[str, str]:
    """Patient-level split: every slice of a case lands in the same split."""
    order = sorted(cases)
    random.Random(seed).shuffle(order)
    n = len(order)
    n_test = max(1, round(n * test_fraction)) if test_fraction > 0 and n >= 3 else 0
    n_val = max(1, round(n * val_fraction)) if val_fraction > 0 and n - n_test >= 2 else 0
    split = {}
    for i, case in enumerate(order):
        split[case] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return split


def check_build_settings(output_format: str = "png", val_fraction: float = 0.1, test_fraction: float = 0.2,
                         window_hu: Sequence[float] = ABDOMINAL_WINDOW, min_lesion_pixels: int = 4) -> None:
    """Refuse settings the builder cannot use, before it reads a volume (the flags of build_referring_ct.py)."""
    check_choice("output_format", output_format, OUTPUT_FORMATS, "an output format")
    check_range("val_fraction", val_fraction, 0, 1, below_high=True)
    check_range("test_fraction", test_fraction, 0, 1, below_high=True)
    if val_fraction + test_fraction >= 1:
        raise ConfigurationError(f"--val_fraction {val_fraction} and --test_fraction {test_fraction} leave no case to "
                                 f"train on: together they must be below 1. {NOTHING_RUN}")
    if len(window_hu) != 2 or not window_hu[0] < window_hu[1]:
        raise ConfigurationError(f"--window_hu must be (low, high) with low < high, got {tuple(window_hu)}. {NOTHING_RUN}")
    check_range("min_lesion_pixels", min_lesion_pixels, 1)


@typed
def build_referring_dataset(pairs: Sequence[tuple[str, str, str]], out_dir: str | Path, output_format: str = "png",
                            val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0,
                            lesion_values: Sequence[int] | str | None = None, connected_components: bool = False,
                            window_hu: Sequence[float] = ABDOMINAL_WINDOW, min_lesion_pixels: int = 4,
                            resample_labels: bool = False, overwrite: bool = False,
                            progress: bool = True) -> dict[str, int]:
    """Write a new ``out_dir`` with ``train/val/test.jsonl`` (and slice PNGs) from ``(case, ct, label)`` triples
    (case names must be unique: they name the slice files and decide the split).

    The dataset is written beside ``out_dir`` and renamed to it when complete (:mod:`common.data.output_folder`):
    a failure leaves nothing, and an existing ``out_dir`` that holds files is refused unless ``overwrite`` (and
    then only an earlier output: one with ``dataset.json``).
    """
    with staged_folder(out_dir, overwrite, written_by=DATASET_FILE) as folder:
        return write_referring_dataset(pairs, folder, output_format, val_fraction, test_fraction, seed, lesion_values,
                                       connected_components, window_hu, min_lesion_pixels, resample_labels, progress)


def write_referring_dataset(pairs: Sequence[tuple[str, str, str]], out_dir: str | Path, output_format: str = "png",
                            val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0,
                            lesion_values: Sequence[int] | str | None = None, connected_components: bool = False,
                            window_hu: Sequence[float] = ABDOMINAL_WINDOW, min_lesion_pixels: int = 4,
                            resample_labels: bool = False, progress: bool = True) -> dict[str, int]:
    """:func:`build_referring_dataset`'s writing, straight into ``out_dir`` (the sample writer's own folder)."""
    out_dir = Path(out_dir)
    check_build_settings(output_format, val_fraction, test_fraction, window_hu, min_lesion_pixels)
    if not pairs:
        raise ValueError("no CT/label pairs to build from")
    check_unique_cases(pairs)
    out_dir.mkdir(parents=True, exist_ok=True)
    splits = split_cases([c for c, _, _ in pairs], val_fraction, test_fraction, seed)
    by_split: dict[str, list[dict]] = {"train": [], "val": [], "test": []}
    for i, (case, ct_path, label_path) in enumerate(pairs, start=1):
        records = build_case(ct_path, label_path, out_dir, case, output_format, lesion_values,
                             connected_components, window_hu, min_lesion_pixels, resample_labels=resample_labels)
        if not records:
            logger.warning("%s: no lesion in %s", case, label_path)
        by_split[splits[case]].extend(records)
        if progress:
            print(f"[{i}/{len(pairs)}] {case}: {len(records)} lesion records ({splits[case]})", flush=True)
    for split, records in by_split.items():
        with open(out_dir / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for rec in records:
                f.write(json.dumps(rec) + "\n")
    counts = {split: len(records) for split, records in by_split.items()}
    (out_dir / DATASET_FILE).write_text(json.dumps({
        "description": "referring lesion segmentation records built by scripts/build_referring_ct.py",
        "output_format": output_format, "window_hu": list(window_hu), "counts": counts,
        "cases": {case: splits[case] for case, _, _ in pairs},
    }, indent=1))
    return counts


def find_pairs(ct: str | Path | None, labels: str | Path | None = None,
               pairs_csv: str | Path | None = None) -> list[tuple[str, str, str]]:
    """``(case, ct, label)`` triples from a CSV (``ct,label[,case]``), two files, or two folders with equal file names.

    LiTS names pair by themselves: ``volume-N.nii[.gz]`` with ``segmentation-N.nii[.gz]`` from ``labels`` (a
    folder) or, without ``labels``, from the CT's own folder. A folder of DICOM files is refused (not read).

    A case is named by the CSV's ``case`` column, else by the CT's file name, else, where file names
    repeat (KiTS: ``case_00000/imaging.nii.gz``), by its folder. Names that still collide raise.
    """
    import csv

    if pairs_csv:
        pairs_csv = Path(pairs_csv)
        if not pairs_csv.is_file():
            raise DatasetError(pairs_csv, "pairs CSV does not exist")
        with open(pairs_csv, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
        if not rows or "ct" not in rows[0] or "label" not in rows[0]:
            raise DatasetError(pairs_csv, "pairs CSV needs columns ct,label (and optionally case)")
        paths = [tuple(Path(row[k]) if Path(row[k]).is_absolute() else pairs_csv.parent / row[k] for k in ("ct", "label"))
                 for row in rows]
        names = _case_names([ct_p for ct_p, _ in paths])
        out = [((row.get("case") or "").strip() or name, str(ct_p), str(lab_p))
               for row, name, (ct_p, lab_p) in zip(rows, names, paths)]
        check_unique_cases(out, pairs_csv)
        return out
    if ct is None:
        raise ValueError("give ct (a file or folder) and labels, or pairs_csv")
    ct, labels = Path(ct), Path(labels) if labels else None
    if ct.is_file() and LITS_CT.match(ct.name) and (labels is None or labels.is_dir()):
        return [_lits_pair(ct, labels or ct.parent)]
    if ct.is_dir():
        files = sorted(p for p in ct.iterdir() if p.is_file() and not p.name.startswith("."))
        dicom = [p.name for p in files if p.suffix.lower() in (".dcm", ".ima") or p.name.upper() == "DICOMDIR"]
        if dicom:
            raise DatasetError(ct, f"holds DICOM files ({dicom[0]}, ...): DICOM series are not read; convert each "
                                   "series to one NIfTI file first (e.g. dcm2niix) and pass those")
        lits = [p for p in files if LITS_CT.match(p.name)]
        if lits:  # LiTS: volume-N.nii[.gz] with segmentation-N.nii[.gz] in the same or the labels folder
            out = [_lits_pair(p, labels or ct) for p in lits]
            check_unique_cases(out)
            return out
    if labels is None:
        raise ValueError("give labels (a file or folder) or pairs_csv (LiTS names, volume-N.nii and "
                         "segmentation-N.nii, are paired by themselves)")
    if ct.is_file():
        return [(_case_name(ct), str(ct), str(labels))]
    if not ct.is_dir():
        raise DatasetError(ct, "CT path does not exist")
    out = []
    for path in files:
        label = labels / path.name
        if not label.is_file():
            raise DatasetError(label, f"no label volume with the CT's file name ({path})")
        out.append((_case_name(path), str(path), str(label)))
    if not out:
        raise DatasetError(ct, "no CT volumes in the folder")
    check_unique_cases(out)
    return out


LITS_CT = re.compile(r"^volume-(\d+)\.nii(\.gz)?$", re.IGNORECASE)


def _lits_pair(ct: Path, label_dir: Path) -> tuple[str, str, str]:
    """``(case, ct, label)`` for LiTS's ``volume-N.nii[.gz]``: its ``segmentation-N.nii[.gz]`` in ``label_dir``."""
    number = LITS_CT.match(ct.name).group(1)
    for name in (f"segmentation-{number}.nii", f"segmentation-{number}.nii.gz"):
        if (label_dir / name).is_file():
            return _case_name(ct), str(ct), str(label_dir / name)
    raise DatasetError(label_dir / f"segmentation-{number}.nii", f"no LiTS label volume for {ct} (looked for "
                                                                 f"segmentation-{number}.nii[.gz] in {label_dir})")


def check_unique_cases(pairs: Sequence[tuple[str, str, str]], source: str | Path | None = None) -> None:
    """Two pairs with one case name would overwrite each other's slices and share a split: refuse them."""
    seen: dict[str, str] = {}
    for case, ct_path, _ in pairs:
        if case in seen:
            raise DatasetError(source, f"case '{case}' is named twice: {seen[case]} and {ct_path}; give the pairs "
                                       "distinct names (a 'case' column in the pairs CSV)")
        seen[case] = str(ct_path)


def _case_names(paths: Sequence[Path]) -> list[str]:
    """File-name case names, or folder names where file names repeat."""
    names = [_case_name(p) for p in paths]
    if len(set(names)) < len(names):
        names = [p.parent.name or _case_name(p) for p in paths]
    return names


def _case_name(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem
