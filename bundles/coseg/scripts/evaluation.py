"""Co-Seg evaluation: the paper's tissue and nuclei tables (Tables 1-3) from the evaluator's outputs.

Per image (after :class:`scripts.outputs.Instancesd`, at the ROI's own size):

* tissue: Dice, IoU and Hausdorff distance (pixels) per class other than background (MONAI's
  ``DiceMetric``, ``MeanIoU``, ``HausdorffDistanceMetric`` on one-hot maps; a class absent from both
  truth and prediction is skipped; a class in only one of them has Dice 0 and, as its distance is
  undefined, the largest distance the image allows, its diagonal sqrt((H-1)² + (W-1)²): a missed or
  invented class costs the most a boundary can, where skipping it would drop the worst images), the
  pixel confusion matrix, and panoptic counts per class with the 8-connected regions of each class as
  its instances;
* nuclei: detection counts (IoU > 0.5, :mod:`common.evaluation.instances`), AJI, and per nucleus type
  (with a type head) panoptic counts of the instances of that type;
* as PUMA's own evaluation (github.com/tueimage/PUMA-challenge-eval-track2, ``evaluate_tissue.py`` and
  ``eval_nuclei.py``): tissue Dice of each class 1..5 as a binary mask (the class against everything
  else), pooled over all images ("micro", the challenge's ranking figure: 0 where prediction and truth
  share no pixel) and per image (1 where neither has the class) averaged over all images; nuclei F1 per
  class with centroids matched within 15 px (:class:`common.evaluation.instances.CentroidF1`), under the
  class names PUMA reads (track 1 ``nuclei_tumor``, ``nuclei_lymphocyte``, ``nuclei_other``), and their
  macro mean;
* tissue as the official Co-Seg code scores it (github.com/xq141839/Co-Seg ``eval.py``: one sigmoid tissue
  channel, Dice, IoU, Hausdorff distance and PQ of connected regions on that binary map):
  ``binary_tissue_classes`` (default tumour, the paper's "tumor tissues"; the official target file's class is
  not published) against everything else, with the rules above (the official code drops images whose HD is
  infinite; here they take the diagonal);
* true nuclei that vanished when their polygons were rasterised (no pixel centre inside, or hidden by
  smaller nuclei; ``nuclei_vanished`` of :class:`transforms.puma.LoadPumaROId`): counted per image and in
  total; no measure can see them.

Dataset figures: class scores are means over the images that have the class; F1, precision, recall,
PQ, DQ, SQ come from counts summed over images; AJI is the mean over images. Written to ``output_dir``:
``tissue.csv/.md``, ``nuclei.csv/.md``, ``binary_tissue.csv/.md``, ``puma_tissue.csv/.md``, ``puma_nuclei.csv/.md``,
``per_image.csv``, ``summary.json``, ``tissue_confusion.png`` and ``overlays/<name>.png`` (image | truth |
prediction: tissue colours and nuclei outlines).
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

from common.evaluation.instances import (
    CentroidF1,
    PanopticCounts,
    aggregated_jaccard_index,
    centroid_counts,
    class_instances,
    instance_centroids,
    instance_counts,
    overlap_table,
)
from common.evaluation.reports import write_table
from common.evaluation.semantic import confusion_matrix
from common.evaluation.visualize import confusion_picture, draw_instance_outlines, overlay_classes, to_uint8_rgb


def _one_hot(class_map: torch.Tensor, num_classes: int) -> torch.Tensor:
    return F.one_hot(torch.as_tensor(class_map).long().reshape(class_map.shape[-2:]), num_classes).permute(2, 0, 1)[None].float()


def tissue_scores(pred: np.ndarray, truth: np.ndarray, num_classes: int) -> dict[str, np.ndarray]:
    """Per class 1..K-1 of one image: dice, iou, hd (NaN where the class is in neither map; the image's
    diagonal, sqrt((H-1)² + (W-1)²), where it is in one map only: module doc) and ``hd_diagonal``, where
    the diagonal stands in."""
    from monai.metrics import compute_dice, compute_hausdorff_distance, compute_iou

    p, t = _one_hot(torch.as_tensor(pred), num_classes), _one_hot(torch.as_tensor(truth), num_classes)
    present = ((p + t).flatten(2).sum(-1) > 0)[0, 1:].numpy()
    dice = compute_dice(p, t, include_background=False, ignore_empty=False)[0].numpy()
    iou = compute_iou(p, t, include_background=False, ignore_empty=False)[0].numpy()
    both = ((p.flatten(2).sum(-1) > 0) & (t.flatten(2).sum(-1) > 0))[0, 1:].numpy()
    one_only = present & ~both
    h, w = p.shape[-2:]
    hd = np.full(num_classes - 1, np.nan)
    hd[one_only] = math.hypot(h - 1, w - 1)
    if both.any():
        channels = [c + 1 for c in np.flatnonzero(both)]
        with warnings.catch_warnings():  # MONAI's own call of a deprecated argument, once per image
            warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*")
            hd[both] = compute_hausdorff_distance(p[:, channels], t[:, channels], include_background=True)[0].numpy()
    dice[~present], iou[~present] = np.nan, np.nan
    return {"dice": dice, "iou": iou, "hd": hd, "hd_diagonal": one_only}


def _class_overlaps(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(I, |truth| + |prediction|)`` of classes 1..K-1 as binary masks, from a confusion matrix."""
    cm = np.asarray(cm, dtype=np.float64)
    return np.diag(cm)[1:], cm.sum(axis=1)[1:] + cm.sum(axis=0)[1:]


