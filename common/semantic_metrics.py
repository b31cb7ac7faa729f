"""Multi-class semantic segmentation metrics, tables, charts and colour overlays.

Metrics come from one confusion matrix ``cm[true, pred]`` accumulated over all pixels
(of the whole set, or of one group such as an organ):

* per class c: ``IoU = TP / (TP + FP + FN)``, ``Precision = TP / (TP + FP)``,
  ``F1 = 2 TP / (2 TP + FP + FN)``; NaN where the denominator is 0 (the class never occurs
  and is never predicted);
* overall: ``PA = sum_c TP_c / N`` (pixel accuracy) and
  ``FWIoU = sum_c (n_c / N) IoU_c`` with ``n_c`` the ground-truth pixels of class c.

A group's ``IoU`` and ``F1`` (the paper's Table 2) are the means over the **cell classes**
(1..K-1, background excluded) that are defined for that group (NaN-aware mean).

:class:`SemanticEvaluation` runs a network over a datalist with MONAI's ``SupervisedEvaluator``
and writes ``per_class.{csv,md}``, ``per_group.{csv,md}`` (per organ), ``summary.json``,
``group_f1.png`` (bar chart) and ``overlays/*.png`` (image | ground truth | prediction in
class colours).
"""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------
def confusion_matrix(pred, target, num_classes: int) -> np.ndarray:
    """``cm[t, p]``: pixels of true class t predicted as p. ``pred``/``target`` are class-index arrays."""
    pred = np.asarray(pred.detach().cpu() if isinstance(pred, torch.Tensor) else pred).astype(np.int64).ravel()
    target = np.asarray(target.detach().cpu() if isinstance(target, torch.Tensor) else target).astype(np.int64).ravel()
    if pred.shape != target.shape:
        raise ValueError(f"prediction has {pred.size} pixels, ground truth {target.size}")
    for name, a in (("prediction", pred), ("ground truth", target)):
        if a.size and (a.min() < 0 or a.max() >= num_classes):
            raise ValueError(f"{name} values must be in 0..{num_classes - 1}, got {a.min()}..{a.max()}")
    return np.bincount(target * num_classes + pred, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def class_scores(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class ``iou``, ``precision``, ``recall``, ``f1`` arrays (NaN where undefined) and ``support``."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    return {
        "iou": _ratio(tp, tp + fp + fn),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "support": cm.sum(axis=1),
    }


def pixel_accuracy(cm: np.ndarray) -> float:
    total = float(np.sum(cm))
    return float(np.trace(cm)) / total if total else float("nan")


def frequency_weighted_iou(cm: np.ndarray) -> float:
    cm = np.asarray(cm, dtype=np.float64)
    total = cm.sum()
    if not total:
        return float("nan")
    freq = cm.sum(axis=1) / total
    iou = class_scores(cm)["iou"]
    ok = freq > 0
    return float(np.sum(freq[ok] * iou[ok]))


def _nanmean(values) -> float:
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else float("nan")


def summary_scores(cm: np.ndarray, cell_classes: Sequence[int] | None = None) -> dict[str, float]:
    """``pa``, ``fwiou`` and the NaN-aware means ``iou``, ``precision``, ``f1`` over ``cell_classes`` (default 1..K-1)."""
    scores = class_scores(cm)
    cells = list(range(1, cm.shape[0])) if cell_classes is None else list(cell_classes)
    return {
        "pa": pixel_accuracy(cm),
        "fwiou": frequency_weighted_iou(cm),
        "iou": _nanmean(scores["iou"][cells]),
        "precision": _nanmean(scores["precision"][cells]),
        "f1": _nanmean(scores["f1"][cells]),
    }


class ConfusionAccumulator:
    """Running confusion matrices: overall and per group (e.g. organ)."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.total = np.zeros((num_classes, num_classes), np.int64)
        self.groups: dict[str, np.ndarray] = {}
        self.counts: dict[str, int] = {}

    def update(self, pred, target, group: str | None = None) -> np.ndarray:
        cm = confusion_matrix(pred, target, self.num_classes)
        self.total += cm
        if group is not None:
            group = str(group)
            self.groups.setdefault(group, np.zeros_like(self.total))
            self.groups[group] += cm
            self.counts[group] = self.counts.get(group, 0) + 1
        return cm

    def per_class_rows(self, class_names: Sequence[str], include_background: bool = False) -> list[dict]:
        scores = class_scores(self.total)
        start = 0 if include_background else 1
        return [{"class": class_names[c], "iou": scores["iou"][c], "precision": scores["precision"][c],
                 "f1": scores["f1"][c], "pixels": int(scores["support"][c])} for c in range(start, self.num_classes)]

    def per_group_rows(self) -> list[dict]:
        rows = []
        for group in sorted(self.groups):
            s = summary_scores(self.groups[group])
            rows.append({"group": group, "n": self.counts[group], "iou": s["iou"], "fwiou": s["fwiou"], "f1": s["f1"],
                         "pa": s["pa"]})
        return rows


# ---------------------------------------------------------------------------------------------
# tables and pictures
# ---------------------------------------------------------------------------------------------
def _fmt(v) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4f}"
    return str(v)


def write_table(rows: Sequence[Mapping], columns: Sequence[str], csv_path: Path, md_path: Path,
                headers: Sequence[str] | None = None, title: str = "") -> str:
    """Write rows as CSV and as a Markdown table; returns the Markdown."""
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for r in rows:
            writer.writerow([_fmt(r.get(c, "")) for c in columns])
    headers = list(headers or columns)
    lines = ([f"### {title}", ""] if title else []) + [
        "| " + " | ".join(headers) + " |", "|" + "|".join(["---"] * len(headers)) + "|"]
    lines += ["| " + " | ".join(_fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    md = "\n".join(lines) + "\n"
    md_path.write_text(md)
    return md


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
    from PIL import Image, ImageDraw, ImageFont

    from .visualize import to_uint8_rgb

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


def bar_chart(rows: Sequence[Mapping], key: str, label_key: str, path: Path, title: str, ylabel: str) -> Path:
    """A bar chart PNG of ``row[key]`` per ``row[label_key]`` (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [str(r[label_key]) for r in rows]
    values = [0.0 if (r[key] is None or math.isnan(r[key])) else float(r[key]) for r in rows]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.55 * len(rows) + 1.5), 3.6))
    ax.bar(range(len(rows)), values, color="#4C72B0")
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(labels, rotation=45, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    for i, v in enumerate(values):
        ax.text(i, v + 0.01, f"{v:.2f}", ha="center", va="bottom", fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_reports(acc: ConfusionAccumulator, class_names: Sequence[str], output_dir: str | Path,
                  group_name: str = "organ") -> dict:
    """Per-class and per-group tables (CSV + Markdown), the group F1 bar chart and ``summary.json``."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    overall = summary_scores(acc.total)
    class_rows = acc.per_class_rows(class_names)
    class_rows.append({"class": "mean (cells)", "iou": overall["iou"], "precision": overall["precision"],
                       "f1": overall["f1"], "pixels": int(acc.total[1:].sum())})
    md = write_table(class_rows, ["class", "iou", "precision", "f1", "pixels"], out / "per_class.csv",
                     out / "per_class.md", ["Class", "IoU", "Precision", "F1", "GT pixels"], "Per cell class")
    md += f"\nPixel accuracy {_fmt(overall['pa'])}, frequency-weighted IoU {_fmt(overall['fwiou'])}\n"
    (out / "per_class.md").write_text(md)
    group_rows = acc.per_group_rows()
    stats = list(group_rows)
    if group_rows:
        for label, fn in (("Average", np.nanmean), ("STD", np.nanstd)):
            row = {"group": label, "n": sum(r["n"] for r in group_rows) if label == "Average" else ""}
            for k in ("iou", "fwiou", "f1", "pa"):
                vals = np.array([r[k] for r in group_rows], np.float64)
                row[k] = float(fn(vals)) if np.any(~np.isnan(vals)) else float("nan")
            stats.append(row)
    group_md = write_table(stats, ["group", "n", "iou", "fwiou", "f1", "pa"], out / f"per_{group_name}.csv",
                           out / f"per_{group_name}.md",
                           [group_name.capitalize(), "Images", "IoU", "FWIoU", "F1", "PA"], f"Per {group_name}")
    chart = bar_chart(group_rows, "f1", "group", out / f"{group_name}_f1.png", f"F1 per {group_name} (mean over cell classes)",
                      "F1") if group_rows else None
    summary = {"overall": overall, "per_class": class_rows, f"per_{group_name}": group_rows,
               "confusion_matrix": acc.total.tolist(), "class_names": list(class_names)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float, allow_nan=True))
    return {"overall": overall, "markdown": md + "\n" + group_md, "chart": str(chart) if chart else None}


# ---------------------------------------------------------------------------------------------
# evaluation runner
# ---------------------------------------------------------------------------------------------
class SemanticRecorder:
    """Handler: argmax of each decollated ``pred`` (K, H, W) vs ``label`` (1, H, W) into a
    :class:`ConfusionAccumulator` (overall and by the record's ``group_key``), plus overlay PNGs."""

    def __init__(self, num_classes: int, class_names: Sequence[str], colors: Mapping[int, Sequence[int]],
                 group_key: str = "organ", overlay_dir: str | Path | None = None, num_overlays: int = 0,
                 image_denormalize: Callable | None = None):
        self.acc = ConfusionAccumulator(num_classes)
        self.class_names, self.colors = list(class_names), dict(colors)
        self.group_key = group_key
        self.overlay_dir = Path(overlay_dir) if overlay_dir else None
        self.num_overlays = int(num_overlays)
        self.denormalize = image_denormalize
        self.seen = 0

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine) -> None:
        for record, item in zip(engine.state.batch, engine.state.output):
            pred = torch.as_tensor(item["pred"]).detach()
            pred = pred.argmax(dim=0) if pred.ndim == 3 else pred
            label = torch.as_tensor(item["label"]).detach()
            label = label[0] if label.ndim == 3 else label
            group = record.get(self.group_key)
            self.acc.update(pred, label, None if group is None else str(group))
            self.seen += 1
            if self.overlay_dir is not None and self.seen <= self.num_overlays:
                image = torch.as_tensor(item["image"]).detach().float().cpu()
                if self.denormalize is not None:
                    image = self.denormalize(image)
                name = str(record.get("name", f"sample_{self.seen:04d}"))
                path = self.overlay_dir / f"{self.seen:03d}_{name}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                class_overlay_panel(image.numpy(), pred.cpu().numpy(), label.cpu().numpy(), self.colors,
                                    self.class_names, title=f"{name} ({group})").save(path)


class SemanticEvaluation:
    """Score a multi-class segmentation network on a datalist and write tables, a chart and overlays.

    Args:
        network: outputs (B, K, H, W) logits for (B, C, H, W) images.
        datalist: records (``image``, ``label`` after ``transform``; ``group_key`` e.g. ``organ``; ``name``).
        transform: evaluation preprocessing.
        output_dir: where ``per_class.*``, ``per_<group>.*``, ``<group>_f1.png``, ``summary.json``,
            ``overlays/`` go.
        class_names: K names, class 0 first (background).
        colors: class index -> RGB for overlays.
        device, checkpoint, batch_size, num_workers, amp, progress: as usual.
        num_overlays: overlay PNGs to write.
        image_denormalize: maps a network-input image back to displayable values (optional).
    """

    def __init__(self, network: torch.nn.Module, datalist: Sequence[Mapping], transform: Callable, output_dir: str,
                 class_names: Sequence[str], colors: Mapping[int, Sequence[int]], device="cpu",
                 checkpoint: str | None = None, group_key: str = "organ", batch_size: int = 8, num_workers: int = 0,
                 num_overlays: int = 8, amp: bool = False, progress: bool = True,
                 image_denormalize: Callable | None = None, prepare_batch: Callable | None = None):
        from .config import as_bool, as_optional

        if not datalist:
            raise ValueError("the evaluation datalist is empty")
        self.network, self.datalist, self.transform = network, list(datalist), transform
        self.output_dir = Path(output_dir)
        self.class_names, self.colors = list(class_names), dict(colors)
        self.device = torch.device(device)
        self.checkpoint = as_optional(checkpoint)
        self.group_key = group_key
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.num_overlays = int(num_overlays)
        self.amp, self.progress = as_bool(amp), as_bool(progress)
        self.denormalize = image_denormalize
        self.prepare_batch = prepare_batch

    def run(self) -> dict:
        from monai.data import DataLoader, Dataset
        from monai.engines import SupervisedEvaluator
        from monai.engines.utils import default_prepare_batch

        from .engine import ProgressBar, load_model_weights

        if self.checkpoint is not None:
            load_model_weights(self.network, self.checkpoint, map_location=self.device)
        loader = DataLoader(Dataset(self.datalist, self.transform), batch_size=self.batch_size,
                            num_workers=self.num_workers, shuffle=False)
        recorder = SemanticRecorder(len(self.class_names), self.class_names, self.colors, self.group_key,
                                    self.output_dir / "overlays", self.num_overlays, self.denormalize)
        handlers = [recorder]
        if self.progress:
            handlers.append(ProgressBar(output_transform=None, desc="evaluate"))
        evaluator = SupervisedEvaluator(
            device=self.device, val_data_loader=loader, network=self.network,
            prepare_batch=self.prepare_batch or default_prepare_batch, val_handlers=handlers,
            amp=self.amp and self.device.type == "cuda", amp_kwargs={"dtype": torch.bfloat16} if self.amp else None,
        )
        evaluator.run()
        report = write_reports(recorder.acc, self.class_names, self.output_dir, self.group_key)
        logger.info("pixel accuracy %.4f, FWIoU %.4f, mean cell IoU %.4f, mean cell F1 %.4f (%d images)",
                    report["overall"]["pa"], report["overall"]["fwiou"], report["overall"]["iou"],
                    report["overall"]["f1"], recorder.seen)
        report["images"] = recorder.seen
        return report
