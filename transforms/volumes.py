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
import torch

from transforms.base.errors import DatasetError

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
    volume = Orientation(axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))(volume)  # MONAI loads in RAS space
    # the spacing of the reoriented axes: a volume stored (z, y, x) has its 2.5 mm first, not last
    volume.meta["checked_spacing"] = voxel_spacing(volume, path, kind)
    return volume


def voxel_spacing(volume, path: Path, kind: str) -> tuple[float, float, float]:
    """Voxel sizes (mm) along the array axes of ``volume``, from its affine; a missing/zero/non-finite spacing raises."""
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



def from_display(image: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_display`: image rows/cols -> the RAS axial slice indexed (x, y)."""
    return np.ascontiguousarray(np.asarray(image)[::-1, ::-1].T)


def slice_into_volume(mask: np.ndarray, volume_path: str | Path, index: int) -> tuple[np.ndarray, np.ndarray]:
    """A display-oriented (H, W) slice mask put at axial ``index`` of the RAS-oriented volume, the rest empty,
    and returned in the volume file's own array order with its affine: ``(array, affine)``."""
    from monai.transforms import LoadImage, Orientation

    volume = LoadImage(image_only=True, ensure_channel_first=True)(str(volume_path))
    orientation = Orientation(axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))
    ras = orientation(volume)
    placed = ras.clone()
    placed.zero_()
    slice_xy = from_display(mask)
    if slice_xy.shape != tuple(placed.shape[1:3]):
        raise ValueError(f"mask {tuple(np.shape(mask))} does not fit an axial slice of {volume_path} "
                         f"{tuple(placed.shape[1:3])} (display orientation: rows, cols)")
    placed[0, :, :, int(index)] = torch.as_tensor(slice_xy, dtype=placed.dtype)
    back = orientation.inverse(placed)
    return np.asarray(back[0]).astype(np.uint8), np.asarray(volume.affine, dtype=float)
