"""Referring lesion segmentation data in CT: the JSONL record, its reader, and a builder.

RefHL-Seg (the LSMS paper's dataset) is not public, so we define its record and a
tool that makes such a dataset from any CT volume with a lesion-label volume.

Record (one JSON object per line of ``train.jsonl`` / ``val.jsonl`` / ``test.jsonl``;
paths relative to the file)::

    {"image": "images/case_000_z012.png" | "ct/case_000.nii.gz",
     "slice": 12,                      # axial index in the RAS-oriented volume
     "mask": "labels/case_000_z012.png" | "labels/case_000.nii.gz",
     "lesion_id": 2,                   # the value of the referred lesion in the mask
     "text": "the largest of 3 lesions in this slice, on the patient's right side, 27.5 mm in diameter",
     "case": "case_000", ...}          # extra fields are kept

A 2-D ``image`` (PNG written by the builder) is already windowed and shown in
radiological orientation (patient's right on the image's left, anterior up); a
3-D ``image`` is windowed and oriented the same way when it is loaded
(:class:`transforms.referring.LoadReferringSliced`). Either way the mask is the
lesion-id map of that slice and the target is ``mask == lesion_id``.

The builder (``scripts/build_referring_ct.py``) reads each CT + label pair through
MONAI (nibabel for NIfTI, ITK for the rest), reorients both to RAS, finds the
axial slices that contain lesions, and writes one record per lesion in each such
slice with a referring expression made of three comma-separated attribute
phrases: its size rank among the slice's lesions, its side (patient left/right of
the body's midline in that slice) and its largest in-plane diameter in mm.
"""

from __future__ import annotations

import json
import logging
import math
import random
from pathlib import Path
from typing import Sequence

import numpy as np

from .config import as_optional
from .errors import DatasetError

logger = logging.getLogger(__name__)

ABDOMINAL_WINDOW = (-160.0, 240.0)  # level 40 HU, width 400 HU
RANK_WORDS = ("largest", "second largest", "third largest", "fourth largest", "fifth largest")
REQUIRED_KEYS = ("image", "mask", "lesion_id", "text")


# ---------------------------------------------------------------- the reader
def referring_datalist(dataset_dir: str | Path, split: str) -> list[dict]:
    """Records of ``<dataset_dir>/<split>.jsonl`` (or a JSONL file itself) with absolute paths.

    Each record gets ``label`` (the mask path, the key the bundles' transforms use)
    and ``name``; a missing key, a missing file or a bad ``slice``/``lesion_id`` raises.
    """
    path = Path(dataset_dir)
    if path.is_dir():
        path = path / f"{split}.jsonl"
    if not path.is_file():
        raise DatasetError(path, f"no {split} split: expected a JSONL file of referring records")
    records = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as err:
            raise DatasetError(path, f"line {n} is not JSON ({err})") from err
        missing = [k for k in REQUIRED_KEYS if entry.get(k) in (None, "")]
        if missing:
            raise DatasetError(path, f"line {n} has no {missing}")
        rec = dict(entry)
        for key in ("image", "mask"):
            p = Path(rec[key])
            p = p if p.is_absolute() else path.parent / p
            if not p.is_file():
                raise DatasetError(path, f"line {n}: {key} {p} does not exist")
            rec[key] = str(p)
        try:
            rec["lesion_id"] = int(rec["lesion_id"])
            rec["slice"] = None if rec.get("slice") is None else int(rec["slice"])
        except (TypeError, ValueError) as err:
            raise DatasetError(path, f"line {n}: lesion_id and slice must be integers ({err})") from err
        rec["label"] = rec["mask"]
        rec.setdefault("name", f"{Path(rec['image']).name.split('.')[0]}_lesion{rec['lesion_id']}")
        records.append(rec)
    if not records:
        raise DatasetError(path, "no records")
    return records


