"""PanNuke reader (on generated folds and broken ones) and the multi-class metrics against hand-computed values."""

import csv
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from transforms.base.errors import DatasetError
from common.data.pannuke.reader import CLASS_COLORS, CLASS_NAMES, find_fold, pannuke_datalist
from common.data.pannuke.synthetic import ensure_sample_pannuke, write_sample_pannuke
from common.engine.semantic_evaluation import SemanticRecorder
from common.evaluation.reports import write_reports
from common.evaluation.semantic import (
    ConfusionAccumulator,
    class_scores,
    confusion_matrix,
    frequency_weighted_iou,
    pixel_accuracy,
    summary_scores,
)
from common.evaluation.visualize import colorize
from transforms.pannuke import LoadPanNukePatchd, masks_to_class_map


@pytest.fixture(scope="module")
def pannuke(tmp_path_factory) -> Path:
    return write_sample_pannuke(tmp_path_factory.mktemp("pn"), n_per_fold=5, size=32, seed=0)


def copy_fold(pannuke: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "PanNuke"
    shutil.copytree(pannuke, dst)
    return dst


# ---- reader -------------------------------------------------------------------------------------
def test_generated_folds_have_the_published_layout_and_dtypes(pannuke):
    for f in (1, 2, 3):
        images = np.load(pannuke / f"Fold {f}" / "images" / f"fold{f}" / "images.npy")
        masks = np.load(pannuke / f"Fold {f}" / "masks" / f"fold{f}" / "masks.npy")
        types = np.load(pannuke / f"Fold {f}" / "images" / f"fold{f}" / "types.npy")
        assert images.shape == (5, 32, 32, 3) and images.dtype == np.float64
        assert masks.shape == (5, 32, 32, 6) and types.shape == (5,) and types.dtype.kind == "U"
        # background channel (last) is set exactly where no type channel holds an instance
        assert np.array_equal(masks[..., 5] > 0, (masks[..., :5] > 0).sum(-1) == 0)
        assert (masks[..., :5] > 0).sum(-1).max() <= 1  # no pixel in two type channels


def test_datalist_splits_by_fold_and_keeps_the_organ(pannuke):
    train = pannuke_datalist(pannuke, "train")
    assert [r["fold"] for r in train] == [1] * 5 and [r["index"] for r in train] == list(range(5))
    types = np.load(pannuke / "Fold 1" / "images" / "fold1" / "types.npy")
    assert [r["organ"] for r in train] == list(types)
    folds = {"train": [1, 2], "val": [3], "test": [3]}
    assert len(pannuke_datalist(pannuke, "train", folds)) == 10
    assert {r["fold"] for r in pannuke_datalist(pannuke, "test")} == {3}
    assert len(pannuke_datalist(pannuke, "val", limit=2)) == 2


def test_loader_yields_image_label_and_organ(pannuke):
    record = pannuke_datalist(pannuke, "val")[3]
    out = LoadPanNukePatchd()(record)
    masks = np.load(pannuke / "Fold 2" / "masks" / "fold2" / "masks.npy")[3]
    images = np.load(pannuke / "Fold 2" / "images" / "fold2" / "images.npy")[3]
    assert out["image"].shape == (3, 32, 32) and out["image"].dtype == torch.float32
    assert torch.allclose(out["image"], torch.from_numpy(images.transpose(2, 0, 1)).float())
    assert out["label"].shape == (1, 32, 32) and out["label"].dtype == torch.int64
    assert np.array_equal(out["label"][0].numpy(), masks_to_class_map(masks))
    assert out["organ"] == record["organ"] and "mask" not in out


def test_mask_channel_order_to_class_map():
    masks = np.zeros((2, 3, 6))
    masks[0, 0, 0] = 7   # neoplastic instance 7
    masks[0, 1, 1] = 2   # inflammatory
    masks[0, 2, 2] = 1   # connective
    masks[1, 0, 3] = 4   # dead
    masks[1, 1, 4] = 9   # epithelial
    masks[1, 2, 5] = 1   # the background channel does not make a class
    masks[1, 2, 0] = 0
    label = masks_to_class_map(masks)
    assert label.tolist() == [[1, 2, 3], [4, 5, 0]]
    assert [CLASS_NAMES[c] for c in (1, 2, 3, 4, 5)] == ["neoplastic", "inflammatory", "connective", "dead", "epithelial"]
    both = np.zeros((1, 1, 6))
    both[0, 0, [1, 4]] = 1  # two channels claim a pixel: the lower one wins
    assert masks_to_class_map(both).tolist() == [[2]]


def test_missing_file_is_named(pannuke, tmp_path):
    root = copy_fold(pannuke, tmp_path)
    (root / "Fold 2" / "masks" / "fold2" / "masks.npy").unlink()
    with pytest.raises(DatasetError, match=r"masks\.npy.*fold 2 has images\.npy, types\.npy but no masks\.npy"):
        pannuke_datalist(root, "val")
    with pytest.raises(DatasetError, match="no PanNuke fold 7"):
        find_fold(root, 7)


@pytest.mark.parametrize("case, file, message", [
    ("image_shape", "images.npy", r"images must be \(N, H, W, 3\)"),
    ("image_dtype", "images.npy", "images must be numbers"),
    ("mask_channels", "masks.npy", "masks have 4 channels"),
    ("mask_count", "masks.npy", "does not match images"),
    ("mask_dtype", "masks.npy", "masks must hold instance ids"),
    ("types_length", "types.npy", "one organ name per patch"),
    ("types_dtype", "types.npy", "must hold organ names"),
])
def test_bad_arrays_raise_naming_the_file(pannuke, tmp_path, case, file, message):
    root = copy_fold(pannuke, tmp_path)
    folder = root / "Fold 1"
    paths = {"images.npy": folder / "images" / "fold1" / "images.npy",
             "masks.npy": folder / "masks" / "fold1" / "masks.npy",
             "types.npy": folder / "images" / "fold1" / "types.npy"}
    images, masks = np.load(paths["images.npy"]), np.load(paths["masks.npy"])
    bad = {
        "image_shape": ("images.npy", images[..., 0]),
        "image_dtype": ("images.npy", images.astype(np.complex64)),
        "mask_channels": ("masks.npy", masks[..., :4]),
        "mask_count": ("masks.npy", masks[:3]),
        "mask_dtype": ("masks.npy", masks.astype(np.complex64)),
        "types_length": ("types.npy", np.array(["Breast"] * 2)),
        "types_dtype": ("types.npy", np.arange(5)),
    }[case]
    np.save(paths[bad[0]], bad[1])
    with pytest.raises(DatasetError) as err:
        pannuke_datalist(root, "train")
    assert str(paths[file]) in str(err.value)
    assert re.search(message, str(err.value)), str(err.value)


def test_ensure_sample_writes_once(tmp_path):
    first = ensure_sample_pannuke(tmp_path, n_per_fold=2, size=16)
    marker = Path(first) / "Fold 1" / "images" / "fold1" / "images.npy"
    stamp = marker.stat().st_mtime_ns
    assert ensure_sample_pannuke(tmp_path, n_per_fold=2, size=16) == first
    assert marker.stat().st_mtime_ns == stamp


# ---- metrics ------------------------------------------------------------------------------------
GT = np.array([[0, 0, 1, 1],
               [0, 2, 2, 1]])
PRED = np.array([[0, 1, 1, 1],
                 [2, 2, 0, 1]])


def test_confusion_matrix_and_scores_by_hand():
    cm = confusion_matrix(PRED, GT, 3)
    # rows: truth, columns: prediction
    assert cm.tolist() == [[1, 1, 1],
                           [0, 3, 0],
                           [1, 0, 1]]
    s = class_scores(cm)
    # class 0: TP 1, FP 1, FN 2 -> IoU 1/4, P 1/2, F1 2/5
    # class 1: TP 3, FP 1, FN 0 -> IoU 3/4, P 3/4, F1 6/7
    # class 2: TP 1, FP 1, FN 1 -> IoU 1/3, P 1/2, F1 1/2
    assert np.allclose(s["iou"], [1 / 4, 3 / 4, 1 / 3])
    assert np.allclose(s["precision"], [1 / 2, 3 / 4, 1 / 2])
    assert np.allclose(s["f1"], [2 / 5, 6 / 7, 1 / 2])
    assert pixel_accuracy(cm) == pytest.approx(5 / 8)
    # FWIoU: frequencies 3/8, 3/8, 2/8
    assert frequency_weighted_iou(cm) == pytest.approx(3 / 8 * 1 / 4 + 3 / 8 * 3 / 4 + 2 / 8 * 1 / 3)
    summary = summary_scores(cm)
    assert summary["iou"] == pytest.approx((3 / 4 + 1 / 3) / 2)  # cell classes only
    assert summary["f1"] == pytest.approx((6 / 7 + 1 / 2) / 2)


def test_absent_class_is_nan_and_ignored_in_means():
    cm = confusion_matrix(np.array([0, 1]), np.array([0, 1]), 4)
    s = class_scores(cm)
    assert s["iou"][1] == 1.0 and math.isnan(s["iou"][2]) and math.isnan(s["precision"][3])
    assert summary_scores(cm)["iou"] == 1.0
    with pytest.raises(ValueError, match="0..3"):
        confusion_matrix(np.array([5]), np.array([0]), 4)


def test_model_selection_dice_counts_a_class_predicted_where_the_image_has_none():
    """train.yaml's val_mean_dice (it picks model.pt) and val_miou, by hand on one 4x4 image through the configured
    metrics and the configured post-processing's one-hot labels. Truth: neoplastic (1) at two pixels. Prediction:
    neoplastic at one of them, inflammatory (2), which the image does not have, at two pixels.
    Dice: neoplastic 2*1/(2+1) = 2/3, inflammatory 0 (predicted, absent), connective/dead/epithelial 1 (absent,
    not predicted) -> mean 11/15. IoU: neoplastic 1/2, inflammatory 0, the rest 1 -> mean 7/10. Ignoring classes
    the image lacks (the old ignore_empty: true) scored 2/3 and 1/2: the false positives never counted."""
    from bundle_runner import bundle_parser

    parser = bundle_parser(Path(__file__).resolve().parents[1] / "bundles" / "monch", "train")
    dice = parser.get_parsed_content("val_metrics")["val_mean_dice"].metric_fn
    iou = parser.get_parsed_content("extra_val_metrics")["val_miou"].metric_fn
    post = parser.get_parsed_content("postprocessing")
    truth = torch.zeros(1, 4, 4, dtype=torch.long)
    truth[0, 0, 0] = truth[0, 0, 1] = 1
    classes = torch.zeros(4, 4, dtype=torch.long)
    classes[0, 0] = 1
    classes[0, 1] = classes[1, 1] = 2
    logits = torch.nn.functional.one_hot(classes, 6).permute(2, 0, 1).float() * 10.0  # (6, 4, 4), argmax = classes
    item = post({"pred": logits, "label": truth})
    pred, label = item["pred"][None], torch.as_tensor(item["label"])[None]
    assert pred.shape == label.shape == (1, 6, 4, 4)
    dice(pred, label)
    assert torch.allclose(dice.get_buffer(), torch.tensor([[2 / 3, 0.0, 1.0, 1.0, 1.0]]))
    assert dice.aggregate().item() == pytest.approx(11 / 15)
    iou(pred, label)
    assert torch.allclose(iou.get_buffer(), torch.tensor([[1 / 2, 0.0, 1.0, 1.0, 1.0]]))
    assert iou.aggregate().item() == pytest.approx(7 / 10)


def test_per_group_accumulation_and_reports(tmp_path):
    acc = ConfusionAccumulator(3)
    acc.update(PRED, GT, "Breast")
    acc.update(GT, GT, "Colon")
    acc.update(GT, GT, "Colon")
    rows = {r["group"]: r for r in acc.per_group_rows()}
    assert rows["Colon"]["n"] == 2 and rows["Colon"]["iou"] == 1.0 and rows["Colon"]["pa"] == 1.0
    assert rows["Breast"]["f1"] == pytest.approx((6 / 7 + 1 / 2) / 2)
    assert np.array_equal(acc.total, confusion_matrix(PRED, GT, 3) + 2 * confusion_matrix(GT, GT, 3))
    report = write_reports(acc, ["background", "a", "b"], tmp_path)
    with open(tmp_path / "per_class.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["class"] for r in table] == ["a", "b", "mean (cells)"]
    assert float(table[1]["iou"]) == pytest.approx(class_scores(acc.total)["iou"][2], abs=1e-4)
    organ_md = (tmp_path / "per_organ.md").read_text()
    assert "| Breast |" in organ_md and "| Average |" in organ_md and "| STD |" in organ_md
    assert Image.open(tmp_path / "organ_f1.png").size[0] > 100
    assert json.loads((tmp_path / "summary.json").read_text())["confusion_matrix"] == acc.total.tolist()
    assert "Per cell class" in report["markdown"]


def test_paper_colours():
    rgb = colorize(np.array([[1, 2, 3, 4, 5, 0]]), CLASS_COLORS)
    assert rgb[0].tolist() == [[255, 0, 0], [0, 200, 0], [0, 0, 255], [255, 255, 0], [0, 255, 255], [0, 0, 0]]
    # red neoplastic, green inflammatory, blue connective, yellow dead, cyan epithelial


class ReadsLabelFromImage(torch.nn.Module):
    """A 'perfect' network for the runner test: channel 0 of the image holds the class index."""

    def forward(self, image):
        return torch.nn.functional.one_hot(image[:, 0].round().long(), 6).permute(0, 3, 1, 2).float() * 10


def test_semantic_recorder_on_an_evaluator_writes_everything(tmp_path):
    """The path of MONCH's evaluate.yaml: an evaluator whose post-processing one-hot encodes pred and label,
    the recorder on it, then the reports."""
    from monai.data import DataLoader
    from monai.engines import SupervisedEvaluator
    from monai.transforms import AsDiscreted

    records = []
    rng = np.random.default_rng(0)
    for i, organ in enumerate(["Breast", "Breast", "Colon"]):
        label = rng.integers(0, 6, (1, 8, 8))
        image = np.repeat(label, 3, axis=0).astype(np.float32)
        records.append({"image": torch.from_numpy(image), "label": torch.from_numpy(label), "organ": organ,
                        "name": f"p{i}"})
    recorder = SemanticRecorder(6, CLASS_NAMES, CLASS_COLORS, "organ", tmp_path / "overlays", num_overlays=2)
    evaluator = SupervisedEvaluator(
        device="cpu", val_data_loader=DataLoader(records, batch_size=2), network=ReadsLabelFromImage(),
        postprocessing=AsDiscreted(keys=["pred", "label"], argmax=[True, False], to_onehot=[6, 6]),
        val_handlers=[recorder])
    evaluator.run()
    report = write_reports(recorder.acc, CLASS_NAMES, tmp_path, "organ")
    assert recorder.seen == 3
    assert report["overall"]["pa"] == 1.0 and report["overall"]["f1"] == 1.0 and report["overall"]["fwiou"] == 1.0
    for name in ("per_class.csv", "per_class.md", "per_organ.csv", "per_organ.md", "organ_f1.png", "summary.json"):
        assert (tmp_path / name).is_file(), name
    overlays = sorted((tmp_path / "overlays").glob("*.png"))
    assert len(overlays) == 2 and Image.open(overlays[0]).size[0] >= 3 * 256


def test_inference_records_accept_images_and_patch_stacks(tmp_path):
    from bundles.monch.scripts.inference import LoadPatchd, inference_records

    png = tmp_path / "x.png"
    Image.fromarray(np.full((10, 12, 3), 200, np.uint8)).save(png)
    stack = tmp_path / "p.npy"
    np.save(stack, np.zeros((3, 16, 16, 3), np.uint8))
    records = inference_records(str(png)) + inference_records(str(stack))
    assert [r["name"] for r in records] == ["x", "p_0000", "p_0001", "p_0002"]
    out = LoadPatchd()(records[0])
    assert out["image"].shape == (3, 10, 12) and out["orig_size"].tolist() == [10, 12]
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((4, 16, 16)))
    with pytest.raises(DatasetError, match="bad.npy"):
        inference_records(str(bad))
