"""Co-Seg evaluation: the paper's tissue and nuclei tables (Tables 1-3) from the evaluator's outputs.

Per image (after :class:`scripts.outputs.Instancesd`, at the ROI's own size):

* tissue: Dice, IoU and Hausdorff distance (pixels) per class other than background (MONAI's
  ``DiceMetric``, ``MeanIoU``, ``HausdorffDistanceMetric`` on one-hot maps; a class absent from both
  truth and prediction is skipped), the pixel confusion matrix, and panoptic counts per class with the
  8-connected regions of each class as its instances;
* nuclei: detection counts (IoU > 0.5, :mod:`common.evaluation.instances`), AJI, and per nucleus type
  (with a type head) panoptic counts of the instances of that type.

Dataset figures: class scores are means over the images that have the class; F1, precision, recall,
PQ, DQ, SQ come from counts summed over images; AJI is the mean over images. Written to ``output_dir``:
``tissue.csv/.md``, ``nuclei.csv/.md``, ``per_image.csv``, ``summary.json``, ``tissue_confusion.png``
and ``overlays/<name>.png`` (image | truth | prediction: tissue colours and nuclei outlines).
"""

from __future__ import annotations

import csv
import json
import math
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from common.evaluation.instances import PanopticCounts, aggregated_jaccard_index, class_instances, instance_counts
from common.evaluation.reports import write_table
from common.evaluation.semantic import confusion_matrix
from common.evaluation.visualize import confusion_picture, draw_instance_outlines, overlay_classes, to_uint8_rgb


def _one_hot(class_map: torch.Tensor, num_classes: int) -> torch.Tensor:
    return F.one_hot(torch.as_tensor(class_map).long().reshape(class_map.shape[-2:]), num_classes).permute(2, 0, 1)[None].float()


def tissue_scores(pred: np.ndarray, truth: np.ndarray, num_classes: int) -> dict[str, np.ndarray]:
    """Per class 1..K-1 of one image: dice, iou, hd (NaN where the class is in neither map)."""
    from monai.metrics import compute_dice, compute_hausdorff_distance, compute_iou

    p, t = _one_hot(torch.as_tensor(pred), num_classes), _one_hot(torch.as_tensor(truth), num_classes)
    present = ((p + t).flatten(2).sum(-1) > 0)[0, 1:].numpy()
    dice = compute_dice(p, t, include_background=False, ignore_empty=False)[0].numpy()
    iou = compute_iou(p, t, include_background=False, ignore_empty=False)[0].numpy()
    both = ((p.flatten(2).sum(-1) > 0) & (t.flatten(2).sum(-1) > 0))[0, 1:].numpy()
    hd = np.full(num_classes - 1, np.nan)
    if both.any():  # only where both maps have the class: the distance is undefined otherwise
        channels = [c + 1 for c in np.flatnonzero(both)]
        with warnings.catch_warnings():  # MONAI's own call of a deprecated argument, once per image
            warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*")
            hd[both] = compute_hausdorff_distance(p[:, channels], t[:, channels], include_background=True)[0].numpy()
    dice[~present], iou[~present] = np.nan, np.nan
    return {"dice": dice, "iou": iou, "hd": hd}


