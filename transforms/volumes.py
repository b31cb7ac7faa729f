"""CT volumes as the referring-lesion records see them: RAS orientation, checked spacing, display
orientation of an axial slice, and Hounsfield windowing.

Used by :class:`transforms.referring.LoadReferringSliced` (records that point at volumes) and by
the builder in :mod:`common.data.referring_ct.builder` (which writes PNG slices), so both kinds of
record give the same arrays.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from common.core.errors import DatasetError

ABDOMINAL_WINDOW = (-160.0, 240.0)  # level 40 HU, width 400 HU


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


def to_display(slice_xy: np.ndarray) -> np.ndarray:
    """A RAS axial slice indexed (x, y) -> image rows/cols: anterior up, patient's right on the left."""
    return np.ascontiguousarray(np.asarray(slice_xy).T[::-1, ::-1])


def window(hu: np.ndarray, bounds: Sequence[float] = ABDOMINAL_WINDOW) -> np.ndarray:
    """Hounsfield units -> [0, 255] float through a CT window (low, high)."""
    low, high = float(bounds[0]), float(bounds[1])
    return (np.clip((hu - low) / (high - low), 0.0, 1.0) * 255.0).astype(np.float32)

