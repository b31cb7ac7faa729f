"""Lesion attributes in one RAS axial slice: in-plane diameter in mm, area, side of the body, size rank."""

from __future__ import annotations

from typing import Sequence

import numpy as np

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