class CoSegRecorder:
    """Handler: accumulates the evaluator's per-image outputs (module doc); :meth:`write` makes the files."""

    def __init__(self, tissue_classes: Sequence[str], nuclei_types: Sequence[str] = (), overlay_dir: str | None = None,
                 num_overlays: int = 8, tissue_colors: dict | None = None):
        self.tissue_classes, self.nuclei_types = list(tissue_classes), list(nuclei_types)
        self.k = len(self.tissue_classes)
        self.overlay_dir = Path(overlay_dir) if overlay_dir else None
        self.num_overlays = int(num_overlays)
        self.tissue_colors = dict(tissue_colors or {})
        self.reset()

    def reset(self) -> None:
        self.rows: list[dict] = []
        self.tissue = {m: [] for m in ("dice", "iou", "hd")}
        self.tissue_pq = [PanopticCounts() for _ in range(self.k)]
        self.cm = np.zeros((self.k, self.k), dtype=np.int64)
        self.nuclei = PanopticCounts()
        self.type_pq = [PanopticCounts() for _ in self.nuclei_types]
        self.aji: list[float] = []

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_STARTED, lambda e: self.reset())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine) -> None:
        for record, item in zip(engine.state.batch, engine.state.output):
            self.add(record, item)

    def add(self, record: dict, item: dict) -> None:
        name = str(record.get("name") or Path(_filename(record.get("image"))).stem or f"image_{len(self.rows)}")
        truth_tissue = np.asarray(record["tissue_full"]).reshape(np.asarray(record["tissue_full"]).shape[-2:])
        truth_nuclei = np.asarray(record["nuclei_full"]).reshape(truth_tissue.shape)
        pred_tissue = np.asarray(item["tissue_map"]).reshape(truth_tissue.shape)
        pred_nuclei = np.asarray(item["nuclei_map"]).reshape(truth_tissue.shape)
        scores = tissue_scores(pred_tissue, truth_tissue, self.k)
        for key in self.tissue:
            self.tissue[key].append(scores[key])
        self.cm += confusion_matrix(torch.as_tensor(pred_tissue), torch.as_tensor(truth_tissue), self.k)
        pred_regions = class_instances(pred_tissue, range(1, self.k))
        true_regions = class_instances(truth_tissue, range(1, self.k))
        for c in range(1, self.k):
            self.tissue_pq[c].add(instance_counts(true_regions[c], pred_regions[c]))
        counts = instance_counts(truth_nuclei, pred_nuclei)
        self.nuclei.add(counts)
        image_nuclei = PanopticCounts()
        image_nuclei.add(counts)
        aji = aggregated_jaccard_index(truth_nuclei, pred_nuclei)
        self.aji.append(aji)
        if self.nuclei_types:
            truth_types = np.asarray(record["nuclei_type_full"]).reshape(truth_tissue.shape)
            pred_types = np.asarray(item["nuclei_types"]).reshape(truth_tissue.shape)
            for t in range(1, len(self.nuclei_types) + 1):
                self.type_pq[t - 1].add(instance_counts(np.where(truth_types == t, truth_nuclei, 0),
                                                        np.where(pred_types == t, pred_nuclei, 0)))
        n = image_nuclei.scores()
        self.rows.append({"name": name, "tissue_dice": _nanmean(scores["dice"]), "tissue_iou": _nanmean(scores["iou"]),
                          "tissue_hd": _nanmean(scores["hd"]), "nuclei_true": int(n["tp"] + n["fn"]),
                          "nuclei_pred": int(n["tp"] + n["fp"]), "nuclei_f1": n["f1"], "nuclei_aji": aji,
                          "nuclei_pq": n["pq"]})
        if self.overlay_dir is not None and len(self.rows) <= self.num_overlays:
            self.save_overlay(name, record, truth_tissue, truth_nuclei, pred_tissue, pred_nuclei)

    def save_overlay(self, name, record, truth_tissue, truth_nuclei, pred_tissue, pred_nuclei) -> None:
        from PIL import Image, ImageDraw

        from transforms.geojson import read_rgb

        source = _filename(record.get("image"))
        rgb = read_rgb(source) if source else to_uint8_rgb(np.asarray(record["image"]))
        if rgb.shape[:2] != truth_tissue.shape:
            rgb = np.asarray(Image.fromarray(rgb).resize(truth_tissue.shape[::-1], Image.BILINEAR))
        panels = [rgb,
                  draw_instance_outlines(overlay_classes(rgb, truth_tissue, self.tissue_colors, alpha=0.3), truth_nuclei),
                  draw_instance_outlines(overlay_classes(rgb, pred_tissue, self.tissue_colors, alpha=0.3), pred_nuclei)]
        scale = max(1, int(math.ceil(256 / min(rgb.shape[:2]))))
        h, w = rgb.shape[0] * scale, rgb.shape[1] * scale
        canvas = Image.new("RGB", (3 * w + 8, h + 18), (255, 255, 255))
        for i, panel in enumerate(panels):
            canvas.paste(Image.fromarray(panel).resize((w, h), Image.NEAREST), (i * (w + 4), 0))
        ImageDraw.Draw(canvas).text((3, h + 3), f"{name}: image | truth | prediction (tissue colours, nuclei outlined)",
                                    fill=(0, 0, 0))
        self.overlay_dir.mkdir(parents=True, exist_ok=True)
        canvas.save(self.overlay_dir / f"{name}.png")

    # ------------------------------------------------------------------------------------------
    def tables(self) -> tuple[list[dict], list[dict]]:
        tissue_rows = []
        stacked = {k: np.stack(v) if v else np.zeros((0, self.k - 1)) for k, v in self.tissue.items()}
        for c in range(1, self.k):
            pq = self.tissue_pq[c].scores()
            tissue_rows.append({"class": self.tissue_classes[c], "dice": _nanmean(stacked["dice"][:, c - 1]),
                                "iou": _nanmean(stacked["iou"][:, c - 1]), "hd": _nanmean(stacked["hd"][:, c - 1]),
                                "pq": pq["pq"], "dq": pq["dq"], "sq": pq["sq"], "images": int(np.isfinite(stacked["dice"][:, c - 1]).sum())})
        mean_row = {"class": "mean", "images": len(self.rows)}
        for key in ("dice", "iou", "hd", "pq", "dq", "sq"):
            mean_row[key] = _nanmean([r[key] for r in tissue_rows])
        tissue_rows.append(mean_row)
        n = self.nuclei.scores()
        nuclei_rows = [{"nuclei": "all", "f1": n["f1"], "precision": n["precision"], "recall": n["recall"],
                        "aji": _nanmean(self.aji), "pq": n["pq"], "dq": n["dq"], "sq": n["sq"],
                        "true": int(n["tp"] + n["fn"]), "predicted": int(n["tp"] + n["fp"])}]
        for t, name in enumerate(self.nuclei_types):
            s = self.type_pq[t].scores()
            nuclei_rows.append({"nuclei": name, "f1": s["f1"], "precision": s["precision"], "recall": s["recall"],
                                "aji": float("nan"), "pq": s["pq"], "dq": s["dq"], "sq": s["sq"],
                                "true": int(s["tp"] + s["fn"]), "predicted": int(s["tp"] + s["fp"])})
        return tissue_rows, nuclei_rows

    def write(self, output_dir: str | Path) -> str:
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        tissue_rows, nuclei_rows = self.tables()
        md = write_table(tissue_rows, ["class", "dice", "iou", "hd", "pq", "dq", "sq", "images"], out / "tissue.csv",
                         out / "tissue.md", ["Tissue class", "Dice", "IoU", "HD (px)", "PQ", "DQ", "SQ", "Images"],
                         title=f"Tissue ({len(self.rows)} images)")
        md += "\n" + write_table(nuclei_rows, ["nuclei", "f1", "precision", "recall", "aji", "pq", "dq", "sq", "true",
                                               "predicted"], out / "nuclei.csv", out / "nuclei.md",
                                 ["Nuclei", "F1", "Precision", "Recall", "AJI", "PQ", "DQ", "SQ", "True", "Predicted"],
                                 title="Nuclei (a match: IoU > 0.5; F1 = DQ)")
        if self.rows:
            with open(out / "per_image.csv", "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(self.rows[0]))
                writer.writeheader()
                writer.writerows(self.rows)
        confusion_picture(self.cm, self.tissue_classes, out / "tissue_confusion.png",
                          title="tissue confusion (rows: truth, as fractions)")
        summary = {"tissue": tissue_rows, "nuclei": nuclei_rows, "tissue_confusion_matrix": self.cm.tolist(),
                   "images": len(self.rows)}
        (out / "summary.json").write_text(json.dumps(_finite(summary), indent=1))
        return md


def _nanmean(values) -> float:
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else float("nan")


def _finite(value):
    """JSON has no NaN: undefined scores become null."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _filename(value) -> str:
    meta = getattr(value, "meta", None) or {}
    name = meta.get("filename_or_obj", "")
    return str(name[0] if isinstance(name, (list, tuple)) else name)