# ---------------------------------------------------------------- volume loading and checks
def load_volume(path: str | Path, kind: str):
    """A 3-D volume as a RAS-oriented MONAI ``MetaTensor`` (nibabel for NIfTI, ITK otherwise)."""
    from monai.transforms import LoadImage, Orientation

    path = Path(path)
    if not path.is_file():
        raise DatasetError(path, f"{kind} volume does not exist")
    try:
        volume = LoadImage(image_only=True, ensure_channel_first=True)(str(path))
    except Exception as err:
        raise DatasetError(path, f"cannot read {kind} volume ({type(err).__name__}: {err})") from err
    if volume.ndim != 4 or volume.shape[0] != 1:
        raise DatasetError(path, f"{kind} must be a single-channel 3-D volume, got array shape {tuple(volume.shape)}")
    spacing = voxel_spacing(volume, path, kind)
    volume = Orientation(axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))(volume)  # MONAI loads in RAS space
    volume.meta["checked_spacing"] = spacing
    return volume


def voxel_spacing(volume, path: Path, kind: str) -> tuple[float, float, float]:
    """Voxel sizes (mm) from the affine; a missing/zero/non-finite spacing raises."""
    affine = np.asarray(volume.affine, dtype=float)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    if _nifti_pixdim_missing(path) or not np.all(np.isfinite(spacing)) or np.any(spacing <= 1e-6):
        raise DatasetError(path, f"{kind} has no valid voxel spacing (affine gives {spacing.round(4).tolist()}); "
                                 "diameters in mm need it: fix the header (pixdim / spacing)")
    return tuple(float(s) for s in spacing)


def _nifti_pixdim_missing(path: Path) -> bool:
    """True for a NIfTI file whose raw header has zero/non-finite voxel sizes (nibabel would silently use 1 mm)."""
    import gzip
    import io

    import nibabel as nib

    name = path.name.lower()
    if not name.endswith((".nii", ".nii.gz")):
        return False
    opener = gzip.open if name.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read(540)
    header_class = nib.Nifti2Header if int.from_bytes(raw[:4], "little") in (540, 0x1C020000) else nib.Nifti1Header
    header = header_class.from_fileobj(io.BytesIO(raw), check=False)
    pixdim = np.asarray(header["pixdim"], dtype=float)[1:4]
    return bool(np.any(~np.isfinite(pixdim)) or np.any(pixdim <= 0))


def check_pair(ct, labels, ct_path: Path, label_path: Path) -> None:
    if tuple(ct.shape) != tuple(labels.shape):
        raise DatasetError(label_path, f"label volume shape {tuple(labels.shape[1:])} differs from the CT's "
                                       f"{tuple(ct.shape[1:])} ({ct_path})")
    bad = int((~np.isfinite(np.asarray(ct))).sum())
    if bad:
        raise DatasetError(ct_path, f"{bad} non-finite voxels (NaN/inf) in the CT")
    bad = int((~np.isfinite(np.asarray(labels))).sum())
    if bad:
        raise DatasetError(label_path, f"{bad} non-finite voxels (NaN/inf) in the label volume")


def to_display(slice_xy: np.ndarray) -> np.ndarray:
    """A RAS axial slice indexed (x, y) -> image rows/cols: anterior up, patient's right on the left."""
    return np.ascontiguousarray(np.asarray(slice_xy).T[::-1, ::-1])


def window(hu: np.ndarray, bounds: Sequence[float] = ABDOMINAL_WINDOW) -> np.ndarray:
    """Hounsfield units -> [0, 255] float through a CT window (low, high)."""
    low, high = float(bounds[0]), float(bounds[1])
    return (np.clip((hu - low) / (high - low), 0.0, 1.0) * 255.0).astype(np.float32)


