"""Co-Seg's evaluation report beyond the paper's tables, against hand-computed cases: tissue as PUMA scores it
(each class a binary mask, pooled and per image), tissue as the official Co-Seg code scores it (binary),
PUMA's nuclei F1 (centroids within 15 px), the Hausdorff distance of a class one map lacks, and true nuclei
that vanished when rasterised."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

from bundles.coseg.scripts.evaluation import CoSegRecorder, puma_image_dice, puma_tissue_dice, tissue_scores
from common.evaluation.semantic import confusion_matrix
from transforms.puma import NUCLEI_TYPE_NAMES, TISSUE_CLASSES


def test_a_class_in_one_map_only_takes_the_image_diagonal_as_its_hausdorff_distance():
    truth = np.zeros((10, 10), int)
    truth[:, :5] = 1
    truth[:, 5:] = 2                    # class 2 only in the truth (the prediction misses it)
    pred = np.ones((10, 10), int)
    pred[0, 0] = 3                      # class 3 only in the prediction
    s = tissue_scores(pred, truth, num_classes=5)
    assert s["hd"][1] == pytest.approx(math.hypot(9, 9)) and s["hd"][2] == pytest.approx(math.hypot(9, 9))
    assert s["dice"][1] == 0.0 and s["dice"][2] == 0.0
    assert math.isnan(s["hd"][3]) and math.isnan(s["dice"][3])  # class 4: in neither map, skipped
    assert s["hd_diagonal"].tolist() == [False, True, True, False]
    assert s["hd"][0] == pytest.approx(5.0)  # class 1 grew over the right half: (0, 9) is 5 px from (0, 4)


def _images():
    """Two 10x10 ROIs (module doc of the test for the figures)."""
    truth_a = np.zeros((10, 10), int)
    truth_a[:5], truth_a[5:] = 1, 3                  # stroma 50 px over tumour 50 px
    pred_a = truth_a.copy()
    pred_a[5:, 5:] = 2                               # half the tumour called blood vessel
    nuclei_a = np.zeros((10, 10), int)
    nuclei_a[0:3, 0:3], nuclei_a[6:9, 6:9] = 1, 2
    types_a = np.where(nuclei_a == 1, 1, np.where(nuclei_a == 2, 2, 0))       # tumour, TIL
    pred_types_a = np.where(nuclei_a == 1, 1, np.where(nuclei_a == 2, 3, 0))  # tumour, other (wrong)
    truth_b = np.full((10, 10), 3)
    nuclei_b = np.zeros((10, 10), int)               # no visible true nucleus: both vanished
    pred_nuclei_b = np.zeros((10, 10), int)
    pred_nuclei_b[0:2, 0:2] = 1                      # a tumour nucleus that is not there
    t = torch.as_tensor
    return [({"name": "a", "tissue_full": t(truth_a)[None], "nuclei_full": t(nuclei_a)[None],
              "nuclei_type_full": t(types_a)[None], "nuclei_vanished": t(0)},
             {"tissue_map": t(pred_a)[None], "nuclei_map": t(nuclei_a)[None], "nuclei_types": t(pred_types_a)[None]}),
            ({"name": "b", "tissue_full": t(truth_b)[None], "nuclei_full": t(nuclei_b)[None],
              "nuclei_type_full": t(nuclei_b)[None], "nuclei_vanished": t(2)},
             {"tissue_map": t(truth_b)[None], "nuclei_map": t(pred_nuclei_b)[None],
              "nuclei_types": t(pred_nuclei_b)[None]})]


def test_pumas_tissue_dice_pooled_and_per_image_by_hand():
    (ra, ia), (rb, ib) = _images()
    cm_a = confusion_matrix(ia["tissue_map"], ra["tissue_full"], 6)
    cm_b = confusion_matrix(ib["tissue_map"], rb["tissue_full"], 6)
    # pooled: stroma 100/100; vessel shares nothing with the truth: 0; tumour 2 * 125 / (150 + 125); 4, 5 absent: 0
    assert puma_tissue_dice(cm_a + cm_b) == pytest.approx([1.0, 0.0, 10 / 11, 0.0, 0.0], abs=1e-6)
    # per image: a class in neither map scores 1
    assert puma_image_dice(cm_a) == pytest.approx([1.0, 0.0, 2 / 3, 1.0, 1.0], abs=1e-6)
    assert puma_image_dice(cm_b) == pytest.approx([1.0] * 5)


def _read(path):
    with open(path) as f:
        return {r[next(iter(r))]: r for r in csv.DictReader(f)}


def test_the_report_has_pumas_figures_the_binary_tissue_and_the_vanished_nuclei(tmp_path):
    recorder = CoSegRecorder(TISSUE_CLASSES, NUCLEI_TYPE_NAMES["track1"])
    for record, item in _images():
        recorder.add(record, item)
    md = recorder.write(tmp_path)
    puma_tissue = _read(tmp_path / "puma_tissue.csv")
    assert float(puma_tissue["tissue_tumor"]["dice"]) == pytest.approx(10 / 11, abs=1e-4)
    assert float(puma_tissue["mean"]["dice"]) == pytest.approx((1 + 10 / 11) / 5, abs=1e-4)
    assert float(puma_tissue["tissue_blood_vessel"]["image_dice"]) == pytest.approx(0.5, abs=1e-4)
    assert float(puma_tissue["mean"]["image_dice"]) == pytest.approx((1 + 0.5 + 5 / 6 + 1 + 1) / 5, abs=1e-4)
    # nuclei: image a: tumour found (F1 1), the TIL called other (TIL F1 0, other F1 0); image b: a false tumour
    # (tumour F1 0). PUMA: tumour (1 + 0) / 2, TIL 0 / 2, other 0 / 2; macro 1/6
    puma_nuclei = _read(tmp_path / "puma_nuclei.csv")
    assert list(puma_nuclei) == ["nuclei_tumor", "nuclei_lymphocyte", "nuclei_other", "macro"]
    assert float(puma_nuclei["nuclei_tumor"]["f1"]) == pytest.approx(0.5)
    assert float(puma_nuclei["nuclei_tumor"]["pooled_f1"]) == pytest.approx(2 / 3, abs=1e-4)  # TP 1, FP 1
    assert float(puma_nuclei["nuclei_lymphocyte"]["f1"]) == 0.0 and puma_nuclei["nuclei_lymphocyte"]["fn"] == "1"
    assert float(puma_nuclei["macro"]["f1"]) == pytest.approx(1 / 6, abs=1e-4)
    # binary tumour against the rest: a: Dice 2*25/75, IoU 25/50 is not above 0.5 (FP + FN), HD 5; b: perfect
    (binary,) = _read(tmp_path / "binary_tissue.csv").values()
    assert binary["foreground"] == "tumor" and binary["images"] == "2"
    assert float(binary["dice"]) == pytest.approx((2 / 3 + 1) / 2, abs=1e-4)
    assert float(binary["hd"]) == pytest.approx(2.5) and binary["hd_diagonal"] == "0"
    assert float(binary["pq"]) == pytest.approx(1 / (1 + 1), abs=1e-4)  # IoU 1 over TP 1 + (FP 1 + FN 1) / 2
    # the blood vessel of image a is predicted only: HD the diagonal, counted
    tissue = _read(tmp_path / "tissue.csv")
    assert float(tissue["blood_vessel"]["hd"]) == pytest.approx(math.hypot(9, 9), abs=1e-3)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["nuclei_vanished"] == 2 and summary["tissue_hd_diagonal"]["blood_vessel"] == 1
    per_image = _read(tmp_path / "per_image.csv")
    assert per_image["b"]["nuclei_vanished"] == "2" and per_image["a"]["tissue_hd_diagonal"] == "1"
    assert "2 true nuclei vanished when their polygons were rasterised" in md
    assert "HD: 1 class(es) in one map only took the image diagonal" in md


def test_binary_tissue_classes_must_be_tissue_classes():
    with pytest.raises(ValueError, match=r"binary_tissue_classes must be tissue classes 1..5, got \[0\]"):
        CoSegRecorder(TISSUE_CLASSES, binary_tissue_classes=[0])
