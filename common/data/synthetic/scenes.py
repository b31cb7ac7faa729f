"""Synthetic scenes for demos and tests, in which the text decides the target.

Every image holds two or three blobs (lesions, polyps) in distinct cells of a
grid; its prompt names one of them by size and position, and its mask holds
that one only. A model that ignores the text can at best guess which blob is
meant, so the text ablation of the evaluation shows whether the text is used.

The writers that lay these scenes out like the real datasets are in
:mod:`common.data.synthetic.sample_datasets`; this module only draws.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SIZES = {"small": 0.07, "medium": 0.11, "large": 0.16}  # blob radius as a fraction of the image side

# 3x3 grid for endoscopy (image coordinates, as Poudel et al.'s prompts say "top left of the image")
GRID_3X3 = {
    (0, 0): "top left", (0, 1): "top", (0, 2): "top right",
    (1, 0): "left", (1, 1): "center", (1, 2): "right",
    (2, 0): "bottom left", (2, 1): "bottom", (2, 2): "bottom right",
}

# lungs: three zones per lung; the patient's left lung is on the image's right (radiological view)
LUNG_ZONES = {
    (0, 0): "upper right lung", (0, 1): "upper left lung",
    (1, 0): "middle right lung", (1, 1): "middle left lung",
    (2, 0): "lower right lung", (2, 1): "lower left lung",
}


@dataclass
class Blob:
    row: int
    col: int
    center: tuple[float, float]  # (y, x) in pixels
    radii: tuple[float, float]  # (ry, rx) in pixels
    angle: float
    size: str
    where: str
    kind: int = 1  # class of the blob (BKAI: 1 neoplastic, 2 non-neoplastic)

    def mask(self, size: int) -> np.ndarray:
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        dy, dx = yy - self.center[0], xx - self.center[1]
        c, s = np.cos(self.angle), np.sin(self.angle)
        u, v = c * dx + s * dy, -s * dx + c * dy
        return (u / self.radii[1]) ** 2 + (v / self.radii[0]) ** 2 <= 1.0


@dataclass
class Scene:
    image: np.ndarray  # (H, W) float in [0, 1] or (H, W, 3)
    blobs: list[Blob]
    target: int  # index into blobs

    @property
    def target_blob(self) -> Blob:
        return self.blobs[self.target]

    def target_mask(self) -> np.ndarray:
        return self.target_blob.mask(self.image.shape[0])


def _smooth_noise(rng: np.random.Generator, size: int, scale: int = 8) -> np.ndarray:
    coarse = rng.random((scale, scale)).astype(np.float32)
    reps = int(np.ceil(size / scale))
    up = np.kron(coarse, np.ones((reps, reps), dtype=np.float32))[:size, :size]
    # cheap blur: average of shifted copies
    out = up.copy()
    for shift in (1, 2, 3):
        out += np.roll(up, shift, 0) + np.roll(up, -shift, 0) + np.roll(up, shift, 1) + np.roll(up, -shift, 1)
    return out / out.max()


def _place_blobs(rng: np.random.Generator, size: int, grid: dict, n_blobs: int) -> list[Blob]:
    rows = max(r for r, _ in grid) + 1
    cols = max(c for _, c in grid) + 1
    cells = list(grid)
    chosen = [cells[i] for i in rng.choice(len(cells), size=n_blobs, replace=False)]
    sizes = list(SIZES)
    size_names = [sizes[i] for i in rng.choice(len(sizes), size=n_blobs, replace=n_blobs > len(sizes))]
    blobs = []
    for (r, c), size_name in zip(chosen, size_names):
        cell_h, cell_w = size / rows, size / cols
        radius = SIZES[size_name] * size
        ry, rx = radius * rng.uniform(0.8, 1.0), radius * rng.uniform(0.8, 1.0)
        # keep the blob inside its cell
        margin_y, margin_x = min(ry, cell_h / 2), min(rx, cell_w / 2)
        cy = (r + 0.5) * cell_h + rng.uniform(-1, 1) * max(cell_h / 2 - margin_y, 0)
        cx = (c + 0.5) * cell_w + rng.uniform(-1, 1) * max(cell_w / 2 - margin_x, 0)
        blobs.append(Blob(r, c, (cy, cx), (ry, rx), float(rng.uniform(0, np.pi)), size_name, grid[(r, c)]))
    return blobs


def chest_scene(rng: np.random.Generator, size: int = 128, n_blobs: int | None = None, ct: bool = False) -> Scene:
    """A grey chest image (X-ray, or CT slice with ``ct=True``) with opacities in the lung zones."""
    n_blobs = n_blobs or int(rng.integers(2, 4))
    img = 0.25 + 0.15 * _smooth_noise(rng, size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if ct:
        body = ((yy - 0.5) / 0.45) ** 2 + ((xx - 0.5) / 0.48) ** 2 <= 1
        img = np.where(body, img + 0.3, 0.02)
    for cx in (0.27, 0.73):  # two dark lung fields
        lung = ((yy - 0.5) / 0.42) ** 2 + ((xx - cx) / 0.2) ** 2 <= 1
        img = np.where(lung, img * 0.45, img)
    blobs = _place_blobs(rng, size, LUNG_ZONES, n_blobs)
    # confine the opacities to the lung fields' columns
    for b in blobs:
        b.center = (b.center[0], float(np.clip(b.center[1], size * 0.12, size * 0.88)))
    for b in blobs:
        m = b.mask(size)
        img = np.where(m, img + rng.uniform(0.3, 0.45), img)
    img = img + rng.normal(0, 0.02, img.shape)
    return Scene(np.clip(img, 0, 1).astype(np.float32), blobs, int(rng.integers(len(blobs))))


def endoscopy_scene(rng: np.random.Generator, size: int = 128, n_blobs: int | None = None,
                    classes: tuple[int, ...] = (1,)) -> Scene:
    """An RGB endoscopy-like frame (pink mucosa, dark vignette) with polyps."""
    n_blobs = n_blobs or int(rng.integers(2, 4))
    noise = _smooth_noise(rng, size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    vignette = np.clip(1.1 - 1.2 * ((yy - 0.5) ** 2 + (xx - 0.5) ** 2), 0.2, 1)
    base = np.stack([0.75 + 0.1 * noise, 0.42 + 0.1 * noise, 0.40 + 0.08 * noise], axis=-1)
    img = base * vignette[..., None]
    blobs = _place_blobs(rng, size, GRID_3X3, n_blobs)
    for b in blobs:
        b.kind = int(rng.choice(classes))
        m = b.mask(size)
        dy, dx = yy * size - b.center[0], xx * size - b.center[1]
        shade = np.clip(1.0 - 0.35 * np.sqrt((dy / b.radii[0]) ** 2 + (dx / b.radii[1]) ** 2), 0.6, 1.0)
        color = np.array([0.95, 0.62, 0.55]) if b.kind == 1 else np.array([0.85, 0.72, 0.62])
        img = np.where(m[..., None], color[None, None, :] * shade[..., None] * vignette[..., None], img)
    img = img + rng.normal(0, 0.015, img.shape)
    return Scene(np.clip(img, 0, 1).astype(np.float32), blobs, int(rng.integers(len(blobs))))