# ---------------------------------------------------------------- lesion attributes
def max_diameter_mm(mask_xy: np.ndarray, spacing_xy: Sequence[float]) -> float:
    """Largest distance (mm) between two pixels of a 2-D mask, measured from pixel edge to edge.

    Pixel centres are scaled by the spacing; one pixel's extent is added, so a
    single pixel measures one pixel across.
    """
    points = np.argwhere(mask_xy).astype(float)
    if len(points) == 0:
        return 0.0
    if len(points) > 2000:  # the extreme points lie on the boundary
        from scipy import ndimage

        boundary = mask_xy & ~ndimage.binary_erosion(mask_xy)
        points = np.argwhere(boundary).astype(float)
    scaled = points * np.asarray(spacing_xy, dtype=float)
    best = 0.0
    for start in range(0, len(scaled), 512):
        diff = scaled[start:start + 512, None, :] - scaled[None, :, :]
        best = max(best, float(np.sqrt((diff ** 2).sum(-1)).max()))
    return best + float(np.mean(spacing_xy))


def slice_lesions(labels_xy: np.ndarray, body_xy: np.ndarray, spacing_xy: Sequence[float]) -> list[dict]:
    """Attributes of each lesion in one RAS axial slice: id, area (mm²), side, diameter, size rank."""
    ids = [int(v) for v in np.unique(labels_xy) if v > 0]
    if not ids:
        return []
    xs = np.nonzero(body_xy)[0]
    midline = xs.mean() if len(xs) else (labels_xy.shape[0] - 1) / 2.0
    pixel_area = float(spacing_xy[0] * spacing_xy[1])
    lesions = []
    for lesion_id in ids:
        mask = labels_xy == lesion_id
        centre_x = np.nonzero(mask)[0].mean()
        lesions.append({
            "lesion_id": lesion_id,
            "area_mm2": float(mask.sum()) * pixel_area,
            # RAS: x grows towards the patient's right
            "side": "right" if centre_x > midline else "left",
            "diameter_mm": max_diameter_mm(mask, spacing_xy),
        })
    order = sorted(range(len(lesions)), key=lambda i: (-lesions[i]["area_mm2"], lesions[i]["lesion_id"]))
    for rank, i in enumerate(order):
        lesions[i]["rank"] = rank
        lesions[i]["count"] = len(lesions)
    return lesions


def referring_expression(lesion: dict) -> str:
    """Three attribute phrases: size rank, side, diameter (the partial-text evaluation keeps the first ones)."""
    count, rank = lesion["count"], lesion["rank"]
    if count == 1:
        which = "the only lesion in this slice"
    elif rank == count - 1:
        which = f"the smallest of {count} lesions in this slice"
    else:
        word = RANK_WORDS[rank] if rank < len(RANK_WORDS) else f"number {rank + 1} by size"
        which = f"the {word} of {count} lesions in this slice"
    return f"{which}, on the patient's {lesion['side']} side, {lesion['diameter_mm']:.1f} mm in diameter"


# ---------------------------------------------------------------- the builder
def _instance_labels(labels: np.ndarray, lesion_values: Sequence[int] | None, connected_components: bool) -> np.ndarray:
    """Lesion-instance ids from a label volume (values, or 3-D connected components of the lesion values)."""
    values = [int(v) for v in np.unique(labels) if v > 0] if lesion_values is None else [int(v) for v in lesion_values]
    lesion = np.isin(labels, values)
    if connected_components:
        from scipy import ndimage

        instances, _ = ndimage.label(lesion, structure=np.ones((3, 3, 3)))
        return instances.astype(np.int32)
    return np.where(lesion, labels, 0).astype(np.int32)


def _save_png(path: Path, array: np.ndarray, dtype) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array).round().astype(dtype)).save(path)


