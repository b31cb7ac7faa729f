"""Instance metrics: matching, detection F1, AJI and panoptic quality over a dataset.

Matching rule (detection F1, precision, recall, PQ's DQ and SQ): a predicted and a true instance match
when their IoU is above 0.5, which makes every match unique (the counts of MONAI's
``compute_panoptic_quality``). Then precision = TP / (TP + FP), recall = TP / (TP + FN), F1 = TP / (TP + (FP + FN) / 2),
which is PQ's DQ; SQ = mean IoU of the matches; PQ = DQ x SQ. Counts are summed over the images before
the ratios are taken (one dataset figure; :class:`PanopticCounts`).

AJI is Kumar et al.'s aggregated Jaccard index (2017), as HoVer-Net computes it: every true instance
takes the predicted instance of highest IoU among those it touches (intersection into C, union into U;
a prediction may serve several true instances), then every prediction no true instance took adds its
area to U; AJI = C / U, per image.

Both come from one overlap table (:func:`overlap_table`: the pixels each pair of instances shares, from one
``np.unique`` over the image), so no measure builds a full-size mask per instance: memory stays a few
copies of the image whatever the number of nuclei (MONAI's ``compute_panoptic_quality``, which gives the
same counts, keeps one full-size mask per true and per predicted instance).

PUMA's nuclei metric (:func:`centroid_counts`, :class:`CentroidF1`; centroids from
:func:`instance_centroids`), as the challenge's evaluation code computes it (github.com/tueimage/PUMA-challenge-eval-track2, ``eval_nuclei.py``; track 1 the same with
three classes): a prediction matches a true nucleus of the **same class** whose centroid lies less than
15 px away; true nuclei are taken in turn, each takes the nearest unused prediction of its class (the
highest-scored first where predictions carry scores); F1 per class and image, a class's score the sum of
its per-image F1 over the images where it occurs (in truth or prediction) divided by the number of
images, and the macro F1 the mean over the classes that occur. PUMA takes a polygon's centroid as the mean
of its vertices; here it is the mean of the instance's pixel centres (within a pixel or so of it for a
nucleus).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np


Overlaps = tuple[dict[tuple[int, int], int], np.ndarray, np.ndarray]


def overlap_table(true: np.ndarray, pred: np.ndarray) -> Overlaps:
    """``({(true id, pred id): overlapping pixels}, true areas by id, pred areas by id)`` of two instance maps.
    The measures below take it as ``overlaps`` where the caller scores the same pair of maps more than once."""
    true = np.asarray(true).astype(np.int64).ravel()
    pred = np.asarray(pred).astype(np.int64).ravel()
    if true.shape != pred.shape:
        raise ValueError(f"instance maps differ in size: {true.shape} and {pred.shape}")
    both = (true > 0) & (pred > 0)
    base = int(pred.max()) + 1
    keys, counts = np.unique(true[both] * base + pred[both], return_counts=True)
    table = {(int(k // base), int(k % base)): int(c) for k, c in zip(keys, counts)}
    return table, np.bincount(true), np.bincount(pred)


def aggregated_jaccard_index(true: np.ndarray, pred: np.ndarray, overlaps: Overlaps | None = None) -> float:
    """AJI of one image (module doc); 1.0 when neither map has an instance, 0.0 when only one has.
    ``overlaps``: :func:`overlap_table` of the two maps, if the caller has it."""
    table, true_area, pred_area = overlaps if overlaps is not None else overlap_table(true, pred)
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


def instance_counts(true: np.ndarray, pred: np.ndarray, iou_threshold: float = 0.5,
                    overlaps: Overlaps | None = None) -> np.ndarray:
    """``[TP, FP, FN, sum of matched IoU]`` of one image (module doc), from the overlap table (``overlaps``, if
    the caller has it).

    With ``iou_threshold`` >= 0.5 the pairs of IoU above it are the matches (unique by construction); below
    0.5 the pairs of highest summed IoU (Hungarian assignment) with IoU above it, as MONAI does."""
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    table, true_area, pred_area = overlaps if overlaps is not None else overlap_table(true, pred)
    n_true, n_pred = int(np.count_nonzero(true_area[1:])), int(np.count_nonzero(pred_area[1:]))
    if not n_true and not n_pred:
        return np.zeros(4)
    pairs = [(i, j, inter / float(true_area[i] + pred_area[j] - inter)) for (i, j), inter in table.items()]
    if iou_threshold >= 0.5:
        matched = [iou for _, _, iou in pairs if iou > iou_threshold]
    else:
        from scipy.optimize import linear_sum_assignment

        rows = {i: k for k, i in enumerate(sorted({i for i, _, _ in pairs}))}
        cols = {j: k for k, j in enumerate(sorted({j for _, j, _ in pairs}))}
        iou = np.zeros((len(rows), len(cols)))
        for i, j, value in pairs:
            iou[rows[i], cols[j]] = value
        r, c = linear_sum_assignment(-iou)
        matched = [float(v) for v in iou[r, c] if v > iou_threshold]
    tp = len(matched)
    return np.array([tp, n_pred - tp, n_true - tp, float(sum(matched))], dtype=np.float64)


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


def instance_centroids(instances: np.ndarray, types: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(centroids, classes)`` of the instances of a map, in id order: (N, 2) x, y of each instance's pixel
    centroid in image coordinates (a pixel's centre at +0.5, as GeoJSON), and (N,) its class, the most
    common value of ``types`` over its pixels (0 without a type map)."""
    from scipy import ndimage

    ids_map = np.asarray(instances).astype(np.int64)
    ids = np.unique(ids_map[ids_map > 0])
    if not ids.size:
        return np.zeros((0, 2)), np.zeros(0, dtype=np.int64)
    yx = np.asarray(ndimage.center_of_mass(np.ones(ids_map.shape), ids_map, ids), dtype=np.float64).reshape(-1, 2)
    centroids = yx[:, ::-1] + 0.5
    classes = np.zeros(len(ids), dtype=np.int64)
    if types is not None:
        types = np.asarray(types).astype(np.int64).reshape(ids_map.shape)
        fg = ids_map > 0
        base = int(types.max()) + 1
        keys, counts = np.unique(ids_map[fg] * base + types[fg], return_counts=True)
        order = np.lexsort((-counts, keys // base))  # by id, then most pixels first
        first = np.unique(keys[order] // base, return_index=True)[1]
        best = keys[order][first]
        classes[np.searchsorted(ids, best // base)] = best % base
    return centroids, classes


def centroid_counts(true_xy, true_classes, pred_xy, pred_classes, radius: float = 15.0,
                    pred_scores=None) -> dict[int, tuple[int, int, int]]:
    """``{class: (TP, FP, FN)}`` of one image by PUMA's rule (module doc): every class in truth or prediction.

    True nuclei in turn each take, among the unused predictions of their class less than ``radius`` px away,
    the highest-scored (all scores 1 without ``pred_scores``), then the nearest."""
    true_xy = np.asarray(true_xy, dtype=np.float64).reshape(-1, 2)
    pred_xy = np.asarray(pred_xy, dtype=np.float64).reshape(-1, 2)
    true_classes = np.asarray(true_classes).reshape(-1)
    pred_classes = np.asarray(pred_classes).reshape(-1)
    if len(true_classes) != len(true_xy) or len(pred_classes) != len(pred_xy):
        raise ValueError("one class per centroid: got "
                         f"{len(true_xy)} true centroids with {len(true_classes)} classes, "
                         f"{len(pred_xy)} predicted centroids with {len(pred_classes)} classes")
    scores = np.ones(len(pred_xy)) if pred_scores is None else np.asarray(pred_scores, dtype=np.float64).reshape(-1)
    used = np.zeros(len(pred_xy), dtype=bool)
    tp: dict[int, int] = {}
    for k in range(len(true_xy)):
        c = true_classes[k]
        distance = np.hypot(*(pred_xy - true_xy[k]).T)
        eligible = np.flatnonzero((pred_classes == c) & ~used & (distance < radius))
        if eligible.size:
            best = eligible[np.lexsort((distance[eligible], -scores[eligible]))[0]]
            used[best] = True
            tp[int(c)] = tp.get(int(c), 0) + 1
    out = {}
    for c in sorted({int(v) for v in true_classes} | {int(v) for v in pred_classes}):
        hits = tp.get(c, 0)
        out[c] = (hits, int(np.sum(pred_classes == c)) - hits, int(np.sum(true_classes == c)) - hits)
    return out


class CentroidF1:
    """PUMA's nuclei F1 over a dataset (module doc): :meth:`add` one image's :func:`centroid_counts`;
    :meth:`scores` gives per class the challenge's ``f1`` (per-image F1 summed over the images where the
    class occurs, divided by all images), the ``pooled_f1`` of the counts summed over images, and the
    counts; and ``macro_f1``, the mean of the classes' ``f1`` (PUMA's ranking figure)."""

    def __init__(self, class_names: Mapping[int, str] | None = None):
        self.class_names = dict(class_names or {})
        self.images = 0
        self.f1_sum: dict[int, float] = {}
        self.counts: dict[int, np.ndarray] = {}

    @staticmethod
    def f1(tp: float, fp: float, fn: float) -> float:
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        return 2 * precision * recall / (precision + recall) if precision + recall else 0.0

    def add(self, counts: Mapping[int, Sequence[int]]) -> None:
        self.images += 1
        for c, (tp, fp, fn) in counts.items():
            self.f1_sum[c] = self.f1_sum.get(c, 0.0) + self.f1(tp, fp, fn)
            self.counts[c] = self.counts.get(c, np.zeros(3, np.int64)) + np.asarray([tp, fp, fn], np.int64)

    def scores(self) -> dict:
        classes = {}
        for c in sorted(self.f1_sum):
            tp, fp, fn = (int(v) for v in self.counts[c])
            classes[self.class_names.get(c, str(c))] = {"f1": self.f1_sum[c] / self.images,
                                                         "pooled_f1": self.f1(tp, fp, fn), "tp": tp, "fp": fp, "fn": fn}
        macro = float(np.mean([v["f1"] for v in classes.values()])) if classes else float("nan")
        return {"classes": classes, "macro_f1": macro, "images": self.images}
