"""Instance and tissue metrics against hand-computed cases: matching (IoU > 0.5), F1 = DQ, SQ, PQ, AJI,
tissue Dice / IoU / Hausdorff per class, connected-component tissue instances."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bundles.coseg.scripts.evaluation import tissue_scores
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


def _random_instances(rng, size=40, n=12):
    """An instance map of ``n`` random overlapping rectangles (later ones on top; some may vanish)."""
    out = np.zeros((size, size), np.int64)
    for i in range(1, n + 1):
        y, x = rng.integers(0, size - 4, 2)
        h, w = rng.integers(2, 12, 2)
        out[y:y + h, x:x + w] = i
    return out


@pytest.mark.parametrize("threshold", [0.5, 0.3, 0.75])
def test_counts_from_the_overlap_table_equal_monais_panoptic_quality(threshold):
    import torch
    from monai.metrics.panoptic_quality import compute_panoptic_quality

    rng = np.random.default_rng(0)
    for _ in range(25):
        true, pred = _random_instances(rng), _random_instances(rng, n=int(rng.integers(0, 15)))
        ours = instance_counts(true, pred, iou_threshold=threshold)
        monai = compute_panoptic_quality(torch.as_tensor(pred), torch.as_tensor(true), match_iou_threshold=threshold,
                                         output_confusion_matrix=True).double().numpy()
        assert ours[:3].tolist() == monai[:3].tolist()
        assert ours[3] == pytest.approx(monai[3], rel=1e-5)
    with pytest.raises(ValueError, match=r"iou_threshold must be in \(0, 1\], got 0"):
        instance_counts(true, pred, iou_threshold=0)


def test_pq_of_a_1024_roi_with_400_nuclei_never_holds_a_mask_per_nucleus(monkeypatch):
    """400 full-size masks of a 1024² ROI are 400 MiB as booleans (MONAI's compute_panoptic_quality keeps one
    per true and per predicted instance); the overlap table needs a few copies of the image."""
    import tracemalloc

    import monai.metrics.panoptic_quality as monai_pq

    def per_instance_masks(*args, **kwargs):
        raise AssertionError("instance_counts went through MONAI's per-instance masks")

    monkeypatch.setattr(monai_pq, "compute_panoptic_quality", per_instance_masks)
    true = np.zeros((1024, 1024), np.int32)
    pred = np.zeros_like(true)
    for k in range(400):  # a 20 x 20 grid of 45 x 45 nuclei; each prediction shifted 2 px to the right
        y, x = 51 * (k // 20), 51 * (k % 20)
        true[y:y + 45, x:x + 45] = k + 1
        pred[y:y + 45, x + 2:x + 47] = k + 1
    tracemalloc.start()
    try:
        counts = instance_counts(true, pred)
        aji = aggregated_jaccard_index(true, pred)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2 ** 20, f"peak {peak / 2 ** 20:.0f} MiB"
    iou = 45 * 43 / (2 * 45 * 45 - 45 * 43)  # 1935 shared pixels of 2115
    assert counts[:3].tolist() == [400, 0, 0] and counts[3] == pytest.approx(400 * iou)
    assert aji == pytest.approx(iou)


def test_instance_centroids_in_pixel_corner_coordinates_with_majority_types():
    instances = np.zeros((6, 8), int)
    instances[0:2, 0:2] = 3            # pixel centres x, y in {0.5, 1.5}: centroid (1, 1)
    instances[2:5, 4:8] = 7            # x 4.5..7.5, y 2.5..4.5: centroid (6, 3.5)
    types = np.zeros_like(instances)
    types[instances == 3] = 2
    types[instances == 7] = 1
    types[2, 4:7] = 3                  # 3 of nucleus 7's 12 pixels vote 3, 9 vote 1
    xy, classes = instance_centroids(instances, types)
    assert xy.tolist() == [[1.0, 1.0], [6.0, 3.5]] and classes.tolist() == [2, 1]
    xy, classes = instance_centroids(instances)
    assert classes.tolist() == [0, 0]
    empty_xy, empty_classes = instance_centroids(np.zeros((4, 4), int))
    assert empty_xy.shape == (0, 2) and empty_classes.shape == (0,)


def test_pumas_centroid_matching_by_hand():
    # class 1: true at (10, 10) and (50, 50); class 2: true at (100, 100)
    true_xy, true_cls = [[10, 10], [50, 50], [100, 100]], [1, 1, 2]
    # (20, 10) is 10 px from the first nucleus, (12, 10) only 2: the nearer is taken; (50, 65) is exactly 15 px
    # away (PUMA: less than 15); (100, 104) is near the class-2 nucleus but predicted class 1
    pred_xy, pred_cls = [[20, 10], [50, 65], [100, 104], [12, 10]], [1, 1, 1, 1]
    counts = centroid_counts(true_xy, true_cls, pred_xy, pred_cls)
    assert counts == {1: (1, 3, 1), 2: (0, 0, 1)}
    # one to one: two nuclei near one prediction, the first in turn takes it
    assert centroid_counts([[0, 0], [10, 0]], [1, 1], [[6, 0]], [1]) == {1: (1, 0, 1)}
    # a higher-scored prediction is taken before a nearer one
    both = centroid_counts([[0, 0], [30, 0]], [1, 1], [[1, 0], [10, 0]], [1, 1], pred_scores=[0.2, 0.9])
    assert both == {1: (1, 1, 1)}  # (10, 0) went to the first nucleus; (1, 0) is 29 px from the second
    with pytest.raises(ValueError, match="one class per centroid: got 2 true centroids with 1 classes"):
        centroid_counts([[0, 0], [1, 1]], [1], [], [])


def test_pumas_macro_f1_over_images_by_hand():
    f1 = CentroidF1({1: "tumor", 2: "TIL"})
    f1.add({1: (1, 3, 1), 2: (0, 0, 1)})   # tumour P 1/4, R 1/2: F1 1/3; TIL 0
    f1.add({1: (1, 0, 0)})                 # tumour 1; no TIL in this image (nor predicted)
    s = f1.scores()
    # PUMA divides each class's summed per-image F1 by all images: tumour (1/3 + 1) / 2, TIL 0 / 2
    assert s["classes"]["tumor"]["f1"] == pytest.approx(2 / 3) and s["classes"]["TIL"]["f1"] == 0.0
    assert s["macro_f1"] == pytest.approx(1 / 3) and s["images"] == 2
    # pooled: tumour TP 2, FP 3, FN 1: P 2/5, R 2/3, F1 1/2
    assert s["classes"]["tumor"]["pooled_f1"] == pytest.approx(0.5)
    assert (s["classes"]["tumor"]["tp"], s["classes"]["tumor"]["fp"], s["classes"]["tumor"]["fn"]) == (2, 3, 1)