def build_case(ct_path: str | Path, label_path: str | Path, out_dir: str | Path, case: str,
               output_format: str = "png", lesion_values: Sequence[int] | None = None,
               connected_components: bool = False, window_hu: Sequence[float] = ABDOMINAL_WINDOW,
               min_lesion_pixels: int = 4, body_threshold_hu: float = -500.0) -> list[dict]:
    """Records (paths relative to ``out_dir``) for one CT + lesion-label pair; slice files are written for ``png``."""
    import nibabel as nib

    ct_path, label_path, out_dir = Path(ct_path), Path(label_path), Path(out_dir)
    ct = load_volume(ct_path, "CT")
    labels = load_volume(label_path, "label")
    check_pair(ct, labels, ct_path, label_path)
    spacing = ct.meta["checked_spacing"]
    hu = np.asarray(ct[0], dtype=np.float32)
    raw_labels = np.asarray(labels[0])
    if np.any(raw_labels < 0) or np.any(raw_labels != np.round(raw_labels)):
        raise DatasetError(label_path, "label volume must hold non-negative integer labels")
    instances = _instance_labels(raw_labels.astype(np.int64), lesion_values, connected_components)

    mask_ref = str(label_path)
    if output_format == "volume":
        if connected_components or lesion_values is not None:  # the ids exist only in our instance map
            inst_path = out_dir / "labels" / f"{case}_lesions.nii.gz"
            inst_path.parent.mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(instances.astype(np.int16), np.asarray(ct.affine)), str(inst_path))
            mask_ref = str(inst_path)
    elif output_format != "png":
        raise ValueError(f"output_format must be 'png' or 'volume', got {output_format!r}")

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
            image_ref, slice_ref, mask_path = str(ct_path.resolve()), z, str(Path(mask_ref).resolve())
        for lesion in lesions:
            records.append({
                "image": image_ref, "slice": slice_ref, "mask": mask_path, "lesion_id": lesion["lesion_id"],
                "text": referring_expression(lesion), "case": case, "side": lesion["side"],
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


def build_referring_dataset(pairs: Sequence[tuple[str, str, str]], out_dir: str | Path, output_format: str = "png",
                            val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0,
                            lesion_values: Sequence[int] | None = None, connected_components: bool = False,
                            window_hu: Sequence[float] = ABDOMINAL_WINDOW, min_lesion_pixels: int = 4,
                            progress: bool = True) -> dict[str, int]:
    """Write ``train/val/test.jsonl`` (and slice PNGs) under ``out_dir`` from ``(case, ct, label)`` triples."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lesion_values = as_optional(lesion_values)
    if not pairs:
        raise ValueError("no CT/label pairs to build from")
    splits = split_cases([c for c, _, _ in pairs], val_fraction, test_fraction, seed)
    by_split: dict[str, list[dict]] = {"train": [], "val": [], "test": []}
    for i, (case, ct_path, label_path) in enumerate(pairs, start=1):
        records = build_case(ct_path, label_path, out_dir, case, output_format, lesion_values,
                             connected_components, window_hu, min_lesion_pixels)
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
    (out_dir / "dataset.json").write_text(json.dumps({
        "description": "referring lesion segmentation records built by scripts/build_referring_ct.py",
        "output_format": output_format, "window_hu": list(window_hu), "counts": counts,
        "cases": {case: splits[case] for case, _, _ in pairs},
    }, indent=1))
    return counts


def find_pairs(ct: str | Path, labels: str | Path | None = None, pairs_csv: str | Path | None = None) -> list[tuple[str, str, str]]:
    """``(case, ct, label)`` triples from a CSV (``ct,label[,case]``), two files, or two folders with equal file names."""
    import csv

    if pairs_csv:
        pairs_csv = Path(pairs_csv)
        if not pairs_csv.is_file():
            raise DatasetError(pairs_csv, "pairs CSV does not exist")
        with open(pairs_csv, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
        if not rows or "ct" not in rows[0] or "label" not in rows[0]:
            raise DatasetError(pairs_csv, "pairs CSV needs columns ct,label (and optionally case)")
        out = []
        for row in rows:
            ct_p, lab_p = (Path(row[k]) if Path(row[k]).is_absolute() else pairs_csv.parent / row[k] for k in ("ct", "label"))
            out.append((row.get("case") or _case_name(ct_p), str(ct_p), str(lab_p)))
        return out
    ct, labels = Path(ct), Path(labels) if labels else None
    if labels is None:
        raise ValueError("give labels (a file or folder) or pairs_csv")
    if ct.is_file():
        return [(_case_name(ct), str(ct), str(labels))]
    if not ct.is_dir():
        raise DatasetError(ct, "CT path does not exist")
    out = []
    for path in sorted(p for p in ct.iterdir() if p.is_file() and not p.name.startswith(".")):
        label = labels / path.name
        if not label.is_file():
            raise DatasetError(label, f"no label volume with the CT's file name ({path})")
        out.append((_case_name(path), str(path), str(label)))
    if not out:
        raise DatasetError(ct, "no CT volumes in the folder")
    return out


def _case_name(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


# ---------------------------------------------------------------- synthetic volumes
def write_sample_ct(out_dir: str | Path, n_cases: int = 8, size: int = 96, depth: int = 16, seed: int = 0,
                    spacing: Sequence[float] = (0.8, 0.8, 2.5)) -> Path:
    """Synthetic abdominal CT volumes (HU) with 2-4 liver-like lesions each, and their lesion-id volumes.

    Writes ``ct/case_XXX.nii.gz`` and ``labels/case_XXX.nii.gz`` (same names, RAS
    affine with the given spacing). Lesions differ in size and side, so the
    referring expressions tell them apart.
    """
    import nibabel as nib

    rng = np.random.default_rng(seed)
    root = Path(out_dir)
    (root / "ct").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    affine = np.diag([*map(float, spacing), 1.0])
    x, y = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    cx = cy = (size - 1) / 2
    for i in range(n_cases):
        body = ((x - cx) / (0.45 * size)) ** 2 + ((y - cy) / (0.36 * size)) ** 2 <= 1
        organ = ((x - cx) / (0.36 * size)) ** 2 + ((y - cy) / (0.26 * size)) ** 2 <= 1
        hu = np.full((size, size, depth), -1000.0, dtype=np.float32)
        hu[body] = -90.0
        hu[organ] = 60.0
        hu += rng.normal(0, 12, hu.shape).astype(np.float32)
        labels = np.zeros((size, size, depth), dtype=np.int16)
        n_lesions = int(rng.integers(2, 5))
        placed = []
        for lesion_id in range(1, n_lesions + 1):
            for _ in range(50):
                radius = float(rng.uniform(0.04, 0.13) * size)
                side = 1 if lesion_id % 2 else -1  # alternate patient right (+x) and left
                px = cx + side * rng.uniform(0.08, 0.26) * size
                py = cy + rng.uniform(-0.14, 0.14) * size
                pz = rng.uniform(0.3, 0.7) * depth
                if all(np.hypot(px - qx, py - qy) > radius + qr + 2 for qx, qy, qr in placed):
                    break
            placed.append((px, py, radius))
            z = np.arange(depth)[None, None, :]
            ball = ((x[..., None] - px) ** 2 + (y[..., None] - py) ** 2) / radius ** 2 \
                + ((z - pz) * spacing[2] / (radius * spacing[0] * 1.5)) ** 2 <= 1
            labels[ball & (labels == 0)] = lesion_id
            hu[ball] = float(rng.uniform(-5, 20)) + rng.normal(0, 8, int(ball.sum()))
        name = f"case_{i:03d}.nii.gz"
        nib.save(nib.Nifti1Image(hu, affine), str(root / "ct" / name))
        nib.save(nib.Nifti1Image(labels, affine), str(root / "labels" / name))
    return root


def ensure_sample_referring_ct(out_dir: str | Path, n_cases: int = 12, size: int = 96, depth: int = 16,
                               seed: int = 0) -> str:
    """``<out_dir>/refct``: synthetic volumes under ``volumes/`` and the built dataset, written on first use."""
    root = Path(out_dir) / "refct"
    if not (root / "test.jsonl").is_file():
        print(f"writing {n_cases} synthetic CT volumes ({size}x{size}x{depth}) and building the referring dataset "
              f"in {root}", flush=True)
        volumes = write_sample_ct(root / "volumes", n_cases, size, depth, seed)
        build_referring_dataset(find_pairs(volumes / "ct", volumes / "labels"), root, progress=False)
    return str(root)