def puma_tissue_dice(cm: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """PUMA's pooled ("micro") Dice of classes 1..K-1 from a confusion matrix summed over images (module doc):
    ``(2 I + eps) / (|truth| + |prediction| + eps)`` of each class's binary masks, 0 where I is 0."""
    inter, sizes = _class_overlaps(cm)
    return np.where(inter > 0, (2 * inter + eps) / (sizes + eps), 0.0)


def puma_image_dice(cm: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """PUMA's Dice of classes 1..K-1 in one image (its confusion matrix): as :func:`puma_tissue_dice`, but 1
    where neither map has the class and ``eps`` only where they share nothing."""
    inter, sizes = _class_overlaps(cm)
    return np.where(sizes > 0, (2 * inter + eps) / (sizes + eps), 1.0)


class CoSegRecorder:
    """Handler: accumulates the evaluator's per-image outputs (module doc); :meth:`write` makes the files."""

    def __init__(self, tissue_classes: Sequence[str], nuclei_types: Sequence[str] = (), overlay_dir: str | None = None,
                 num_overlays: int = 8, tissue_colors: dict | None = None, binary_tissue_classes: Sequence[int] = (3,)):
        self.tissue_classes, self.nuclei_types = list(tissue_classes), list(nuclei_types)
        self.binary_classes = [int(c) for c in binary_tissue_classes]
        bad = [c for c in self.binary_classes if not 0 < c < len(self.tissue_classes)]
        if not self.binary_classes or bad:
            raise ValueError(f"binary_tissue_classes must be tissue classes 1..{len(self.tissue_classes) - 1}, got "
                             f"{list(binary_tissue_classes)}")
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
        self.hd_diagonal = np.zeros(self.k - 1, dtype=np.int64)
        self.puma_image_dice: list[np.ndarray] = []
        self.puma_nuclei = CentroidF1(self.puma_class_names())
        self.vanished = 0
        self.binary = {m: [] for m in ("dice", "iou", "hd")}
        self.binary_pq = PanopticCounts()
        self.binary_hd_diagonal = 0

    def puma_class_names(self) -> dict[int, str]:
        """Nucleus classes under the names PUMA's evaluation reads (0: untyped nuclei)."""
        from transforms.puma import UNTYPED_NUCLEUS, nuclei_output_names

        return {0: UNTYPED_NUCLEUS, **{t + 1: n for t, n in enumerate(nuclei_output_names(self.nuclei_types))}}

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
        self.hd_diagonal += scores["hd_diagonal"]
        cm = confusion_matrix(torch.as_tensor(pred_tissue), torch.as_tensor(truth_tissue), self.k)
        self.cm += cm
        self.puma_image_dice.append(puma_image_dice(cm))
        truth_binary = np.isin(truth_tissue, self.binary_classes).astype(np.int64)
        pred_binary = np.isin(pred_tissue, self.binary_classes).astype(np.int64)
        binary = tissue_scores(pred_binary, truth_binary, 2)
        for key in self.binary:
            self.binary[key].append(float(binary[key][0]))
        self.binary_hd_diagonal += int(binary["hd_diagonal"][0])
        self.binary_pq.add(instance_counts(class_instances(truth_binary, [1])[1], class_instances(pred_binary, [1])[1]))
        vanished = record.get("nuclei_vanished")
        vanished = int(np.asarray(vanished).reshape(-1)[0]) if vanished is not None else 0
        self.vanished += vanished
        pred_regions = class_instances(pred_tissue, range(1, self.k))
        true_regions = class_instances(truth_tissue, range(1, self.k))
        for c in range(1, self.k):
            self.tissue_pq[c].add(instance_counts(true_regions[c], pred_regions[c]))
        overlaps = overlap_table(truth_nuclei, pred_nuclei)  # one table for the counts and AJI
        counts = instance_counts(truth_nuclei, pred_nuclei, overlaps=overlaps)
        self.nuclei.add(counts)
        image_nuclei = PanopticCounts()
        image_nuclei.add(counts)
        aji = aggregated_jaccard_index(truth_nuclei, pred_nuclei, overlaps=overlaps)
        self.aji.append(aji)
        truth_types = pred_types = None
        if self.nuclei_types:
            truth_types = np.asarray(record["nuclei_type_full"]).reshape(truth_tissue.shape)
            pred_types = np.asarray(item["nuclei_types"]).reshape(truth_tissue.shape)
            for t in range(1, len(self.nuclei_types) + 1):
                self.type_pq[t - 1].add(instance_counts(np.where(truth_types == t, truth_nuclei, 0),
                                                        np.where(pred_types == t, pred_nuclei, 0)))
        true_xy, true_classes = instance_centroids(truth_nuclei, truth_types)
        pred_xy, pred_classes = instance_centroids(pred_nuclei, pred_types)
        self.puma_nuclei.add(centroid_counts(true_xy, true_classes, pred_xy, pred_classes))
        n = image_nuclei.scores()
        self.rows.append({"name": name, "tissue_dice": _nanmean(scores["dice"]), "tissue_iou": _nanmean(scores["iou"]),
                          "tissue_hd": _nanmean(scores["hd"]), "nuclei_true": int(n["tp"] + n["fn"]),
                          "nuclei_pred": int(n["tp"] + n["fp"]), "nuclei_f1": n["f1"], "nuclei_aji": aji,
                          "nuclei_pq": n["pq"], "nuclei_vanished": vanished,
                          "tissue_hd_diagonal": int(scores["hd_diagonal"].sum()),
                          "puma_tissue_dice": float(np.mean(self.puma_image_dice[-1]))})
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

    def binary_table(self) -> list[dict]:
        """The binary tissue row (module doc): Dice, IoU, HD averaged over the images where truth or prediction
        has the foreground, PQ, DQ, SQ of its connected regions summed over images."""
        pq = self.binary_pq.scores()
        name = " + ".join(self.tissue_classes[c] for c in self.binary_classes)
        return [{"foreground": name, "dice": _nanmean(self.binary["dice"]), "iou": _nanmean(self.binary["iou"]),
                 "hd": _nanmean(self.binary["hd"]), "pq": pq["pq"], "dq": pq["dq"], "sq": pq["sq"],
                 "images": int(np.isfinite(self.binary["dice"]).sum()), "hd_diagonal": self.binary_hd_diagonal}]

    def puma_tables(self) -> tuple[list[dict], list[dict]]:
        """PUMA's own figures (module doc): tissue ``dice`` (pooled) and ``image_dice`` (per image, averaged)
        per class with their mean; nuclei ``f1`` (PUMA's), ``pooled_f1`` and counts per class, and the
        macro F1."""
        micro = puma_tissue_dice(self.cm)
        per_image = np.stack(self.puma_image_dice) if self.puma_image_dice else np.full((1, self.k - 1), np.nan)
        tissue = [{"class": f"tissue_{self.tissue_classes[c]}", "dice": micro[c - 1],
                   "image_dice": float(per_image[:, c - 1].mean())} for c in range(1, self.k)]
        tissue.append({"class": "mean", "dice": float(micro.mean()), "image_dice": float(per_image.mean(axis=0).mean())})
        s = self.puma_nuclei.scores()
        nuclei = [{"class": name, **v} for name, v in s["classes"].items()]
        nuclei.append({"class": "macro", "f1": s["macro_f1"]})
        return tissue, nuclei

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
        if self.vanished:
            md += (f"\n{self.vanished} true nuclei vanished when their polygons were rasterised (no pixel centre "
                   f"inside, or hidden by smaller nuclei): no measure counts them (per_image.csv: nuclei_vanished)\n")
        if self.hd_diagonal.any():
            md += (f"\nHD: {int(self.hd_diagonal.sum())} class(es) in one map only took the image diagonal "
                   f"(summary.json: tissue_hd_diagonal)\n")
        binary_rows = self.binary_table()
        md += "\n" + write_table(binary_rows, ["foreground", "dice", "iou", "hd", "pq", "dq", "sq", "images", "hd_diagonal"],
                                 out / "binary_tissue.csv", out / "binary_tissue.md",
                                 ["Foreground", "Dice", "IoU", "HD (px)", "PQ", "DQ", "SQ", "Images", "HD = diagonal"],
                                 title="Tissue as the official Co-Seg code scores it (binary: foreground against the rest)")
        puma_tissue, puma_nuclei = self.puma_tables()
        md += "\n" + write_table(puma_tissue, ["class", "dice", "image_dice"], out / "puma_tissue.csv",
                                 out / "puma_tissue.md", ["Tissue class", "Dice (pooled)", "Dice (per image)"],
                                 title="Tissue as PUMA scores it (each class a binary mask)")
        md += "\n" + write_table(puma_nuclei, ["class", "f1", "pooled_f1", "tp", "fp", "fn"], out / "puma_nuclei.csv",
                                 out / "puma_nuclei.md", ["Nuclei class", "F1 (PUMA)", "F1 (pooled)", "TP", "FP", "FN"],
                                 title="Nuclei as PUMA scores them (centroids within 15 px; macro = mean over classes)")
        if self.rows:
            with open(out / "per_image.csv", "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(self.rows[0]))
                writer.writeheader()
                writer.writerows(self.rows)
        confusion_picture(self.cm, self.tissue_classes, out / "tissue_confusion.png",
                          title="tissue confusion (rows: truth, as fractions)")
        summary = {"tissue": tissue_rows, "nuclei": nuclei_rows, "tissue_confusion_matrix": self.cm.tolist(),
                   "images": len(self.rows), "binary_tissue": binary_rows,
                   "puma": {"tissue": puma_tissue, "nuclei": puma_nuclei},
                   "nuclei_vanished": self.vanished,
                   "tissue_hd_diagonal": {self.tissue_classes[c]: int(self.hd_diagonal[c - 1]) for c in range(1, self.k)}}
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
