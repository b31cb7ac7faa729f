"""Instance metrics: matching, detection F1, AJI and panoptic quality over a dataset.

Matching rule (detection F1, precision, recall, PQ's DQ and SQ): a predicted and a true instance match
when their IoU is above 0.5, which makes every match unique (MONAI's ``compute_panoptic_quality``
counts them). Then precision = TP / (TP + FP), recall = TP / (TP + FN), F1 = TP / (TP + (FP + FN) / 2),
which is PQ's DQ; SQ = mean IoU of the matches; PQ = DQ x SQ. Counts are summed over the images before
the ratios are taken (one dataset figure; :class:`PanopticCounts`).

AJI is Kumar et al.'s aggregated Jaccard index (2017), as HoVer-Net computes it: every true instance
takes the predicted instance of highest IoU among those it touches (intersection into C, union into U;
a prediction may serve several true instances), then every prediction no true instance took adds its
area to U; AJI = C / U, per image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def overlap_table(true: np.ndarray, pred: np.ndarray) -> tuple[dict[tuple[int, int], int], np.ndarray, np.ndarray]:
    """``({(true id, pred id): overlapping pixels}, true areas by id, pred areas by id)`` of two instance maps."""
    true = np.asarray(true).astype(np.int64).ravel()
    pred = np.asarray(pred).astype(np.int64).ravel()
    if true.shape != pred.shape:
        raise ValueError(f"instance maps differ in size: {true.shape} and {pred.shape}")
    both = (true > 0) & (pred > 0)
    keys, counts = np.unique(true[both] * (int(pred.max()) + 1) + pred[both], return_counts=True)
    base = int(pred.max()) + 1
    table = {(int(k // base), int(k % base)): int(c) for k, c in zip(keys, counts)}
    return table, np.bincount(true), np.bincount(pred)


def aggregated_jaccard_index(true: np.ndarray, pred: np.ndarray) -> float:
    """AJI of one image (module doc); 1.0 when neither map has an instance, 0.0 when only one has."""
    table, true_area, pred_area = overlap_table(true, pred)
    true_ids = [i for i in range(1, len(true_area)) if true_area[i] > 0]
    pred_ids = [j for j in range(1, len(pred_area)) if pred_area[j] > 0]
    if not true_ids and not pred_ids:
        return 1.0
    by_true: dict[int, list[tuple[int, int]]] = {}
    for (i, j), inter in table.items():
        by_true.setdefault(i, []).append((j, inter))
    intersection, union, used = 0, 0, set()
    for i in true_ids:
        candidates = by_true.get(i, [])
        if not candidates:
            union += int(true_area[i])
            continue
        j, inter = max(candidates, key=lambda c: (c[1] / (true_area[i] + pred_area[c[0]] - c[1]), -c[0]))
        intersection += inter
        union += int(true_area[i] + pred_area[j] - inter)
        used.add(j)
    union += int(sum(pred_area[j] for j in pred_ids if j not in used))
    return intersection / union if union else 1.0


def instance_counts(true: np.ndarray, pred: np.ndarray, iou_threshold: float = 0.5) -> np.ndarray:
    """``[TP, FP, FN, sum of matched IoU]`` of one image (MONAI's matching, module doc)."""
    from monai.metrics.panoptic_quality import compute_panoptic_quality

    true_t = torch.as_tensor(np.asarray(true).astype(np.int64))
    pred_t = torch.as_tensor(np.asarray(pred).astype(np.int64))
    if not (true_t > 0).any() and not (pred_t > 0).any():
        return np.zeros(4)
    counts = compute_panoptic_quality(pred_t, true_t, match_iou_threshold=iou_threshold, output_confusion_matrix=True)
    return counts.double().cpu().numpy()


@dataclass
class PanopticCounts:
    """TP, FP, FN and the matched IoU summed over images; the ratios of the module doc."""

    tp: float = 0.0
    fp: float = 0.0
    fn: float = 0.0
    iou_sum: float = 0.0

    def add(self, counts) -> None:
        tp, fp, fn, iou = (float(c) for c in counts)
        self.tp, self.fp, self.fn, self.iou_sum = self.tp + tp, self.fp + fp, self.fn + fn, self.iou_sum + iou

    def scores(self) -> dict[str, float]:
        """precision, recall, f1 (= dq), sq, pq; NaN where a ratio has nothing to count."""

        def ratio(a, b):
            return a / b if b else float("nan")

        dq = ratio(self.tp, self.tp + 0.5 * (self.fp + self.fn))
        sq = ratio(self.iou_sum, self.tp)
        return {"precision": ratio(self.tp, self.tp + self.fp), "recall": ratio(self.tp, self.tp + self.fn),
                "f1": dq, "dq": dq, "sq": sq, "pq": dq * sq if self.tp else (0.0 if self.fp + self.fn else float("nan")),
                "tp": self.tp, "fp": self.fp, "fn": self.fn}


def class_instances(class_map: np.ndarray, classes) -> dict[int, np.ndarray]:
    """``{class: instance map}``: the 8-connected components of each class of a semantic map (tissue PQ)."""
    from scipy import ndimage

    structure = np.ones((3, 3), dtype=bool)
    class_map = np.asarray(class_map)
    return {int(c): ndimage.label(class_map == c, structure=structure)[0] for c in classes}
