"""Multi-class semantic segmentation metrics from one confusion matrix.

``cm[true, pred]`` is accumulated over all pixels (of the whole set, or of one group such as an
organ):

* per class c: ``IoU = TP / (TP + FP + FN)``, ``Precision = TP / (TP + FP)``,
  ``F1 = 2 TP / (2 TP + FP + FN)``; NaN where the denominator is 0 (the class never occurs
  and is never predicted);
* overall: ``PA = sum_c TP_c / N`` (pixel accuracy) and
  ``FWIoU = sum_c (n_c / N) IoU_c`` with ``n_c`` the ground-truth pixels of class c.

A group's ``IoU`` and ``F1`` (MONCH's Table 2) are the means over the **cell classes**
(1..K-1, background excluded) that are defined for that group (NaN-aware mean).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

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

