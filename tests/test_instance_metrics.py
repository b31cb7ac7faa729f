"""Instance and tissue metrics against hand-computed cases: matching (IoU > 0.5), F1 = DQ, SQ, PQ, AJI,
tissue Dice / IoU / Hausdorff per class, connected-component tissue instances."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bundles.coseg.scripts.evaluation import tissue_scores
from common.evaluation.instances import (
    PanopticCounts,
    aggregated_jaccard_index,
    class_instances,
    instance_counts,
    overlap_table,
)


def maps():
    """truth: nucleus 1 (2x2 = 4 px), nucleus 2 (3x3 = 9 px); prediction: 5 (2x3 = 6 px over nucleus 1),
    7 (2x2 inside nucleus 2), 9 (1 px, on nothing)."""
    true = np.zeros((6, 6), int)
    true[0:2, 0:2] = 1
    true[3:6, 3:6] = 2
    pred = np.zeros((6, 6), int)
    pred[0:2, 0:3] = 5
    pred[4:6, 4:6] = 7
    pred[5, 0] = 9
    return true, pred


def test_overlaps_and_counts_by_hand():
    true, pred = maps()
    table, true_area, pred_area = overlap_table(true, pred)
    assert table == {(1, 5): 4, (2, 7): 4} and true_area[2] == 9 and pred_area[5] == 6
    # 1-5: IoU 4/6 > 0.5, a match; 2-7: IoU 4/9 < 0.5, not; 9 matches nothing
    tp, fp, fn, iou = instance_counts(true, pred)
    assert (tp, fp, fn) == (1, 2, 1) and iou == pytest.approx(4 / 6)
    counts = PanopticCounts()
    counts.add([tp, fp, fn, iou])
    s = counts.scores()
    assert s["precision"] == pytest.approx(1 / 3) and s["recall"] == pytest.approx(1 / 2)
    assert s["f1"] == s["dq"] == pytest.approx(1 / (1 + 0.5 * 3))  # TP / (TP + (FP + FN) / 2) = 0.4
    assert s["sq"] == pytest.approx(4 / 6) and s["pq"] == pytest.approx(0.4 * 4 / 6)


def test_counts_add_up_over_images_before_the_ratios():
    true, pred = maps()
    counts = PanopticCounts()
    counts.add(instance_counts(true, pred))
    counts.add(instance_counts(true, true))  # a perfect image: 2 TP, IoU 1 each
    s = counts.scores()
    assert (s["tp"], s["fp"], s["fn"]) == (3, 2, 1)
    assert s["f1"] == pytest.approx(3 / (3 + 1.5)) and s["sq"] == pytest.approx((4 / 6 + 2) / 3)


def test_aji_by_hand():
    true, pred = maps()
    # nucleus 1 takes 5: C += 4, U += 6; nucleus 2 takes 7: C += 4, U += 9 + 4 - 4 = 9; unused 9 adds 1 to U
    assert aggregated_jaccard_index(true, pred) == pytest.approx(8 / 16)
    assert aggregated_jaccard_index(true, true) == 1.0
    assert aggregated_jaccard_index(np.zeros((4, 4)), np.zeros((4, 4))) == 1.0
    assert aggregated_jaccard_index(true, np.zeros_like(true)) == 0.0
    # a prediction that serves two nuclei counts its area in both unions (the original AJI)
    one = np.zeros((4, 6), int)
    one[:, 0:2], one[:, 4:6] = 1, 2
    merged = np.zeros_like(one)
    merged[:, :] = 3
    assert aggregated_jaccard_index(one, merged) == pytest.approx((8 + 8) / (24 + 24))


def test_empty_images_have_no_ratio():
    counts = PanopticCounts()
    counts.add(instance_counts(np.zeros((5, 5)), np.zeros((5, 5))))
    s = counts.scores()
    assert math.isnan(s["f1"]) and math.isnan(s["pq"])
    counts.add(instance_counts(np.zeros((5, 5)), np.ones((5, 5))))
    assert counts.scores()["pq"] == 0.0 and counts.scores()["precision"] == 0.0


def test_tissue_instances_are_connected_regions_of_each_class():
    tissue = np.array([[1, 1, 0, 2], [0, 0, 0, 2], [1, 0, 0, 0], [0, 0, 1, 1]])
    regions = class_instances(tissue, [1, 2])
    assert regions[1].max() == 3 and regions[2].max() == 1  # three separate stroma regions, one vessel
    diagonal = np.eye(3, dtype=int)
    assert class_instances(diagonal, [1])[1].max() == 1  # 8-connected


def test_tissue_dice_iou_and_hausdorff_by_hand():
    truth = np.zeros((10, 10), int)
    truth[0:5, :] = 1          # class 1: 50 px
    truth[5:10, 0:5] = 2       # class 2: 25 px
    pred = truth.copy()
    pred[4, :] = 2             # 10 px of class 1 called class 2
    s = tissue_scores(pred, truth, num_classes=4)
    assert s["dice"][0] == pytest.approx(2 * 40 / (40 + 50)) and s["iou"][0] == pytest.approx(40 / 50)
    assert s["dice"][1] == pytest.approx(2 * 25 / (35 + 25)) and s["iou"][1] == pytest.approx(25 / 35)
    assert math.isnan(s["dice"][2]) and math.isnan(s["hd"][2])  # class 3: in neither map
    assert s["hd"][0] == pytest.approx(1.0)  # the row lost from class 1 is one pixel from its border
    # the row added to class 2 reaches (4, 9); the nearest true class-2 pixel is (5, 4): sqrt(1 + 25)
    assert s["hd"][1] == pytest.approx(26 ** 0.5)
