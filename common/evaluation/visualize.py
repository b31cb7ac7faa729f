"""Pictures: binary and class-colour overlays (image | ground truth | prediction), with the prompt or a legend."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

GT_COLOR = (0, 220, 0)
PRED_COLOR = (230, 40, 40)


def to_uint8_rgb(image: np.ndarray) -> np.ndarray:
    """(C, H, W) or (H, W) float image of any range -> (H, W, 3) uint8, min-max scaled."""
    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 3:
        img = img[:3].transpose(1, 2, 0) if img.shape[0] in (1, 3, 4) else img[..., :3]
        if img.shape[-1] == 1:
            img = np.repeat(img, 3, axis=-1)
    else:
        img = np.stack([img] * 3, axis=-1)
    lo, hi = float(np.nanmin(img)), float(np.nanmax(img))
    img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    return (img * 255).clip(0, 255).astype(np.uint8)


def blend_mask(rgb: np.ndarray, mask: np.ndarray, color, alpha: float = 0.45) -> np.ndarray:
    """Fill ``mask`` (H, W) over ``rgb`` with ``color`` and draw its outline opaque."""
    out = rgb.astype(np.float32).copy()
    m = np.asarray(mask) > 0.5
    out[m] = (1 - alpha) * out[m] + alpha * np.asarray(color, dtype=np.float32)
    edge = m & ~_erode(m)
    out[edge] = color
    return out.clip(0, 255).astype(np.uint8)


def _erode(m: np.ndarray) -> np.ndarray:
    padded = np.pad(m, 1, mode="edge")
    return (
        padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    )


def overlay_panel(
    image: np.ndarray,
    pred: np.ndarray,
    label: np.ndarray | None = None,
    title: str = "",
    caption: str = "",
    min_side: int = 256,
) -> Image.Image:
    """Three panels (image | ground truth | prediction), or two without ``label``, with text below.

    Panels smaller than ``min_side`` pixels are enlarged so that the picture stays legible.
    """
    rgb = to_uint8_rgb(image)
    pred = np.squeeze(np.asarray(pred))
    label = None if label is None else np.squeeze(np.asarray(label))
    if min(rgb.shape[:2]) < min_side:
        scale = int(np.ceil(min_side / min(rgb.shape[:2])))
        size = (rgb.shape[1] * scale, rgb.shape[0] * scale)
        rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.BILINEAR))
        pred = np.kron(pred, np.ones((scale, scale)))
        label = None if label is None else np.kron(label, np.ones((scale, scale)))
    panels = [rgb]
    if label is not None:
        panels.append(blend_mask(rgb, label, GT_COLOR))
    panels.append(blend_mask(rgb, pred, PRED_COLOR))
    h, w = rgb.shape[:2]
    gap = 4
    font = ImageFont.load_default()
    width = len(panels) * w + (len(panels) - 1) * gap
    chars = max(20, width // 7)
    lines = [l for part in (title, caption) if part for l in textwrap.wrap(part, chars)]
    text_h = 14 * len(lines) + 6
    canvas = Image.new("RGB", (width, h + text_h), (255, 255, 255))
    for i, panel in enumerate(panels):
        canvas.paste(Image.fromarray(panel), (i * (w + gap), 0))
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        draw.text((3, h + 3 + 14 * i), line, fill=(0, 0, 0), font=font)
    return canvas


def save_overlay(path: str | Path, *args, **kwargs) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    overlay_panel(*args, **kwargs).save(path)
    return path


def colorize(class_map: np.ndarray, colors: Mapping[int, Sequence[int]]) -> np.ndarray:
    """(H, W) class indices -> (H, W, 3) uint8 colours."""
    class_map = np.asarray(class_map).astype(np.int64)
    rgb = np.zeros(class_map.shape + (3,), np.uint8)
    for c, color in colors.items():
        rgb[class_map == int(c)] = color
    return rgb


def overlay_classes(rgb: np.ndarray, class_map: np.ndarray, colors: Mapping[int, Sequence[int]],
                    alpha: float = 0.45, background: int = 0) -> np.ndarray:
    """Blend class colours over ``rgb`` (H, W, 3 uint8) where the class is not ``background``; opaque outlines."""
    out = rgb.astype(np.float32).copy()
    class_map = np.asarray(class_map).astype(np.int64)
    padded = np.pad(class_map, 1, mode="edge")
    edge = ((padded[1:-1, 1:-1] != padded[:-2, 1:-1]) | (padded[1:-1, 1:-1] != padded[2:, 1:-1])
            | (padded[1:-1, 1:-1] != padded[1:-1, :-2]) | (padded[1:-1, 1:-1] != padded[1:-1, 2:]))
    for c, color in colors.items():
        if int(c) == background:
            continue
        m = class_map == int(c)
        out[m] = (1 - alpha) * out[m] + alpha * np.asarray(color, np.float32)
        out[m & edge] = color
    return out.clip(0, 255).astype(np.uint8)


def class_overlay_panel(image: np.ndarray, pred: np.ndarray, label: np.ndarray | None,
                        colors: Mapping[int, Sequence[int]], class_names: Sequence[str], title: str = "",
                        min_side: int = 256):
    """PIL image: input | ground truth | prediction (colour overlays), a legend and a title below."""
    rgb = to_uint8_rgb(image)
    pred = np.asarray(pred)
    label = None if label is None else np.asarray(label)
    if min(rgb.shape[:2]) < min_side:
        scale = int(np.ceil(min_side / min(rgb.shape[:2])))
        rgb = np.asarray(Image.fromarray(rgb).resize((rgb.shape[1] * scale, rgb.shape[0] * scale), Image.BILINEAR))
        pred = np.kron(pred, np.ones((scale, scale), np.int64))
        label = None if label is None else np.kron(label, np.ones((scale, scale), np.int64))
    panels = [rgb] + ([overlay_classes(rgb, label, colors)] if label is not None else []) + [
        overlay_classes(rgb, pred, colors)]
    names = ["image"] + (["ground truth"] if label is not None else []) + ["prediction"]
    h, w = rgb.shape[:2]
    gap, font = 4, ImageFont.load_default()
    width = len(panels) * w + (len(panels) - 1) * gap
    canvas = Image.new("RGB", (width, h + 48), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, (panel, name) in enumerate(zip(panels, names)):
        canvas.paste(Image.fromarray(panel), (i * (w + gap), 0))
        draw.text((i * (w + gap) + 3, h + 2), name, fill=(0, 0, 0), font=font)
    x = 3
    for c, color in colors.items():
        if int(c) == 0:
            continue
        draw.rectangle([x, h + 18, x + 9, h + 27], fill=tuple(int(v) for v in color), outline=(0, 0, 0))
        label_text = class_names[int(c)] if int(c) < len(class_names) else str(c)
        draw.text((x + 12, h + 17), label_text, fill=(0, 0, 0), font=font)
        x += 14 + 7 * len(label_text) + 8
    if title:
        draw.text((3, h + 33), title, fill=(0, 0, 0), font=font)
    return canvas



def draw_instance_outlines(rgb: np.ndarray, instances: np.ndarray, color=(0, 0, 0),
                           colors_by_type: Mapping[int, Sequence[int]] | None = None,
                           types: np.ndarray | None = None) -> np.ndarray:
    """Outline every instance of an (H, W) id map on ``rgb`` (H, W, 3 uint8): one pixel wide, in ``color`` or,
    with ``types`` and ``colors_by_type``, in its type's colour."""
    out = np.asarray(rgb).copy()
    ids = np.asarray(instances).astype(np.int64)
    padded = np.pad(ids, 1, mode="edge")
    edge = (ids > 0) & ((padded[1:-1, 1:-1] != padded[:-2, 1:-1]) | (padded[1:-1, 1:-1] != padded[2:, 1:-1])
                        | (padded[1:-1, 1:-1] != padded[1:-1, :-2]) | (padded[1:-1, 1:-1] != padded[1:-1, 2:]))
    out[edge] = color
    if types is not None and colors_by_type:
        types = np.asarray(types).astype(np.int64)
        for t, c in colors_by_type.items():
            out[edge & (types == int(t))] = c
    return out


def confusion_picture(cm: np.ndarray, class_names: Sequence[str], path: str | Path, title: str = "") -> Path:
    """A confusion-matrix PNG (rows: truth, columns: prediction), each row as fractions of its pixels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(cm, dtype=np.float64)
    rows = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.1 * len(class_names) + 2, 1.0 * len(class_names) + 1.5))
    ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(class_names)))
    ax.set_xticklabels(class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)))
    ax.set_yticklabels(class_names)
    ax.set_xlabel("prediction")
    ax.set_ylabel("truth")
    for i in range(len(class_names)):
        for j in range(len(class_names)):
            ax.text(j, i, f"{rows[i, j]:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if rows[i, j] > 0.5 else "black")
    ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
