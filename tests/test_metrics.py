import pytest
import torch
from monai.metrics import DiceMetric, MeanIoU

from common.engine.text_ablation import summary_markdown
from common.evaluation.metrics import binary_scores


def test_binary_scores_hand_computed():
    pred = torch.zeros(1, 4, 4)
    target = torch.zeros(1, 4, 4)
    pred[0, 0, :3] = 1  # 3 pixels
    target[0, 0, 1:] = 1  # 3 pixels, 2 shared
    s = binary_scores(pred, target)
    assert s["dice"] == pytest.approx(2 * 2 / 6)
    assert s["iou"] == pytest.approx(2 / 4)
    assert s["accuracy"] == pytest.approx(14 / 16)


def test_empty_cases():
    empty = torch.zeros(1, 3, 3)
    one = torch.zeros(1, 3, 3)
    one[0, 1, 1] = 1
    assert binary_scores(empty, empty) == {"dice": 1.0, "iou": 1.0, "accuracy": 1.0}
    assert binary_scores(one, empty)["dice"] == 0.0
    assert binary_scores(empty, one)["iou"] == 0.0
    with pytest.raises(ValueError):
        binary_scores(torch.zeros(1, 3, 3), torch.zeros(1, 3, 4))


def test_agrees_with_monai_metrics_used_in_training():
    torch.manual_seed(0)
    pred = (torch.rand(6, 1, 8, 8) > 0.5).float()
    target = (torch.rand(6, 1, 8, 8) > 0.6).float()
    target[5] = 0
    pred[5] = 0  # empty/empty scores 1 in both
    dice = DiceMetric(include_background=True, ignore_empty=False, reduction="none")(pred, target).flatten()
    iou = MeanIoU(include_background=True, ignore_empty=False, reduction="none")(pred, target).flatten()
    ours = [binary_scores(p, t) for p, t in zip(pred, target)]
    assert torch.allclose(dice, torch.tensor([o["dice"] for o in ours]), atol=1e-5)
    assert torch.allclose(iou, torch.tensor([o["iou"] for o in ours]), atol=1e-5)


def test_summary_markdown():
    md = summary_markdown({
        "own": {"n": 4, "dice": 0.9, "miou": 0.8, "accuracy": 0.99},
        "empty": {"n": 4, "dice": 0.25, "miou": 0.2, "accuracy": 0.9},
    })
    lines = md.strip().splitlines()
    assert lines[0].startswith("| text given")
    assert "| its own | 4 | 90.00 | 80.00 | 99.00 |  |" in lines
    assert lines[-1].endswith("| -65.00 |")
